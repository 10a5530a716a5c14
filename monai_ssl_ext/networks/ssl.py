"""SSL model wrappers: a backbone plus heads; ``forward`` takes the views and returns what the
method's loss takes, so the SSL trainer stays method-agnostic."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .backbones import Backbone
from .heads import MLPHead

__all__ = ["SimCLR"]


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
