"""An opt-in progress bar for long runs: epoch, iteration, loss and time left on one line."""

from __future__ import annotations

from ignite.engine import Engine, Events

from ..distributed import get_rank
from ..utils import as_bool
from .tracking import attached

__all__ = ["RunProgress"]


class RunProgress:
    """ignite's ``ProgressBar`` (tqdm) on the trainer when ``enabled`` (the ``progress_bar`` config id):
    ``Epoch [e/E] [i/N] pct|bar| loss=... [elapsed<left]``, on rank 0 only. With the bar on, the
    per-iteration ``StatsHandler`` lines are dropped (the bar carries the loss) so the console stays
    readable; the per-epoch lines (metrics, learning rate, validation) stay. Disabled, it attaches
    nothing.

    Args:
        enabled: attach the bar.
        output_key: the engine output's loss entry shown in the bar.
    """

    def __init__(self, enabled: bool = False, output_key: str = "loss"):
        self.enabled = as_bool(enabled, "progress_bar")
        self.output_key = output_key
        self.bar = None

    def attach(self, engine: Engine) -> None:
        if not self.enabled or get_rank() != 0:
            return
        from ignite.handlers import ProgressBar

        self.bar = ProgressBar(persist=True)
        self.bar.attach(engine, output_transform=self._loss)
        engine.add_event_handler(Events.STARTED, self._quiet_iteration_lines)

    def _loss(self, output) -> dict:
        item = output[0] if isinstance(output, list) and output else output
        value = item.get(self.output_key) if isinstance(item, dict) else None
        return {} if value is None else {self.output_key: float(value)}

    @staticmethod
    def _quiet_iteration_lines(engine: Engine) -> None:
        from monai.handlers import StatsHandler

        for event, fn, _ in attached(engine, StatsHandler):
            if fn.__name__ == "iteration_completed":
                engine.remove_event_handler(fn, event)
