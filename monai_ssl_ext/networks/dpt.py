"""DPT decoder (Ranftl et al., ICCV 2021) for ViT trunks, as SSL4GIE's ``Models/DPT_decoder.py`` builds it for
polyp segmentation (``dense="seg"``) and depth (``dense="depth"``), written from that definition.

Public pieces (the depth bundle reuses the decoder with its own head):

* :func:`vit_token_maps` -- the patch tokens after chosen transformer blocks of a :class:`Backbone` ViT (timm or
  MONAI ``vit``), class/prefix tokens dropped ("ignore" readout), as ``(B, C, H/p, W/p)`` maps;
* :class:`DPTDecoder` -- four token maps in, one fused ``fusion_channels`` map out at 8x the token grid
  (``(B, 256, 112, 112)`` for 224 px and patch 16): *reassemble* each map with a 1x1 conv to 96 / 192 / 384 / 768
  channels and a resampling to 4x / 2x / 1x / 0.5x the grid (transposed conv k4 s4, transposed conv k2 s2,
  identity, 3x3 conv stride 2), a 3x3 conv (no bias) to ``fusion_channels``, then four RefineNet fusion blocks
  (residual conv units conv-BN-ReLU with batch norm when ``use_bn``, bilinear x2 upsampling with
  align_corners=True, 1x1 output conv), deepest first;
* :class:`DPTSegmentationHead` -- conv3x3 (no bias) -> BN -> ReLU -> Dropout(0.1) -> conv1x1 to ``out_channels``
  -> bilinear x2 (align_corners=True);
* :class:`ViTDPT` -- backbone + decoder + head; ``network.backbone`` is what ``load_encoder`` fills.

Differences from the source, all deliberate: the deepest fusion block has no first residual unit (the source builds
one and never calls it, so its parameters get no gradient and DDP needed ``find_unused_parameters=True``); each
fusion block upsamples to the size of the next skip map instead of a fixed x2, so token grids of odd size work
(identical for the 14 x 14 grid of 224 px).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import as_bool
from .backbones import Backbone
from .downstream import FinetuneNet

__all__ = ["DPTDecoder", "DPTSegmentationHead", "ViTDPT", "vit_token_maps"]


def _grid(tokens: torch.Tensor, image_hw: Sequence[int]) -> torch.Tensor:
    """``(B, N, C)`` patch tokens -> ``(B, C, gh, gw)`` for an input of ``image_hw``."""
    b, n, c = tokens.shape
    h, w = int(image_hw[0]), int(image_hw[1])
    p = math.sqrt(h * w / n)
    gh, gw = int(round(h / p)), int(round(w / p))
    if gh * gw != n:
        raise ValueError(f"vit_token_maps: {n} patch tokens do not form a grid for a {h} x {w} input")
    return tokens.transpose(1, 2).reshape(b, c, gh, gw)


def vit_token_maps(backbone: Backbone, x: torch.Tensor, blocks: Sequence[int] = (2, 5, 8, 11)) -> list[torch.Tensor]:
    """Patch tokens after transformer blocks ``blocks`` (0-based, before the final norm; prefix tokens dropped) of
    a ViT :class:`Backbone` (``timm/vit_*`` or MONAI ``vit``), as ``(B, C, H/p, W/p)`` maps."""
    blocks = [int(b) for b in blocks]
    trunk = backbone.trunk
    n_blocks = len(getattr(trunk, "blocks", []))
    if not n_blocks or min(blocks) < 0 or max(blocks) >= n_blocks:
        raise ValueError(f"vit_token_maps: blocks {blocks} do not exist in {backbone.arch} ({n_blocks} blocks)")
    if hasattr(trunk, "forward_intermediates"):  # timm
        return list(trunk.forward_intermediates(x, indices=blocks, norm=False, output_fmt="NCHW",
                                                intermediates_only=True))
    maps = backbone.feature_maps(x)  # MONAI ViT: every block's patch tokens, then the normed output
    return [_grid(maps[i], x.shape[-2:]) for i in blocks]


class _ResidualConvUnit(nn.Module):
    def __init__(self, channels: int, use_bn: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=not use_bn)
        self.bn1 = nn.BatchNorm2d(channels) if use_bn else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=not use_bn)
        self.bn2 = nn.BatchNorm2d(channels) if use_bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(F.relu(x)))
        out = self.bn2(self.conv2(F.relu(out)))
        return out + x


class _FusionBlock(nn.Module):
    """``out_conv(upsample(rcu2(x + rcu1(skip))))``; without ``skip`` (the deepest block) there is no ``rcu1``."""

    def __init__(self, channels: int, use_bn: bool, with_skip: bool):
        super().__init__()
        self.rcu1 = _ResidualConvUnit(channels, use_bn) if with_skip else None
        self.rcu2 = _ResidualConvUnit(channels, use_bn)
        self.out_conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            x = x + self.rcu1(skip)
        x = self.rcu2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTDecoder(nn.Module):
    """Reassemble four ViT token maps and fuse them (see the module docstring).

    Args:
        in_channels: ViT width (768 for ViT-B).
        reassemble_channels: channels of the four reassembled maps (shallowest first).
        fusion_channels: channels of the fusion path and of the output.
        use_bn: batch norm in the residual units (segmentation: True; the source's depth head: False).

    ``forward(maps)``: four ``(B, in_channels, gh, gw)`` maps, shallowest first -> ``(B, fusion_channels, 8 gh,
    8 gw)``.
    """

    def __init__(self, in_channels: int = 768, reassemble_channels: Sequence[int] = (96, 192, 384, 768),
                 fusion_channels: int = 256, use_bn: bool = True):
        super().__init__()
        c = [int(v) for v in reassemble_channels]
        if len(c) != 4:
            raise ValueError(f"DPTDecoder: reassemble_channels must be 4 widths, got {reassemble_channels!r}")
        self.reassemble = nn.ModuleList([
            nn.Sequential(nn.Conv2d(in_channels, c[0], 1), nn.ConvTranspose2d(c[0], c[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(in_channels, c[1], 1), nn.ConvTranspose2d(c[1], c[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(in_channels, c[2], 1)),
            nn.Sequential(nn.Conv2d(in_channels, c[3], 1), nn.Conv2d(c[3], c[3], 3, stride=2, padding=1)),
        ])
        self.project = nn.ModuleList([nn.Conv2d(ci, fusion_channels, 3, padding=1, bias=False) for ci in c])
        self.fusion = nn.ModuleList([_FusionBlock(fusion_channels, use_bn, with_skip=i < 3) for i in range(4)])
        self.out_channels = int(fusion_channels)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(maps) != 4:
            raise ValueError(f"DPTDecoder: expected 4 token maps, got {len(maps)}")
        layers = [proj(re(m)) for m, re, proj in zip(maps, self.reassemble, self.project)]
        path = self.fusion[3](layers[3], size=layers[2].shape[-2:])
        path = self.fusion[2](path, layers[2], size=layers[1].shape[-2:])
        path = self.fusion[1](path, layers[1], size=layers[0].shape[-2:])
        return self.fusion[0](path, layers[0])


class DPTSegmentationHead(nn.Sequential):
    """conv3x3 (no bias) -> BN -> ReLU -> Dropout(0.1) -> conv1x1 -> bilinear x2 (align_corners=True)."""

    def __init__(self, in_channels: int = 256, out_channels: int = 1, dropout: float = 0.1):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Dropout(float(dropout)),
            nn.Conv2d(in_channels, out_channels, 1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        )


class ViTDPT(FinetuneNet):
    """A ViT :class:`Backbone` with a :class:`DPTDecoder` and a head (SSL4GIE's ViT-B segmentation model).

    Args:
        backbone: ``timm/vit_*`` or MONAI ``vit`` trunk (``network.backbone`` is what ``load_encoder`` fills).
        out_channels: logit channels of the default :class:`DPTSegmentationHead`.
        blocks: the four transformer blocks whose tokens are decoded (ViT-B: 2, 5, 8, 11).
        reassemble_channels, use_bn: as :class:`DPTDecoder`.
        decoder_channels: the decoder's ``fusion_channels`` (256), the name DeepLabV3Plus uses for its width.
        head: another head on the fused map (e.g. a depth head); default the segmentation head.
        frozen: keep the encoder fixed (no gradients, forward under ``no_grad``, eval mode).

    Trunk tensors that no forward uses (the final norm, blocks after the last decoded one) get
    ``requires_grad=False`` (listed in ``network.unused``).

    The output is resized (bilinear, align_corners=True) to the input size when the head's does not match it.
    """

    def __init__(self, backbone: Backbone, out_channels: int = 1, blocks: Sequence[int] = (2, 5, 8, 11),
                 reassemble_channels: Sequence[int] = (96, 192, 384, 768), decoder_channels: int = 256,
                 use_bn: bool = True, head: nn.Module | None = None, frozen: bool = False):
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise TypeError(f"ViTDPT: backbone must be a monai_ssl_ext Backbone, got {type(backbone).__name__}")
        self.backbone = backbone
        self.blocks = tuple(int(b) for b in blocks)
        if len(self.blocks) != 4:
            raise ValueError(f"ViTDPT: blocks must be 4 block indices, got {blocks!r}")
        self.decoder = DPTDecoder(backbone.feature_dim, reassemble_channels, decoder_channels, use_bn)
        self.head = head if head is not None else DPTSegmentationHead(decoder_channels, int(out_channels))
        self.unused = self._freeze_unused()
        self.frozen = as_bool(frozen, "frozen")  # `--frozen false` arrives as a string
        if self.frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def _freeze_unused(self) -> list[str]:
        """``requires_grad=False`` on the trunk tensors no forward of this network uses (the final norm, blocks after
        the last decoded one), so DDP needs no ``find_unused_parameters``; they stay in the state dict."""
        trunk = self.backbone.trunk
        names = []
        for name, p in trunk.named_parameters():
            parts = name.split(".")
            after_last = parts[0] == "blocks" and parts[1].isdigit() and int(parts[1]) > max(self.blocks)
            if after_last or parts[0] in ("norm", "fc_norm", "head") or "norm_cross_attn" in parts:
                p.requires_grad_(False)
                names.append(name)
        return names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                maps = vit_token_maps(self.backbone, x, self.blocks)
        else:
            maps = vit_token_maps(self.backbone, x, self.blocks)
        y = self.head(self.decoder(maps))
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return y
