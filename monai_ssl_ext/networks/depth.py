"""Monocular depth network of SSL4GIE's ResNet-50 depth task (``Models/models.py``: ``ResNet_from_Any(dense=True)``
with ``ResNet_Dec_Level`` / ``ResNet_Dec_Block``; SPEC C.3), around any :class:`Backbone` whose last four feature
maps double in channels and halve in size (ResNets: ``layer1 .. layer4``, 256/512/1024/2048 for ResNet-50).

Decoder (written from the source's definition, generalised from ResNet-50's widths ``c1 .. c4`` to any such trunk):

* three levels, deepest first, for ``c = c3, c2, c1``: ``x = cat(up2(BN(conv1x1_{2c->c}(x_low))), x_high)``
  (``up2``: bilinear, ``align_corners=True``, to the skip's size), then three residual bottleneck blocks: the
  first fuses ``2c -> c`` (identity branch ``conv1x1 + BN``), the others keep ``c`` (identity); a block is
  ``relu(identity(x) + BN(conv1x1(relu(BN(conv3x3(relu(BN(conv1x1(x)))))))))`` with ``c // 4`` inner channels;
* head: ``up2 -> conv3x3(c1 -> c1 / 2) -> up2 -> conv3x3(c1 / 2 -> 32) -> ReLU -> conv1x1(32 -> 1) -> sigmoid``
  (the last ``up2`` goes to the input size), so the output is ``(B, 1, H, W)`` in (0, 1).

The ViT-B variant is :class:`~monai_ssl_ext.networks.dpt.ViTDPT` (the DPT decoder without batch norm, as the
source's ``dense="depth"``) with :class:`DPTDepthHead` (source ``DPT_decoder.output_conv`` for depth):
``conv3x3(c -> c / 2) -> bilinear x2 (align_corners=True) -> conv3x3(c / 2 -> 32) -> ReLU -> conv1x1(32 -> 1) ->
sigmoid``.

``frozen=True`` is the glossary's ``frozen``: the encoder gets no gradient (``requires_grad=False``, forward under
``no_grad``) and stays in eval mode (its BatchNorm statistics are not updated; the source's ``--frozen`` only used
``no_grad``, so its BatchNorm statistics still moved).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone
from .downstream import FinetuneNet

__all__ = ["BackboneDepthNet", "DPTDepthHead", "DepthDecoderBlock", "DepthDecoderLevel"]


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class DepthDecoderBlock(nn.Module):
    """Residual bottleneck block of the depth decoder; ``fusion`` takes ``2 * channels`` inputs."""

    def __init__(self, channels: int, fusion: bool = False):
        super().__init__()
        c_in = 2 * channels if fusion else channels
        inner = max(1, channels // 4)
        self.identity = (nn.Sequential(nn.Conv2d(c_in, channels, 1), nn.BatchNorm2d(channels)) if fusion
                         else nn.Identity())
        self.process = nn.Sequential(
            nn.Conv2d(c_in, inner, 1), nn.BatchNorm2d(inner), nn.ReLU(),
            nn.Conv2d(inner, inner, 3, padding=1), nn.BatchNorm2d(inner), nn.ReLU(),
            nn.Conv2d(inner, channels, 1), nn.BatchNorm2d(channels),
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.process(x) + self.identity(x))


class DepthDecoderLevel(nn.Module):
    """One decoder level: reduce the deeper map ``2c -> c``, upsample it to the skip, concatenate, ``n_blocks``."""

    def __init__(self, channels: int, n_blocks: int = 3):
        super().__init__()
        self.chan_reduce = nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.BatchNorm2d(channels))
        self.blocks = nn.Sequential(DepthDecoderBlock(channels, fusion=True),
                                    *[DepthDecoderBlock(channels) for _ in range(1, n_blocks)])

    def forward(self, x_low: torch.Tensor, x_high: torch.Tensor) -> torch.Tensor:
        x = torch.cat((_up(self.chan_reduce(x_low), x_high.shape[-2:]), x_high), 1)
        return self.blocks(x)


class BackboneDepthNet(FinetuneNet):
    """SSL4GIE's ResNet depth network (module docstring): ``sigmoid(head(decoder(backbone.feature_maps(x)[-4:])))``.

    Args:
        backbone: the encoder trunk (``network.encoder`` is what ``load_encoder`` fills), 2D.
        frozen: keep the encoder fixed (no gradient, eval mode).
        n_blocks: residual blocks per decoder level (3).
        probe_size: spatial size of the dummy input used once to read the feature-map channels.
    """

    def __init__(self, backbone: Backbone, frozen: bool = False, n_blocks: int = 3, probe_size: int = 64):
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise TypeError(f"BackboneDepthNet: backbone must be a monai_ssl_ext Backbone, "
                            f"got {type(backbone).__name__}")
        if backbone.spatial_dims != 2:
            raise ValueError(f"BackboneDepthNet: a 2D backbone is needed, got spatial_dims={backbone.spatial_dims}")
        self.backbone = backbone
        channels = self._feature_channels(backbone, probe_size)
        last = channels[-4:]
        if len(last) < 4 or any(last[i + 1] != 2 * last[i] for i in range(3)):
            raise ValueError(f"BackboneDepthNet: {backbone.arch} feature maps have channels {channels}; the depth "
                             "decoder needs four final maps whose channels double (a ResNet's layer1..layer4)")
        c1, c2, c3, _ = channels[-4:]
        self.decoder_levels = nn.ModuleList([DepthDecoderLevel(c, n_blocks) for c in (c3, c2, c1)])
        self.head_conv1 = nn.Conv2d(c1, c1 // 2, 3, padding=1)
        self.head_conv2 = nn.Conv2d(c1 // 2, 32, 3, padding=1)
        self.head_out = nn.Sequential(nn.ReLU(True), nn.Conv2d(32, 1, 1), nn.Sigmoid())
        self.frozen = bool(frozen)
        if self.frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    @staticmethod
    def _feature_channels(backbone: Backbone, size: int) -> list[int]:
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            maps = backbone.feature_maps(torch.zeros(1, backbone.in_channels, size, size))
        backbone.train(was_training)
        return [int(f.shape[1]) for f in maps]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four encoder maps the decoder reads (``layer1 .. layer4``)."""
        if self.frozen:
            with torch.no_grad():
                return list(self.backbone.feature_maps(x))[-4:]
        return list(self.backbone.feature_maps(x))[-4:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1, f2, f3, f4 = self.features(x)
        out = self.decoder_levels[0](f4, f3)
        out = self.decoder_levels[1](out, f2)
        out = self.decoder_levels[2](out, f1)
        out = self.head_conv1(_up(out, [2 * s for s in out.shape[-2:]]))
        out = self.head_conv2(_up(out, x.shape[-2:]))
        return self.head_out(out)


class DPTDepthHead(nn.Sequential):
    """SSL4GIE's DPT depth head on the fused ``in_channels`` map (module docstring): output ``(B, 1, 2h, 2w)`` in
    (0, 1)."""

    def __init__(self, in_channels: int = 256):
        c = int(in_channels)
        super().__init__(
            nn.Conv2d(c, c // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(c // 2, 32, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(32, 1, 1),
            nn.Sigmoid(),
        )
