"""Scale-and-shift-invariant depth loss with multi-scale gradient matching (Ranftl et al., "Towards Robust
Monocular Depth Estimation: Mixing Datasets for Zero-shot Cross-dataset Transfer", TPAMI 2022, MiDaS), as
SSL4GIE's depth task uses it (``Depth_estimation/Metrics/losses.py``, ``ScaleAndShiftInvariantLoss(alpha=0.1)``,
batch-based reduction; SPEC C.3).

Per image ``i`` of the batch, with prediction ``p``, target ``d`` and valid pixels ``M_i = {d > 0}``
(depth 0 is "no ground truth", e.g. the padding that makes the pictures square):

    (s_i, t_i) = argmin_{s, t} sum_{M_i} (s p + t - d)^2           closed form, the 2x2 normal equations
               = A^-1 b,  A = [[sum p^2, sum p], [sum p, |M_i|]],  b = [sum p d, sum d]
               ((0, 0) where det A = 0: an image with fewer than two distinct valid predictions)
    r          = s_i p + t_i - d                                    the aligned residual

    L_ssi  = sum_i sum_{M_i} r^2 / (2 sum_i |M_i|)                   ("batch-based": pooled over the batch)
    L_grad = sum_{k=0}^{K-1} [ sum_i sum (|dx r_k| m_x + |dy r_k| m_y) / sum_i |M_{i,k}| ]
               r_k, M_k: the masked residual ``M r`` and the mask subsampled with stride 2^k (``[::2^k, ::2^k]``);
               dx r_k = r_k[:, x+1] - r_k[:, x], m_x = M_k[:, x+1] M_k[:, x] (both pixels valid), dy alike
    L      = L_ssi + alpha * L_grad                                  alpha = 0.1, K = 4 (SSL4GIE)

A batch without a valid pixel contributes 0 to each term (the source's ``reduction_batch_based``). The
gradient flows through ``s_i, t_i`` as in the source (no detach). The loss is computed in (at least) float32 even
under autocast (the sums of squares over 224^2 pixels overflow float16).
"""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["ScaleShiftInvariantLoss", "align_scale_shift", "compute_scale_and_shift", "gradient_matching_loss",
           "ssi_mse"]


def _squeeze(x: torch.Tensor, name: str) -> torch.Tensor:
    """``(B, 1, H, W)`` or ``(B, H, W)`` -> ``(B, H, W)``."""
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"depth {name} must have one channel, got shape {tuple(x.shape)}")
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"depth {name} must be (B, 1, H, W) or (B, H, W), got shape {tuple(x.shape)}")
    return x


def compute_scale_and_shift(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """Per-image least-squares ``(s, t)`` minimising ``sum_mask (s p + t - d)^2`` over ``(B, H, W)`` inputs
    (closed form, module docstring); ``(0, 0)`` where the normal equations are singular. Returns two ``(B,)``."""
    m = mask.to(prediction.dtype)
    a00 = (m * prediction * prediction).sum((1, 2))
    a01 = (m * prediction).sum((1, 2))
    a11 = m.sum((1, 2))
    b0 = (m * prediction * target).sum((1, 2))
    b1 = (m * target).sum((1, 2))
    det = a00 * a11 - a01 * a01
    ok = det != 0
    safe = torch.where(ok, det, torch.ones_like(det))
    scale = torch.where(ok, (a11 * b0 - a01 * b1) / safe, torch.zeros_like(det))
    shift = torch.where(ok, (-a01 * b0 + a00 * b1) / safe, torch.zeros_like(det))
    return scale, shift


def align_scale_shift(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``s_i p + t_i`` per image, ``(s_i, t_i)`` from :func:`compute_scale_and_shift` over ``mask`` (default
    ``target > 0``); same shape as ``prediction`` (``(B, 1, H, W)`` or ``(B, H, W)``)."""
    p, d = _squeeze(prediction, "prediction"), _squeeze(target, "target")
    mask = d > 0 if mask is None else _squeeze(mask, "mask").bool()
    scale, shift = compute_scale_and_shift(p, d, mask)
    return (scale.view(-1, 1, 1) * p + shift.view(-1, 1, 1)).view_as(prediction)


def ssi_mse(aligned: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_mask (aligned - target)^2 / (2 sum mask)`` over the batch, 0 without valid pixels (``(B, H, W)``)."""
    m = mask.to(aligned.dtype)
    n = m.sum()
    r = aligned - target
    total = (m * r * r).sum()
    return total / (2 * n) if n > 0 else total * 0


def gradient_matching_loss(aligned: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, scales: int = 4):
    """Multi-scale gradient-matching term ``L_grad`` of the module docstring over ``(B, H, W)`` inputs."""
    total = aligned.new_zeros(())
    for k in range(int(scales)):
        step = 2**k
        p, d = aligned[:, ::step, ::step], target[:, ::step, ::step]
        m = mask[:, ::step, ::step].to(aligned.dtype)
        diff = m * (p - d)
        grad_x = (diff[:, :, 1:] - diff[:, :, :-1]).abs() * (m[:, :, 1:] * m[:, :, :-1])
        grad_y = (diff[:, 1:, :] - diff[:, :-1, :]).abs() * (m[:, 1:, :] * m[:, :-1, :])
        n = m.sum()
        if n > 0:
            total = total + (grad_x.sum() + grad_y.sum()) / n
    return total


class ScaleShiftInvariantLoss(_Loss):
    """MiDaS scale-and-shift-invariant MSE + ``alpha`` x multi-scale gradient matching (module docstring).

    Args:
        alpha: weight of the gradient-matching term (SSL4GIE training: 0.1; its validation metric: 0).
        scales: number of scales of the gradient-matching term (4).

    ``forward(input, target)``: prediction and target depth ``(B, 1, H, W)`` (or ``(B, H, W)``), target 0 where
    there is no ground truth. Returns a scalar.
    """

    def __init__(self, alpha: float = 0.1, scales: int = 4):
        super().__init__()
        if float(alpha) < 0:
            raise ValueError(f"ScaleShiftInvariantLoss: alpha must be >= 0, got {alpha}")
        if int(scales) < 1:
            raise ValueError(f"ScaleShiftInvariantLoss: scales must be >= 1, got {scales}")
        self.alpha = float(alpha)
        self.scales = int(scales)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 (torch's name)
        if input.shape != target.shape:
            raise ValueError(f"ScaleShiftInvariantLoss: prediction {tuple(input.shape)} and target "
                             f"{tuple(target.shape)} differ in shape")
        with torch.autocast(device_type=input.device.type, enabled=False):
            dtype = torch.promote_types(input.dtype, torch.float32)  # float16 / bfloat16 -> float32, float64 kept
            p = _squeeze(input.as_subclass(torch.Tensor).to(dtype), "prediction")  # MetaTensor -> plain tensor
            d = _squeeze(target.as_subclass(torch.Tensor).to(dtype), "target")
            mask = d > 0
            scale, shift = compute_scale_and_shift(p, d, mask)
            aligned = scale.view(-1, 1, 1) * p + shift.view(-1, 1, 1)
            loss = ssi_mse(aligned, d, mask)
            if self.alpha > 0:
                loss = loss + self.alpha * gradient_matching_loss(aligned, d, mask, self.scales)
        return loss
