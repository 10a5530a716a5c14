"""Barlow Twins redundancy-reduction loss.

Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction", ICML 2021
(https://arxiv.org/abs/2103.03230), eqs. (1)-(2), with the standardisation of the reference code
(facebookresearch/barlowtwins ``main.py``: ``BatchNorm1d(affine=False)`` in train mode, synchronised across GPUs):

    zhat_v[:, i] = (z_v[:, i] - mean_i) / sqrt(var_i + eps)        mean, biased variance over the N samples, v = a, b
    C_ij         = (1/N) sum_n zhat_a[n, i] * zhat_b[n, j]
    L            = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2

over the *global* batch of N samples. In one process this is lightly's ``BarlowTwinsLoss(lambda_param=lambd)``; it
is *not* MONAI's ``BarlowTwinsLoss``, which divides by the unbiased standard deviation plus 1e-6 (outside the square
root) and defaults to lambda 5e-3: every entry of C shrinks by about (N - 1) / N, and at N = 32 the losses differ by about
10-23% depending on the data.
"""

from __future__ import annotations

import torch
from torch import nn

from monai_ssl_ext.distributed import all_reduce_sum_with_grad, get_world_size

__all__ = ["BarlowTwinsCrossCorrelationLoss"]


class BarlowTwinsCrossCorrelationLoss(nn.Module):
    """Barlow Twins loss (Zbontar et al. 2021) on the cross-correlation of two standardised embeddings.

    **Across ranks** (``gather_distributed`` and a process group of world size ``W > 1``): the per-feature sums
    ``sum z`` and ``sum (z - mean)^2`` and the matrix ``sum zhat_a^T zhat_b`` are summed over ranks with
    :func:`~monai_ssl_ext.distributed.all_reduce_sum_with_grad` and divided by the global batch ``N = W * B``, so the
    mean, the variance and ``C`` are those of the global batch, exactly as one process would compute them on the
    concatenated ``W * B`` samples (the reference code gets the same statistics from a SyncBatchNorm and an
    all-reduce of ``C``). Per-rank standardisation (lightly's ``gather_distributed``) averages matrices standardised
    with each rank's own statistics, a different number.

    **Loss value and DDP.** Every rank returns the same full loss ``L`` of the global batch. The all-reduces pass
    gradients back as an all-reduce, so each rank's local gradient is that of ``sum_r L_r = W * L`` with respect to
    its own samples; DDP averages those over the ``W`` ranks, which gives exactly ``dL/dtheta``, the single-process
    gradient on the global batch. (The reference code all-reduces ``C`` with the non-differentiable in-place
    ``all_reduce``: its DDP gradient is ``dL/dtheta / W``; facebookresearch/barlowtwins#8, lightly#1977.)
    All ranks must use the same batch size ``B``. Communication per step: two all-reduces of ``(2, D)`` sums and one
    of the ``(D, D)`` matrix, each again in the backward pass (the reference all-reduces the same matrix).

    The statistics and ``C`` are computed in float32 (float64 inputs stay float64) with autocast off: under AMP the
    8192 x 8192 correlation sums would otherwise run in half precision.

    Args:
        lambd: weight ``lambda`` of the off-diagonal (redundancy) term; 0.0051 in the reference code (the paper
            states 5e-3; lightly and MONAI default to 5e-3).
        eps: added to the variance inside the square root (BatchNorm1d's 1e-5).
        gather_distributed: global-batch statistics when ``torch.distributed`` is initialised; ``False`` computes
            everything on the local batch (per-rank loss, DDP then averages the per-rank gradients).
    """

    def __init__(self, lambd: float = 0.0051, eps: float = 1e-5, gather_distributed: bool = True) -> None:
        super().__init__()
        if not lambd >= 0:
            raise ValueError(f"lambd must be >= 0, got {lambd}.")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}.")
        self.lambd = float(lambd)
        self.eps = float(eps)
        self.gather_distributed = gather_distributed

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """
        Args:
            z_a: projections of the first views, shape ``(B, D)``.
            z_b: projections of the second views, shape ``(B, D)``; row ``n`` is the other view of ``z_a[n]``.

        Returns:
            the scalar loss of the global batch (the same value on every rank).
        """
        if z_a.dim() != 2 or z_a.shape != z_b.shape or z_a.shape[0] < 1:
            raise ValueError(f"z_a and z_b must both have the same shape (B, D) with B >= 1, got {tuple(z_a.shape)} "
                             f"and {tuple(z_b.shape)}.")
        world = get_world_size() if self.gather_distributed else 1
        n = z_a.shape[0] * world  # equal batch sizes per rank (checked by the all-reduce)
        if n < 2:
            raise ValueError(f"the Barlow Twins loss needs a (global) batch of at least 2 samples, got {n}.")
        reduce = all_reduce_sum_with_grad if world > 1 else _identity
        dtype = torch.promote_types(z_a.dtype, torch.float32)
        with torch.autocast(device_type=z_a.device.type, enabled=False):
            z = torch.stack([z_a, z_b]).to(dtype)  # (2, B, D)
            centred = z - reduce(z.sum(1)).unsqueeze(1) / n
            var = reduce(centred.pow(2).sum(1)).unsqueeze(1) / n  # biased, as batch norm in train mode
            zhat = centred / torch.sqrt(var + self.eps)
            c = reduce(zhat[0].T @ zhat[1]) / n  # (D, D)
            diag = torch.diagonal(c)
            on_diag = (1 - diag).pow(2).sum()
            off_diag = c.pow(2).sum() - diag.pow(2).sum()
            return on_diag + self.lambd * off_diag

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}, eps={self.eps}, gather_distributed={self.gather_distributed}"


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
