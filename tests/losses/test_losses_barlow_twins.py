"""BarlowTwinsCrossCorrelationLoss against an independent float64 loop written from the paper (Zbontar et al. 2021,
eqs. 1-2, with the reference code's batch-norm standardisation), against the reference code's own module form
(``BatchNorm1d(affine=False)`` in train mode) and lightly's formula (SPEC 2a: ``F.batch_norm``), and shown to differ
from MONAI's ``BarlowTwinsLoss`` (unbiased std + 1e-6 outside the square root)."""

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import BarlowTwinsLoss as MonaiBarlowTwinsLoss

from monai_ssl_ext.losses import BarlowTwinsCrossCorrelationLoss


def reference_barlow_twins(z_a, z_b, lambd, eps=1e-5):
    """The paper's loss, loop by loop in float64:
    zhat[n, i] = (z[n, i] - mu_i) / sqrt(sigma2_i + eps), mu_i = (1/N) sum_n z[n, i], sigma2_i = (1/N) sum_n (z - mu)^2
    C_ij = (1/N) sum_n zhat_a[n, i] zhat_b[n, j];  L = sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2."""
    z_a, z_b = z_a.double(), z_b.double()
    n, d = z_a.shape

    def standardise(z):
        cols = []
        for i in range(d):
            col = z[:, i]
            mu = sum(col[k] for k in range(n)) / n
            sigma2 = sum((col[k] - mu) ** 2 for k in range(n)) / n
            cols.append((col - mu) / torch.sqrt(sigma2 + eps))
        return torch.stack(cols, dim=1)

    za, zb = standardise(z_a), standardise(z_b)
    loss = torch.zeros((), dtype=torch.float64)
    for i in range(d):
        for j in range(d):
            c_ij = (za[:, i] * zb[:, j]).sum() / n
            loss = loss + ((1 - c_ij) ** 2 if i == j else lambd * c_ij**2)
    return loss


def source_module_form(z_a, z_b, lambd):
    """facebookresearch/barlowtwins main.py's forward in one process: BatchNorm1d(affine=False) in train mode on each
    view, c = bn(z1).T @ bn(z2) / N, on-diagonal + lambd * off-diagonal."""
    bn = torch.nn.BatchNorm1d(z_a.shape[1], affine=False).to(z_a.dtype).train()
    c = bn(z_a).T @ bn(z_b) / z_a.shape[0]
    off = ~torch.eye(c.shape[0], dtype=torch.bool)
    return (torch.diagonal(c) - 1).pow(2).sum() + lambd * c[off].pow(2).sum()


def lightly_formula(z_a, z_b, lambd):
    """SPEC 2a, lightly's BarlowTwinsLoss: F.batch_norm(training=True), c = a^T b / N, same sum (no scale_loss)."""
    a, b = F.batch_norm(z_a, None, None, training=True), F.batch_norm(z_b, None, None, training=True)
    c = a.T @ b / z_a.shape[0]
    on = (torch.diagonal(c) - 1).pow(2).sum()
    return on + lambd * (c.pow(2).sum() - torch.diagonal(c).pow(2).sum())


