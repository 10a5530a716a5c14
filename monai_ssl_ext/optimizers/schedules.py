"""Learning-rate schedules stepped once per iteration."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WarmupCosineLR"]


class WarmupCosineLR(LambdaLR):
    """Linear warmup from 0, then a half cosine down to ``end_factor`` times each group's base learning rate.

    With ``s`` the number of ``step()`` calls so far (``s = 0`` before the first), ``W = warmup_steps`` and
    ``T = total_steps``, every parameter group's learning rate is its initial ``lr`` times

        s / W                                                     for s < W
        end + (1 - end) * 0.5 * (1 + cos(pi * (s - W) / (T - W)))    for W <= s (held at ``end`` after T)

    This is facebookresearch/barlowtwins ``adjust_learning_rate`` (``end_factor=0.001``, 10 warmup epochs, the
    first iteration at learning rate 0) applied to both of its parameter groups, so their ratio (0.2 : 0.0048) holds
    throughout. MONAI's ``WarmupCosineSchedule`` decays to 0 and only clips at an absolute ``end_lr`` shared by all
    groups, which is not the same curve. Step it once per iteration (``LrScheduleHandler(epoch_level=False)``).

    Args:
        optimizer: the optimizer; each group's ``lr`` at construction is its base learning rate.
        warmup_steps: ``W >= 0`` (0: no warmup).
        total_steps: ``T > W``, the iteration at which the cosine reaches ``end_factor``.
        end_factor: final fraction of the base learning rate, in ``[0, 1]``.
        last_epoch: as in ``LambdaLR`` (-1 starts a new schedule).
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, end_factor: float = 0.0,
                 last_epoch: int = -1) -> None:
        warmup_steps, total_steps = int(warmup_steps), int(total_steps)
        if warmup_steps < 0 or total_steps <= warmup_steps:
            raise ValueError(f"WarmupCosineLR needs 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps} "
                             f"and total_steps={total_steps} (more epochs than warmup epochs?).")
        if not 0.0 <= end_factor <= 1.0:
            raise ValueError(f"WarmupCosineLR end_factor must be in [0, 1], got {end_factor}.")
        self.warmup_steps, self.total_steps, self.end_factor = warmup_steps, total_steps, float(end_factor)
        super().__init__(optimizer, self.factor, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier of the base learning rates after ``step`` calls of ``step()``."""
        if step < self.warmup_steps:
            return step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        q = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.end_factor + (1.0 - self.end_factor) * q
