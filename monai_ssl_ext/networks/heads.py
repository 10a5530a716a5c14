"""Projection and prediction heads (MLPs) for SSL wrappers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLPHead", "Prototypes"]


class MLPHead(nn.Sequential):
    """``Linear → [BN] → ReLU → … → Linear [→ BN]``.

    Args:
        dims: layer sizes including input and output, e.g. ``[512, 512, 128]`` is SimCLR's
            ``Linear(512, 512) → ReLU → Linear(512, 128)``.
        batch_norm: BatchNorm1d after every hidden Linear (BYOL / MoCo v3 / Barlow Twins style).
        last_batch_norm: BatchNorm1d without affine after the last Linear (MoCo v3, Barlow Twins).
        bias: bias in the Linear layers (off when followed by BN in the MoCo v3 recipe).
        dropout: dropout before the first Linear (torchvision EfficientNet keeps Dropout(0.2) there).
    """

    def __init__(
        self,
        dims: Sequence[int],
        batch_norm: bool = False,
        last_batch_norm: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
    ):
        dims = [int(d) for d in dims]
        if len(dims) < 2:
            raise ValueError(f"MLPHead needs at least input and output sizes, got {dims}")
        layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            layers.append(nn.Linear(d_in, d_out, bias=bias))
            if not last:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.ReLU(inplace=True))
            elif last_batch_norm:
                layers.append(nn.BatchNorm1d(d_out, affine=False))
        super().__init__(*layers)


class Prototypes(nn.Module):
    """Prototype vectors: one or several bias-free ``Linear(dim, K_h)`` heads whose rows are the prototypes, so
    ``head(z)`` scores unit embeddings ``z`` against them (SwAV's ``prototypes``, DeepCluster-v2's and the joint
    method's ``MultiPrototypes``).

    ``forward(z)`` returns the ``B x K`` scores for one head (``n_prototypes`` an int) or the list of every
    head's scores (a sequence). State-dict keys: ``heads.<h>.weight`` (``K_h x dim``).
    """

    def __init__(self, dim: int, n_prototypes: int | Sequence[int]):
        super().__init__()
        self.multi = not isinstance(n_prototypes, int)
        ks = [int(k) for k in n_prototypes] if self.multi else [int(n_prototypes)]
        if not ks or min(ks) < 1 or int(dim) < 1:
            raise ValueError(f"Prototypes: need dim >= 1 and at least one head of >= 1 prototypes, got {dim}, {n_prototypes}")
        self.n_prototypes = ks
        self.heads = nn.ModuleList(nn.Linear(int(dim), k, bias=False) for k in ks)

    def forward(self, z: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        scores = [head(z) for head in self.heads]
        return scores if self.multi else scores[0]

    @torch.no_grad()
    def normalize_(self) -> None:
        """Scale every prototype to unit length in place (SwAV does it before every training iteration)."""
        for head in self.heads:
            head.weight.copy_(F.normalize(head.weight, dim=1))
