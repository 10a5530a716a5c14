"""Export the trunk as ``encoder.pt`` during and after pretraining (rank 0 only)."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events

from ..distributed import get_rank
from ..encoders import check_intensity_window, check_normalization, encoder_payload
from ..io import BackgroundWriter, atomic_save, check_writable, remove_stale_temps
from ..networks.backbones import Backbone
from .tracking import mlflow_run_id

__all__ = ["EncoderExport"]


class EncoderExport:
    """Write ``backbone`` to ``path`` in the encoder format every ``interval`` epochs and when the
    run completes, once per save point: the final export is skipped when the epoch's export has
    just written the same epoch and iteration.

    The epoch-end exports are written on a background thread while the next epoch trains: the
    weights are copied at the epoch's end (the file holds that epoch's trunk, not a later step's)
    and the copy is saved by a :class:`~monai_ssl_ext.io.BackgroundWriter`; a failed write is
    raised at the next export or at the end of the run, and the run does not end before the last
    export is on disk. A direct call (``export(engine)``) and the final export write synchronously.

    When the run starts (before the first iteration) rank 0 waits for a write left by an earlier
    run, removes the ``<path>.tmp<pid>`` files of killed writers and checks that ``path`` can be
    written, so that a read-only folder fails then, naming it, and not after training.

    With MLflow tracking on, the header records the run's id (``mlflow_run_id``): a finetuning run
    that loads the file tags itself with it (``pretraining_run_id``, :class:`TrackParams`).

    Args:
        backbone: the trunk to export (for EMA methods: the target network's backbone).
        path: output file, e.g. ``"$@ckpt_dir + '/encoder.pt'"``.
        method: SSL method name stored in the header.
        normalization: the input normalisation used in pretraining (``{"mean": [...], "std": [...]}``).
        intensity_window: the CT intensity window of pretraining (``{"a_min", "a_max", "b_min",
            "b_max", "clip"}``, the ``intensity_window`` id), recorded under its own header key.
        interval: export every N epochs (0: only at the end).
    """

    def __init__(self, backbone: Backbone, path: str, method: str, normalization: dict | None = None, interval: int = 1,
                 intensity_window: dict | None = None):
        if not isinstance(backbone, Backbone):
            raise TypeError(f"EncoderExport: backbone must be a monai_ssl_ext Backbone, got {type(backbone).__name__}")
        self.backbone, self.path, self.method = backbone, path, method
        self.normalization = check_normalization(normalization)
        self.intensity_window = check_intensity_window(intensity_window)
        self.interval = int(interval)
        self.logger = logging.getLogger("monai_ssl_ext.EncoderExport")
        self.writer = BackgroundWriter("monai_ssl_ext.EncoderExport")
        self._written: tuple[int, int] | None = None  # (epoch, iteration) of the last export

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        if self.interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.epoch_export)
        engine.add_event_handler(Events.COMPLETED, self.final)

    def start(self, engine: Engine) -> None:
        self._written = None
        if get_rank() != 0:
            return
        self.writer.wait()  # a write left by an earlier run of this handler lands first
        remove_stale_temps(self.path, self.logger)
        check_writable(self.path, "encoder export",
                       hint="make the folder writable or set another path (nothing was trained)")

    def final(self, engine: Engine) -> None:
        """The export at the end of the run, unless this epoch and iteration were just exported; either way
        the run ends with the file on disk."""
        if self._written == (engine.state.epoch, engine.state.iteration):
            self.writer.wait()
            return
        self(engine)

    def epoch_export(self, engine: Engine) -> None:
        """The epoch-end export: the trunk copied now, written on the background thread."""
        self(engine, background=True)

    def payload(self, **header) -> dict:
        """The file's content with ``header`` (method, normalisation, epoch, ...): the weights copied now."""
        return encoder_payload(self.backbone, **header)

    def describe(self) -> str:
        """What is exported, for the log."""
        return f"{self.backbone.arch} encoder"

    def __call__(self, engine: Engine, background: bool = False) -> None:
        if get_rank() != 0:
            return
        payload = self.payload(
            method=self.method,
            normalization=self.normalization,
            intensity_window=self.intensity_window or None,
            epoch=engine.state.epoch,
            iteration=engine.state.iteration,
            **({"mlflow_run_id": run_id} if (run_id := mlflow_run_id(engine)) else {}),
        )
        self._written = (engine.state.epoch, engine.state.iteration)
        if background:
            self.writer.submit(self._write, payload)
        else:
            self.writer.wait()  # an older background write must not land after this one
            self._write(payload)

    def _write(self, payload: dict) -> None:
        atomic_save(payload, self.path)
        self.logger.info(f"exported {self.describe()} (epoch {payload['epoch']}) to {self.path}")
