"""MoCoV3Loss against an independent float64 loop implementation of MoCo v3's Algorithm 1 (Chen, Xie, He 2021):
ctr(q, k) = 2 tau * mean_i -log( exp(q_i.k_i / tau) / sum_j exp(q_i.k_j / tau) ) on L2-normalised rows,
L = ctr(q1, k2) + ctr(q2, k1); values, gradients (queries only), the 2 tau factor, a closed-form value and the
closed-form gradient."""

import math

import pytest
import torch

from monai_ssl_ext.losses import MoCoV3Loss

TAUS = (0.2, 1.0)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt((v * v).sum())


def reference_ctr(q: torch.Tensor, k: torch.Tensor, tau: float, factor: bool = True) -> torch.Tensor:
    """Explicit loops in float64: (2 tau) * (1/B) sum_i [ log sum_j exp(s_ij / tau) - s_ii / tau ], s_ij the cosine
    similarity of query i and key j; the key is a constant (stop-gradient)."""
    q, k = q.double(), k.detach().double()
    b = q.shape[0]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(b):
        qi = _unit(q[i])
        logits = [(qi * _unit(k[j])).sum() / tau for j in range(b)]
        log_denominator = torch.log(sum(torch.exp(s) for s in logits))
        total = total + (log_denominator - logits[i])  # -log softmax of the positive
    ce = total / b
    return 2 * tau * ce if factor else ce


def reference_loss(q1, q2, k1, k2, tau):
    return reference_ctr(q1, k2, tau) + reference_ctr(q2, k1, tau)


def _inputs(b=5, d=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=dtype)
    q1, q2 = x + 0.9 * torch.randn(b, d, generator=g, dtype=dtype), x + 0.9 * torch.randn(b, d, generator=g, dtype=dtype)
    k1, k2 = x + 0.9 * torch.randn(b, d, generator=g, dtype=dtype), x + 0.9 * torch.randn(b, d, generator=g, dtype=dtype)
    return q1, q2, k1, k2


@pytest.mark.parametrize("tau", TAUS)
def test_values_and_gradients_match_reference(tau):
    q1, q2, k1, k2 = _inputs()
    a = [t.clone().requires_grad_() for t in (q1, q2, k1, k2)]
    loss = MoCoV3Loss(temperature=tau)(*a)
    loss.backward()
    r = [t.clone().requires_grad_() for t in (q1, q2)]
    ref = reference_loss(r[0], r[1], k1, k2, tau)
    ref.backward()
    assert ref.item() > 0.5  # not saturated
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a[0].grad, r[0].grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(a[1].grad, r[1].grad, rtol=1e-8, atol=1e-12)
    # stop-gradient: the keys get nothing, even when they require gradients
    assert a[2].grad is None and a[3].grad is None


@pytest.mark.parametrize("tau", TAUS)
def test_closed_form_gradient_of_the_queries(tau):
    """d ctr / d q_i = (2 / B) (I - qh_i qh_i^T) / ||q_i|| * sum_j (p_ij - [i == j]) kh_j with p_ij the softmax of
    row i: the 2 tau factor cancels the 1/tau of the logits (Alg. 1's reason for it)."""
    q1, q2, k1, k2 = _inputs(b=4, d=5, seed=2)
    q = q1.clone().requires_grad_()
    MoCoV3Loss(temperature=tau).contrastive(q, k2).backward()
    b = q1.shape[0]
    qh = q1 / q1.norm(dim=1, keepdim=True)
    kh = k2 / k2.norm(dim=1, keepdim=True)
    expected = torch.zeros_like(q1)
    for i in range(b):
        logits = torch.stack([(qh[i] * kh[j]).sum() / tau for j in range(b)])
        p = torch.exp(logits) / torch.exp(logits).sum()
        g_hat = sum((p[j] - (1.0 if i == j else 0.0)) * kh[j] for j in range(b)) * 2 / b
        projector = torch.eye(q1.shape[1], dtype=q1.dtype) - torch.outer(qh[i], qh[i])
        expected[i] = projector @ g_hat / q1[i].norm()
    torch.testing.assert_close(q.grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tau", TAUS)
def test_two_tau_factor(tau):
    q1, q2, k1, k2 = _inputs(seed=4)
    loss = MoCoV3Loss(temperature=tau)
    ce = reference_ctr(q1, k2, tau, factor=False)
    torch.testing.assert_close(loss.contrastive(q1, k2), 2 * tau * ce, rtol=1e-10, atol=1e-12)
    # closed form: orthonormal keys, each query equal to its positive key -> logits 1/tau on the diagonal, 0 elsewhere;
    # ctr = 2 tau * log(1 + (B - 1) exp(-1/tau)), the same for both terms
    b = 4
    e = torch.eye(b, 6, dtype=torch.float64)
    expected = 2 * (2 * tau * math.log(1 + (b - 1) * math.exp(-1 / tau)))
    torch.testing.assert_close(loss(3 * e, 0.5 * e, e, 2 * e), torch.tensor(expected, dtype=torch.float64))


def test_symmetric_in_the_views():
    q1, q2, k1, k2 = _inputs(seed=5)
    loss = MoCoV3Loss(temperature=0.2)
    value = loss(q1, q2, k1, k2)
    torch.testing.assert_close(loss(q2, q1, k2, k1), value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(value, loss.contrastive(q1, k2) + loss.contrastive(q2, k1), rtol=1e-12, atol=1e-12)
    # each query is scored against the *other* view's keys: pairing a view with its own keys is another number
    assert not torch.allclose(loss(q1, q2, k2, k1), value)


def test_float32_is_finite_and_close_to_reference():
    q1, q2, k1, k2 = _inputs(b=8, d=16, seed=6, dtype=torch.float32)
    for tau in TAUS:
        q = [q1.clone().requires_grad_(), q2.clone().requires_grad_()]
        loss = MoCoV3Loss(temperature=tau)(q[0], q[1], k1, k2)
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        torch.testing.assert_close(loss.double(), reference_loss(q1, q2, k1, k2, tau), rtol=1e-5, atol=1e-6)
        assert all(torch.isfinite(t.grad).all() for t in q)


def test_single_process_gather_flag_is_a_no_op():
    q1, q2, k1, k2 = _inputs(seed=7)
    torch.testing.assert_close(MoCoV3Loss(0.2, gather_distributed=True)(q1, q2, k1, k2),
                               MoCoV3Loss(0.2, gather_distributed=False)(q1, q2, k1, k2), rtol=0, atol=0)


def test_defaults_and_bad_input():
    loss = MoCoV3Loss()
    assert loss.temperature == 1.0 and loss.gather_distributed  # moco-v3's --moco-t default (ResNet-50)
    with pytest.raises(ValueError, match="temperature"):
        MoCoV3Loss(temperature=0.0)
    q = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        loss(q, q, q, torch.randn(5, 3))
    with pytest.raises(ValueError, match="same shape"):
        loss(q[0], q[0], q[0], q[0])
