"""Soft Jaccard loss of segmentation-models-pytorch, multiclass mode (SSL-MedSeg's finetuning loss, SPEC D.2).

``smp.losses.JaccardLoss(mode="multiclass", from_logits=True, smooth=0.0, eps=1e-7, log_loss=False, classes=None)``
(``losses/jaccard.py`` + ``losses/_functional.py::soft_jaccard_score``, the same in smp 0.2.1 and 0.3.x):

    p = softmax(logits, dim=1)                       (computed as log_softmax(...).exp())
    y = one_hot(labels)                              (B, C, H, W)
    I_c = sum_{b, h, w} p_bchw * y_bchw              (batch and spatial dims pooled)
    U_c = sum_{b, h, w} (p_bchw + y_bchw) - I_c
    J_c = (I_c + smooth) / max(U_c + smooth, eps)
    l_c = 1 - J_c                                    (or -log(max(J_c, eps)) with log_loss)
    m_c = 1 if sum_{b, h, w} y_bchw > 0 else 0       (class present in the batch's labels)
    L   = mean_{c in classes} (m_c * l_c)            (classes: all C by default)

The mean runs over *all* selected classes, the masked zeros included: with ``k`` of ``C`` classes present the loss
is ``sum_present l_c / C``. A class absent from the batch's labels contributes no term of its own; its logits still
get a gradient through the softmax (raising them lowers the other classes' probabilities). MONAI's
``DiceLoss(jaccard=True, batch=True)`` instead keeps an absent class's term ``1 - smooth_nr / (2 sum p_c +
smooth_dr)``, close to 1, which pushes its probability down, and averages over all ``C``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["MaskedJaccardLoss"]


class MaskedJaccardLoss(_Loss):
    """smp's multiclass ``JaccardLoss`` (formula in the module docstring): soft Jaccard over batch and spatial dims
    per class, classes absent from the batch's labels masked to 0, mean over the selected classes.

    Args:
        classes: class indices kept in the final mean (after masking), None for all (smp's ``classes``).
        log_loss: ``-log(J)`` instead of ``1 - J``.
        from_logits: apply softmax over the channel dim to ``input`` (True: ``input`` are logits).
        smooth: added to intersection and union (0).
        eps: lower bound of the denominator (1e-7).

    ``forward(input, target)``: ``input`` ``(B, C, *spatial)`` logits (or probabilities when
    ``from_logits=False``); ``target`` integer labels ``(B, 1, *spatial)`` or ``(B, *spatial)`` (as MONAI losses
    take them with ``to_onehot_y=True``), or a one-hot tensor of ``input``'s shape. Computed in float32 at least.
    """

    def __init__(
        self,
        classes: Sequence[int] | None = None,
        log_loss: bool = False,
        from_logits: bool = True,
        smooth: float = 0.0,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        self.classes = None if classes is None else [int(c) for c in classes]
        self.log_loss = bool(log_loss)
        self.from_logits = bool(from_logits)
        self.smooth = float(smooth)
        self.eps = float(eps)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() < 3 or input.shape[1] < 2:
            raise ValueError(f"input must be (B, C>=2, *spatial) logits, got {tuple(input.shape)}.")
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        b, c = x.shape[:2]
        p = x.log_softmax(dim=1).exp() if self.from_logits else x
        if target.shape == input.shape:
            y = target.to(p.dtype)
        else:
            labels = target.reshape(b, -1).long()
            if labels.shape[1] != p[0, 0].numel():
                raise ValueError(f"target {tuple(target.shape)} does not match input {tuple(input.shape)}.")
            y = F.one_hot(labels, c).permute(0, 2, 1).to(p.dtype)
        p = p.reshape(b, c, -1)
        y = y.reshape(b, c, -1)
        dims = (0, 2)
        inter = (p * y).sum(dims)
        union = (p + y).sum(dims) - inter
        score = (inter + self.smooth) / (union + self.smooth).clamp_min(self.eps)
        loss = -torch.log(score.clamp_min(self.eps)) if self.log_loss else 1.0 - score
        loss = loss * (y.sum(dims) > 0).to(loss.dtype)
        if self.classes is not None:
            loss = loss[self.classes]
        return loss.mean()

    def extra_repr(self) -> str:
        return f"classes={self.classes}, log_loss={self.log_loss}, from_logits={self.from_logits}, smooth={self.smooth}, eps={self.eps}"
