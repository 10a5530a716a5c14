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

__all__ = ["MomentumPair", "BRANCHES"]

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
