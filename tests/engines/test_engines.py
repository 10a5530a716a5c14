"""The SSL engines are MONAI's SupervisedTrainer / SupervisedEvaluator fed views (defect 12):
gradient accumulation, amp in the evaluator, ``output["loss"]``, plain-tensor views."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from ignite.engine import Events
from monai.data import MetaTensor
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver, StatsHandler, ValidationHandler, from_engine
from torch import nn
from torch.utils.data import DataLoader

from monai_ssl_ext.engines import SSLEvaluator, SSLTrainer, lower_is_better, val_loss_metric
from monai_ssl_ext.engines.ssl_trainer import batch_loss
from monai_ssl_ext.handlers import GradientClip

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class _Pair(nn.Module):
    """An SSL-style wrapper without batch-dependent layers: one linear map applied to each view.
    Records, per forward, whether autocast was on, the dtype the layer computed in, whether
    gradients were on and the mode; and the types of the views it was given."""

    def __init__(self):
        super().__init__()
        self.f = nn.Linear(4, 3)
        self.seen: list[tuple] = []
        self.view_types: list[tuple] = []

    def forward(self, *views):
        outs = tuple(self.f(v) for v in views)
        self.seen.append((torch.is_autocast_enabled(views[0].device.type), outs[0].dtype, torch.is_grad_enabled(),
                          self.training))
        self.view_types.append(tuple(type(v) for v in views))
        return outs


def _pair_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """A per-sample loss averaged over the batch (nothing couples the samples)."""
    z1, z2 = z1.float(), z2.float()
    return (((z1 * z2).sum(1) - 1.0) ** 2).mean() + 0.1 * (z1**2).mean()


def _data(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(4, generator=g), "image_2": torch.randn(4, generator=g)} for _ in range(n)]


def _trainer(net, data, batch_size, lr=0.1, **kwargs):
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    trainer = SSLTrainer(
        view_keys=["image", "image_2"], device=torch.device(kwargs.pop("device", "cpu")),
        max_epochs=kwargs.pop("max_epochs", 1), train_data_loader=DataLoader(data, batch_size=batch_size, shuffle=False), network=net, optimizer=opt,
        loss_function=_pair_loss, **kwargs,
    )
    steps: list[int] = []
    opt.register_step_post_hook(lambda *_: steps.append(trainer.state.iteration))
    losses: list[float] = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: losses.append(float(batch_loss(e.state.output))),
    )
    return trainer, steps, losses


# ---- (a) gradient accumulation --------------------------------------------------------------


def test_gradient_accumulation_equals_one_step_on_the_concatenated_batch():
    torch.manual_seed(0)
    net0 = _Pair()
    data = _data(16)

    full = copy.deepcopy(net0)
    trainer, steps_full, _ = _trainer(full, data, batch_size=16)
    trainer.run()
    assert steps_full == [1]

    acc = copy.deepcopy(net0)
    trainer, steps_acc, losses = _trainer(acc, data, batch_size=4, accumulation_steps=4)
    trainer.run()
    assert trainer.state.iteration == 4
    assert steps_acc == [4]  # the optimizer stepped once, after the 4th mini-batch
    for a, b in zip(acc.parameters(), full.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not all(torch.equal(a, b) for a, b in zip(acc.parameters(), net0.parameters()))

    # output["loss"] is the unscaled loss of each mini-batch (the parameters did not move in between)
    with torch.no_grad():
        for i, loss in enumerate(losses):
            batch = data[4 * i : 4 * i + 4]
            x1 = torch.stack([d["image"] for d in batch])
            x2 = torch.stack([d["image_2"] for d in batch])
            assert loss == pytest.approx(float(_pair_loss(*net0(x1, x2))), rel=1e-5)


def test_gradient_accumulation_steps_every_k_iterations_and_flushes_each_epoch():
    """6 iterations per epoch, accumulation over 4: steps after iterations 4 and 6 (the end-of-epoch
    flush, so no gradient is dropped), then 10 and 12 — and gradients are zeroed only at the start of
    each group (``optim_set_to_none`` honoured)."""
    torch.manual_seed(1)
    net = _Pair()
    trainer, steps, _ = _trainer(net, _data(12, seed=2), batch_size=2, accumulation_steps=4, max_epochs=2,
                                 optim_set_to_none=True)
    grads_before_backward: list[bool] = []
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED,
                              lambda e: grads_before_backward.append(net.f.weight.grad is not None))
    trainer.run()
    assert trainer.state.iteration == 12
    assert steps == [4, 6, 10, 12]
    # None (set_to_none) at the first iteration of every accumulation group, accumulated otherwise
    assert grads_before_backward == [False, True, True, True, False, True] * 2


def test_gradients_are_released_before_each_backward_by_default_with_the_same_weights():
    """Default ``optim_set_to_none=True`` (torch's ``zero_grad()``, unlike MONAI's default): no gradient exists when a
    step's backward starts, and the weights after two epochs equal those of a run that fills the gradients with zeros
    (``optim_set_to_none=False``) and of a hand-written SGD loop over the same batches."""
    data = _data(12, seed=3)
    weights, seen = {}, {}
    for label, kwargs in (("default", {}), ("zero-filled", {"optim_set_to_none": False})):
        torch.manual_seed(4)
        net = _Pair()
        trainer, steps, _ = _trainer(net, data, batch_size=4, max_epochs=2, **kwargs)
        seen[label] = []
        trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED,
                                  lambda e, s=seen[label], n=net: s.append(n.f.weight.grad is not None))
        trainer.run()
        assert steps == [1, 2, 3, 4, 5, 6]
        weights[label] = copy.deepcopy(net.state_dict())
    assert seen["default"] == [False] * 6  # released: nothing to fill or add into
    assert seen["zero-filled"] == [False] + [True] * 5  # MONAI's default keeps (zeroed) gradients
    torch.manual_seed(4)
    ref = _Pair()
    for _ in range(2):
        for i in range(0, 12, 4):
            x1 = torch.stack([d["image"] for d in data[i : i + 4]])
            x2 = torch.stack([d["image_2"] for d in data[i : i + 4]])
            grads = torch.autograd.grad(_pair_loss(*ref(x1, x2)), list(ref.parameters()))
            with torch.no_grad():
                for p, g in zip(ref.parameters(), grads):
                    p -= 0.1 * g
    for label in weights:
        for key, value in ref.state_dict().items():
            torch.testing.assert_close(weights[label][key], value, rtol=1e-6, atol=1e-7, msg=f"{label}: {key}")


# ---- (b) amp in the evaluator ---------------------------------------------------------------


def _autocast_dtype(device: str) -> torch.dtype:
    return torch.float16 if device == "cuda" else torch.bfloat16  # torch.autocast's defaults


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp", [True, False])
def test_evaluator_runs_forward_under_autocast_only_with_amp(device, amp):
    torch.manual_seed(0)
    net = _Pair().to(device)
    evaluator = SSLEvaluator(
        view_keys=["image", "image_2"], device=torch.device(device),
        val_data_loader=DataLoader(_data(8), batch_size=4), network=net, loss_function=_pair_loss,
        key_val_metric={"val_loss": val_loss_metric()}, amp=amp,
    )
    evaluator.run()
    assert len(net.seen) == 2
    expected = (True, _autocast_dtype(device)) if amp else (False, torch.float32)
    for autocast, dtype, grad, training in net.seen:
        assert (autocast, dtype) == expected
        assert not grad and not training  # eval mode, no gradients, as MONAI's evaluator does
    loss = from_engine(["loss"], first=True)(evaluator.state.output)
    assert torch.as_tensor(loss).ndim == 0 and torch.isfinite(torch.as_tensor(loss))
    assert evaluator.state.metrics["val_loss"] == pytest.approx(
        float(_mean_loss(net, _data(8), device)), rel=2e-2 if amp else 1e-5
    )


def _mean_loss(net, data, device):
    with torch.no_grad():
        losses = []
        for i in range(0, len(data), 4):
            x1 = torch.stack([d["image"] for d in data[i : i + 4]]).to(device)
            x2 = torch.stack([d["image_2"] for d in data[i : i + 4]]).to(device)
            losses.append(_pair_loss(net.f(x1), net.f(x2)))
    return torch.stack(losses).mean()


# ---- (c) the trainer with amp, output["loss"] -----------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp", [True, False])
def test_trainer_amp_flag_and_scalar_loss(device, amp):
    torch.manual_seed(0)
    net = _Pair().to(device)
    before = [p.detach().clone() for p in net.parameters()]
    trainer, steps, losses = _trainer(net, _data(8), batch_size=4, amp=amp, device=device)
    trainer.run()
    assert steps == [1, 2] and len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    expected = (True, _autocast_dtype(device)) if amp else (False, torch.float32)
    assert all((s[0], s[1]) == expected and s[2] and s[3] for s in net.seen)  # autocast iff amp, training
    assert not any(torch.equal(b, p) for b, p in zip(before, net.parameters()))
    out = trainer.state.output
    assert isinstance(out, list) and len(out) == 4  # decollated, every item holds the batch loss
    assert all(float(o["loss"]) == pytest.approx(losses[-1]) for o in out)
    assert from_engine(["loss"], first=True)(out) == pytest.approx(losses[-1])  # what StatsHandler / MLflow read
    assert all(not isinstance(o["loss"], torch.Tensor) or not o["loss"].requires_grad for o in out)


def test_amp_on_a_cpu_gives_the_loss_float32_outputs():
    """bfloat16 autocast on a CPU covers the forward only: the loss, outside it, gets the outputs in float32 (from
    bfloat16 outputs it would compute in bfloat16, 3 significant digits: SimCLR's 4.02870 came out as 4.00000)."""
    torch.manual_seed(0)
    net = _Pair()
    dtypes = []

    def loss(z1, z2):
        dtypes.append((z1.dtype, z2.dtype))
        return _pair_loss(z1, z2)

    trainer = SSLTrainer("cpu", 1, DataLoader(_data(8), batch_size=4), net,
                         torch.optim.SGD(net.parameters(), lr=0.1), loss, amp=True, retain_freed_memory=False)
    trainer.run()
    assert all(s[0] and s[1] == torch.bfloat16 for s in net.seen)  # the forward ran in bfloat16
    assert dtypes == [(torch.float32, torch.float32)] * 2


def test_trainer_without_decollate_keeps_the_scalar_loss():
    net = _Pair()
    trainer, _, _ = _trainer(net, _data(4), batch_size=4, decollate=False)
    trainer.run()
    loss = trainer.state.output["loss"]
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and not loss.requires_grad


# ---- views ------------------------------------------------------------------------------------


def test_views_reach_the_network_in_order_as_plain_tensors():
    """MetaTensor views are stripped to tensors (MetaTensor dispatch slows SSL steps ~10×); three
    views (image, image_2, gt_image, as ViTAutoEncoderSSL takes them) arrive as three arguments."""

    class Three(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))
            self.got: list = []

        def forward(self, a, b, c):
            self.got.append((type(a), type(b), type(c), a[0, 0].item(), b[0, 0].item(), c[0, 0].item()))
            return a * self.w, b * self.w, c * self.w

    data = [{"image": MetaTensor(torch.full((2,), 1.0)), "image_2": MetaTensor(torch.full((2,), 2.0)),
             "gt_image": torch.full((2,), 3.0)} for _ in range(2)]
    net = Three()
    trainer = SSLTrainer(
        view_keys=["image", "image_2", "gt_image"], device=torch.device("cpu"), max_epochs=1,
        train_data_loader=DataLoader(data, batch_size=2), network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=lambda a, b, c: ((a - c) ** 2 + b).mean(),
    )
    trainer.run()
    assert net.got == [(torch.Tensor, torch.Tensor, torch.Tensor, 1.0, 2.0, 3.0)]


