"""Gradient-norm clipping between ``backward()`` and ``optimizer.step()`` of a MONAI trainer."""

from __future__ import annotations

import math

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

from ..engines.steps import steps_now

__all__ = ["GradientClip"]


class GradientClip:
    """Clip the total gradient norm of ``engine.network``'s parameters with ``torch.nn.utils.clip_grad_norm_``
    at MONAI's ``IterationEvents.BACKWARD_COMPLETED``, i.e. after ``backward()`` and before the optimizer step
    (SupervisedTrainer, SSLTrainer). SSL-MedSeg's ACDC fine-tuning clips at 5.0 (Lightning's
    ``gradient_clip_val``, norm 2).

    With AMP and a ``GradScaler`` the gradients are unscaled first (``scaler.unscale_(optimizer)``), so the
    threshold applies to the true gradients and ``scaler.step`` does not unscale them again. Parameters without a
    gradient (e.g. BYOL's target network) are ignored. With gradient accumulation (MONAI's ``accumulation_steps``)
    the clip runs only on the iterations that step the optimizer, on the accumulated gradient.

    Args:
        max_norm: the maximal total norm (> 0).
        norm_type: the p of the p-norm (2.0; ``inf`` for the max-norm).
        error_if_nonfinite: raise when the total norm is NaN or infinite (``clip_grad_norm_``'s flag; off, so
            AMP's scaler can skip such steps and :class:`NaNGuard` reports a non-finite loss).

    The total norm before clipping of the last call is ``self.last_norm`` (a float; NaN before the first call).
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> None:
        if not max_norm > 0:
            raise ValueError(f"GradientClip: max_norm must be > 0, got {max_norm}.")
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)
        self.error_if_nonfinite = bool(error_if_nonfinite)
        self._last_norm: torch.Tensor | None = None

    def attach(self, engine: Engine) -> None:
        """Register on ``IterationEvents.BACKWARD_COMPLETED`` of ``engine`` (once)."""
        if engine.has_event_handler(self, IterationEvents.BACKWARD_COMPLETED):
            return
        try:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)
        except ValueError as e:  # a plain ignite Engine: nothing would fire the event
            raise ValueError(
                f"GradientClip needs a MONAI trainer (e.g. SupervisedTrainer) that fires "
                f"IterationEvents.BACKWARD_COMPLETED; {type(engine).__name__} does not register it"
            ) from e

    def __call__(self, engine: Engine) -> None:
        if not steps_now(engine):
            return
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None and scaler.is_enabled():
            scaler.unscale_(engine.optimizer)
        params = [p for p in engine.network.parameters() if p.grad is not None]
        if not params:
            return
        norm = torch.nn.utils.clip_grad_norm_(
            params, self.max_norm, norm_type=self.norm_type, error_if_nonfinite=self.error_if_nonfinite
        )
        self._last_norm = norm.detach()  # read lazily: no device sync per iteration

    @property
    def last_norm(self) -> float:
        return math.nan if self._last_norm is None else float(self._last_norm)
