"""LARS against hand-computed numbers and a float64 numpy loop written from solo-learn's definition.

Reference (solo-learn 1.0.6 ``solo/utils/lars.py``; You et al. 2017, eq. 6), per parameter p with raw gradient g:
    adapted and ||p|| != 0 and ||g|| != 0:  r = eta ||p|| / (||g|| + wd ||p|| + eps);  clip_lr: r = min(r / lr, 1)
                                            u = r (g + wd p)
    otherwise (excluded, or a zero norm):   u = g                     (no weight decay)
    buf = u on the first step, else m buf + (1 - dampening) u;  p -= lr (u + m buf if nesterov else buf)
"""

import copy

import numpy as np
import pytest
import torch

from monai_ssl_ext.optimizers import LARS


def _step(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = torch.as_tensor(np.asarray(g), dtype=p.dtype).clone()
    opt.step()


def _reference(params, grad_steps, lrs, adapted, *, momentum, wd, eta, eps=1e-8, clip_lr=False, dampening=0.0,
               nesterov=False):
    """The definition above as a plain float64 loop; returns the parameters after every step."""
    params = [np.array(p, dtype=np.float64) for p in params]
    bufs = [None] * len(params)
    history = []
    for grads, lr in zip(grad_steps, lrs):
        for i, g in enumerate(grads):
            p, g = params[i], np.asarray(g, dtype=np.float64)
            p_norm, g_norm = np.sqrt(np.sum(p * p)), np.sqrt(np.sum(g * g))
            if adapted[i] and p_norm != 0 and g_norm != 0:
                ratio = eta * p_norm / (g_norm + wd * p_norm + eps)
                if clip_lr:
                    ratio = min(ratio / lr, 1.0)
                u = ratio * (g + wd * p)
            else:
                u = g
            if momentum != 0:
                bufs[i] = u.copy() if bufs[i] is None else momentum * bufs[i] + (1 - dampening) * u
                u = u + momentum * bufs[i] if nesterov else bufs[i]
            params[i] = p - lr * u
        history.append([p.copy() for p in params])
    return history


def test_hand_computed_first_step():
    # ||p|| = 5, ||g|| = 1, wd = 0: trust = 0.001 * 5 / 1 = 0.005, p <- p - 1 * 0.005 * g
    p = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    _step(LARS([p], lr=1.0), [p], [[0.6, 0.8]])
    torch.testing.assert_close(p.detach(), torch.tensor([2.997, 3.996], dtype=torch.float64), rtol=0, atol=1e-9)

    # zero weights: no trust ratio, no weight decay, plain SGD step on g
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    _step(LARS([p], lr=0.5, weight_decay=0.1), [p], [[0.6, 0.8]])
    torch.testing.assert_close(p.detach(), torch.tensor([-0.3, -0.4], dtype=torch.float64), rtol=0, atol=1e-12)


def test_denominator_uses_raw_gradient_norm_plus_wd_times_weight_norm():
    """Fails on the BYOL / Barlow Twins form (denominator ||g + wd p||, here sqrt(1.25) ~ 1.118 instead of 1.5)."""
    # p = [3, 4], g = [0.8, -0.6] (orthogonal to p, ||g|| = 1), wd = 0.1: g + wd p = [1.1, -0.2]
    # solo-learn: trust = 0.001 * 5 / (1 + 0.1 * 5) = 1 / 300; lr = 2: p <- p - 2 / 300 * [1.1, -0.2]
    p = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    _step(LARS([p], lr=2.0, weight_decay=0.1, eps=0.0), [p], [[0.8, -0.6]])
    expected = torch.tensor([3.0 - 2.2 / 300, 4.0 + 0.4 / 300], dtype=torch.float64)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-12)
    hybrid = torch.tensor([3.0, 4.0], dtype=torch.float64) - 2 * 0.005 / 1.25**0.5 * torch.tensor([1.1, -0.2],
                                                                                                  dtype=torch.float64)
    assert (p.detach() - hybrid).abs().max() > 1e-3  # the old hybrid's value is clearly different


