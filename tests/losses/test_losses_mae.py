"""MAELoss against MAE's definition (He et al. 2022, ``models_mae.py::forward_loss``), written out here
element by element: per-patch normalised target ``(x - mean) / sqrt(var_unbiased + 1e-6)``, squared error
averaged over the patch's values, averaged over the removed patches (mask 1) only."""

from __future__ import annotations

import math

import pytest
import torch

from monai_ssl_ext.losses import MAELoss


def _inputs(b=3, n=7, p=12, seed=0, keep=2):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(b, n, p, generator=g, dtype=torch.float64)
    target = 3.0 * torch.randn(b, n, p, generator=g, dtype=torch.float64) + 5.0
    mask = torch.ones(b, n, dtype=torch.float64)
    for i in range(b):  # `keep` kept patches per sample, the rest removed (as random_masking)
        mask[i, torch.randperm(n, generator=g)[:keep]] = 0
    return pred, target, mask


def _reference(pred, target, mask, norm_pix=True, eps=1e-6):
    """The loss and its gradient w.r.t. ``pred``, from the definition with explicit sums (float64)."""
    b, n, p = pred.shape
    total, count = 0.0, 0.0
    grad = torch.zeros_like(pred)
    targets = torch.zeros_like(target)
    for i in range(b):
        for j in range(n):
            x = [float(v) for v in target[i, j]]
            if norm_pix:
                mean = sum(x) / p
                var = sum((v - mean) ** 2 for v in x) / (p - 1)  # unbiased, as torch.var in the MAE code
                x = [(v - mean) / math.sqrt(var + eps) for v in x]
            targets[i, j] = torch.tensor(x, dtype=torch.float64)
            if mask[i, j] == 1:
                total += sum((float(pred[i, j, k]) - x[k]) ** 2 for k in range(p)) / p
                count += 1
    for i in range(b):
        for j in range(n):
            if mask[i, j] == 1:
                grad[i, j] = 2.0 * (pred[i, j] - targets[i, j]) / (p * count)
    return total / count, grad


@pytest.mark.parametrize("norm_pix", [True, False])
def test_value_and_gradient_match_the_definition(norm_pix):
    pred, target, mask = _inputs()
    pred.requires_grad_(True)
    loss = MAELoss(norm_pix_loss=norm_pix)(pred, target, mask)
    loss.backward()
    ref, ref_grad = _reference(pred.detach(), target, mask, norm_pix)
    assert loss.dtype == torch.float64
    assert abs(float(loss.detach()) - ref) <= 1e-12 * max(1.0, ref)
    assert torch.allclose(pred.grad, ref_grad, rtol=1e-10, atol=1e-14)


def test_norm_pix_on_and_off_differ_and_normalisation_is_per_patch():
    pred, target, mask = _inputs(seed=1)
    on, off = MAELoss(True), MAELoss(False)
    assert abs(float(on(pred, target, mask)) - float(off(pred, target, mask))) > 1e-3
    # normalised targets: each patch rescaled and shifted by its own constants gives the same loss
    g = torch.Generator().manual_seed(5)
    scale = torch.rand(target.shape[:2] + (1,), generator=g, dtype=torch.float64) * 4 + 0.5
    shift = torch.randn(target.shape[:2] + (1,), generator=g, dtype=torch.float64) * 10
    assert torch.allclose(on(pred, target * scale + shift, mask), on(pred, target, mask), rtol=1e-6)
    assert not torch.allclose(off(pred, target * scale + shift, mask), off(pred, target, mask))
    # a prediction of the normalised patch itself is (almost) perfect; zeros score (P - 1) / P
    p = target.shape[-1]
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    perfect = (target - mean) / (var + 1e-6).sqrt()
    assert float(on(perfect, target, mask)) < 1e-20
    assert abs(float(on(torch.zeros_like(pred), target, mask)) - (p - 1) / p) < 1e-6


def test_kept_patches_do_not_count():
    """Wrong predictions on the kept (visible) patches change nothing; on a removed patch they do."""
    pred, target, mask = _inputs(seed=2)
    loss = MAELoss()
    base = loss(pred, target, mask)
    wrong = pred.clone()
    wrong[mask == 0] = 1e3
    assert torch.equal(loss(wrong, target, mask), base)
    worse = pred.clone()
    worse[mask == 1] += 1.0
    assert float(loss(worse, target, mask)) > float(base)
    pred.requires_grad_(True)
    loss(pred, target, mask).backward()
    assert torch.count_nonzero(pred.grad[mask == 0]) == 0 and torch.count_nonzero(pred.grad[mask == 1]) > 0


def test_target_gets_no_gradient_and_fp16_predictions_are_computed_in_float32():
    pred, target, mask = _inputs(seed=3)
    target = target.float().requires_grad_(True)
    out = MAELoss()(pred.half().requires_grad_(True), target, mask)
    assert out.dtype == torch.float32
    out.backward()
    assert target.grad is None


def test_batch_halves_average_to_the_whole_batch():
    """Every sample has the same number of removed patches, so the mean of two half-batch losses (what DDP's
    gradient averaging over two ranks amounts to) is the whole batch's loss, and so are the gradients."""
    pred, target, mask = _inputs(b=4, seed=4, keep=3)
    loss = MAELoss()
    whole = pred.clone().requires_grad_(True)
    loss(whole, target, mask).backward()
    halves = pred.clone().requires_grad_(True)
    parts = [loss(halves[s], target[s], mask[s]) for s in (slice(0, 2), slice(2, 4))]
    (0.5 * (parts[0] + parts[1])).backward()
    assert torch.allclose(0.5 * (parts[0] + parts[1]), loss(pred, target, mask), rtol=1e-12)
    assert torch.allclose(halves.grad, whole.grad, rtol=1e-12, atol=1e-16)


def test_bad_input_is_named():
    pred, target, mask = _inputs()
    with pytest.raises(ValueError, match=r"pred and target \(B, N, P\) and mask \(B, N\)"):
        MAELoss()(pred, target[:, :-1], mask)
    with pytest.raises(ValueError, match="removes no patch"):
        MAELoss()(pred, target, torch.zeros_like(mask))
