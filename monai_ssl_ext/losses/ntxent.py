"""NT-Xent loss of SimCLR.

Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020 (https://arxiv.org/abs/2002.05709), eq. (1):

    L = 1/(2N) * sum_i -log( exp(s_{i,i'} / tau) / sum_{k != i} exp(s_{i,k} / tau) )

over the 2N views ``[z0; z1]``, where ``s_{i,k}`` is the cosine similarity and ``i'`` is the other view of sample
``i``. The denominator contains the positive and the 2N-2 negatives, not the self-similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.distributed import gather_with_grad, get_rank, get_world_size

__all__ = ["NTXentLoss"]


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross-entropy (NT-Xent) of SimCLR (Chen et al. 2020).

    Computed as a cross-entropy over cosine-similarity logits ``s / tau`` with the self-similarity masked to ``-inf``,
    which is stable for small temperatures (``tau = 0.005`` is finite in float32, unlike ``exp(s / tau)``).

    With ``gather_distributed`` and an initialised process group of world size ``W > 1``, the local ``2B`` rows are
    scored against the global ``2BW`` columns gathered with :func:`~monai_ssl_ext.distributed.gather_with_grad`
    (positives and self-masks offset by ``rank * B``). The result is the mean over the local rows, so the mean over
    ranks equals the single-process loss on the concatenated batch and DDP's gradient averaging gives its gradient.
    All ranks must use the same batch size ``B``.

    Args:
        temperature: ``tau > 0``; SimCLR uses 0.1 for its large-batch ImageNet runs (0.5 for CIFAR-10).
        gather_distributed: use the negatives of all ranks when ``torch.distributed`` is initialised.
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """
        Args:
            z0: embeddings of the first views, shape ``(B, D)``.
            z1: embeddings of the second views, shape ``(B, D)``; row ``i`` is the positive of ``z0[i]``.

        Returns:
            the scalar loss, mean over the ``2B`` local views.
        """
        if z0.dim() != 2 or z0.shape != z1.shape or z0.shape[0] < 1:
            raise ValueError(f"z0 and z1 must both have the same shape (B, D) with B >= 1, got {tuple(z0.shape)} and "
                             f"{tuple(z1.shape)}.")
        b = z0.shape[0]
        views = F.normalize(torch.stack([z0, z1], dim=1), dim=-1)  # (B, 2, D)
        rank, world = (get_rank(), get_world_size()) if self.gather_distributed else (0, 1)
        everyone = gather_with_grad(views) if world > 1 else views  # (B * world, 2, D), rank order
        rows = torch.cat([views[:, 0], views[:, 1]])  # (2B, D)
        cols = torch.cat([everyone[:, 0], everyone[:, 1]])  # (2BW, D)
        logits = rows @ cols.T / self.temperature

        n = b * world
        idx = torch.arange(b, device=z0.device) + rank * b
        self_cols = torch.cat([idx, idx + n])
        positives = torch.cat([idx + n, idx])
        self_mask = F.one_hot(self_cols, num_classes=2 * n).bool()
        return F.cross_entropy(logits.masked_fill(self_mask, float("-inf")), positives)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
