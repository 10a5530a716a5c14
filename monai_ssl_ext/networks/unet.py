"""A U-Net around any :class:`Backbone`: MONAI FlexibleUNet's decoder and segmentation head on the
backbone's feature maps, so a pretrained trunk (MONAI or timm, as exported in ``encoder.pt``) is the
encoder itself — the construction of smp's ``Unet(encoder_name="tu-<timm model>")``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.flexible_unet import SegmentationHead, UNetDecoder
from torch import nn

from .backbones import Backbone

__all__ = ["BackboneUNet"]


class BackboneUNet(nn.Module):
    """U-Net with ``backbone.feature_maps`` as the encoder (up to 5 maps, each 2× smaller).

    Args:
        backbone: the encoder trunk (``network.backbone`` is what ``load_encoder`` fills).
        out_channels: number of output classes.
        decoder_channels: decoder widths, deepest first (FlexibleUNet's default).
        probe_size: spatial size of the dummy input used once to read the feature-map channels.
    """

    def __init__(
        self,
        backbone: Backbone,
        out_channels: int,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        probe_size: int = 64,
    ):
        super().__init__()
        self.backbone = backbone
        channels = self._feature_channels(backbone, probe_size)
        if not 2 <= len(channels) <= 5:
            raise ValueError(f"BackboneUNet: {backbone.arch} gives {len(channels)} feature maps, expected 2 to 5")
        decoder_channels = tuple(decoder_channels)[: len(channels)]
        self.skip_connect = len(channels) - 1
        self.decoder = UNetDecoder(
            spatial_dims=backbone.spatial_dims,
            encoder_channels=(backbone.in_channels, *channels),
            decoder_channels=decoder_channels,
            act=("relu", {"inplace": True}),
            norm=("batch", {"eps": 1e-3, "momentum": 0.1}),
            dropout=0.0,
            bias=False,
            upsample="nontrainable",
            pre_conv="default",
            interp_mode="nearest",
            align_corners=None,
            is_pad=True,
        )
        self.segmentation_head = SegmentationHead(
            spatial_dims=backbone.spatial_dims, in_channels=decoder_channels[-1], out_channels=out_channels,
            kernel_size=3, act=None,
        )

    @staticmethod
    def _feature_channels(backbone: Backbone, size: int) -> list[int]:
        was_training = backbone.training
        backbone.eval()
        x = torch.zeros(1, backbone.in_channels, *([size] * backbone.spatial_dims))
        with torch.no_grad():
            channels = [f.shape[1] for f in backbone.feature_maps(x)]
        backbone.train(was_training)
        return channels

    @property
    def encoder(self) -> Backbone:
        return self.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.decoder(self.backbone.feature_maps(x), self.skip_connect))
