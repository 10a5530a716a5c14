"""LARS optimizer, solo-learn's variant (the one SSL-MedSeg's BYOL ACDC recipe runs).

You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", 2017 (https://arxiv.org/abs/1708.03888),
eq. 6 / Algorithm 1: the local learning rate is ``eta * ||w|| / (||grad L(w)|| + beta * ||w||)``, with the norm of
the *raw* loss gradient and the weight decay ``beta`` entering through ``beta * ||w||``.

This module reimplements ``solo/utils/lars.py`` of solo-learn 1.0.6 (itself taken from PyTorch Lightning Bolts), which
SSL-MedSeg's ``byol_acdc.yaml`` uses with ``eta 0.02, clip_lr, exclude_bias_n_norm, wd 1e-5``. For every parameter
``p`` with raw gradient ``g`` (learning rate ``lr``, momentum ``m``, dampening ``d``, weight decay ``wd``):

    if p is adapted and ||p|| != 0 and ||g|| != 0:           (norms of the raw gradient and of p)
        trust <- eta * ||p|| / (||g|| + wd * ||p|| + eps)     (eps in the denominator, next to the norms)
        trust <- min(trust / lr, 1)                           only with clip_lr (effective lr = min(lr * trust, lr))
        u     <- trust * (g + wd * p)                         (weight decay added *after* the trust ratio is computed)
    else:
        u     <- g                                            (no trust ratio *and no weight decay*)
    buf   <- clone(u) on the first step, then  buf <- m * buf + (1 - d) * u      (torch.optim.SGD's momentum)
    p     <- p - lr * (u + m * buf  if nesterov else  buf)                       (no momentum state when m == 0)

A parameter is *not* adapted when ``exclude_bias_and_norm`` is set and ``p.ndim == 1`` (biases and normalisation
weights; solo-learn tests ``ndim != 1``, so 0-d parameters stay adapted), or when its param group sets
``"lars_exclude": True`` (an extension of this package, same treatment). Like solo-learn, such parameters get plain SGD
with momentum on the raw gradient: no weight decay either, whatever the group's ``weight_decay``. Parameters whose
norm or gradient norm is zero are treated the same way for that step.

Why this variant: it is what the recipe being reproduced ran. The BYOL (``byol/utils/optimizers.py``) and Barlow Twins
/ VICReg variant differs: it adds ``wd * p`` first and uses ``||g + wd * p||`` as the denominator, applies weight decay
even when a norm is zero, starts the momentum buffer at zero and has no ``clip_lr``. An earlier version of this module
mixed the two (BYOL's denominator with solo-learn's ``clip_lr``). That variant is available as
``variant="barlowtwins"`` (facebookresearch/barlowtwins ``main.py``, class ``LARS``), for every parameter not excluded:

    u     <- g + wd * p                                      (weight decay first, whatever the norms)
    trust <- eta * ||p|| / ||u||  if ||p|| > 0 and ||u|| > 0, else 1            (no eps)
    u     <- trust * u
    buf   <- m * buf + u  (buffer starting at zero);  p <- p - lr * buf

and excluded parameters (its ``weight_decay_filter`` / ``lars_adaptation_filter`` on ``p.ndim == 1``) get ``u <- g``,
as here. The zero-started buffer equals torch SGD's copy-on-first-step when ``dampening == 0`` (the reference has no
dampening). :func:`weight_and_bias_groups` builds the reference's two parameter groups (weights; biases and
normalisation parameters at their own learning rate). ``timm.optim.Lars`` is close but not identical
(weight decay is added even when a norm is zero, adaptation is skipped when ``weight_decay == 0`` unless
``always_adapt``, and it has no per-parameter bias/norm exclusion), so it is not used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["LARS", "weight_and_bias_groups"]

VARIANTS = ("solo-learn", "barlowtwins")


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) as in solo-learn 1.0.6; see the module docstring.

    The trust ratio is computed without host synchronisation (``torch.where`` on the norm conditions), but equals
    solo-learn's per-parameter branch up to floating-point rounding.

    Args:
        params: parameters or parameter groups; a group may set ``"lars_exclude": True``.
        lr: learning rate (the trust ratio is clipped against the group's *current* ``lr``).
        momentum: momentum factor ``m`` (0.9, solo-learn's default for ``lars``).
        weight_decay: ``wd``, applied only to adapted parameters with non-zero ``||p||`` and ``||g||``.
        eta: trust coefficient (0.001 in You et al.; 0.02 in solo-learn's / SSL-MedSeg's BYOL configs).
        exclude_bias_and_norm: 1-D parameters (biases, normalisation weights) get neither the trust ratio nor weight
            decay (solo-learn's ``exclude_bias_n_norm``).
        clip_lr: clip the trust ratio to ``min(trust / lr, 1)`` (solo-learn's ``clip_lr``).
        eps: added to the trust-ratio denominator ``||g|| + wd * ||p|| + eps``.
        dampening: momentum dampening ``d`` (solo-learn / torch SGD; 0 by default).
        nesterov: Nesterov momentum (requires ``momentum > 0`` and ``dampening == 0``).
        variant: ``"solo-learn"`` (default: denominator ``||g|| + wd ||p|| + eps``, no weight decay when a norm is
            zero) or ``"barlowtwins"`` (denominator ``||g + wd p||``, weight decay always; see the module docstring).
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
        dampening: float = 0.0,
        nesterov: bool = False,
        variant: str = "solo-learn",
    ) -> None:
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay), ("eta", eta),
                            ("eps", eps)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening.")
        if variant not in VARIANTS:
            raise ValueError(f"LARS variant must be one of {VARIANTS}, got {variant!r}.")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                        exclude_bias_and_norm=exclude_bias_and_norm, clip_lr=clip_lr, eps=eps, dampening=dampening,
                        nesterov=nesterov, lars_exclude=False, variant=variant)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # optimizer state dicts saved before ``dampening`` / ``nesterov`` existed load with the defaults
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("dampening", 0.0)
            group.setdefault("nesterov", False)
            group.setdefault("lars_exclude", False)
            group.setdefault("variant", "solo-learn")

    @staticmethod
    def _excluded(p: torch.Tensor, group: dict[str, Any]) -> bool:
        return bool(group["lars_exclude"]) or (bool(group["exclude_bias_and_norm"]) and p.ndim == 1)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            dampening, nesterov = group["dampening"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients.")
                g = p.grad  # never modified in place
                u = g
                if not self._excluded(p, group) and group["variant"] == "barlowtwins":
                    u = g.add(p, alpha=wd)
                    p_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(u)
                    adapt = (p_norm > 0) & (u_norm > 0)
                    trust = torch.where(adapt, p_norm / u_norm * group["eta"], torch.ones_like(p_norm))
                    if group["clip_lr"]:
                        trust = torch.where(adapt, torch.clamp(trust / lr, max=1.0), trust)
                    u = u.mul_(trust)
                elif not self._excluded(p, group):
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)  # raw gradient
                    trust = p_norm / (g_norm + p_norm * wd + group["eps"]) * group["eta"]
                    if group["clip_lr"]:
                        trust = torch.clamp(trust / lr, max=1.0)
                    adapt = (p_norm != 0) & (g_norm != 0)
                    u = torch.where(adapt, g.add(p, alpha=wd).mul_(trust), g)
                if momentum != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = torch.clone(u).detach()
                    else:
                        buf = state["momentum_buffer"]
                        buf.mul_(momentum).add_(u, alpha=1 - dampening)
                    u = u.add(buf, alpha=momentum) if nesterov else buf
                p.add_(u, alpha=-lr)
        return loss


def weight_and_bias_groups(module: torch.nn.Module, bias_lr: float | None = None) -> list[dict[str, Any]]:
    """The Barlow Twins reference's two parameter groups: ``[{"params": weights}, {"params": biases, "lr": bias_lr}]``,
    where biases are the parameters with ``ndim == 1`` (biases, normalisation weights and biases) and weights all
    others (facebookresearch/barlowtwins ``main.py``). Parameters that do not require gradients are left out.
    ``bias_lr=None`` leaves the bias group at the optimizer's ``lr``. Combine with ``exclude_bias_and_norm=True``
    so the bias group gets neither weight decay nor the trust ratio, as in the reference."""
    params = [p for p in module.parameters() if p.requires_grad]
    biases = {"params": [p for p in params if p.ndim == 1]}
    if bias_lr is not None:
        biases["lr"] = float(bias_lr)
    return [{"params": [p for p in params if p.ndim != 1]}, biases]