def _inputs(b, d=12, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shift = 3.0 * torch.randn(d, generator=g, dtype=dtype)  # non-zero feature means, different scales
    scale = torch.rand(d, generator=g, dtype=dtype) * 4 + 0.5
    z_a = torch.randn(b, d, generator=g, dtype=dtype) * scale + shift
    z_b = 0.7 * z_a + torch.randn(b, d, generator=g, dtype=dtype) * scale  # correlated, not identical
    return z_a, z_b


@pytest.mark.parametrize("batch", [8, 32])
@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_values_and_gradients_match_paper_reference(batch, lambd):
    z_a, z_b = _inputs(batch)
    a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    loss = BarlowTwinsCrossCorrelationLoss(lambd=lambd)(a, b)
    loss.backward()
    ra, rb = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    ref = reference_barlow_twins(ra, rb, lambd)
    ref.backward()
    assert ref.item() > 1.0  # far from the optimum: every term contributes
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a.grad, ra.grad, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-8, atol=1e-10)

    # float32, the training dtype: close to the float64 reference, gradients included
    fa, fb = z_a.float().requires_grad_(), z_b.float().requires_grad_()
    loss32 = BarlowTwinsCrossCorrelationLoss(lambd=lambd)(fa, fb)
    loss32.backward()
    assert loss32.dtype == torch.float32
    torch.testing.assert_close(loss32.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fa.grad.double(), ra.grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("batch", [8, 32])
def test_equals_source_module_form_and_lightly_formula(batch):
    """One process: the reference code's BatchNorm1d(affine=False) form and lightly's formula (SPEC 2a) with the
    same lambda give the same loss and gradients."""
    z_a, z_b = _inputs(batch, seed=1)
    losses, grads = [], []
    for fn in (lambda a, b: BarlowTwinsCrossCorrelationLoss(lambd=0.0051)(a, b),
               lambda a, b: source_module_form(a, b, 0.0051),
               lambda a, b: lightly_formula(a, b, 0.0051)):
        a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
        loss = fn(a, b)
        loss.backward()
        losses.append(loss.detach())
        grads.append((a.grad, b.grad))
    for other, other_grads in zip(losses[1:], grads[1:]):
        torch.testing.assert_close(losses[0], other, rtol=1e-10, atol=1e-10)
        for g, h in zip(grads[0], other_grads):
            torch.testing.assert_close(g, h, rtol=1e-8, atol=1e-10)


def test_hand_computed_values():
    # one feature, the second view the negative of the first: C = -var / (var + eps), L = (1 + var / (var + eps))^2
    z = torch.tensor([[1.0], [-1.0], [3.0], [-3.0]], dtype=torch.float64)  # mean 0, biased variance 5
    loss = BarlowTwinsCrossCorrelationLoss(lambd=0.0051)(z, -z)
    assert loss.item() == pytest.approx((1 + 5 / (5 + 1e-5)) ** 2, rel=1e-12)
    # identical views: C_11 = 5 / (5 + eps), L = (eps / (5 + eps))^2
    assert BarlowTwinsCrossCorrelationLoss()(z, z).item() == pytest.approx((1e-5 / (5 + 1e-5)) ** 2, rel=1e-9)
    # two features, view b swaps them: diagonal 0 (features uncorrelated), off-diagonal 1 (each equals the other)
    za = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    zb = za.flip(1)
    c_off = 1 / (1 + 1e-5)
    loss = BarlowTwinsCrossCorrelationLoss(lambd=0.25, eps=1e-5)(za, zb)
    assert loss.item() == pytest.approx(2 * 1.0 + 0.25 * 2 * c_off**2, rel=1e-12)
    # lambda = 0: the invariance term alone
    assert BarlowTwinsCrossCorrelationLoss(lambd=0.0)(za, zb).item() == pytest.approx(2.0, rel=1e-12)


def test_invariant_to_per_feature_affine_maps():
    """Standardisation removes a positive per-feature scale and any shift (up to eps)."""
    z_a, z_b = _inputs(16, seed=2)
    loss = BarlowTwinsCrossCorrelationLoss(eps=0.0)
    scale, shift = torch.linspace(0.1, 10, z_a.shape[1], dtype=torch.float64), torch.arange(z_a.shape[1]) * 100.0
    torch.testing.assert_close(loss(z_a * scale + shift, z_b * scale.flip(0) - shift), loss(z_a, z_b),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("batch", [8, 32])
def test_monai_barlow_twins_loss_normalises_differently(batch):
    """Documented difference, not a reference: MONAI divides by the *unbiased* std plus 1e-6 outside the square root
    (and defaults to lambda 5e-3). With the same lambda every entry of C shrinks by (N - 1) / N, which moves the loss
    by about 9-10% here (SPEC 2b measured 23% at N = 32, D = 64 on other data); replacing the batch-norm
    standardisation of the paper reference by MONAI's reproduces MONAI's number, which pins the cause."""
    z_a, z_b = _inputs(batch, seed=3)
    ours = BarlowTwinsCrossCorrelationLoss(lambd=0.0051)(z_a, z_b)
    monai = MonaiBarlowTwinsLoss(lambd=0.0051)(z_a, z_b)
    assert abs(monai.item() - ours.item()) / ours.item() > 0.05

    def monai_standardised(z):
        return (z - z.mean(0)) / (z.std(0, unbiased=True) + 1e-6)

    a, b = monai_standardised(z_a), monai_standardised(z_b)
    c = a.T @ b / batch
    off = ~torch.eye(c.shape[0], dtype=torch.bool)
    explained = (torch.diagonal(c) - 1).pow(2).sum() + 0.0051 * c[off].pow(2).sum()
    torch.testing.assert_close(monai, explained, rtol=1e-8, atol=1e-8)  # MONAI holds lambda as a float32 tensor
    assert MonaiBarlowTwinsLoss().lambd == 5e-3 and BarlowTwinsCrossCorrelationLoss().lambd == 0.0051


def test_half_precision_inputs_computed_in_float32_under_autocast():
    z_a, z_b = _inputs(32, seed=4, dtype=torch.float32)
    ref = BarlowTwinsCrossCorrelationLoss()(z_a, z_b)
    a, b = z_a.bfloat16().requires_grad_(), z_b.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = BarlowTwinsCrossCorrelationLoss()(a, b)
    loss.backward()
    assert loss.dtype == torch.float32 and a.grad.dtype == torch.bfloat16 and torch.isfinite(a.grad.float()).all()
    # only the bfloat16 rounding of the inputs separates it from the float32 loss
    expected = BarlowTwinsCrossCorrelationLoss()(z_a.bfloat16().float(), z_b.bfloat16().float())
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert math.isclose(loss.item(), ref.item(), rel_tol=0.05)


def test_bad_inputs_and_arguments():
    loss = BarlowTwinsCrossCorrelationLoss()
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.randn(4, 3, 1), torch.randn(4, 3, 1))
    with pytest.raises(ValueError, match="at least 2 samples"):
        loss(torch.randn(1, 3), torch.randn(1, 3))
    for kwargs in ({"lambd": -0.1}, {"eps": -1.0}):
        with pytest.raises(ValueError):
            BarlowTwinsCrossCorrelationLoss(**kwargs)
    assert "lambd=0.0051" in repr(loss)