def test_missing_view_is_named():
    net = _Pair()
    trainer = SSLTrainer(
        view_keys=["image", "image_3"], device=torch.device("cpu"), max_epochs=1,
        train_data_loader=DataLoader(_data(2), batch_size=2), network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=_pair_loss,
    )
    with pytest.raises(KeyError, match="image_3"):
        trainer.run()


# ---- the bundles' wiring ----------------------------------------------------------------------


def test_bundle_wiring_trainer_validation_checkpoint_and_grad_clip(tmp_path):
    """simclr_cholec's train.json shape: SSLTrainer with ValidationHandler and StatsHandler,
    SSLEvaluator with the val_loss key metric (lower is better) and a best-checkpoint saver; a
    handler on BACKWARD_COMPLETED (GradientClip) still runs before each optimizer step."""
    torch.manual_seed(0)
    net = _Pair()
    evaluator = SSLEvaluator(
        view_keys=["image", "image_2"], device=torch.device("cpu"), val_data_loader=DataLoader(_data(4), batch_size=2),
        network=net, loss_function=_pair_loss, key_val_metric={"val_loss": val_loss_metric()},
        metric_cmp_fn=lower_is_better,
        val_handlers=[StatsHandler(iteration_log=False),
                      CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True,
                                      key_metric_negative_sign=True, key_metric_filename="best.pt")],
        amp=False,
    )
    seen_loss_at_forward: list[bool] = []
    evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED,
                                lambda e: seen_loss_at_forward.append("loss" in e.state.output))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    trainer = SSLTrainer(
        view_keys=["image", "image_2"], device=torch.device("cpu"), max_epochs=3, epoch_length=2,
        train_data_loader=DataLoader(_data(8, seed=5), batch_size=4), network=net, optimizer=opt,
        loss_function=_pair_loss,
        train_handlers=[ValidationHandler(validator=evaluator, interval=1, epoch_level=True),
                        StatsHandler(tag_name="train_loss", output_transform=from_engine(["loss"], first=True))],
        amp=False,
    )
    clip = GradientClip(max_norm=1e-3)
    clip.attach(trainer)
    clipped_norms: list[float] = []  # after the clip (registered after it on the same event)
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, lambda e: clipped_norms.append(float(
        torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters() if p.grad is not None])))))
    val_losses: list[float] = []
    evaluator.add_event_handler(Events.COMPLETED, lambda e: val_losses.append(e.state.metrics["val_loss"]))
    trainer.run()
    assert clip.last_norm > 1e-3 and len(clipped_norms) == 6 and max(clipped_norms) <= 1e-3 * (1 + 1e-4)
    assert seen_loss_at_forward and all(seen_loss_at_forward)
    assert len(val_losses) == 3
    assert evaluator.state.best_metric == pytest.approx(min(val_losses))
    assert evaluator.state.best_metric_epoch == val_losses.index(min(val_losses)) + 1
    assert (tmp_path / "best.pt").is_file()


