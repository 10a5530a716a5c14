"""LARS(variant="barlowtwins"), weight_and_bias_groups and WarmupCosineLR against float64 loops written from
facebookresearch/barlowtwins main.py (class LARS, the parameter split, adjust_learning_rate).

Reference LARS step, per parameter p with gradient g (filters on p.ndim == 1, both on):
    not excluded:  dp = g + wd p;  q = eta ||p|| / ||dp|| if ||p|| > 0 and ||dp|| > 0 else 1;  dp = q dp
    excluded:      dp = g
    mu = m mu + dp (mu starts at zero);  p -= lr mu
Reference schedule, step s of S = epochs * len(loader), W = 10 * len(loader), base = batch / 256:
    s < W: base s / W;  else q = 0.5 (1 + cos(pi (s - W) / (S - W))), base q + 0.001 base (1 - q)
    lr_weights = 0.2 lr, lr_biases = 0.0048 lr
"""

import copy
import math

import numpy as np
import pytest
import torch

from monai_ssl_ext.optimizers import LARS, WarmupCosineLR, weight_and_bias_groups


def _reference_lars(params, grad_steps, lrs, excluded, *, momentum, wd, eta):
    params = [np.array(p, dtype=np.float64) for p in params]
    mus = [np.zeros_like(p) for p in params]
    history = []
    for grads, lr_per_param in zip(grad_steps, lrs):
        for i, g in enumerate(grads):
            p, dp = params[i], np.asarray(g, dtype=np.float64)
            if not excluded[i]:
                dp = dp + wd * p
                p_norm, dp_norm = np.sqrt(np.sum(p * p)), np.sqrt(np.sum(dp * dp))
                q = eta * p_norm / dp_norm if (p_norm > 0 and dp_norm > 0) else 1.0
                dp = q * dp
            mus[i] = momentum * mus[i] + dp
            params[i] = p - lr_per_param[i] * mus[i]
        history.append([p.copy() for p in params])
    return history


def _reference_lr(step, steps_per_epoch, epochs, batch_size):
    max_steps, warmup = epochs * steps_per_epoch, 10 * steps_per_epoch
    base = batch_size / 256
    if step < warmup:
        return base * step / warmup
    q = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (max_steps - warmup)))
    return base * q + base * 0.001 * (1 - q)


def _step(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = torch.as_tensor(np.asarray(g), dtype=p.dtype).clone()
    opt.step()


def test_hand_computed_step_uses_norm_of_gradient_plus_weight_decay():
    # p = [3, 4], g = [0.8, -0.6], wd = 0.1: dp = [1.1, -0.2], ||dp|| = sqrt(1.25), q = 0.001 * 5 / sqrt(1.25)
    p = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    _step(LARS([p], lr=2.0, weight_decay=0.1, variant="barlowtwins"), [p], [[0.8, -0.6]])
    q = 0.001 * 5 / 1.25**0.5
    expected = torch.tensor([3.0 - 2 * q * 1.1, 4.0 + 2 * q * 0.2], dtype=torch.float64)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-14)
    # the default (solo-learn) variant takes another step on the same numbers
    r = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    _step(LARS([r], lr=2.0, weight_decay=0.1), [r], [[0.8, -0.6]])
    assert (r.detach() - expected).abs().max() > 1e-3


def test_zero_gradient_still_decays_and_zero_weights_take_the_raw_step():
    # ||g|| = 0, p != 0: dp = wd p, q = eta ||p|| / (wd ||p||) = eta / wd, so p <- p - lr * eta * p
    p = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    _step(LARS([p], lr=1.0, weight_decay=0.1, eta=0.02, variant="barlowtwins"), [p], [[0.0, 0.0]])
    torch.testing.assert_close(p.detach(), torch.tensor([3.0 * 0.98, 4.0 * 0.98], dtype=torch.float64))
    # p = 0: q = 1, dp = g + wd * 0
    z = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    _step(LARS([z], lr=0.5, weight_decay=0.1, variant="barlowtwins"), [z], [[0.6, 0.8]])
    torch.testing.assert_close(z.detach(), torch.tensor([-0.3, -0.4], dtype=torch.float64), rtol=0, atol=1e-15)


