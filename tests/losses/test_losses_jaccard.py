"""MaskedJaccardLoss (smp ``JaccardLoss(mode="multiclass")``) against hand computations and an independently
written float64 reference, including a batch where one class is absent from the labels."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import DiceLoss

from monai_ssl_ext.losses import MaskedJaccardLoss

# Two pixels, three classes; logits = log(probabilities) so softmax gives them back exactly:
#   pixel 1: p = (0.5, 0.25, 0.25), label 0;  pixel 2: p = (0.25, 0.5, 0.25), label 1;  class 2 absent.
PROBS = torch.tensor([[0.5, 0.25], [0.25, 0.5], [0.25, 0.25]], dtype=torch.float64)  # (C, N)
LABELS = torch.tensor([0, 1])
# class 0: I = 0.5, sum p = 0.75, sum y = 1, U = 0.75 + 1 - 0.5 = 1.25, J = 0.4, 1 - J = 0.6; class 1 the same;
# class 2 masked (its own term would be 1 - 0 / 0.5 = 1). Mean over all 3 classes: (0.6 + 0.6 + 0) / 3 = 0.4.
HAND_LOSS = 0.4


def _hand_inputs():
    logits = PROBS.log().reshape(1, 3, 1, 2).clone().requires_grad_()
    return logits, LABELS.reshape(1, 1, 1, 2)


def reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The definition, written out: softmax, one-hot, per-class soft Jaccard pooled over batch and space, classes
    without a labelled pixel dropped, the sum divided by the number of classes."""
    b, c = logits.shape[:2]
    e = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    p = e / e.sum(dim=1, keepdim=True)
    lab = labels.reshape(b, *logits.shape[2:])
    total = logits.new_zeros(())
    for k in range(c):
        yk = (lab == k).to(logits.dtype)
        pk = p[:, k]
        if yk.sum() == 0:
            continue
        inter = (pk * yk).sum()
        union = pk.sum() + yk.sum() - inter
        total = total + (1 - inter / union)
    return total / c


def test_hand_computed_value_with_absent_class():
    logits, labels = _hand_inputs()
    assert MaskedJaccardLoss()(logits, labels).item() == pytest.approx(HAND_LOSS, abs=1e-12)
    # labels as (B, H, W) or one-hot give the same
    assert MaskedJaccardLoss()(logits, labels[:, 0]).item() == pytest.approx(HAND_LOSS, abs=1e-12)
    onehot = torch.stack([(labels[:, 0] == k) for k in range(3)], 1).double()
    assert MaskedJaccardLoss()(logits, onehot).item() == pytest.approx(HAND_LOSS, abs=1e-12)
    # probabilities in, no softmax
    probs = PROBS.reshape(1, 3, 1, 2)
    assert MaskedJaccardLoss(from_logits=False)(probs, labels).item() == pytest.approx(HAND_LOSS, abs=1e-12)


def test_options_by_hand():
    logits, labels = _hand_inputs()
    # classes=[1, 2]: (0.6 + 0) / 2
    assert MaskedJaccardLoss(classes=[1, 2])(logits, labels).item() == pytest.approx(0.3, abs=1e-12)
    # log_loss: -log(0.4) for each present class, / 3
    assert MaskedJaccardLoss(log_loss=True)(logits, labels).item() == pytest.approx(-2 * math.log(0.4) / 3, abs=1e-12)
    # smooth=1: J = (0.5 + 1) / (1.25 + 1) = 2/3 -> (1/3 + 1/3 + 0) / 3
    assert MaskedJaccardLoss(smooth=1.0)(logits, labels).item() == pytest.approx(2 / 9, abs=1e-12)


