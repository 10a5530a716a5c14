"""NTXentLoss against an independent float64 loop implementation of SimCLR's eq. (1) and MONAI's ContrastiveLoss."""

import math

import pytest
import torch
from monai.losses import ContrastiveLoss

from monai_ssl_ext.losses import NTXentLoss


def reference_ntxent(z0: torch.Tensor, z1: torch.Tensor, tau: float) -> torch.Tensor:
    """Chen et al. 2020 eq. (1) with explicit loops in float64: (1/2N) sum_i -log(e^{s_ii'/t} / sum_{k!=i} e^{s_ik/t})."""
    z = torch.cat([z0, z1]).double()
    n2 = z.shape[0]
    n = n2 // 2

    def cos(a, b):
        return (a * b).sum() / (torch.sqrt((a * a).sum()) * torch.sqrt((b * b).sum()))

    total = torch.zeros((), dtype=torch.float64)
    for i in range(n2):
        pos = (i + n) % n2
        numerator = torch.exp(cos(z[i], z[pos]) / tau)
        denominator = torch.zeros((), dtype=torch.float64)
        for k in range(n2):
            if k != i:
                denominator = denominator + torch.exp(cos(z[i], z[k]) / tau)
        total = total - torch.log(numerator / denominator)
    return total / n2


def _inputs(b=5, d=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(b, d, generator=g)
    z1 = z0 + 1.5 * torch.randn(b, d, generator=g)  # noisy views: some negatives beat the positive
    return z0, z1


@pytest.mark.parametrize("tau", [0.5, 0.07, 0.005])
def test_values_and_gradients_match_reference(tau):
    z0, z1 = _inputs()
    a0, a1 = z0.double().requires_grad_(), z1.double().requires_grad_()
    loss = NTXentLoss(temperature=tau)(a0, a1)
    loss.backward()
    r0, r1 = z0.double().requires_grad_(), z1.double().requires_grad_()
    ref = reference_ntxent(r0, r1, tau)
    ref.backward()
    assert math.isfinite(ref.item()) and ref.item() > 1.0  # non-trivial: not saturated at 0
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a0.grad, r0.grad, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(a1.grad, r1.grad, rtol=1e-8, atol=1e-10)

    # float32 (the training dtype): finite values and gradients, close to the float64 reference
    f0, f1 = z0.clone().requires_grad_(), z1.clone().requires_grad_()
    loss32 = NTXentLoss(temperature=tau)(f0, f1)
    loss32.backward()
    assert loss32.dtype == torch.float32
    assert torch.isfinite(loss32) and torch.isfinite(f0.grad).all() and torch.isfinite(f1.grad).all()
    torch.testing.assert_close(loss32.double(), ref.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(f0.grad.double(), r0.grad, rtol=1e-3, atol=1e-5 / tau)  # gradients scale as 1/tau
    torch.testing.assert_close(f1.grad.double(), r1.grad, rtol=1e-3, atol=1e-5 / tau)


def test_perfectly_aligned_small_temperature_is_finite():
    # identical views and tau = 0.005: logits up to 200, exp would overflow float32 (max ~ e^88.7)
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    loss = NTXentLoss(temperature=0.005)(z, z.detach().clone())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    torch.testing.assert_close(loss.double(), reference_ntxent(z.detach(), z.detach(), 0.005), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tau", [0.5, 0.07])
def test_matches_monai_contrastive_loss(tau):
    # MONAI computes exp(s / tau) directly, which overflows float32 once 1 / tau > ~88.7 (tau < ~0.0113),
    # so the comparison is only made at moderate temperatures.
    z0, z1 = _inputs(b=6, d=4, seed=3)
    torch.testing.assert_close(NTXentLoss(temperature=tau)(z0, z1), ContrastiveLoss(temperature=tau)(z0, z1),
                               rtol=1e-5, atol=1e-5)


def test_batch_of_one_has_no_negatives_but_positive():
    # B = 1: the only non-self column is the positive, so the loss is exactly 0
    z0, z1 = _inputs(b=1, d=3)
    assert NTXentLoss()(z0, z1).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("shapes", [((4, 3), (4, 2)), ((4, 3), (3, 3)), ((4,), (4,)), ((2, 3, 4), (2, 3, 4)),
                                    ((0, 3), (0, 3))])
def test_bad_shapes_raise(shapes):
    with pytest.raises(ValueError, match="same shape"):
        NTXentLoss()(torch.randn(*shapes[0]), torch.randn(*shapes[1]))


@pytest.mark.parametrize("tau", [0.0, -0.1])
def test_bad_temperature_raises(tau):
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=tau)