def test_reference_groups_and_four_steps_match_the_reference_loop():
    """A small model split as the reference splits it (weights / ndim-1 biases and BN parameters), two learning rates
    that change every step, a zero-initialised weight and a zero-gradient step: four steps against the loop above."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    model.double()
    with torch.no_grad():
        model[2].weight.zero_()
    groups = weight_and_bias_groups(model, bias_lr=0.0048)
    weights, biases = groups[0]["params"], groups[1]["params"]
    assert [tuple(p.shape) for p in weights] == [(3, 4), (2, 3)]
    assert [tuple(p.shape) for p in biases] == [(3,), (3,), (2,)] and groups[1]["lr"] == 0.0048
    assert "lr" not in groups[0]
    assert weight_and_bias_groups(model)[1].keys() == {"params"}

    params = weights + biases
    p0 = [p.detach().numpy().copy() for p in params]
    rng = np.random.default_rng(1)
    grad_steps = [[rng.normal(size=p.shape) for p in p0] for _ in range(4)]
    grad_steps[2][0] = np.zeros_like(p0[0])
    factors = [0.0, 0.5, 1.0, 0.7]  # a schedule's multipliers: the first step at lr 0, as in the reference
    lrs = [[f * 0.2] * 2 + [f * 0.0048] * 3 for f in factors]
    expected = _reference_lars(p0, grad_steps, lrs, [False, False, True, True, True], momentum=0.9, wd=1e-2,
                               eta=0.001)

    opt = LARS(groups, lr=0.2, weight_decay=1e-2, eta=0.001, momentum=0.9, exclude_bias_and_norm=True,
               variant="barlowtwins")
    for grads, f, exp in zip(grad_steps, factors, expected):
        opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = f * 0.2, f * 0.0048
        _step(opt, params, grads)
        for i, (p, e) in enumerate(zip(params, exp)):
            np.testing.assert_allclose(p.detach().numpy(), e, rtol=1e-12, atol=1e-15, err_msg=f"param {i}")


def test_variant_in_state_dict_and_old_state_dicts_load():
    w = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    opt = LARS([w], lr=0.1, weight_decay=1e-2, variant="barlowtwins")
    _step(opt, [w], [torch.randn(3, 2, dtype=torch.float64)])
    sd = copy.deepcopy(opt.state_dict())
    assert sd["param_groups"][0]["variant"] == "barlowtwins"
    old = copy.deepcopy(sd)
    old["param_groups"][0].pop("variant")  # written before the variant existed: solo-learn
    opt2 = LARS([w.detach().clone().requires_grad_()], lr=0.1)
    opt2.load_state_dict(old)
    assert opt2.param_groups[0]["variant"] == "solo-learn"
    with pytest.raises(ValueError, match="variant"):
        LARS([w], lr=0.1, variant="byol")


def test_warmup_cosine_matches_reference_schedule_for_both_groups():
    steps_per_epoch, epochs, batch = 3, 14, 512  # warmup 30 steps, 42 in all
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    base = batch / 256
    opt = torch.optim.SGD([{"params": [a], "lr": 0.2 * base}, {"params": [b], "lr": 0.0048 * base}], lr=1.0)
    sched = WarmupCosineLR(opt, warmup_steps=10 * steps_per_epoch, total_steps=epochs * steps_per_epoch,
                           end_factor=0.001)
    for step in range(epochs * steps_per_epoch):
        want = _reference_lr(step, steps_per_epoch, epochs, batch)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * want, rel=1e-12, abs=1e-15), step
        assert opt.param_groups[1]["lr"] == pytest.approx(0.0048 * want, rel=1e-12, abs=1e-15), step
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * base * 0.001)  # held at the end
    # resumes from its state dict
    opt2 = torch.optim.SGD([{"params": [a], "lr": 0.2 * base}, {"params": [b], "lr": 0.0048 * base}], lr=1.0)
    sched2 = WarmupCosineLR(opt2, warmup_steps=30, total_steps=42, end_factor=0.001)
    sched2.load_state_dict(sched.state_dict())
    sched2.step()
    assert opt2.param_groups[1]["lr"] == pytest.approx(0.0048 * base * 0.001)


def test_warmup_cosine_without_warmup_and_bad_arguments():
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1.0)
    sched = WarmupCosineLR(opt, warmup_steps=0, total_steps=4)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs, [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)),
                                     0.0], atol=1e-12)
    for kwargs in ({"warmup_steps": 5, "total_steps": 5}, {"warmup_steps": -1, "total_steps": 5},
                   {"warmup_steps": 1, "total_steps": 5, "end_factor": 1.5}):
        with pytest.raises(ValueError):
            WarmupCosineLR(torch.optim.SGD([p], lr=1.0), **kwargs)
