"""MAE reconstruction loss.

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (https://arxiv.org/abs/2111.06377),
Sec. 3 ("Reconstruction target") and ``models_mae.py::forward_loss`` of facebookresearch/mae. For patches
``x_n`` (the ``P`` values of patch ``n``, :func:`~monai_ssl_ext.networks.mae.patchify`), predictions ``y_n`` and
mask ``m_n`` (1: removed, 0: kept):

    t_n = (x_n - mean(x_n)) / sqrt(var(x_n) + 1e-6)      with norm_pix_loss (else t_n = x_n)
    L   = sum_n m_n * mean_p (y_np - t_np)^2 / sum_n m_n

``mean`` and ``var`` are over the values of one patch, ``var`` unbiased (``torch.var``'s default, as the MAE code);
the sums run over every patch of every sample of the batch, so the loss is the mean over the removed patches only
(kept patches do not count). The normalised target is computed here, without gradient (it is data).

Multi-GPU: every sample has the same number of removed patches (``int`` of the mask ratio), so with equal per-rank
batches DDP's average of the per-rank losses' gradients is the gradient of the loss over the whole batch; no
gathering is needed.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MAELoss"]


class MAELoss(nn.Module):
    """MSE of the predicted patches on the removed patches (He et al. 2022); see the module docstring.

    Args:
        norm_pix_loss: regress each patch normalised by its own mean and variance (MAE's ``--norm_pix_loss``, used
            for its published results and by the MAE recipe here); False regresses raw pixels.
        eps: added to the patch variance (MAE: 1e-6).
    """

    def __init__(self, norm_pix_loss: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm_pix_loss = bool(norm_pix_loss)
        self.eps = float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pred: predicted patches ``(B, N, P)``.
            target: the input's patches ``(B, N, P)`` (raw; normalised here with ``norm_pix_loss``).
            mask: ``(B, N)``, 1 for removed patches, 0 for kept ones.

        Returns:
            the scalar loss, the mean squared error per patch averaged over the removed patches.
        """
        if pred.dim() != 3 or pred.shape != target.shape or tuple(mask.shape) != tuple(pred.shape[:2]):
            raise ValueError(f"MAELoss: expected pred and target (B, N, P) and mask (B, N), got "
                             f"{tuple(pred.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}")
        dtype = torch.promote_types(pred.dtype, torch.float32)  # at least float32 (amp predictions are fp16)
        target = target.detach().to(dtype)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + self.eps).sqrt()
        per_patch = (pred.to(dtype) - target).pow(2).mean(dim=-1)
        mask = mask.to(per_patch.dtype)
        removed = mask.sum()
        if removed <= 0:
            raise ValueError("MAELoss: the mask removes no patch (nothing to reconstruct)")
        return (per_patch * mask).sum() / removed

    def extra_repr(self) -> str:
        return f"norm_pix_loss={self.norm_pix_loss}, eps={self.eps}"
