"""EMATargetUpdate on a tiny ignite Engine against a hand-written BYOL loop (EMA over parameters only; the target's
BatchNorm statistics come from its own train-mode forwards), and the cosine momentum schedule."""

import copy
import math

import pytest
import torch
from ignite.engine import Engine, Events

from monai_ssl_ext.handlers.ema import EMATargetUpdate, cosine_momentum

BASE, FINAL = 0.9, 1.0  # a large step (1 - 0.9) so that the schedule visibly matters


def test_cosine_momentum_values():
    assert cosine_momentum(0, 10, 0.99, 1.0) == 0.99
    assert cosine_momentum(10, 10, 0.99, 1.0) == 1.0
    assert cosine_momentum(5, 10, 0.99, 1.0) == pytest.approx(0.995, abs=1e-15)
    assert cosine_momentum(1, 4, 0.99, 1.0) == pytest.approx(1 - 0.01 * (1 + 0.5**0.5) / 2, abs=1e-15)
    assert cosine_momentum(1, 4, 0.996, 0.5) == pytest.approx(0.5 - (0.5 - 0.996) * (1 + 0.5**0.5) / 2, abs=1e-15)
    assert cosine_momentum(99, 10, 0.99, 1.0) == 1.0  # clamped past the end
    with pytest.raises(ValueError):
        cosine_momentum(0, 0, 0.99, 1.0)


def _nets():
    torch.manual_seed(0)
    online = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    target = copy.deepcopy(online)
    with torch.no_grad():  # start the target away from the online net so that the EMA is visible
        for p in target.parameters():
            p.add_(1.0)
    return online, target


def _batches(n):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(6, 3, generator=g) for _ in range(n)]


def _train_step(online, opt, x):
    online.train()
    opt.zero_grad()
    online(x).pow(2).mean().backward()
    opt.step()


def _hand_loop(online, target, batches, total):
    """BYOL: after training step k = 0, 1, ..., xi <- tau_k xi + (1 - tau_k) theta with tau_k by cosine from BASE,
    over the parameters only; the target's buffers (BN statistics) are its own and untouched here."""
    opt = torch.optim.SGD(online.parameters(), lr=0.1)
    for k, x in enumerate(batches):
        _train_step(online, opt, x)
        tau = FINAL - (FINAL - BASE) * (math.cos(math.pi * k / total) + 1) / 2
        sd_t, sd_o = target.state_dict(), online.state_dict()
        params = {n for n, _ in online.named_parameters()}
        target.load_state_dict({n: tau * sd_t[n] + (1 - tau) * sd_o[n] if n in params else sd_t[n] for n in sd_t})
    return online, target


def _engine(online, opt):
    return Engine(lambda engine, x: _train_step(online, opt, x))


def _assert_same(a, b):
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=n)


def test_engine_matches_hand_loop_and_resumes():
    batches = _batches(3)  # epoch_length 3, max_epochs 2 -> K = 6
    ref_online, ref_target = _hand_loop(*_nets(), batches * 2, total=6)

    online, target = _nets()
    handler = EMATargetUpdate(online, target, base_momentum=BASE, final_momentum=FINAL)
    assert not any(p.requires_grad for p in target.parameters())
    engine = _engine(online, torch.optim.SGD(online.parameters(), lr=0.1))
    handler.attach(engine)
    handler.attach(engine)  # attaching twice registers once
    first = {}

    @engine.on(Events.ITERATION_COMPLETED(once=1))
    def _record(_):  # runs after the EMA handler: the first update uses k = 0, i.e. tau = BASE exactly
        first["momentum"] = handler.momentum

    engine.run(batches, max_epochs=2)
    assert first["momentum"] == BASE
    assert handler.momentum == pytest.approx(cosine_momentum(5, 6, BASE, FINAL))
    _assert_same(online, ref_online)
    _assert_same(target, ref_target)
    # buffers are not copied: the target never ran a forward pass here, so its BN statistics are still the initial ones
    assert torch.equal(target[1].running_mean, torch.zeros(4)) and torch.equal(target[1].running_var, torch.ones(4))
    assert int(target[1].num_batches_tracked) == 0 and int(online[1].num_batches_tracked) == 6
    assert not torch.allclose(online[1].running_mean, target[1].running_mean)

    # resume after the first epoch from a "checkpoint": k continues at 3 from engine.state.iteration
    online, target = _nets()
    opt = torch.optim.SGD(online.parameters(), lr=0.1)
    engine = _engine(online, opt)
    EMATargetUpdate(online, target, base_momentum=BASE, final_momentum=FINAL).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: e.terminate())  # interrupted run, K = 6
    engine.run(batches, max_epochs=2)
    assert engine.state.iteration == 3
    ckpt = copy.deepcopy({"online": online.state_dict(), "target": target.state_dict(), "opt": opt.state_dict(),
                          "engine": engine.state_dict()})

    online, target = _nets()
    online.load_state_dict(ckpt["online"])
    target.load_state_dict(ckpt["target"])
    opt = torch.optim.SGD(online.parameters(), lr=0.1)
    opt.load_state_dict(ckpt["opt"])
    engine = _engine(online, opt)
    EMATargetUpdate(online, target, base_momentum=BASE, final_momentum=FINAL).attach(engine)
    engine.load_state_dict(ckpt["engine"])
    engine.run(batches, max_epochs=2)
    assert engine.state.iteration == 6
    _assert_same(target, ref_target)