def test_evaluator_requires_a_loss():
    with pytest.raises(ValueError, match="loss_function"):
        SSLEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader(_data(2)), network=_Pair())


def test_gradient_clip_clips_the_accumulated_gradient_once_per_step():
    """accumulation_steps 2: the clip runs on the iterations that step, on the summed gradient:
    the parameters equal one clipped SGD step on the mean loss of the two batches."""
    from monai.engines import SupervisedTrainer

    from monai_ssl_ext.handlers import GradientClip

    torch.manual_seed(0)
    data = [{"image": torch.randn(2, 3), "label": torch.randn(2, 1)} for _ in range(2)]
    net = torch.nn.Linear(3, 1)
    ref = torch.nn.Linear(3, 1)
    ref.load_state_dict(net.state_dict())
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net,
                                optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=torch.nn.MSELoss(),
                                accumulation_steps=2)
    clip = GradientClip(max_norm=1e-2)
    calls = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: calls.append(clip.last_norm))
    clip.attach(trainer)
    trainer.run()
    # reference: the mean of the two batch losses, one backward, clip to 1e-2, one SGD step
    loss = sum(torch.nn.functional.mse_loss(ref(d["image"]), d["label"]) for d in data) / 2
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 1e-2)
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.1 * p.grad
    assert math.isnan(calls[0]) and not math.isnan(calls[1])  # no clip on the accumulating iteration
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)


