"""SSL model wrappers: a backbone plus heads; ``forward`` takes the views and returns what the
method's loss takes, so the SSL trainer stays method-agnostic."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .backbones import Backbone
from .heads import MLPHead

__all__ = ["SimCLR", "BYOL"]


class SimCLR(nn.Module):
    """SimCLR (Chen et al., ICML 2020): a shared encoder f and projection head g; z = g(f(x)).

    Args:
        backbone: the encoder trunk (exported after pretraining).
        projection_dims: hidden and output sizes of g, after the backbone's feature size; the
            surgical recipe (source A) uses ``[512, 128]`` (feat → 4·128 → 128).
        dropout: dropout before g (source A keeps torchvision EfficientNet's Dropout(0.2); MONAI's
            EfficientNet trunk already applies its own dropout before pooling output).
    """

    def __init__(self, backbone: Backbone, projection_dims: Sequence[int] = (512, 128), dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.projector = MLPHead([backbone.feature_dim, *projection_dims], dropout=dropout)

    def forward(self, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One projection per view; all views go through the encoder as one batch (BN statistics
        over both views, as in SimCLR)."""
        z = self.projector(self.backbone(torch.cat(views)))
        return tuple(z.chunk(len(views)))


class BYOL(nn.Module):
    """BYOL (Grill et al., NeurIPS 2020): an online network (encoder f, projector g, predictor q) regresses the
    projections of a target network (f', g') that is an exponential moving average of (f, g).

    ``forward(x0, x1)`` returns ``(p0, p1, z0, z1)`` with ``p_v = q(g(f(x_v)))`` and ``z_v = g'(f'(x_v))``, the
    input of :class:`~monai_ssl_ext.losses.BYOLLoss`. Each view goes through each network as its own batch (BN
    statistics per view, as in solo-learn, SSL-MedSeg's framework). The targets are computed under ``torch.no_grad()`` (stop-gradient;
    the loss detaches them again).

    The target copies ``target_backbone`` / ``target_projector`` are submodules, so they are saved in the state dict,
    moved by ``.to()`` and updated by :class:`~monai_ssl_ext.handlers.EMATargetUpdate`::

        EMATargetUpdate(online=byol.online_modules(), target=byol.target_modules(), base_momentum=0.99,
                        final_momentum=1.0)

    Their parameters do not require gradients. Give the optimizer :meth:`online_parameters` (backbone, projector,
    predictor): ``parameters()`` also lists the target tensors, which never get a gradient and so would only be
    skipped, but keeping them out of the optimizer keeps its param groups and state to the trained tensors.

    The target is initialised as a copy of the online backbone and projector at construction, so a backbone built
    with its weights already loaded (e.g. ``pretrained_backbone(...)`` for the hierarchical ImageNet → ACDC recipe,
    where SSL-MedSeg loads the same weights into ``backbone`` and ``momentum_backbone``) starts with an identical
    target. If weights are loaded into ``backbone`` after construction, call :meth:`reinit_target`.

    Args:
        backbone: the encoder trunk f (exported after pretraining; SSL-MedSeg transfers the target f').
        projection_dims: hidden and output sizes of g after the backbone's feature size
            (``feat → 4096 → 256``, Linear-BN-ReLU-Linear, as in BYOL and SSL-MedSeg).
        prediction_dims: hidden and output sizes of q after the projection size (``256 → 8192 → 256`` in
            SSL-MedSeg / solo-learn; BYOL's paper uses 4096). The output size must equal the projection size.
    """

    def __init__(
        self,
        backbone: Backbone,
        projection_dims: Sequence[int] = (4096, 256),
        prediction_dims: Sequence[int] = (8192, 256),
    ):
        super().__init__()
        projection_dims, prediction_dims = [int(d) for d in projection_dims], [int(d) for d in prediction_dims]
        if not projection_dims or not prediction_dims or prediction_dims[-1] != projection_dims[-1]:
            raise ValueError(
                f"BYOL: the predictor must map the projection back to its own size, got projection_dims "
                f"{projection_dims} and prediction_dims {prediction_dims}"
            )
        self.backbone = backbone
        self.projector = MLPHead([backbone.feature_dim, *projection_dims], batch_norm=True)
        self.predictor = MLPHead([projection_dims[-1], *prediction_dims], batch_norm=True)
        self.target_backbone = copy.deepcopy(backbone)
        self.target_projector = copy.deepcopy(self.projector)
        self.target_modules().requires_grad_(False)

    def online_modules(self) -> nn.ModuleList:
        """``[backbone, projector]``: the ``online`` of the EMA update (the predictor has no target)."""
        return nn.ModuleList([self.backbone, self.projector])

    def target_modules(self) -> nn.ModuleList:
        """``[target_backbone, target_projector]``: the ``target`` of the EMA update."""
        return nn.ModuleList([self.target_backbone, self.target_projector])

    def online_parameters(self) -> list[nn.Parameter]:
        """The trained parameters (backbone, projector, predictor), for the optimizer."""
        return [p for module in (self.backbone, self.projector, self.predictor) for p in module.parameters()]

    @torch.no_grad()
    def reinit_target(self) -> None:
        """Copy the online backbone and projector (parameters and buffers) into the target."""
        self.target_modules().load_state_dict(self.online_modules().state_dict())
        self.target_modules().requires_grad_(False)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(p0, p1, z0, z1)``: online predictions and target projections of the two views.

        Each view goes through each network on its own, as in solo-learn (``training_step`` and
        the momentum forward loop over the views): batch-norm statistics are per view."""
        p0, p1 = (self.predictor(self.projector(self.backbone(x))) for x in (x0, x1))
        with torch.no_grad():
            z0, z1 = (self.target_projector(self.target_backbone(x)) for x in (x0, x1))
        return p0, p1, z0, z1
