"""LARS against hand-computed numbers, a numpy float64 loop of the BYOL / Barlow Twins update and torch's SGD."""

import numpy as np
import pytest
import torch

from monai_ssl_ext.optimizers import LARS


def _step(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = torch.as_tensor(g, dtype=p.dtype).clone()
    opt.step()


def test_hand_computed_first_step():
    # ||p|| = 5, ||g|| = 1: trust = 0.001 * 5 / 1 = 0.005, p <- p - 1 * 0.005 * g
    p = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    _step(LARS([p], lr=1.0), [p], [[0.6, 0.8]])
    torch.testing.assert_close(p.detach(), torch.tensor([2.997, 3.996], dtype=torch.float64), rtol=0, atol=1e-9)

    # wd = 0.1: g + wd * p = [0.9, 1.2], norm 1.5, trust = 0.005 / 1.5; lr = 2: p <- p - 2 * [0.003, 0.004]
    p = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    _step(LARS([p], lr=2.0, weight_decay=0.1), [p], [[0.6, 0.8]])
    torch.testing.assert_close(p.detach(), torch.tensor([2.994, 3.992], dtype=torch.float64), rtol=0, atol=1e-9)

    # zero weights: trust falls back to 1, plain SGD step on g (+ wd * 0)
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    _step(LARS([p], lr=0.5, weight_decay=0.1), [p], [[0.6, 0.8]])
    torch.testing.assert_close(p.detach(), torch.tensor([-0.3, -0.4], dtype=torch.float64), rtol=0, atol=1e-12)


def _numpy_lars(w, b, grads, lr, m, wd, eta, eps, clip_lr):
    """Three steps by hand in float64: weight adapted (You et al. trust ratio on g + wd*w), bias plain SGD-momentum."""
    w, b = w.copy(), b.copy()
    mu_w, mu_b = np.zeros_like(w), np.zeros_like(b)
    history = []
    for gw, gb in grads:
        d = gw + wd * w
        pn, dn = np.sqrt((w**2).sum()), np.sqrt((d**2).sum())
        trust = eta * pn / (dn + eps) if pn > 0 and dn > 0 else 1.0
        if clip_lr:
            trust = min(trust / lr, 1.0)
        mu_w = m * mu_w + trust * d
        w = w - lr * mu_w
        mu_b = m * mu_b + gb
        b = b - lr * mu_b
        history.append((w.copy(), b.copy()))
    return history


@pytest.mark.parametrize("clip_lr, eta, lr", [(False, 0.001, 0.3), (False, 0.02, 0.3), (True, 0.001, 0.3),
                                               (True, 5.0, 0.3)])
def test_three_steps_match_numpy(clip_lr, eta, lr):
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(3, 4)), rng.normal(size=3)
    grads = [(rng.normal(size=(3, 4)), rng.normal(size=3)) for _ in range(3)]
    expected = _numpy_lars(w0, b0, grads, lr=lr, m=0.9, wd=1e-2, eta=eta, eps=1e-8, clip_lr=clip_lr)

    layer = torch.nn.Linear(4, 3).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w0))
        layer.bias.copy_(torch.from_numpy(b0))
    opt = LARS(layer.parameters(), lr=lr, momentum=0.9, weight_decay=1e-2, eta=eta, exclude_bias_and_norm=True,
               clip_lr=clip_lr)
    for (gw, gb), (ew, eb) in zip(grads, expected):
        _step(opt, [layer.weight, layer.bias], [gw, gb])
        np.testing.assert_allclose(layer.weight.detach().numpy(), ew, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(layer.bias.detach().numpy(), eb, rtol=1e-12, atol=1e-14)


def test_clip_lr_caps_effective_lr_at_lr():
    # eta huge: trust / lr > 1 is clipped to 1, i.e. a plain SGD step on g + wd * p
    p = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    _step(LARS([p], lr=0.1, weight_decay=0.5, eta=100.0, clip_lr=True), [p], [[1.0, -1.0]])
    torch.testing.assert_close(p.detach(), torch.tensor([3.0 - 0.1 * 2.5, 4.0 - 0.1 * 1.0], dtype=torch.float64))


def test_excluded_group_is_torch_sgd_momentum():
    torch.manual_seed(0)
    a = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    ref = a.detach().clone().requires_grad_()
    lars = LARS([{"params": [a], "lars_exclude": True}], lr=0.05, momentum=0.9, weight_decay=0.1)
    sgd = torch.optim.SGD([ref], lr=0.05, momentum=0.9)  # no weight decay for excluded parameters
    for _ in range(3):
        g = torch.randn(5, 3, dtype=torch.float64)
        _step(lars, [a], [g])
        _step(sgd, [ref], [g])
        torch.testing.assert_close(a, ref, rtol=1e-14, atol=1e-14)


def test_bias_not_excluded_by_default_and_missing_grad_skipped():
    b = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    untouched = torch.ones(2, requires_grad=True)
    opt = LARS([b, untouched], lr=1.0)
    b.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(b.detach(), torch.tensor([2.997, 3.996], dtype=torch.float64))  # adapted 1-D param
    assert torch.equal(untouched.detach(), torch.ones(2)) and untouched not in opt.state


def test_closure_and_bad_arguments():
    p = torch.tensor([1.0], requires_grad=True)
    opt = LARS([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(1.0)
    for kwargs in ({"lr": -1.0}, {"lr": 0.1, "momentum": -0.1}, {"lr": 0.1, "weight_decay": -1.0},
                   {"lr": 0.1, "eta": -1.0}):
        with pytest.raises(ValueError):
            LARS([p], **kwargs)
