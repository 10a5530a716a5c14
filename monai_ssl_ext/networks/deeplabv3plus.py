"""DeepLabV3+ (Chen et al., ECCV 2018) around a :class:`~monai_ssl_ext.networks.backbones.Backbone` trunk.

The construction of segmentation_models_pytorch's ``DeepLabV3Plus(encoder_name="resnet50", classes=1)`` that
SSL4GIE's polyp segmentation finetunes (SPEC C.3), written from its definition, with the encoder being a
``Backbone`` so that :func:`monai_ssl_ext.load_encoder` fills it from an exported ``encoder.pt`` (ResNet-50 trunks of
simclr_cholec, byol_acdc, mocov3_hyperkvasir, barlowtwins_hyperkvasir) or ``timm/resnet50`` ImageNet weights:

* encoder output stride 16 (smp's default): the last stage's convolutions get stride 1 and dilation 2 (smp's
  ``replace_strides_with_dilation``: every convolution of the stage, padding ``(k // 2) * 2``); no tensor changes,
  so the hand-off is unaffected. ``output_stride=32`` keeps the trunk as it is;
* ASPP on the deepest feature map: 1x1 conv, three 3x3 atrous (depthwise-separable) convs with rates (12, 24, 36)
  and image pooling, each -> BN -> ReLU with 256 channels, concatenated, 1x1 projection to 256 -> BN -> ReLU ->
  Dropout(0.5); then a separable 3x3 conv -> BN -> ReLU;
* upsampled (bilinear, align_corners=True as ``nn.UpsamplingBilinear2d``) to the stride-4 low-level feature map,
  whose 1x1 conv -> BN -> ReLU reduces it to 48 channels; concatenated, separable 3x3 conv (304 -> 256) -> BN -> ReLU;
* head: 1x1 conv to ``out_channels`` logits, bilinearly upsampled (align_corners=True) to the input size.

For inputs whose sides are multiples of 16 the upsampling sizes equal smp's fixed ``scale_factor=4`` steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import as_bool
from .backbones import Backbone
from .downstream import FinetuneNet

__all__ = ["ASPP", "DeepLabV3Plus", "DeepLabV3PlusDecoder", "SeparableConv2d", "dilate_last_stage"]


class SeparableConv2d(nn.Sequential):
    """Depthwise ``k x k`` conv (no bias) followed by a pointwise ``1 x 1`` conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1,
                 dilation: int = 1, bias: bool = False):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding, dilation=dilation, groups=in_channels,
                      bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=bias),
        )


def _conv_bn_relu(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU())


