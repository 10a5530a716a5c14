"""Export several named trunks in one ``encoder.pt`` (format 2) during and after pretraining (rank 0 only)."""

from __future__ import annotations

from collections.abc import Mapping

from ..encoders import encoders_payload
from ..networks.backbones import Backbone
from .encoder_export import EncoderExport

__all__ = ["TrunksExport"]


class TrunksExport(EncoderExport):
    """:class:`EncoderExport` for several trunks: writes ``trunks`` (``{name: Backbone}``, e.g. the joint 2D-3D
    method's ``slice_encoder`` and ``slice_transformer``) to ``path`` with
    :func:`~monai_ssl_ext.encoders.export_encoders`'s format, at the same save points (in the background likewise) (every ``interval`` epochs and at the end
    of the run, once per save point), with the same start-of-run checks. A finetuning bundle picks one trunk with
    ``load_encoder(..., trunk=name)``.

    Args:
        trunks: ``{name: Backbone}``, at least one.
        path, method, normalization, interval, intensity_window: as for :class:`EncoderExport`.
    """

    def __init__(self, trunks: Mapping[str, Backbone], path: str, method: str, normalization: dict | None = None,
                 interval: int = 1, intensity_window: dict | None = None):
        if not isinstance(trunks, Mapping) or not trunks:
            raise ValueError(f"TrunksExport: trunks must be a non-empty {{name: Backbone}} mapping, got {trunks!r}")
        bad = [name for name, b in trunks.items() if not isinstance(b, Backbone)]
        if bad:
            raise TypeError(f"TrunksExport: trunks {bad} are not monai_ssl_ext Backbones")
        super().__init__(next(iter(trunks.values())), path, method, normalization, interval, intensity_window)
        self.trunks = dict(trunks)

    def payload(self, **header) -> dict:
        return encoders_payload(self.trunks, **header)

    def describe(self) -> str:
        return "trunks " + ", ".join(f"{n} ({b.arch})" for n, b in self.trunks.items())
