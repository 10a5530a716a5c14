"""Stop a run with a clear message when the loss is not finite."""

from __future__ import annotations

import math

import torch
from ignite.engine import Engine, Events

__all__ = ["NaNGuard", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    pass


class NaNGuard:
    """Raise :class:`NonFiniteLossError` as soon as ``engine.state.output["loss"]`` is NaN or
    infinite. Checkpoints are written only at epoch ends, so the last good checkpoint is kept and a
    rerun resumes from it.

    Args:
        loss_key: key of the loss in the engine output.
        hint: what to tell the user (e.g. which config keys to lower).
    """

    def __init__(self, loss_key: str = "loss", hint: str = "lower `learning_rate` or disable `amp`"):
        self.loss_key = loss_key
        self.hint = hint

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, (list, tuple)) and output:  # decollated: every item holds the batch loss
            output = output[0]
        loss = output.get(self.loss_key) if isinstance(output, dict) else output
        value = float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"loss is {value} at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                f"training stopped; the last checkpoint is kept ({self.hint})"
            )
