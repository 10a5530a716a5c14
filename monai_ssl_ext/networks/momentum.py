"""The online / target (momentum) pair shared by every method that has one: BYOL, MoCo v3, DINO, ...

One module holds the trained network (``online``) and a frozen copy of it (``target``) that is not trained by the
optimizer but moved towards the online one by :class:`~monai_ssl_ext.handlers.EMATargetUpdate` (an exponential
moving average of the parameters, once per optimizer step). It is what solo-learn's ``BaseMomentumMethod`` keeps as
``momentum_pairs`` (``solo/methods/base.py``) and BYOL's / MoCo's ``target`` / ``momentum_encoder``.

Contract:

* ``pair.online`` and ``pair.target`` are submodules (state-dict keys ``online.*`` / ``target.*``), so both are
  checkpointed with the network, moved by ``.to()`` and converted by ``SyncBatchNorm.convert_sync_batchnorm``.
* ``target`` starts as a deep copy of ``online`` (parameters *and* buffers) and its parameters never require
  gradients; :meth:`MomentumPair.reinit_target` copies the online network again (after weights were loaded into it).
* :meth:`MomentumPair.forward` runs the online network; :meth:`MomentumPair.forward_target` runs the target under
  ``torch.no_grad()`` in the pair's current mode (train mode in training: the target's batch-norm statistics come from
  its own forwards, as in solo-learn; the EMA leaves buffers alone).
* The optimizer gets :meth:`MomentumPair.online_parameters` (a wrapper adds its own heads that have no target, e.g.
  BYOL's predictor). ``parameters()`` also lists the target's tensors, which never get a gradient.
* :meth:`MomentumPair.exported` names which branch is the pretraining result (``"target"`` for BYOL, as SSL-MedSeg
  and BYOL's release transfer the target network; ``"online"`` e.g. for MoCo v3's ``base_encoder``).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["MomentumPair", "MomentumPredictorMethod", "BRANCHES"]

BRANCHES = ("online", "target")


class MomentumPair(nn.Module):
    """An online network and its momentum (EMA) target; see the module docstring for the contract.

    Args:
        online: the trained network, or a mapping ``name -> module`` that is chained in that order
            (``nn.Sequential(OrderedDict(...))``), so that each part is reachable by name on both branches, e.g.
            ``MomentumPair({"backbone": trunk, "projector": head})`` gives ``pair.target.backbone`` and keys
            ``online.backbone.*`` / ``target.backbone.*``.

    Example (BYOL's pair; :class:`~monai_ssl_ext.networks.BYOL` builds it itself)::

        pair = MomentumPair({"backbone": backbone, "projector": projector})
        optimizer = LARS(pair.online_parameters() + list(predictor.parameters()), ...)
        ema = EMATargetUpdate(pair=pair, base_momentum=0.99, final_momentum=1.0)
        z = pair.forward_target(x)            # no gradient
        EncoderExport(pair.exported("target").backbone, ...)
    """

    def __init__(self, online: nn.Module | Mapping[str, nn.Module]):
        super().__init__()
        if isinstance(online, Mapping):
            if not online:
                raise ValueError("MomentumPair: the online network mapping is empty")
            online = nn.Sequential(OrderedDict((str(k), v) for k, v in online.items()))
        if not isinstance(online, nn.Module):
            raise TypeError(f"MomentumPair: online must be an nn.Module or a mapping of them, got {type(online).__name__}")
        self.online = online
        self.target = copy.deepcopy(online)
        self.target.requires_grad_(False)

    def online_parameters(self) -> list[nn.Parameter]:
        """The online network's parameters: what the optimizer trains (the target's are EMA-updated)."""
        return list(self.online.parameters())

    def exported(self, which: str = "target") -> nn.Module:
        """The ``"target"`` or ``"online"`` branch (the network whose trunk is the pretraining result)."""
        if which not in BRANCHES:
            raise ValueError(f"MomentumPair: which must be one of {BRANCHES}, got {which!r}")
        return self.target if which == "target" else self.online

    @torch.no_grad()
    def reinit_target(self) -> None:
        """Copy the online network (parameters and buffers) into the target; its parameters stay frozen."""
        self.target.load_state_dict(self.online.state_dict())
        self.target.requires_grad_(False)

    def forward(self, *args, **kwargs):
        """The online network's forward (with gradients)."""
        return self.online(*args, **kwargs)

    @torch.no_grad()
    def forward_target(self, *args, **kwargs):
        """The target network's forward under ``torch.no_grad()`` (stop-gradient)."""
        return self.target(*args, **kwargs)


class MomentumPredictorMethod(nn.Module):
    """What BYOL and MoCo v3 share: ``self.pair``, a :class:`MomentumPair` of ``{"backbone", "projector"}``, and
    ``self.predictor`` on the online side only. ``forward(x1, x2)`` returns ``(p1, p2, z1, z2)``: the online
    predictions ``predictor(projector(backbone(x_v)))`` and the target projections (under ``torch.no_grad()``) of
    each view, each view a batch of its own (batch-norm statistics per view, as both sources).

    A subclass builds ``self.pair`` and ``self.predictor`` in its ``__init__`` and sets :attr:`default_export`, the
    branch that is the method's result (BYOL: ``"target"``; MoCo v3: ``"online"``, the base encoder)."""

    default_export: str = "online"
    pair: MomentumPair
    predictor: nn.Module

    @property
    def backbone(self) -> nn.Module:
        """The online trunk (``pair.online.backbone``)."""
        return self.pair.online.backbone

    @property
    def projector(self) -> nn.Module:
        """The online projector (``pair.online.projector``)."""
        return self.pair.online.projector

    @property
    def target_backbone(self) -> nn.Module:
        """The target (momentum) trunk (``pair.target.backbone``)."""
        return self.pair.target.backbone

    @property
    def target_projector(self) -> nn.Module:
        """The target (momentum) projector (``pair.target.projector``)."""
        return self.pair.target.projector

    def exported_backbone(self, which: str | None = None) -> nn.Module:
        """The trunk to export: ``"online"`` or ``"target"`` (default :attr:`default_export`)."""
        return self.pair.exported(which or self.default_export).backbone

    def online_parameters(self) -> list[nn.Parameter]:
        """The trained parameters (backbone, projector, predictor, in this order) that require gradients, for the
        optimizer (a frozen patch embedding or fixed position embedding is left out)."""
        params = self.pair.online_parameters() + list(self.predictor.parameters())
        return [p for p in params if p.requires_grad]

    def reinit_target(self) -> None:
        """Copy the online backbone and projector (parameters and buffers) into the target."""
        self.pair.reinit_target()

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(p1, p2, z1, z2)``: online predictions and target projections of the two views."""
        p1, p2 = (self.predictor(self.pair(x)) for x in (x1, x2))
        z1, z2 = (self.pair.forward_target(x) for x in (x1, x2))
        return p1, p2, z1, z2
