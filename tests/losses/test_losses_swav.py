"""Sinkhorn codes and the SwAV loss against float64 numpy written from the paper (Caron et al. 2020, Sec. 3.1 and
App. A.1): the codes are the optimal-transport plan diag(u) P diag(v) of P = exp(S / eps) with prototype marginal
1/K and sample marginal 1/B, found by alternately solving for v and u (Cuturi's scaling form, not the code's
in-place normalisations); the loss is the swapped cross-entropy averaged over the other views and the coded crops."""

import numpy as np
import pytest
import torch

from monai_ssl_ext.losses import SwAVLoss, sinkhorn


def np_sinkhorn(scores: np.ndarray, eps: float, iterations: int) -> np.ndarray:
    """Scaling vectors u (samples), v (prototypes): v = r / (P^T u), u = c / (P v), starting from u = 1."""
    p = np.exp(scores / eps)
    p = p / p.sum()
    b, k = p.shape
    u, v = np.ones(b), np.ones(k)
    for _ in range(iterations):
        v = (1.0 / k) / (p.T @ u)
        u = (1.0 / b) / (p @ v)
    return b * (u[:, None] * p * v[None, :])


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def np_swav(scores: list[np.ndarray], tau=0.1, eps=0.05, iters=3, assign=(0, 1), queues=None) -> float:
    total = 0.0
    for i, s in enumerate(assign):
        x = scores[s] if queues is None else np.concatenate([queues[i], scores[s]])
        q = np_sinkhorn(x, eps, iters)[-scores[s].shape[0]:]
        sub = 0.0
        for v in range(len(scores)):
            if v != s:
                sub += -np.mean(np.sum(q * np_log_softmax(scores[v] / tau), axis=1))
        total += sub / (len(scores) - 1)
    return total / len(assign)


def _unit_scores(n: int, k: int, seed: int, dim: int = 16) -> torch.Tensor:
    """Cosine scores of unit embeddings against unit prototypes (what SwAV feeds Sinkhorn)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, dim, generator=g, dtype=torch.float64), dim=1)
    return z @ c.T


@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_sinkhorn_equals_scaling_form(iterations):
    s = _unit_scores(12, 7, 0)
    got = sinkhorn(s, epsilon=0.05, iterations=iterations)
    np.testing.assert_allclose(got.numpy(), np_sinkhorn(s.numpy(), 0.05, iterations), rtol=1e-10, atol=1e-12)


def test_sinkhorn_marginals():
    s = _unit_scores(30, 6, 1)
    q = sinkhorn(s, epsilon=0.05, iterations=3)
    # every sample's code is a distribution (the last step normalises samples exactly)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(30, dtype=torch.float64), rtol=0, atol=1e-12)
    assert bool((q >= 0).all())
    # prototypes: equal shares B / K, reached as the iterations go on
    err = [float((sinkhorn(s, 0.05, n).sum(dim=0) - 30 / 6).abs().max()) for n in (1, 3, 300)]
    assert err[2] < 1e-6 < err[0] and err[2] <= err[1] <= err[0]


def test_sinkhorn_float32_large_scores_no_overflow():
    """exp(1 / 0.05) is fine in float32, exp(5 / 0.05) is not: shifted scores are coded without overflow (the
    shift is a common factor of P, so the codes are those of the unshifted scores)."""
    s = (_unit_scores(8, 5, 2) + 4).float()
    assert not torch.isfinite(torch.exp(s / 0.05)).all()
    q = sinkhorn(s, epsilon=0.05, iterations=3)
    assert torch.isfinite(q).all()
    np.testing.assert_allclose(q.double().numpy(), np_sinkhorn(s.double().numpy(), 0.05, 3),
                               rtol=1e-4, atol=1e-6)


def test_sinkhorn_is_equipartition_not_argmax():
    """All samples nearest to one prototype: the codes still spread over every prototype (no collapse)."""
    s = torch.full((20, 4), -0.5, dtype=torch.float64)
    s[:, 0] = 0.9
    s += 0.01 * _unit_scores(20, 4, 3)
    q = sinkhorn(s, epsilon=0.05, iterations=20)
    np.testing.assert_allclose(q.sum(dim=0).numpy(), np.full(4, 5.0), rtol=1e-3)


@pytest.mark.parametrize("n_views,assign", [(2, (0, 1)), (8, (0, 1)), (3, (0,))])
def test_swav_loss_value_and_gradient(n_views, assign):
    scores = [_unit_scores(6, 9, 10 + v).requires_grad_(True) for v in range(n_views)]
    loss = SwAVLoss(temperature=0.1, epsilon=0.05, sinkhorn_iterations=3, crops_for_assign=assign)(scores)
    ref = np_swav([s.detach().numpy() for s in scores], assign=assign)
    assert loss.item() == pytest.approx(ref, rel=1e-6)
    loss.backward()
    # gradient by central differences of the numpy loss (codes fixed: they carry no gradient)
    codes = [np_sinkhorn(scores[a].detach().numpy(), 0.05, 3) for a in assign]

    def np_fixed_codes(arrays):
        total = 0.0
        for i, a in enumerate(assign):
            sub = sum(-np.mean(np.sum(codes[i] * np_log_softmax(arrays[v] / 0.1), axis=1))
                      for v in range(n_views) if v != a)
            total += sub / (n_views - 1)
        return total / len(assign)

    arrays = [s.detach().numpy().copy() for s in scores]
    h = 1e-6
    for v in (0, n_views - 1):
        for (b, k) in ((0, 0), (3, 5)):
            plus = [a.copy() for a in arrays]
            minus = [a.copy() for a in arrays]
            plus[v][b, k] += h
            minus[v][b, k] -= h
            fd = (np_fixed_codes(plus) - np_fixed_codes(minus)) / (2 * h)
            grad = 0.0 if scores[v].grad is None else float(scores[v].grad[b, k])  # a coded-only view: none
            assert grad == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_swav_queue_rows_take_part_and_are_dropped():
    scores = [_unit_scores(4, 6, 20 + v) for v in range(2)]
    queues = [_unit_scores(10, 6, 30 + i) for i in range(2)]
    loss = SwAVLoss()(scores, queues)
    ref = np_swav([s.numpy() for s in scores], queues=[q.numpy() for q in queues])
    assert float(loss) == pytest.approx(ref, rel=1e-6)
    assert float(loss) != pytest.approx(float(SwAVLoss()(scores)), rel=1e-3)


def test_swav_codes_carry_no_gradient():
    """Only the predictions are differentiated: with the predicted views detached, nothing reaches the coded ones."""
    s0 = _unit_scores(5, 4, 40).requires_grad_(True)
    s1 = _unit_scores(5, 4, 41).requires_grad_(True)
    SwAVLoss(crops_for_assign=(0,))([s0, s1]).backward()
    assert s0.grad is None and float(s1.grad.abs().max()) > 0


def test_swav_bad_inputs():
    s = [_unit_scores(4, 3, 0)]
    with pytest.raises(ValueError, match="views"):
        SwAVLoss()(s)
    with pytest.raises(ValueError, match="queue"):
        SwAVLoss()(s * 2, [s[0]])
    with pytest.raises(ValueError, match="temperature"):
        SwAVLoss(temperature=0)
