"""BYOL regression loss.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020
(https://arxiv.org/abs/2006.07733), eq. (2) and the symmetrisation of Sec. 3.1:

    L = mean_b (2 - 2 * cos(p0_b, sg(z1_b))) + mean_b (2 - 2 * cos(p1_b, sg(z0_b)))

where ``p_v = q(g(f(x_v)))`` are the online predictions of view ``v``, ``z_v = g'(f'(x_v))`` the target
projections, ``cos`` the cosine similarity of one row (``||p/||p|| - z/||z|| ||^2 = 2 - 2 cos``) and ``sg`` the
stop-gradient. This is solo-learn's ``byol_loss_func`` (``2 - 2 * F.cosine_similarity(p, z.detach()).mean()``, one
term per (prediction, other view's target) pair, summed over the two pairs), used by SSL-MedSeg; the range is
``[0, 8]``. lightly's ``2 * NegativeCosineSimilarity(t0, p1) + 2 * NegativeCosineSimilarity(t1, p0)`` differs by
the constant 4 (same gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BYOLLoss"]


class BYOLLoss(nn.Module):
    """Symmetrised BYOL loss (Grill et al. 2020); see the module docstring for the formula.

    The targets are detached here (stop-gradient), so no gradient reaches the target network even if it
    was computed with gradients; :class:`~monai_ssl_ext.networks.ssl.BYOL` already produces them under
    ``torch.no_grad()``.

    Args:
        eps: the ``eps`` of ``F.cosine_similarity`` (its default, 1e-8, as in solo-learn).
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, p0: torch.Tensor, p1: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """
        Args:
            p0, p1: online predictions of views 0 and 1, shape ``(B, D)``.
            z0, z1: target projections of views 0 and 1, shape ``(B, D)``; row ``i`` belongs to sample ``i``.

        Returns:
            the scalar loss ``(2 - 2 mean cos(p0, z1)) + (2 - 2 mean cos(p1, z0))``.
        """
        shapes = [tuple(t.shape) for t in (p0, p1, z0, z1)]
        if p0.dim() != 2 or len(set(shapes)) != 1 or p0.shape[0] < 1:
            raise ValueError(f"p0, p1, z0, z1 must all have the same shape (B, D) with B >= 1, got {shapes}.")
        cos01 = F.cosine_similarity(p0, z1.detach(), dim=-1, eps=self.eps).mean()
        cos10 = F.cosine_similarity(p1, z0.detach(), dim=-1, eps=self.eps).mean()
        return (2 - 2 * cos01) + (2 - 2 * cos10)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