class _ImagePooling(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.block = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                   nn.BatchNorm2d(out_channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.block(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: five parallel branches concatenated and projected to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int = 256, atrous_rates: Sequence[int] = (12, 24, 36),
                 separable: bool = True, dropout: float = 0.5):
        super().__init__()
        rates = tuple(int(r) for r in atrous_rates)
        if len(rates) != 3:
            raise ValueError(f"ASPP: atrous_rates must be 3 rates, got {atrous_rates!r}")
        branches = [_conv_bn_relu(nn.Conv2d(in_channels, out_channels, 1, bias=False), out_channels)]
        for r in rates:
            conv = (SeparableConv2d(in_channels, out_channels, 3, padding=r, dilation=r) if separable
                    else nn.Conv2d(in_channels, out_channels, 3, padding=r, dilation=r, bias=False))
            branches.append(_conv_bn_relu(conv, out_channels))
        branches.append(_ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(nn.Conv2d(5 * out_channels, out_channels, 1, bias=False),
                                     nn.BatchNorm2d(out_channels), nn.ReLU(), nn.Dropout(float(dropout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the deep features, upsampled and fused with the reduced low-level features.

    ``forward(low, deep)`` -> ``(B, out_channels, *low.shape[-2:])``.
    """

    def __init__(self, low_channels: int, deep_channels: int, out_channels: int = 256,
                 atrous_rates: Sequence[int] = (12, 24, 36), aspp_separable: bool = True, aspp_dropout: float = 0.5,
                 low_out_channels: int = 48):
        super().__init__()
        self.aspp = nn.Sequential(
            ASPP(deep_channels, out_channels, atrous_rates, aspp_separable, aspp_dropout),
            SeparableConv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )
        self.low_level = _conv_bn_relu(nn.Conv2d(low_channels, low_out_channels, 1, bias=False), low_out_channels)
        self.fuse = _conv_bn_relu(SeparableConv2d(low_out_channels + out_channels, out_channels, 3, padding=1),
                                  out_channels)
        self.out_channels = out_channels

    def forward(self, low: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.aspp(deep), size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.fuse(torch.cat([x, self.low_level(low)], dim=1))


def _last_stage(trunk: nn.Module) -> nn.Module:
    info = getattr(trunk, "feature_info", None)
    name = None
    if info is not None:
        try:
            name = info.module_name(-1) if hasattr(info, "module_name") else info[-1]["module"]
        except (IndexError, KeyError, TypeError):
            name = None
    if name is None and hasattr(trunk, "layer4"):
        name = "layer4"
    if name is None:
        raise ValueError(f"DeepLabV3Plus: cannot find the last stage of a {type(trunk).__name__} trunk to dilate; "
                         "use output_stride=32")
    return trunk.get_submodule(name)


def dilate_last_stage(trunk: nn.Module, dilation: int = 2) -> nn.Module:
    """Turn the trunk's last stage from stride 2 into stride 1 with dilated convolutions (smp's
    ``replace_strides_with_dilation``): every ``Conv2d`` of the stage gets stride 1, dilation ``dilation`` and
    padding ``(k // 2) * dilation``; a strided pooling in the stage (the average-pool shortcut of timm's ``avg_down``
    ResNets) becomes a 1 x 1 pooling of stride 1. Tensors are unchanged. Returns the stage."""
    stage = _last_stage(trunk)
    for m in stage.modules():
        if isinstance(m, nn.Conv2d):
            m.stride = (1, 1)
            m.dilation = (dilation, dilation)
            kh, kw = m.kernel_size
            m.padding = ((kh // 2) * dilation, (kw // 2) * dilation)
        elif isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)) and m.stride not in (1, (1, 1)):
            # a strided pooling shortcut (timm "avg_down" ResNets: resnet10t, resnet50d): no downsampling at stride 1
            m.kernel_size, m.stride, m.padding = 1, 1, 0
    return stage


class DeepLabV3Plus(FinetuneNet):
    """DeepLabV3+ with a :class:`Backbone` encoder (``network.backbone`` / ``network.encoder`` is what
    ``load_encoder`` fills).

    Args:
        backbone: a 2D trunk with 5 feature maps at strides 2, 4, 8, 16, 32 (ResNets: ``timm/resnet50``,
            ``resnet50`` ...).
        out_channels: output logit channels (1 for binary polyp masks).
        output_stride: 16 (smp's default; last stage dilated) or 32 (trunk unchanged).
        decoder_channels, atrous_rates, aspp_separable, aspp_dropout: smp's defaults 256, (12, 24, 36), True, 0.5.
        frozen: keep the encoder fixed: no gradients (its forward runs under ``no_grad``) and eval mode (batch-norm
            statistics unchanged) even when the network is put in training mode; only the decoder and head train.

    Load pretrained weights into ``backbone`` *before* building the network (``load_encoder(backbone, spec)``; the
    bundle's ``backbone_def`` / ``encoder_report`` ids): with ``output_stride=16`` the last stage is dilated here,
    and ``load_encoder``'s layer check (strides, dilations) would rightly refuse the changed trunk afterwards.
    """

    def __init__(self, backbone: Backbone, out_channels: int = 1, output_stride: int = 16,
                 decoder_channels: int = 256, atrous_rates: Sequence[int] = (12, 24, 36),
                 aspp_separable: bool = True, aspp_dropout: float = 0.5, frozen: bool = False):
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise TypeError(f"DeepLabV3Plus: backbone must be a monai_ssl_ext Backbone, got {type(backbone).__name__}")
        if backbone.spatial_dims != 2:
            raise ValueError(f"DeepLabV3Plus: 2D trunks only, got spatial_dims={backbone.spatial_dims}")
        if int(output_stride) not in (16, 32):
            raise ValueError(f"DeepLabV3Plus: output_stride must be 16 or 32, got {output_stride}")
        self.backbone = backbone
        self.output_stride = int(output_stride)
        if self.output_stride == 16:
            dilate_last_stage(backbone.trunk, 2)
        channels, strides = self._probe(backbone)
        if len(channels) < 4 or 4 not in strides:
            raise ValueError(f"DeepLabV3Plus: {backbone.arch} gives feature maps at strides {strides}; a stride-4 "
                             "low-level map and a deeper one are needed (a CNN trunk such as a ResNet)")
        self.low_index = strides.index(4)
        self.decoder = DeepLabV3PlusDecoder(channels[self.low_index], channels[-1], decoder_channels, atrous_rates,
                                            aspp_separable, aspp_dropout)
        self.segmentation_head = nn.Conv2d(decoder_channels, int(out_channels), 1)
        self.frozen = as_bool(frozen, "frozen")  # `--frozen false` arrives as a string
        if self.frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    @staticmethod
    def _probe(backbone: Backbone, size: int = 64) -> tuple[list[int], list[int]]:
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            maps = backbone.feature_maps(torch.zeros(1, backbone.in_channels, size, size))
        backbone.train(was_training)
        return [int(f.shape[1]) for f in maps], [size // int(f.shape[-1]) for f in maps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                maps = self.backbone.feature_maps(x)
        else:
            maps = self.backbone.feature_maps(x)
        y = self.segmentation_head(self.decoder(maps[self.low_index], maps[-1]))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)
