"""Optimizer steps of a MONAI trainer with gradient accumulation (``accumulation_steps`` k):
``SupervisedTrainer`` steps on every k-th iteration of an epoch and on the epoch's last. Handlers
that act per optimizer step (gradient clipping, EMA target updates) count with these."""

from __future__ import annotations

import math

__all__ = ["steps_now", "optimizer_steps", "total_optimizer_steps"]


def _acc(engine) -> int:
    return max(int(getattr(engine, "accumulation_steps", 1) or 1), 1)


def steps_now(engine) -> bool:
    """Whether the optimizer steps at this iteration (``engine.state.iteration``, 1-based)."""
    acc = _acc(engine)
    if acc == 1:
        return True
    length = engine.state.epoch_length
    local = (engine.state.iteration - 1) % length if length is not None else engine.state.iteration - 1
    return (local + 1) % acc == 0 or (length is not None and local + 1 == length)


def optimizer_steps(engine) -> int:
    """Optimizer steps taken up to and including this iteration."""
    acc, i, length = _acc(engine), engine.state.iteration, engine.state.epoch_length
    if acc == 1:
        return i
    if length is None:
        return i // acc
    return (i // length) * math.ceil(length / acc) + (i % length) // acc


def total_optimizer_steps(engine) -> int:
    """Optimizer steps of the whole run (``max_epochs`` epochs of ``epoch_length`` iterations)."""
    return engine.state.max_epochs * math.ceil(engine.state.epoch_length / _acc(engine))
