"""Weight initialisations the SSL recipes start their trunks with."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["unit_init_residual", "zero_init_residual"]


def _last_norm_of_block(module: nn.Module) -> nn.Module | None:
    """The normalisation layer closing the residual branch of a MONAI or torchvision ResNet block, else None."""
    from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck

    if isinstance(module, ResNetBottleneck):
        return module.bn3
    if isinstance(module, ResNetBlock):
        return module.bn2
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck
    except ImportError:  # pragma: no cover - torchvision is installed with timm
        return None
    if isinstance(module, Bottleneck):
        return module.bn3
    if isinstance(module, BasicBlock):
        return module.bn2
    return None


@torch.no_grad()
def zero_init_residual(module: nn.Module) -> int:
    """Zero the weight (gamma) of the last normalisation layer of every residual block in ``module``, so each block
    starts as the identity (Goyal et al. 2017; torchvision's ``zero_init_residual=True``, which the Barlow Twins and MoCo v3
    reference code builds its ResNet-50 with).

    Handles timm blocks (their own ``zero_init_last()``; timm's ResNet already calls it at construction,
    ``zero_init_last=True`` by default, so this repeats it harmlessly), MONAI ``ResNetBlock`` / ``ResNetBottleneck``
    (2D and 3D; MONAI does not zero them) and torchvision ``BasicBlock`` / ``Bottleneck``. Returns the number of blocks
    zeroed (0 for a trunk without residual blocks, e.g. an EfficientNet or a ViT)."""
    count = 0
    for m in module.modules():
        if hasattr(m, "zero_init_last") and callable(m.zero_init_last):  # timm blocks
            m.zero_init_last()
            count += 1
            continue
        norm = _last_norm_of_block(m)
        if norm is not None and getattr(norm, "weight", None) is not None:
            nn.init.zeros_(norm.weight)
            count += 1
    return count


@torch.no_grad()
def unit_init_residual(module: nn.Module) -> int:
    """Set the weight (gamma) of the last normalisation layer of every residual block in ``module`` to 1, PyTorch's
    default BatchNorm initialisation: undoes timm's ``zero_init_last`` for recipes whose ResNet does not zero the
    residual branches (swav's ``resnet50(zero_init_residual=False)``, VISSL's default). Handles the blocks
    :func:`zero_init_residual` handles; returns the number of blocks set."""
    count = 0
    for m in module.modules():
        if hasattr(m, "zero_init_last") and callable(m.zero_init_last):  # timm blocks: bn3 (bottleneck) or bn2
            norm = getattr(m, "bn3", None) or getattr(m, "bn2", None)
        else:
            norm = _last_norm_of_block(m)
        if norm is not None and getattr(norm, "weight", None) is not None:
            nn.init.ones_(norm.weight)
            count += 1
    return count