def test_ema_updates_once_per_optimizer_step_with_accumulation():
    """accumulation_steps 2 over an epoch of 4 iterations: 2 optimizer steps, so 2 EMA updates with
    tau_0, tau_1 of a K = 2 * epochs schedule; the target never moves on accumulating iterations."""
    from monai.engines import SupervisedTrainer

    from monai_ssl_ext.handlers import EMATargetUpdate
    from monai_ssl_ext.handlers.ema import cosine_momentum

    torch.manual_seed(0)
    data = [{"image": torch.randn(2, 3), "label": torch.randn(2, 1)} for _ in range(4)]
    net, target = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=2, train_data_loader=data, network=net,
                                optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=torch.nn.MSELoss(),
                                accumulation_steps=2)
    ema = EMATargetUpdate(net, target, base_momentum=0.9, final_momentum=1.0)
    ema.attach(trainer)
    taus, moved = [], []
    before = {}
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: before.update(w=target.weight.detach().clone()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: (
        moved.append(not torch.equal(before["w"], target.weight)), taus.append(ema.momentum)))
    trainer.run()
    assert moved == [False, True, False, True] * 2
    expected = [cosine_momentum(k, 4, 0.9, 1.0) for k in range(4)]  # K = 2 epochs x 2 optimizer steps
    assert [taus[i] for i in (1, 3, 5, 7)] == pytest.approx(expected)