def test_zero_gradient_gets_no_weight_decay():
    """||g|| = 0: solo-learn skips the trust ratio *and* the weight decay, so the weights do not move.
    (The BYOL / Barlow Twins form would step by lr * eta * p here.)"""
    p = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    _step(LARS([p], lr=1.0, weight_decay=0.1, eta=0.02), [p], [[0.0, 0.0]])
    assert torch.equal(p.detach(), torch.tensor([3.0, 4.0], dtype=torch.float64))


@pytest.mark.parametrize("clip_lr, eta", [(False, 0.001), (False, 0.02), (True, 0.02), (True, 5.0)])
@pytest.mark.parametrize("exclude", [True, False])
def test_four_steps_match_reference(clip_lr, eta, exclude):
    """Conv-like weight, bias, norm weight, a 0-d scalar, a zero-initialised weight and a zero-gradient step; the
    learning rate changes between steps (as under a scheduler) and clip_lr uses the current one. eta 5 with clip_lr
    clips (ratio / lr > 1), eta 0.02 does not."""
    rng = np.random.default_rng(0)
    shapes = [(3, 2, 2), (3,), (3,), (), (2, 3)]
    p0 = [rng.normal(size=s) for s in shapes[:4]] + [np.zeros(shapes[4])]
    grad_steps = [[rng.normal(size=s) for s in shapes] for _ in range(4)]
    grad_steps[2][0] = np.zeros(shapes[0])  # zero gradient on an adapted weight: no update term, no weight decay
    lrs = [0.3, 0.3, 0.2, 0.1]
    wd, m = 0.1, 0.9
    adapted = [True, not exclude, not exclude, True, True]  # solo-learn excludes ndim == 1 only
    expected = _reference(p0, grad_steps, lrs, adapted, momentum=m, wd=wd, eta=eta, clip_lr=clip_lr)

    params = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in p0]
    opt = LARS(params, lr=lrs[0], momentum=m, weight_decay=wd, eta=eta, exclude_bias_and_norm=exclude,
               clip_lr=clip_lr)
    for grads, lr, exp in zip(grad_steps, lrs, expected):
        for group in opt.param_groups:
            group["lr"] = lr
        _step(opt, params, grads)
        for i, (p, e) in enumerate(zip(params, exp)):
            np.testing.assert_allclose(p.detach().numpy(), e, rtol=1e-12, atol=1e-14, err_msg=f"param {i}")


def test_clip_lr_actually_clips_and_non_clipped_case_differs():
    """eta large: trust / lr > 1 is clipped to 1, i.e. a plain SGD step on g + wd * p; without clip_lr it is not."""
    p = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    _step(LARS([p], lr=0.1, weight_decay=0.5, eta=100.0, clip_lr=True), [p], [[1.0, -1.0]])
    torch.testing.assert_close(p.detach(), torch.tensor([3.0 - 0.1 * 2.5, 4.0 - 0.1 * 1.0], dtype=torch.float64))
    q = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    _step(LARS([q], lr=0.1, weight_decay=0.5, eta=100.0, clip_lr=False), [q], [[1.0, -1.0]])
    trust = 100.0 * 5 / (2**0.5 + 0.5 * 5 + 1e-8)
    torch.testing.assert_close(q.detach(), torch.tensor([3.0 - 0.1 * trust * 2.5, 4.0 - 0.1 * trust * 1.0],
                                                        dtype=torch.float64))


