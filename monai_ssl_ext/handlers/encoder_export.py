"""Export the trunk as ``encoder.pt`` during and after pretraining (rank 0 only)."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events

from ..distributed import get_rank
from ..encoders import export_encoder
from ..networks.backbones import Backbone

__all__ = ["EncoderExport"]


class EncoderExport:
    """Write ``backbone`` to ``path`` in the encoder format every ``interval`` epochs and when the
    run completes.

    Args:
        backbone: the trunk to export (for EMA methods: the target network's backbone).
        path: output file, e.g. ``"$@ckpt_dir + '/encoder.pt'"``.
        method: SSL method name stored in the header.
        normalization: the input normalisation used in pretraining (``{"mean": [...], "std": [...]}``).
        interval: export every N epochs (0: only at the end).
    """

    def __init__(self, backbone: Backbone, path: str, method: str, normalization: dict | None = None, interval: int = 1):
        if not isinstance(backbone, Backbone):
            raise TypeError(f"EncoderExport: backbone must be a monai_ssl_ext Backbone, got {type(backbone).__name__}")
        self.backbone, self.path, self.method = backbone, path, method
        self.normalization = dict(normalization or {})
        self.interval = int(interval)
        self.logger = logging.getLogger("monai_ssl_ext.EncoderExport")

    def attach(self, engine: Engine) -> None:
        if self.interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if get_rank() != 0:
            return
        export_encoder(
            self.backbone,
            self.path,
            method=self.method,
            normalization=self.normalization,
            epoch=engine.state.epoch,
            iteration=engine.state.iteration,
        )
        self.logger.info(f"exported {self.backbone.arch} encoder (epoch {engine.state.epoch}) to {self.path}")
