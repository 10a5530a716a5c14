"""Build an encoder trunk by name: MONAI's FlexibleUNet encoders (2D/3D) or any timm model (2D).

Names
    * a name FlexibleUNet accepts (``efficientnet-b0`` … ``efficientnet-b8``, ``efficientnet-l2``,
      ``resnet10`` … ``resnet200``) builds MONAI's own encoder, the very module
      ``FlexibleUNet(backbone=name).encoder`` holds, so an exported trunk loads into FlexibleUNet
      key for key;
    * ``timm/<model-name>`` builds ``timm.create_model(<model-name>, num_classes=0)`` (2D only);
    * ``vit`` builds MONAI's ``ViT(classification=False)`` (2D/3D), the trunk of ``ViTAutoEnc`` and of
      ``UNETR.vit``; its size comes from keyword arguments (``img_size``, ``patch_size``,
      ``hidden_size``, ``mlp_dim``, ``num_layers``, ``num_heads``, ``proj_type``, ``qkv_bias``),
      stored in the encoder header as ``arch_params``.

Every trunk is wrapped in :class:`Backbone`: ``backbone(x)`` returns pooled features
``(B, feature_dim)`` for SSL heads, ``backbone.feature_maps(x)`` returns the per-stage feature maps,
and ``backbone.trunk`` is the module whose ``state_dict`` is exported as the encoder.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Backbone", "build_backbone", "freeze_unused_vit_norms", "monai_backbone_names"]

TIMM_PREFIX = "timm/"


def monai_backbone_names() -> list[str]:
    """Names of MONAI's FlexibleUNet encoders."""
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

    return sorted(FLEXUNET_BACKBONE.register_dict)