@pytest.mark.parametrize("dampening, nesterov", [(0.0, False), (0.3, False), (0.0, True)])
def test_excluded_params_are_torch_sgd_momentum_without_weight_decay(dampening, nesterov):
    """Excluded parameters (a ``lars_exclude`` group, or 1-D with exclude_bias_and_norm) get torch SGD with momentum
    on the raw gradient, whatever the group's weight decay; the buffer starts as a copy of the first update (torch
    SGD style, visible with dampening != 0)."""
    torch.manual_seed(0)
    a = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    ref_a, ref_b = (t.detach().clone().requires_grad_() for t in (a, b))
    lars = LARS([{"params": [a], "lars_exclude": True}, {"params": [b]}], lr=0.05, momentum=0.9, weight_decay=0.1,
                exclude_bias_and_norm=True, dampening=dampening, nesterov=nesterov)
    sgd = torch.optim.SGD([ref_a, ref_b], lr=0.05, momentum=0.9, dampening=dampening, nesterov=nesterov)
    for _ in range(4):
        ga, gb = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
        _step(lars, [a, b], [ga, gb])
        _step(sgd, [ref_a, ref_b], [ga, gb])
        torch.testing.assert_close(a, ref_a, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(b, ref_b, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dampening, nesterov", [(0.3, False), (0.0, True)])
def test_dampening_and_nesterov_on_adapted_params_match_reference(dampening, nesterov):
    rng = np.random.default_rng(1)
    p0 = [rng.normal(size=(4, 3))]
    grad_steps = [[rng.normal(size=(4, 3))] for _ in range(3)]
    kw = dict(momentum=0.9, wd=1e-2, eta=0.02, clip_lr=True, dampening=dampening, nesterov=nesterov)
    expected = _reference(p0, grad_steps, [0.25] * 3, [True], **kw)
    p = torch.tensor(p0[0], requires_grad=True)
    opt = LARS([p], lr=0.25, momentum=0.9, weight_decay=1e-2, eta=0.02, clip_lr=True, dampening=dampening,
               nesterov=nesterov)
    for grads, exp in zip(grad_steps, expected):
        _step(opt, [p], grads)
        np.testing.assert_allclose(p.detach().numpy(), exp[0], rtol=1e-12, atol=1e-14)


def test_no_momentum_keeps_no_state_and_grad_is_untouched():
    p = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    opt = LARS([p], lr=1.0, momentum=0.0, weight_decay=0.1, eps=0.0)
    p.grad = torch.tensor([0.8, -0.6], dtype=torch.float64)
    opt.step()
    assert p not in opt.state or "momentum_buffer" not in opt.state[p]
    assert torch.equal(p.grad, torch.tensor([0.8, -0.6], dtype=torch.float64))
    torch.testing.assert_close(p.detach(), torch.tensor([3.0 - 1.1 / 300, 4.0 + 0.2 / 300], dtype=torch.float64))


def test_bias_not_excluded_by_default_and_missing_grad_skipped():
    b = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    untouched = torch.ones(2, requires_grad=True)
    opt = LARS([b, untouched], lr=1.0)
    b.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(b.detach(), torch.tensor([2.997, 3.996], dtype=torch.float64))  # adapted 1-D param
    assert torch.equal(untouched.detach(), torch.ones(2)) and untouched not in opt.state


def test_state_dict_round_trip_and_old_state_dicts_load():
    torch.manual_seed(0)
    w = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    opt = LARS([w], lr=0.1, weight_decay=1e-2, eta=0.02, clip_lr=True)
    _step(opt, [w], [torch.randn(3, 2, dtype=torch.float64)])
    sd = copy.deepcopy(opt.state_dict())  # state_dict() shares the momentum buffers with opt
    for group in sd["param_groups"]:  # a checkpoint written before dampening / nesterov existed
        group.pop("dampening"), group.pop("nesterov")
    w2 = w.detach().clone().requires_grad_()
    opt2 = LARS([w2], lr=0.1, weight_decay=1e-2, eta=0.02, clip_lr=True)
    opt2.load_state_dict(sd)
    g = torch.randn(3, 2, dtype=torch.float64)
    _step(opt, [w], [g])
    _step(opt2, [w2], [g])
    assert torch.equal(w, w2)


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
                   {"lr": 0.1, "eta": -1.0}, {"lr": 0.1, "eps": -1.0}, {"lr": 0.1, "momentum": 0.0, "nesterov": True},
                   {"lr": 0.1, "dampening": 0.1, "nesterov": True}):
        with pytest.raises(ValueError):
            LARS([p], **kwargs)
