"""Build an encoder trunk by name; every kind of trunk is a family in :mod:`.families`.

Names (see :mod:`.families` for the registry and how to add a family)
    * a name FlexibleUNet accepts (``efficientnet-b0`` … ``efficientnet-b8``, ``efficientnet-l2``,
      ``resnet10`` … ``resnet200``) builds MONAI's own encoder, the very module
      ``FlexibleUNet(backbone=name).encoder`` holds, so an exported trunk loads into FlexibleUNet
      key for key;
    * ``timm/<model-name>`` builds ``timm.create_model(<model-name>, num_classes=0)`` (2D only);
    * ``vit`` builds MONAI's ``ViT`` without a head (2D/3D), the trunk of ``ViTAutoEnc`` and of
      ``UNETR.vit``; its size comes from keyword arguments (``img_size``, ``patch_size``,
      ``hidden_size``, ``mlp_dim``, ``num_layers``, ``num_heads``, ``proj_type``, ``qkv_bias``,
      ``pos_embed_type``, ``cls_token``, ``layer_norm_eps``), stored in the encoder header as ``arch_params``.

Every trunk is wrapped in :class:`Backbone`: ``backbone(x)`` returns pooled features
``(B, feature_dim)`` for SSL heads, ``backbone.feature_maps(x)`` returns the per-stage feature maps,
and ``backbone.trunk`` is the module whose ``state_dict`` is exported as the encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from .families import (  # noqa: F401  (TIMM_PREFIX, VIT_DEFAULTS: re-exported for older imports)
    TIMM_PREFIX,
    VIT_DEFAULTS,
    TrunkFamily,
    family_of_arch,
    family_of_module,
    first_conv_key,
    freeze_unused_vit_norms,
    get_family,
    known_arch_names,
    monai_backbone_names,
    plain_arch_params,
)

__all__ = ["Backbone", "build_backbone", "freeze_unused_vit_norms", "monai_backbone_names", "trunk_family"]


class Backbone(nn.Module):
    """A named encoder trunk with pooled features.

    Args:
        arch: the name it was built from (stored in the encoder header); it decides the family.
        trunk: the module whose state dict is the exported encoder.
        feature_dim: size of the pooled feature vector.
        spatial_dims: 2 or 3.
        in_channels: number of input channels.
        first_conv: state-dict key of the stem convolution (for input-channel conversion).
        arch_params: the architecture parameters it was built with (ViT sizes).
    """

    def __init__(
        self,
        arch: str,
        trunk: nn.Module,
        feature_dim: int,
        spatial_dims: int,
        in_channels: int,
        first_conv: str,
        arch_params: dict | None = None,
    ):
        super().__init__()
        family = family_of_arch(arch)
        if family is None:
            raise ValueError(f"Backbone: no trunk family builds arch {arch!r} (known: {known_arch_names()})")
        self._family_name = family.name
        self.arch_params = dict(arch_params or {})
        self.arch = arch
        self.trunk = trunk
        self.feature_dim = feature_dim
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.first_conv = first_conv

    @property
    def family(self) -> str:
        """Name of the trunk's family (``monai-efficientnet``, ``monai-resnet``, ``monai-vit``, ``timm`` ...)."""
        return self._family_name

    @property
    def family_entry(self) -> TrunkFamily:
        return get_family(self._family_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, feature_dim)``."""
        return self.family_entry.pool(self.trunk, x)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage feature maps (the list FlexibleUNet's decoder consumes for MONAI trunks)."""
        return list(self.family_entry.feature_maps(self.trunk, x))


def trunk_family(target: nn.Module) -> TrunkFamily | None:
    """The family of a :class:`Backbone` (by its arch) or of a bare downstream module (by what the
    registry recognises); None when no family does."""
    if isinstance(target, Backbone):
        return family_of_arch(target.arch)
    return family_of_module(target)


def build_backbone(name: str, spatial_dims: int = 2, in_channels: int = 3, **arch_params) -> Backbone:
    """Build a :class:`Backbone` from a trunk name (see the module docstring); ``arch_params`` size
    the trunks whose family takes them (``vit``) and are refused for the others."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone: expected a trunk name, got {name!r}")
    if in_channels < 1:
        raise ValueError(f"backbone {name!r}: in_channels must be >= 1, got {in_channels}")
    family = family_of_arch(name)
    if family is None:
        raise ValueError(f"unknown backbone {name!r}: use one of {known_arch_names()}")
    if spatial_dims not in family.spatial_dims:
        dims = " or ".join(f"{d}D" for d in family.spatial_dims)
        raise ValueError(f"backbone {name!r}: {family.name} trunks are {dims} only (spatial_dims={spatial_dims})")
    if family.arch_params is None:
        if arch_params:
            raise ValueError(f"backbone {name!r} takes no architecture parameters, got {sorted(arch_params)}")
        params = {}
    else:
        unknown = set(arch_params) - set(family.arch_params)
        if unknown:
            raise ValueError(
                f"backbone {name!r}: unknown parameters {sorted(unknown)}; known: {sorted(family.arch_params)}"
            )
        params = plain_arch_params({**family.arch_params, **arch_params})
    trunk = family.build(name, spatial_dims, in_channels, **params)
    return Backbone(name, trunk, family.feature_dim(trunk), spatial_dims, in_channels,
                    first_conv_key(family, trunk), arch_params=params)
