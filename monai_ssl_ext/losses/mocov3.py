"""MoCo v3 contrastive loss.

Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021
(https://arxiv.org/abs/2104.02057), Algorithm 1, as run by facebookresearch/moco-v3 (``moco/builder.py``,
``MoCo.contrastive_loss``):

    ctr(q, k) = 2 * tau * CE( normalize(q) · normalize(k_all)^T / tau,  labels = arange(B) + B * rank )
    L         = ctr(q1, k2) + ctr(q2, k1)

``q_v`` are the predictions of the base encoder for view ``v`` (local batch of ``B`` rows), ``k_v`` the momentum
encoder's projections, gathered from all ranks *without gradient* (``k_all``: ``B * W`` rows in rank order), ``CE``
the mean cross-entropy over the local rows. Each query's positive is the key of the other view of the same image;
the keys of the other images of the global batch are its negatives. The ``2 * tau`` factor (the paper's
"2τ" in Alg. 1) makes the gradient magnitude independent of the temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.distributed import gather_no_grad, get_rank, get_world_size

__all__ = ["MoCoV3Loss"]


class MoCoV3Loss(nn.Module):
    """Symmetrised MoCo v3 loss (Chen, Xie, He 2021); see the module docstring for the formula.

    The keys are detached (stop-gradient) and, with ``gather_distributed`` and an initialised process group of world
    size ``W > 1``, all-gathered with :func:`~monai_ssl_ext.distributed.gather_no_grad`; the local queries are scored
    against all ``B * W`` keys, the positive of local row ``i`` being global column ``i + B * rank``. With equal
    per-rank batch sizes, the mean over ranks of the loss is the single-process loss on the concatenated batch, and
    DDP's gradient averaging gives its gradient (only the queries carry gradients).

    Args:
        temperature: ``tau > 0``; moco-v3 uses 1.0 for ResNet-50 (its default) and 0.2 for ViTs.
        gather_distributed: use the keys of all ranks as negatives when ``torch.distributed`` is initialised
            (as moco-v3's ``concat_all_gather``).
    """

    def __init__(self, temperature: float = 1.0, gather_distributed: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def contrastive(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``ctr(q, k)``: ``2 tau`` times the cross-entropy of the local queries against the (gathered) keys."""
        q = F.normalize(q, dim=1)
        k = F.normalize(k.detach(), dim=1)
        rank, world = (get_rank(), get_world_size()) if self.gather_distributed else (0, 1)
        if world > 1:
            k = gather_no_grad(k)
        logits = q @ k.T / self.temperature
        labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * rank
        return F.cross_entropy(logits, labels) * (2 * self.temperature)

    def forward(self, q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
        """
        Args:
            q1, q2: base-encoder predictions of views 1 and 2, shape ``(B, D)``.
            k1, k2: momentum-encoder projections of views 1 and 2, shape ``(B, D)``; row ``i`` is image ``i``.

        Returns:
            the scalar loss ``ctr(q1, k2) + ctr(q2, k1)``.
        """
        shapes = [tuple(t.shape) for t in (q1, q2, k1, k2)]
        if q1.dim() != 2 or len(set(shapes)) != 1 or q1.shape[0] < 1:
            raise ValueError(f"q1, q2, k1, k2 must all have the same shape (B, D) with B >= 1, got {shapes}.")
        return self.contrastive(q1, k2) + self.contrastive(q2, k1)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