def test_gradient_of_absent_class_only_through_softmax():
    """dL/dz_2 by hand: L = (l0 + l1) / 3 with l_c = 1 - I_c / U_c; dJ_c/dp_cn = (y_n U - I (1 - y_n)) / U^2, so
    dJ_0/dp_0 = (0.8, -0.32), dJ_1/dp_1 = (-0.32, 0.8), and g_c = dL/dp_c = -dJ_c/dp_c / 3, g_2 = 0.
    Through the softmax, dL/dz_2n = sum_c g_cn p_cn (delta_c2 - p_2n) = -p_2n sum_c g_cn p_cn
    = -0.25 * ((-0.8/3)(0.5) + (0.32/3)(0.25)) = 0.08/3 at both pixels."""
    logits, labels = _hand_inputs()
    MaskedJaccardLoss()(logits, labels).backward()
    grad = logits.grad.reshape(3, 2)
    assert grad[2].tolist() == [pytest.approx(0.08 / 3, abs=1e-12)] * 2
    # present classes, same chain rule: dL/dz_0 at pixel 1 = p_0 (g_0 - sum_c g_c p_c)
    #   = 0.5 * (-0.8/3 - (-0.32/3)) = -0.08, at pixel 2 = 0.25 * (0.32/3 - (-0.32/3)) = 0.16/3
    assert grad[0].tolist() == [pytest.approx(-0.08, abs=1e-12), pytest.approx(0.16 / 3, abs=1e-12)]


def _random_batch(absent: int | None = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3 if absent == 3 else 4, (2, 1, 5, 6), generator=g)
    if absent is None:
        labels[0, 0, 0, :4] = torch.arange(4)
    return logits, labels


@pytest.mark.parametrize("absent", [3, None])
def test_value_and_gradient_match_independent_reference(absent):
    logits, labels = _random_batch(absent)
    present = set(labels.unique().tolist())
    assert (3 not in present) == (absent == 3)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ours = MaskedJaccardLoss()(a, labels)
    ref = reference(b, labels)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), abs=1e-12)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_absent_class_gradient_is_softmax_coupling():
    """With class 3 absent, dL/dp_3 = 0 exactly, and dL/dz_3 = -p_3 * sum_c (dL/dp_c) p_c per pixel."""
    logits, labels = _random_batch(3)
    z = logits.clone().requires_grad_()
    p = torch.softmax(z, dim=1)
    p_leaf = p.detach().clone().requires_grad_()
    MaskedJaccardLoss(from_logits=False)(p_leaf, labels).backward()
    g = p_leaf.grad
    assert torch.count_nonzero(g[:, 3]) == 0
    MaskedJaccardLoss()(z, labels).backward()
    coupling = -p.detach()[:, 3] * (g * p.detach()).sum(dim=1)
    torch.testing.assert_close(z.grad[:, 3], coupling, rtol=1e-10, atol=1e-14)
    assert z.grad[:, 3].abs().max() > 0


def test_differs_from_monai_jaccard_dice_loss_on_absent_class():
    logits, labels = _hand_inputs()
    monai = DiceLoss(jaccard=True, batch=True, softmax=True, to_onehot_y=True, include_background=True)
    # MONAI keeps class 2's term 1 - 1e-5 / (2 * 0.5 + 1e-5) ~= 1: (0.6 + 0.6 + 1) / 3 ~= 0.7333
    assert monai(logits, labels).item() == pytest.approx((0.6 + 0.6 + 1) / 3, abs=1e-4)
    assert MaskedJaccardLoss()(logits, labels).item() == pytest.approx(HAND_LOSS, abs=1e-12)
    # with every class present the two agree up to MONAI's smoothing
    logits, labels = _random_batch(None)
    assert monai(logits, labels).item() == pytest.approx(MaskedJaccardLoss()(logits, labels).item(), abs=1e-4)


def test_half_precision_input_is_computed_in_float32():
    logits, labels = _random_batch(3)
    ours = MaskedJaccardLoss()(logits.half(), labels)
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(reference(logits.half().double(), labels).item(), abs=1e-5)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        MaskedJaccardLoss()(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        MaskedJaccardLoss()(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 5, dtype=torch.long))
