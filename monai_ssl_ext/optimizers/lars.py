"""LARS optimizer.

You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", 2017 (https://arxiv.org/abs/1708.03888).

This follows the variant used by BYOL (``byol/utils/optimizers.py``) and Barlow Twins / VICReg
(``facebookresearch/barlowtwins`` ``main.py``), where the trust ratio uses the norm of the *weight-decayed* gradient.
For each parameter ``p`` with gradient ``g``, learning rate ``lr`` and momentum ``m``:

    g     <- g + wd * p
    trust <- eta * ||p|| / (||g|| + eps)     if ||p|| > 0 and ||g|| > 0, else 1
    trust <- min(trust / lr, 1)              only with clip_lr (solo-learn's clipping: effective lr = min(lr*trust, lr))
    mu    <- m * mu + trust * g              (mu starts at 0)
    p     <- p - lr * mu

Excluded parameters (``ndim <= 1``, i.e. biases and normalisation weights, when ``exclude_bias_and_norm``; or every
parameter of a group with ``"lars_exclude": True``) get plain SGD with momentum: no weight decay, no trust ratio.
Note the paper's own denominator ``||g_raw|| + wd * ||p||`` (also solo-learn's) is *not* the one used here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["LARS"]


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017), BYOL / Barlow Twins form; see the module docstring.

    Args:
        params: parameters or parameter groups; a group may set ``"lars_exclude": True``.
        lr: learning rate.
        momentum: momentum factor ``m`` (0.9 in BYOL / Barlow Twins).
        weight_decay: ``wd``, applied only to non-excluded parameters.
        eta: trust coefficient (0.001 in You et al. / Barlow Twins / BYOL).
        exclude_bias_and_norm: exclude parameters with ``ndim <= 1`` from weight decay and adaptation.
        clip_lr: clip the trust ratio to ``min(trust / lr, 1)`` (solo-learn's ``clip_lr``).
        eps: added to the gradient norm in the trust-ratio denominator.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        exclude_bias_and_norm: bool = False,
        clip_lr: bool = False,
        eps: float = 1e-8,
    ) -> None:
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay), ("eta", eta),
                            ("eps", eps)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                        exclude_bias_and_norm=exclude_bias_and_norm, clip_lr=clip_lr, eps=eps, lars_exclude=False)
        super().__init__(params, defaults)

    @staticmethod
    def _excluded(p: torch.Tensor, group: dict[str, Any]) -> bool:
        return bool(group["lars_exclude"]) or (bool(group["exclude_bias_and_norm"]) and p.ndim <= 1)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients.")
                g = p.grad
                if not self._excluded(p, group):
                    g = g.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / (g_norm + group["eps"]),
                                        torch.ones_like(p_norm))
                    if group["clip_lr"]:
                        trust = torch.clamp(trust / lr, max=1.0)
                    g = g * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                mu = state["momentum_buffer"]
                mu.mul_(group["momentum"]).add_(g)
                p.add_(mu, alpha=-lr)
        return loss
