"""DeepCluster-v2 loss.

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments", NeurIPS 2020
(https://arxiv.org/abs/2006.09882), Sec. 4 / App. "DeepCluster-v2", as run by facebookresearch/swav
(``main_deepclusterv2.py``):

    L = 1/H sum_h  -1/|V B| sum_{v, b : a_h[b] != ignore} log softmax(c_{h,v}[b] / tau)[a_h[b]]

``c_{h,v} = P_h^T z_v`` are the scores of view ``v`` against head ``h``'s prototypes (the centroids of that head's
spherical k-means over the memory bank, recomputed every epoch), ``a_h[b]`` the cluster of sample ``b`` in head
``h`` (the same target for every view of the sample), ``tau`` the temperature. Samples without an assignment yet
(``ignore_index``) do not count. The assignments come from the clustering, never from this batch: no gradient flows
into them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DeepClusterV2Loss"]


class DeepClusterV2Loss(nn.Module):
    """Cross-entropy of every view's prototype scores against the sample's cluster, averaged over heads (see the
    module docstring).

    ``forward(scores, assignments)``: ``scores`` holds one ``(V * B) x K_h`` tensor per head (the ``V`` views of
    the batch one after the other, as the wrapper concatenates them), ``assignments`` is ``H x B`` (int64).

    Args:
        temperature: ``tau`` (0.1).
        ignore_index: the assignment of samples not clustered yet (-100, ``cross_entropy``'s default, as the
            official code).
    """

    def __init__(self, temperature: float = 0.1, ignore_index: int = -100) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.ignore_index = float(temperature), int(ignore_index)

    def forward(self, scores: Sequence[torch.Tensor], assignments: torch.Tensor) -> torch.Tensor:
        scores = list(scores)
        if assignments.ndim != 2 or assignments.shape[0] != len(scores):
            raise ValueError(f"DeepClusterV2Loss: {len(scores)} heads of scores but assignments of shape "
                             f"{tuple(assignments.shape)} (expected (heads, batch))")
        batch = assignments.shape[1]
        loss = scores[0].new_zeros((), dtype=torch.promote_types(scores[0].dtype, torch.float32))
        for s, a in zip(scores, assignments):
            if s.ndim != 2 or s.shape[0] % batch:
                raise ValueError(f"DeepClusterV2Loss: scores of shape {tuple(s.shape)} are not views x {batch} rows")
            targets = a.to(s.device).repeat(s.shape[0] // batch)
            if not bool((targets != self.ignore_index).any()):  # nothing clustered yet: no signal (not NaN)
                loss = loss + 0.0 * s.sum()
                continue
            logits = s.to(torch.promote_types(s.dtype, torch.float32)) / self.temperature
            loss = loss + F.cross_entropy(logits, targets, ignore_index=self.ignore_index)
        return loss / len(scores)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, ignore_index={self.ignore_index}"
