"""Reconstruction + contrastive loss of the MONAI ViTAutoEnc self-supervised tutorial.

MONAI tutorials, ``self_supervised_pretraining/vit_unetr_ssl`` (``ssl_train.ipynb``,
``multi_gpu/mgpu_ssl_train.py``): Models Genesis-style corruptions (in-/out-painting, local pixel shuffling;
Zhou et al., MICCAI 2019) with SimCLR's NT-Xent (Chen et al., ICML 2020). Two corrupted views ``x1``, ``x2`` of the same
crop ``gt`` are reconstructed by the autoencoder; the "regularised" loss as executed in the source is

    r     = L1(recon_1, gt)                                    (mean absolute error)
    c     = NT-Xent_tau(flatten(recon_1), flatten(recon_2))    (SimCLR contrastive loss on the reconstructions)
    total = r + c * r

i.e. the contrastive term is weighted by the (non-detached) L1 value. ``tau = 0.05`` is the value every version of
the source code runs (its README says 0.005). MONAI's ``ContrastiveLoss`` computes ``exp(s / tau)`` and overflows to
NaN below ``tau ~ 0.0113`` in float32; :class:`~monai_ssl_ext.losses.NTXentLoss` is a masked cross-entropy and stays
finite at any temperature. With ``gather_distributed`` the negatives are the reconstructions of all ranks, and
``r`` and ``c`` are averaged over the ranks (with gradients) before the product, so every rank computes the
global-batch loss and DDP's averaged gradient is the single-process gradient of the global batch (the product of
per-rank means is not the product of global means: 0.1550 vs 0.1503 on a toy batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_with_grad, get_world_size
from .ntxent import NTXentLoss

__all__ = ["ReconContrastiveLoss", "ReconL1Loss"]


class ReconContrastiveLoss(nn.Module):
    """``L1(recon_1, gt) * (1 + NT-Xent_tau(flat recon_1, flat recon_2))`` (MONAI ViTAutoEnc SSL tutorial).

    Args:
        temperature: NT-Xent temperature; 0.05 as executed by the tutorial.
        gather_distributed: contrast against the reconstructions of all ranks when ``torch.distributed``
            is initialised (the source used the local batch only).
    """

    def __init__(self, temperature: float = 0.05, gather_distributed: bool = True) -> None:
        super().__init__()
        self.contrastive = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)
        self.gather_distributed = gather_distributed

    def forward(self, recon1: torch.Tensor, recon2: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """
        Args:
            recon1: reconstruction of the first view, ``(B, C, *spatial)``.
            recon2: reconstruction of the second view, same shape.
            gt: the uncorrupted crop, same shape.
        """
        if recon1.shape != recon2.shape or recon1.shape != gt.shape:
            raise ValueError(f"recon1, recon2 and gt must have the same shape, got {tuple(recon1.shape)}, "
                             f"{tuple(recon2.shape)}, {tuple(gt.shape)}.")
        r = F.l1_loss(recon1, gt)
        c = self.contrastive(recon1.flatten(1), recon2.flatten(1))
        if self.gather_distributed and get_world_size() > 1:  # global means (equal per-rank batches)
            r, c = (gather_with_grad(t.reshape(1)).mean() for t in (r, c))
        return r + c * r


class ReconL1Loss(nn.Module):
    """``L1(recon_1, gt)``: the tutorial's validation loss (model selection on reconstruction only).
    Takes the same ``(recon1, recon2, gt)`` as :class:`ReconContrastiveLoss`; ``recon2`` is ignored."""

    def forward(self, recon1: torch.Tensor, recon2: torch.Tensor | None, gt: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(recon1, gt)
