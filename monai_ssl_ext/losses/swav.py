"""SwAV swapped-prediction loss and its Sinkhorn-Knopp codes.

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments", NeurIPS 2020
(https://arxiv.org/abs/2006.09882), as run by facebookresearch/swav (``main_swav.py``):

    codes (no gradient)   Q = sinkhorn(exp(C^T Z / eps)),  rows: prototypes (sum 1/K), columns: samples (sum 1/B)
    swapped prediction    L = 1/|A| sum_{s in A} 1/(V-1) sum_{v != s} -1/B sum_b sum_k q_s[b, k] log softmax(c_v[b] / tau)_k

``c_v = C^T z_v`` are the prototype scores of view ``v`` (unit embeddings against unit prototypes), ``A`` the views
whose codes are computed (``crops_for_assign``, the two global crops), ``V`` the number of views (global and local
crops). Sinkhorn runs on the scores of a crop, optionally after the scores of a feature queue (their codes are
dropped), across all ranks: the normalising sums are all-reduced, so ``W`` ranks of ``B`` rows give the codes of
one process on the ``W * B`` rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.distributed import get_world_size

__all__ = ["sinkhorn", "SwAVLoss"]


def _reduce(x: torch.Tensor, enabled: bool, maximum: bool = False) -> torch.Tensor:
    """``x`` summed (or maximised) over ranks in place when ``enabled`` and distributed."""
    if enabled and get_world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.MAX if maximum else dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3, gather_distributed: bool = True
             ) -> torch.Tensor:
    """Soft equipartitioned codes of ``scores`` (``B x K``) by ``iterations`` Sinkhorn-Knopp steps (SwAV, Alg. 1
    and ``distributed_sinkhorn``): ``Q = exp(scores / epsilon)^T / sum``, then alternately every prototype row is
    scaled to sum ``1/K`` and every sample column to ``1/B``; returns ``B * Q^T`` (each row sums to 1).

    ``B`` is the number of rows over all ranks: with ``gather_distributed`` and an initialised process group, the
    total, the row sums and the row count are all-reduced, so the ranks' rows are coded as one batch. Computed in
    float32 (or float64 for float64 input) after subtracting the global maximum score (a common factor of ``Q``,
    removed by the first normalisation), so ``epsilon`` 0.05 cannot overflow. No gradient.
    """
    if scores.ndim != 2 or min(scores.shape) < 1:
        raise ValueError(f"sinkhorn: expected scores of shape (B, K), got {tuple(scores.shape)}")
    if not epsilon > 0 or int(iterations) < 1:  # the last step of an iteration makes every code a distribution
        raise ValueError(f"sinkhorn: need epsilon > 0 and iterations >= 1, got {epsilon}, {iterations}")
    on = bool(gather_distributed)
    s = scores.detach().to(torch.float64 if scores.dtype == torch.float64 else torch.float32)
    q = torch.exp((s - _reduce(s.max().clone(), on, maximum=True)) / epsilon).T  # K x B
    k = q.shape[0]
    b = float(_reduce(torch.tensor(float(q.shape[1]), dtype=q.dtype, device=q.device), on))
    q /= _reduce(q.sum(), on)
    for _ in range(int(iterations)):
        q /= _reduce(q.sum(dim=1, keepdim=True), on)  # every prototype: total mass 1/K ...
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # ... every sample: mass 1/B
        q /= b
    return (q * b).T.to(scores.dtype)


class SwAVLoss(nn.Module):
    """SwAV's swapped-prediction loss (Caron et al. 2020); see the module docstring for the formulas.

    ``forward(scores, queue_scores=None)``: ``scores`` holds one ``B x K`` tensor of prototype scores per view
    (global crops first, as :class:`~monai_ssl_ext.transforms.MultiCropd` orders them); ``queue_scores`` one
    ``Q x K`` tensor per crop of ``crops_for_assign`` (the prototype scores of that crop's feature queue, prepended
    to the crop's scores for Sinkhorn and dropped after it) or None. Codes carry no gradient.

    Args:
        temperature: ``tau`` of the softmax over prototypes (0.1).
        epsilon: Sinkhorn's entropic regularisation (0.05).
        sinkhorn_iterations: Sinkhorn steps (3).
        crops_for_assign: views whose codes are predicted by the others (``(0, 1)``: the two global crops).
        gather_distributed: code the batch of all ranks at once (SwAV's ``distributed_sinkhorn``).
    """

    def __init__(self, temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iterations: int = 3,
                 crops_for_assign: Sequence[int] = (0, 1), gather_distributed: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.epsilon = float(temperature), float(epsilon)
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.crops_for_assign = [int(c) for c in crops_for_assign]
        if not self.crops_for_assign:
            raise ValueError("crops_for_assign must name at least one view")
        self.gather_distributed = gather_distributed

    def codes(self, scores: torch.Tensor, queue_scores: torch.Tensor | None = None) -> torch.Tensor:
        """Sinkhorn codes of ``scores`` (the queue's rows, if any, take part and are dropped)."""
        x = scores.detach()
        if queue_scores is not None:
            x = torch.cat([queue_scores.detach().to(x), x])
        return sinkhorn(x, self.epsilon, self.sinkhorn_iterations, self.gather_distributed)[-scores.shape[0]:]

    def forward(self, scores: Sequence[torch.Tensor], queue_scores: Sequence[torch.Tensor] | None = None
                ) -> torch.Tensor:
        scores = list(scores)
        n_views = len(scores)
        if n_views < 2 or max(self.crops_for_assign) >= n_views:
            raise ValueError(f"SwAVLoss: {n_views} views given, need >= 2 and views {self.crops_for_assign} "
                             "(crops_for_assign)")
        if queue_scores is not None and len(queue_scores) != len(self.crops_for_assign):
            raise ValueError(f"SwAVLoss: {len(queue_scores)} queue score tensors for crops_for_assign "
                             f"{self.crops_for_assign}")
        log_p = [F.log_softmax(s.to(torch.promote_types(s.dtype, torch.float32)) / self.temperature, dim=1) for s in scores]
        loss = scores[0].new_zeros((), dtype=torch.promote_types(scores[0].dtype, torch.float32))
        for i, crop in enumerate(self.crops_for_assign):
            q = self.codes(scores[crop], None if queue_scores is None else queue_scores[i]).to(log_p[0].dtype)
            sub = sum(-(q * log_p[v]).sum(dim=1).mean() for v in range(n_views) if v != crop)
            loss = loss + sub / (n_views - 1)
        return loss / len(self.crops_for_assign)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, epsilon={self.epsilon}, "
                f"sinkhorn_iterations={self.sinkhorn_iterations}, crops_for_assign={self.crops_for_assign}")