def test_total_steps_overrides_engine_length():
    batches = _batches(4)
    _, ref_target = _hand_loop(*_nets(), batches, total=10)
    online, target = _nets()
    engine = _engine(online, torch.optim.SGD(online.parameters(), lr=0.1))
    EMATargetUpdate(online, target, base_momentum=BASE, final_momentum=FINAL, total_steps=10).attach(engine)
    engine.run(batches, max_epochs=1)
    _assert_same(target, ref_target)


def test_target_keeps_its_own_batchnorm_statistics():
    """BYOL-style iterations: the target runs a train-mode forward (no grad) on its own data, the online net trains on
    other data, then the EMA step. The target's BN running statistics must be those of its own forwards, written out
    here from BatchNorm's definition (momentum 0.1, unbiased batch variance), and not the online's; its parameters
    follow xi <- tau_k xi + (1 - tau_k) theta with tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2."""
    torch.manual_seed(0)
    online = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                                 torch.nn.Linear(4, 2)).double()
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.5)
    gen = torch.Generator().manual_seed(2)
    online_x = [torch.randn(8, 3, generator=gen, dtype=torch.float64) for _ in range(4)]
    target_x = [3.0 + 2.0 * torch.randn(8, 3, generator=gen, dtype=torch.float64) for _ in range(4)]  # other data
    tau_base, K = 0.9, 4

    # reference, by hand: parameters by the EMA formula, target BN statistics from the target's own batches
    names = [n for n, _ in online.named_parameters()]
    xi = {n: t.detach().clone() for n, t in target.named_parameters()}
    ref_online = copy.deepcopy(online)
    ref_opt = torch.optim.SGD(ref_online.parameters(), lr=0.1)
    mean, var = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    for k, (x, y) in enumerate(zip(online_x, target_x)):
        h = y @ xi["0.weight"].T + xi["0.bias"]  # what the target's BN layer sees in its forward
        mean = 0.9 * mean + 0.1 * h.mean(0)
        var = 0.9 * var + 0.1 * ((h - h.mean(0)) ** 2).sum(0) / (h.shape[0] - 1)
        _train_step(ref_online, ref_opt, x)
        tau = 1 - (1 - tau_base) * (math.cos(math.pi * k / K) + 1) / 2
        theta = dict(ref_online.named_parameters())
        xi = {n: tau * xi[n] + (1 - tau) * theta[n].detach() for n in names}

    opt = torch.optim.SGD(online.parameters(), lr=0.1)

    def iteration(engine, batch):
        x, y = batch
        target.train()
        with torch.no_grad():
            target(y)  # BYOL's target branch: train mode, no gradient
        _train_step(online, opt, x)

    engine = Engine(iteration)
    handler = EMATargetUpdate(online, target, base_momentum=tau_base, final_momentum=1.0)
    handler.attach(engine)
    engine.run(list(zip(online_x, target_x)), max_epochs=1)

    for n, t in target.named_parameters():
        torch.testing.assert_close(t, xi[n], rtol=1e-12, atol=1e-12, msg=n)
    bn_t, bn_o = target[1], online[1]
    torch.testing.assert_close(bn_t.running_mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn_t.running_var, var, rtol=1e-12, atol=1e-12)
    assert int(bn_t.num_batches_tracked) == 4
    torch.testing.assert_close(bn_o.running_mean, ref_online[1].running_mean, rtol=1e-12, atol=1e-12)
    assert (bn_t.running_mean - bn_o.running_mean).abs().max() > 0.1  # not the online network's statistics
    assert (bn_t.running_var - bn_o.running_var).abs().max() > 0.1


def test_mismatched_networks_raise():
    with pytest.raises(ValueError, match=r"parameter.*\('weight', \(2, 3\)\).*\('weight', \(4, 3\)\)"):
        EMATargetUpdate(torch.nn.Linear(3, 2), torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match=r"parameter.*\('bias', \(2,\)\).*None"):
        EMATargetUpdate(torch.nn.Linear(3, 2), torch.nn.Linear(3, 2, bias=False))
    with pytest.raises(ValueError, match="buffer"):
        EMATargetUpdate(torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2, track_running_stats=False))
    with pytest.raises(ValueError, match="total_steps"):
        EMATargetUpdate(torch.nn.Linear(3, 2), torch.nn.Linear(3, 2), total_steps=0)
