"""Exponential-moving-average (EMA) update of a target network, as in BYOL / MoCo / DINO.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020
(https://arxiv.org/abs/2006.07733), Sec. 3.1 / appendix:

    xi <- tau * xi + (1 - tau) * theta,     tau_k = 1 - (1 - tau_base) * (cos(pi * k / K) + 1) / 2

generalised here to an arbitrary final momentum: ``tau_k = final - (final - base) * (cos(pi * k / K) + 1) / 2``.

Only *parameters* are averaged (BYOL's ``xi`` and ``theta`` are the weights), as in solo-learn
(``solo/utils/momentum.py``, ``MomentumUpdater.update``).
Buffers such as batch-norm running statistics are left alone: the target keeps its own, which its own forward passes
update when it runs in train mode (solo-learn's momentum backbone runs in train mode under ``torch.no_grad()``).
"""

from __future__ import annotations

import math

import torch
from ignite.engine import Engine, Events
from torch import nn

from ..engines.steps import optimizer_steps, steps_now, total_optimizer_steps

__all__ = ["cosine_momentum", "EMATargetUpdate"]


def cosine_momentum(step: int, total_steps: int, base: float, final: float) -> float:
    """Cosine schedule from ``base`` (``step = 0``) to ``final`` (``step = total_steps``), BYOL's eq. for ``tau``.

    ``tau_k = final - (final - base) * (cos(pi * k / K) + 1) / 2``; ``k`` is clamped to ``[0, K]``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}.")
    k = min(max(step, 0), total_steps)
    return final - (final - base) * (math.cos(math.pi * k / total_steps) + 1) / 2


def _unwrap(module: nn.Module) -> nn.Module:
    """The wrapped module of ``DistributedDataParallel`` / ``DataParallel``, else ``module``."""
    if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return module.module
    return module


class EMATargetUpdate:
    """Ignite handler updating ``target`` as an EMA of ``online`` after every iteration (BYOL, Grill et al. 2020).

    At ``Events.ITERATION_COMPLETED`` of the iteration whose optimizer step is the ``k``-th (0-based; with
    MONAI's ``accumulation_steps`` only the iterations that step update the target, once per optimizer step),
    so the first update uses ``tau_0 = base_momentum`` (as in BYOL's code) and the schedule resumes correctly
    after a checkpoint reload. With ``K = total_steps`` (default: the optimizer steps of the run,
    ``max_epochs * epoch_length`` without accumulation):

        target_param <- tau_k * target_param + (1 - tau_k) * online_param,   tau_k = cosine_momentum(k, K, base, final)

    Buffers (e.g. batch-norm running mean / variance and ``num_batches_tracked``) are *not* touched: the target's
    come from its own forward passes (train mode, e.g. :class:`~monai_ssl_ext.networks.BYOL`'s target branch under
    ``torch.no_grad()``), as in solo-learn, so an exported target encoder carries the statistics of the target
    network rather than of the online one. Parameter and buffer names and shapes must still match. The target's
    parameters are set to not require gradients. The momentum used last is kept in ``self.momentum``.

    Args:
        online: the trained network (may be wrapped in ``DistributedDataParallel``).
        target: the EMA network, with the same parameter and buffer names and shapes (its buffers are its own).
        base_momentum: ``tau_base`` (0.99 in BYOL; 0.996 for its 1000-epoch runs).
        final_momentum: momentum reached at ``K`` (1.0 in BYOL).
        total_steps: ``K``; ``None`` uses ``engine.state.max_epochs * engine.state.epoch_length``.
    """

    def __init__(
        self,
        online: nn.Module,
        target: nn.Module,
        base_momentum: float = 0.99,
        final_momentum: float = 1.0,
        total_steps: int | None = None,
    ) -> None:
        self.online, self.target = _unwrap(online), _unwrap(target)
        for kind, a, b in (("parameter", self.online.named_parameters(), self.target.named_parameters()),
                           ("buffer", self.online.named_buffers(), self.target.named_buffers())):
            a, b = [(n, tuple(t.shape)) for n, t in a], [(n, tuple(t.shape)) for n, t in b]
            if a != b:
                first = next((x, y) for x, y in zip(a + [None], b + [None]) if x != y)  # type: ignore[operator]
                raise ValueError(f"online and target differ at the first {kind} mismatch: online {first[0]} vs "
                                 f"target {first[1]} ((name, shape), None = missing).")
        if total_steps is not None and total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}.")
        self.base_momentum, self.final_momentum, self.total_steps = base_momentum, final_momentum, total_steps
        self.momentum = base_momentum
        self.target.requires_grad_(False)

    def attach(self, engine: Engine) -> None:
        """Register this handler on ``Events.ITERATION_COMPLETED`` of ``engine`` (once)."""
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not steps_now(engine):  # gradient accumulation: one EMA update per optimizer step
            return
        total = self.total_steps or total_optimizer_steps(engine)
        self.momentum = tau = cosine_momentum(optimizer_steps(engine) - 1, total, self.base_momentum,
                                              self.final_momentum)
        with torch.no_grad():
            for t, o in zip(self.target.parameters(), self.online.parameters()):
                t.mul_(tau).add_(o.detach(), alpha=1 - tau)
