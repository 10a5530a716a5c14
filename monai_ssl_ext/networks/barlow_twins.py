"""Barlow Twins wrapper (Zbontar et al., ICML 2021): a backbone and a projector, after facebookresearch/barlowtwins
``main.py`` (class ``BarlowTwins``), with the zero-initialised residual branches its torchvision ResNet-50 starts with
(``resnet50(zero_init_residual=True)``, :func:`~monai_ssl_ext.networks.initialisation.zero_init_residual`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .backbones import Backbone
from .heads import MLPHead
from .initialisation import zero_init_residual

__all__ = ["BarlowTwins"]

_zero_init_residual = zero_init_residual  # the constructor's argument of the same name hides it


class BarlowTwins(nn.Module):
    """Barlow Twins (Zbontar et al. 2021): a shared backbone f and projector g; ``forward(x1, x2)`` returns
    ``(z1, z2)`` with ``z_v = g(f(x_v))``, the input of
    :class:`~monai_ssl_ext.losses.BarlowTwinsCrossCorrelationLoss`.

    The projector is the reference code's: ``Linear(no bias) → BatchNorm1d → ReLU`` for every hidden layer, then a
    last ``Linear(no bias)`` (``feat → 8192 → 8192 → 8192``). The reference model's final
    ``BatchNorm1d(affine=False)`` on ``z`` is not part of this module: it is the loss's standardisation (with
    global-batch statistics, as the reference's SyncBatchNorm computes them).

    Each view goes through the backbone and the projector as its own batch, as in the reference code
    (``projector(backbone(y1))``, then ``y2``): batch-norm statistics are per view.

    Args:
        backbone: the encoder trunk (exported after pretraining).
        projection_dims: hidden and output sizes of the projector after the backbone's feature size.
        zero_init_residual: zero the last BN of every residual block (:func:`zero_init_residual`) when the backbone
            carries no loaded weights (no ``load_report``; a backbone from ``pretrained_backbone`` with a weight spec
            keeps its weights).
    """

    def __init__(
        self,
        backbone: Backbone,
        projection_dims: Sequence[int] = (8192, 8192, 8192),
        zero_init_residual: bool = True,
    ):
        super().__init__()
        projection_dims = [int(d) for d in projection_dims]
        if not projection_dims:
            raise ValueError("BarlowTwins: projection_dims must list at least the output size, got []")
        self.backbone = backbone
        self.projector = MLPHead([backbone.feature_dim, *projection_dims], batch_norm=True, bias=False)
        self.zeroed_blocks = 0
        if zero_init_residual and getattr(backbone, "load_report", None) is None:
            self.zeroed_blocks = _zero_init_residual(backbone)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z1, z2)``: the projections of the two views, each view forwarded on its own."""
        return self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
