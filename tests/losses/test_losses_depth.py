"""ScaleShiftInvariantLoss (MiDaS SSI-MSE + gradient matching, SSL4GIE depth) against independent computations:
per-image least squares with numpy ``lstsq`` for the alignment, the data term and its gradient (by the envelope
theorem: at the optimum (s, t), d/dp of min_{s,t} sum (s p + t - d)^2 is 2 s r), and a hand-written pixel loop for
the gradient-matching term (values, and gradients through autograd of the loop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_ssl_ext.losses import ScaleShiftInvariantLoss
from monai_ssl_ext.losses.depth import compute_scale_and_shift, gradient_matching_loss


def _batch(seed=0, b=3, h=12, w=10, invalid=0.2):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
    target = 0.2 + torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
    target[torch.rand(b, 1, h, w, generator=g) < invalid] = 0.0  # no ground truth
    return pred, target


def _lstsq_alignment(pred: np.ndarray, target: np.ndarray):
    """Per image: (s, t) from numpy lstsq over the valid pixels, the aligned residual and the valid mask."""
    out = []
    for p, d in zip(pred, target):
        m = d > 0
        a = np.stack([p[m], np.ones(m.sum())], axis=1)
        (s, t), *_ = np.linalg.lstsq(a, d[m], rcond=None)
        out.append((s, t, np.where(m, s * p + t - d, 0.0), m))
    return out


def _ssi_reference(pred: np.ndarray, target: np.ndarray) -> float:
    al = _lstsq_alignment(pred, target)
    return sum((r**2).sum() for _, _, r, _ in al) / (2 * sum(m.sum() for *_, m in al))


def _gradient_loop(r: torch.Tensor, m: torch.Tensor, scales: int) -> torch.Tensor:
    """The gradient-matching term written pixel by pixel: per scale k, on the stride-2^k grid, |r(y, x+1) -
    r(y, x)| over horizontally adjacent pixels that are both valid, the same vertically, summed over the batch and
    divided by the number of valid pixels on that grid; summed over scales. ``r`` is the aligned residual."""
    total = torch.zeros((), dtype=r.dtype)
    for k in range(scales):
        step = 2**k
        rows = list(range(0, r.shape[1], step))
        cols = list(range(0, r.shape[2], step))
        acc = torch.zeros((), dtype=r.dtype)
        n = 0
        for b in range(r.shape[0]):
            for i, y in enumerate(rows):
                for j, x in enumerate(cols):
                    if not m[b, y, x]:
                        continue
                    n += 1
                    if j + 1 < len(cols) and m[b, y, cols[j + 1]]:
                        acc = acc + (r[b, y, cols[j + 1]] - r[b, y, x]).abs()
                    if i + 1 < len(rows) and m[b, rows[i + 1], x]:
                        acc = acc + (r[b, rows[i + 1], x] - r[b, y, x]).abs()
        if n:
            total = total + acc / n
    return total


def test_scale_and_shift_match_numpy_lstsq():
    pred, target = _batch()
    s, t = compute_scale_and_shift(pred[:, 0], target[:, 0], target[:, 0] > 0)
    for i, (s_ref, t_ref, _, _) in enumerate(_lstsq_alignment(pred[:, 0].numpy(), target[:, 0].numpy())):
        assert float(s[i]) == pytest.approx(s_ref, rel=1e-9, abs=1e-12)
        assert float(t[i]) == pytest.approx(t_ref, rel=1e-9, abs=1e-12)


def test_ssi_mse_value_and_gradient_against_lstsq():
    pred, target = _batch(seed=1)
    pred.requires_grad_(True)
    loss = ScaleShiftInvariantLoss(alpha=0.0)(pred, target)
    p, d = pred.detach()[:, 0].numpy(), target[:, 0].numpy()
    assert float(loss.detach()) == pytest.approx(_ssi_reference(p, d), rel=1e-9)
    loss.backward()
    al = _lstsq_alignment(p, d)
    n = sum(m.sum() for *_, m in al)
    expected = np.stack([s * r / n for s, _, r, _ in al])  # d/dp [sum r^2 / (2N)] at the optimum = s r / N
    np.testing.assert_allclose(pred.grad[:, 0].numpy(), expected, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.1])
@pytest.mark.parametrize("a,b", [(2.5, -0.3), (-0.7, 4.0), (1e-2, 1.0)])
def test_invariant_to_scale_and_shift_of_the_prediction(alpha, a, b):
    pred, target = _batch(seed=2)
    loss = ScaleShiftInvariantLoss(alpha=alpha)
    assert float(loss(a * pred + b, target)) == pytest.approx(float(loss(pred, target)), rel=1e-7)


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_zero_for_an_affine_copy_of_the_target(alpha):
    _, target = _batch(seed=3)
    g = torch.Generator().manual_seed(5)
    pred = (target - 0.4) / 3.0
    pred[target == 0] = torch.rand(int((target == 0).sum()), generator=g, dtype=torch.float64)  # anything there
    assert float(ScaleShiftInvariantLoss(alpha=alpha)(pred, target)) == pytest.approx(0.0, abs=1e-12)
    noisy = pred + 0.1 * torch.rand(pred.shape, generator=g, dtype=torch.float64)
    assert float(ScaleShiftInvariantLoss(alpha=alpha)(pred, target)) < float(
        ScaleShiftInvariantLoss(alpha=alpha)(noisy, target))


def test_gradient_matching_term_against_a_pixel_loop():
    pred, target = _batch(seed=4, b=2, h=13, w=11)
    pred.requires_grad_(True)
    p, d, m = pred[:, 0], target[:, 0], target[:, 0] > 0
    s, t = compute_scale_and_shift(p, d, m)
    aligned = s.view(-1, 1, 1) * p + t.view(-1, 1, 1)
    ours = gradient_matching_loss(aligned, d, m, scales=4)
    ref = _gradient_loop(torch.where(m, aligned - d, torch.zeros_like(d)), m, scales=4)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-10)
    g_ours, = torch.autograd.grad(ours, pred, retain_graph=True)
    g_ref, = torch.autograd.grad(ref, pred)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)


def test_total_is_data_term_plus_alpha_times_gradient_term():
    pred, target = _batch(seed=6)
    p, d, m = pred[:, 0], target[:, 0], target[:, 0] > 0
    al = _lstsq_alignment(p.numpy(), d.numpy())
    r = torch.from_numpy(np.stack([x[2] for x in al]))
    expected = _ssi_reference(p.numpy(), d.numpy()) + 0.1 * float(_gradient_loop(r, m, 4))
    assert float(ScaleShiftInvariantLoss(alpha=0.1, scales=4)(pred, target)) == pytest.approx(expected, rel=1e-8)


def test_no_valid_pixel_gives_zero_and_constant_prediction_is_finite():
    pred, target = _batch(seed=7)
    assert float(ScaleShiftInvariantLoss()(pred, torch.zeros_like(target))) == 0.0
    # a constant prediction: singular normal equations, (s, t) = (0, 0) as the source, loss = sum d^2 / 2N
    const = torch.full_like(pred, 0.5)
    loss = ScaleShiftInvariantLoss(alpha=0.0)(const, target)
    m = target > 0
    assert float(loss) == pytest.approx(float((target[m] ** 2).sum() / (2 * m.sum())), rel=1e-9)


def test_float32_under_float16_input_and_shape_errors():
    pred, target = _batch(seed=8)
    loss = ScaleShiftInvariantLoss()(pred.half(), target.half())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="differ in shape"):
        ScaleShiftInvariantLoss()(pred, target[:, :, :-1])
    with pytest.raises(ValueError, match="one channel"):
        ScaleShiftInvariantLoss()(pred.repeat(1, 2, 1, 1), target.repeat(1, 2, 1, 1))
