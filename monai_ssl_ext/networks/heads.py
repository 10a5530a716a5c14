"""Projection and prediction heads (MLPs) for SSL wrappers."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["MLPHead"]


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
