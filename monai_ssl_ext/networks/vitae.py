"""ViTAutoEnc as an SSL wrapper around a ``vit`` :class:`Backbone` (MONAI ViTAutoEnc SSL tutorial).

MONAI's ``ViTAutoEnc`` is ``ViT(classification=False)`` (patch embedding, transformer blocks, final norm) plus a
decoder: the tokens are put back on the patch grid and upsampled by two transposed convolutions with kernel = stride
= ``sqrt(patch_size)`` per axis (16 → 4 × 4), ``hidden → deconv_chns → out_channels``. Here the trunk is the
backbone's ``ViT`` (exported as ``encoder.pt``, loadable into ``UNETR.vit`` key for key) and the decoder keeps
ViTAutoEnc's tensor names ``conv3d_transpose`` / ``conv3d_transpose_1``, so a ViTAutoEnc state dict maps onto this
module by prefixing the trunk keys with ``backbone.trunk.``.
"""

from __future__ import annotations

import math

import torch
from monai.networks.layers import Conv
from torch import nn

from .backbones import Backbone, freeze_unused_vit_norms

__all__ = ["ViTAutoEncoderSSL"]


class ViTAutoEncoderSSL(nn.Module):
    """ViTAutoEnc reconstruction network for in-/out-painting SSL.

    Args:
        backbone: a ``vit`` backbone (``build_backbone("vit", ...)``); its ``arch_params`` give the patch size.
        out_channels: channels of the reconstruction.
        deconv_chns: channels between the two transposed convolutions (ViTAutoEnc default 16).

    ``forward(x1, x2, gt)`` returns ``(recon(x1), recon(x2), gt)`` for :class:`~monai_ssl_ext.losses.ReconContrastiveLoss`
    (``SSLTrainer(view_keys=["image", "image_2", "gt_image"])``).
    """

    def __init__(self, backbone: Backbone, out_channels: int = 1, deconv_chns: int = 16):
        super().__init__()
        if not isinstance(backbone, Backbone) or backbone.family != "monai-vit":
            raise TypeError(f"ViTAutoEncoderSSL needs a 'vit' Backbone, got {getattr(backbone, 'arch', type(backbone).__name__)!r}")
        dims = backbone.spatial_dims
        patch = backbone.arch_params.get("patch_size", 16)
        patch = tuple(int(p) for p in patch) if isinstance(patch, (list, tuple)) else (int(patch),) * dims
        if len(patch) != dims:
            raise ValueError(f"ViTAutoEncoderSSL: patch_size {patch} does not have {dims} dimensions")
        up = [math.isqrt(p) for p in patch]
        if any(u * u != p for u, p in zip(up, patch)):
            raise ValueError(f"ViTAutoEncoderSSL: patch_size must be a square number per axis (upsampled by two "
                             f"transposed convolutions of stride sqrt(patch)), got {patch}")
        self.backbone = backbone
        self.patch_size = patch
        freeze_unused_vit_norms(backbone.trunk)  # DDP-safe without find_unused_parameters
        conv_trans = Conv[Conv.CONVTRANS, dims]
        hidden = backbone.feature_dim
        self.conv3d_transpose = conv_trans(hidden, deconv_chns, kernel_size=up, stride=up)
        self.conv3d_transpose_1 = conv_trans(deconv_chns, out_channels, kernel_size=up, stride=up)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` ``(B, C, *spatial)``, same spatial size (each divisible by the patch size)."""
        spatial = x.shape[2:]
        if any(s % p for s, p in zip(spatial, self.patch_size)):
            raise ValueError(f"ViTAutoEncoderSSL: input size {tuple(spatial)} is not divisible by patch {self.patch_size}")
        tokens, _ = self.backbone.trunk(x)  # (B, N, hidden) after the final norm
        grid = [s // p for s, p in zip(spatial, self.patch_size)]
        y = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
        return self.conv3d_transpose_1(self.conv3d_transpose(y))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.reconstruct(x1), self.reconstruct(x2), gt
