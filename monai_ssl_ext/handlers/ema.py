"""Exponential-moving-average (EMA) update of a target network, as in BYOL / MoCo / DINO: the one EMA handler,
over a :class:`~monai_ssl_ext.networks.MomentumPair` (or an online / target module pair).

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
from ..networks.momentum import MomentumPair

__all__ = ["cosine_momentum", "EMATargetUpdate", "find_pair"]


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


def find_pair(network: nn.Module) -> MomentumPair:
    """``network`` itself if it is a :class:`~monai_ssl_ext.networks.MomentumPair`, else the one pair among its
    submodules (a BYOL / MoCo wrapper, possibly in ``DistributedDataParallel``); raises unless there is exactly one."""
    network = _unwrap(network)
    if isinstance(network, MomentumPair):
        return network
    if not isinstance(network, nn.Module):
        raise TypeError(f"EMATargetUpdate: pair must be a MomentumPair or a network holding one, got "
                        f"{type(network).__name__}")
    found = [(name, m) for name, m in network.named_modules() if isinstance(m, MomentumPair)]
    if len(found) != 1:
        names = ", ".join(repr(n) for n, _ in found) or "none"
        raise ValueError(f"EMATargetUpdate: {type(network).__name__} must hold exactly one MomentumPair, found "
                         f"{names}; pass the pair itself (e.g. pair=\"$@network_def.pair\")")
    return found[0][1]


def _check_same_structure(online: nn.Module, target: nn.Module) -> None:
    for kind, a, b in (("parameter", online.named_parameters(), target.named_parameters()),
                       ("buffer", online.named_buffers(), target.named_buffers())):
        a, b = [(n, tuple(t.shape)) for n, t in a], [(n, tuple(t.shape)) for n, t in b]
        if a != b:
            first = next((x, y) for x, y in zip(a + [None], b + [None]) if x != y)  # type: ignore[operator]
            raise ValueError(f"online and target differ at the first {kind} mismatch: online {first[0]} vs "
                             f"target {first[1]} ((name, shape), None = missing).")


class EMATargetUpdate:
    """Ignite handler updating a target network as an EMA of its online network after every optimizer step (BYOL,
    Grill et al. 2020; MoCo v3; DINO's teacher).

    The networks are a :class:`~monai_ssl_ext.networks.MomentumPair` (``pair=``: the pair, or a network holding
    exactly one, e.g. ``"pair": "$@network_def.pair"``), or, as before the pair existed, two modules
    ``online`` / ``target`` with the same parameter and buffer names and shapes
    (``EMATargetUpdate(online, target)``; a pair passed as ``online`` alone is taken as ``pair``).

    At ``Events.ITERATION_COMPLETED`` of the iteration whose optimizer step is the ``k``-th (0-based; with
    MONAI's ``accumulation_steps`` only the iterations that step update the target, once per optimizer step),
    so the first update uses ``tau_0 = base_momentum`` (as in BYOL's code) and the schedule resumes correctly
    after a checkpoint reload. With ``K = total_steps`` (default: the optimizer steps of the run,
    ``max_epochs * epoch_length`` without accumulation):

        target_param <- tau_k * target_param + (1 - tau_k) * online_param,   tau_k = cosine_momentum(k, K, base, final)

    Buffers (e.g. batch-norm running mean / variance and ``num_batches_tracked``) are *not* touched: the target's
    come from its own forward passes (train mode, e.g. :meth:`MomentumPair.forward_target
    <monai_ssl_ext.networks.MomentumPair.forward_target>` under ``torch.no_grad()``), as in solo-learn, so an
    exported target encoder carries the statistics of the target network rather than of the online one. The
    target's parameters are set to not require gradients. The momentum used last is kept in ``self.momentum``;
    the handler has no other state (``k`` comes from the engine's iteration, which a resumed run restores).

    Args:
        online: the trained network (may be wrapped in ``DistributedDataParallel``), or a ``MomentumPair``.
        target: the EMA network, with the same parameter and buffer names and shapes (its buffers are its own);
            None with ``pair``.
        base_momentum: ``tau_base`` (0.99 in BYOL; 0.996 for its 1000-epoch runs).
        final_momentum: momentum reached at ``K`` (1.0 in BYOL).
        total_steps: ``K``; ``None`` uses ``engine.state.max_epochs * engine.state.epoch_length``.
        pair: the ``MomentumPair`` (or a network holding exactly one), instead of ``online`` / ``target``.
    """

    def __init__(
        self,
        online: nn.Module | None = None,
        target: nn.Module | None = None,
        base_momentum: float = 0.99,
        final_momentum: float = 1.0,
        total_steps: int | None = None,
        pair: nn.Module | None = None,
    ) -> None:
        if pair is None and target is None and isinstance(_unwrap(online), MomentumPair):
            online, pair = None, online
        if pair is not None:
            if online is not None or target is not None:
                raise ValueError("EMATargetUpdate: give either `pair` or `online` and `target`, not both")
            self.pair: MomentumPair | None = find_pair(pair)
            self._online = self._target = None
        else:
            if online is None or target is None:
                raise ValueError("EMATargetUpdate: give `pair` (a MomentumPair) or both `online` and `target`")
            self.pair, self._online, self._target = None, _unwrap(online), _unwrap(target)
        _check_same_structure(self.online, self.target)
        if total_steps is not None and total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}.")
        self.base_momentum, self.final_momentum, self.total_steps = base_momentum, final_momentum, total_steps
        self.momentum = base_momentum
        self.target.requires_grad_(False)

    @property
    def online(self) -> nn.Module:
        """The trained network (the pair's ``online``, read at every update)."""
        return self.pair.online if self.pair is not None else self._online

    @property
    def target(self) -> nn.Module:
        """The EMA network (the pair's ``target``, read at every update)."""
        return self.pair.target if self.pair is not None else self._target

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