class Backbone(nn.Module):
    """A named encoder trunk with pooled features.

    Args:
        arch: the name it was built from (stored in the encoder header).
        trunk: the module whose state dict is the exported encoder.
        feature_dim: size of the pooled feature vector.
        spatial_dims: 2 or 3.
        in_channels: number of input channels.
        first_conv: state-dict key of the stem convolution (for input-channel conversion).
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
        self.arch_params = dict(arch_params or {})
        self.arch = arch
        self.trunk = trunk
        self.feature_dim = feature_dim
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.first_conv = first_conv

    @property
    def family(self) -> str:
        if self.arch.startswith(TIMM_PREFIX):
            return "timm"
        if self.arch == "vit":
            return "monai-vit"
        return "monai-efficientnet" if self.arch.startswith("efficientnet") else "monai-resnet"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, feature_dim)``."""
        if self.family == "timm":
            return self.trunk(x)
        if self.family == "monai-vit":
            return self.trunk(x)[0].mean(dim=1)  # mean of the patch tokens after the final norm
        if self.family == "monai-efficientnet":
            # EfficientNetBN's classification path (stem, blocks, conv head, pooling, dropout) with
            # the classifier removed: the 1280-d feature torchvision's efficientnet_b0 gives.
            from monai.networks.nets.efficientnet import EfficientNetBN

            return EfficientNetBN.forward(self.trunk, x)
        from monai.networks.nets.resnet import ResNet

        return ResNet.forward(self.trunk, x)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage feature maps (the list FlexibleUNet's decoder consumes for MONAI trunks)."""
        if self.family == "timm":
            return list(self.trunk.forward_intermediates(x, intermediates_only=True))
        if self.family == "monai-vit":
            tokens, hidden = self.trunk(x)  # hidden states of every block (UNETR's skips), then the output
            return [*hidden, tokens]
        return list(self.trunk(x))


def build_backbone(name: str, spatial_dims: int = 2, in_channels: int = 3, **arch_params) -> Backbone:
    """Build a :class:`Backbone` from a trunk name (see the module docstring); ``arch_params`` size
    the ``vit`` trunk and are not accepted for the others."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone: expected a trunk name, got {name!r}")
    if in_channels < 1:
        raise ValueError(f"backbone {name!r}: in_channels must be >= 1, got {in_channels}")
    if name == "vit":
        return _vit_backbone(spatial_dims, in_channels, **arch_params)
    if arch_params:
        raise ValueError(f"backbone {name!r} takes no architecture parameters, got {sorted(arch_params)}")
    if name.startswith(TIMM_PREFIX):
        return _timm_backbone(name, spatial_dims, in_channels)
    return _monai_backbone(name, spatial_dims, in_channels)


def freeze_unused_vit_norms(vit: nn.Module) -> list[str]:
    """MONAI's ``TransformerBlock`` always holds a ``norm_cross_attn`` LayerNorm that only cross
    attention uses; without cross attention it never gets a gradient, which makes
    ``DistributedDataParallel`` fail ("parameters that were not used"). Freeze those (they stay in
    the state dict and the export); returns the frozen parameter names."""
    frozen = []
    for name, block in vit.named_modules():
        if hasattr(block, "norm_cross_attn") and not getattr(block, "with_cross_attention", False):
            block.norm_cross_attn.requires_grad_(False)
            frozen += [f"{name}.norm_cross_attn.{p}" for p, _ in block.norm_cross_attn.named_parameters()]
    return frozen


VIT_DEFAULTS = {
    "img_size": 96, "patch_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12,
    "proj_type": "conv", "qkv_bias": False, "dropout_rate": 0.0,
}


def _vit_backbone(spatial_dims: int, in_channels: int, **arch_params) -> Backbone:
    from monai.networks.nets import ViT

    unknown = set(arch_params) - set(VIT_DEFAULTS)
    if unknown:
        raise ValueError(f"backbone 'vit': unknown parameters {sorted(unknown)}; known: {sorted(VIT_DEFAULTS)}")
    params = {**VIT_DEFAULTS, **arch_params}
    for key in ("img_size", "patch_size"):
        if isinstance(params[key], (list, tuple)):
            params[key] = [int(v) for v in params[key]]
    trunk = ViT(in_channels=in_channels, spatial_dims=spatial_dims, classification=False, **params)
    freeze_unused_vit_norms(trunk)
    return Backbone("vit", trunk, params["hidden_size"], spatial_dims, in_channels,
                    "patch_embedding.patch_embeddings.weight", arch_params=params)


def _monai_backbone(name: str, spatial_dims: int, in_channels: int) -> Backbone:
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

    entry = FLEXUNET_BACKBONE.register_dict.get(name)
    if entry is None:
        raise ValueError(
            f"unknown backbone {name!r}: use one of MONAI's FlexibleUNet encoders "
            f"({', '.join(monai_backbone_names())}) or 'timm/<model-name>'"
        )
    params = dict(entry["parameter"], spatial_dims=spatial_dims, in_channels=in_channels, pretrained=False)
    trunk = entry["type"](**params)
    if name.startswith("efficientnet"):
        trunk._fc = nn.Identity()  # classifier is not part of the trunk
        return Backbone(name, trunk, trunk._conv_head.out_channels, spatial_dims, in_channels, "_conv_stem.weight")
    feature_dim = entry["feature_channel"][-1]
    return Backbone(name, trunk, feature_dim, spatial_dims, in_channels, "conv1.weight")


def _timm_backbone(name: str, spatial_dims: int, in_channels: int, pretrained: bool = False) -> Backbone:
    import timm

    model_name = name[len(TIMM_PREFIX) :]
    if spatial_dims != 2:
        raise ValueError(f"backbone {name!r}: timm trunks are 2D only (spatial_dims={spatial_dims})")
    if not timm.is_model(model_name):
        raise ValueError(f"unknown backbone {name!r}: timm has no model named {model_name!r}")
    trunk = timm.create_model(model_name, pretrained=pretrained, num_classes=0, in_chans=in_channels)
    first_conv = trunk.pretrained_cfg.get("first_conv", "conv1")
    if isinstance(first_conv, (list, tuple)):
        first_conv = first_conv[0]
    return Backbone(name, trunk, trunk.num_features, 2, in_channels, f"{first_conv}.weight")
