"""BYOL pieces: the loss against an explicit float64 formula, the wrapper (target, EMA, optimizer params), the raw-
intensity augmentation, the gradient-clip handler and the BYOL-ImageNet checkpoint converter."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents

from conftest import load_script
from monai_ssl_ext.encoders import pretrained_backbone, read_encoder
from monai_ssl_ext.engines.ssl_trainer import SSLTrainer
from monai_ssl_ext.handlers import EMATargetUpdate, GradientClip
from monai_ssl_ext.losses import BYOLLoss
from monai_ssl_ext.networks import BYOL, build_backbone
from monai_ssl_ext.transforms import BYOLAugment

# ---- loss ------------------------------------------------------------------------------------


def _reference_loss(p0, p1, z0, z1):
    """mean_b(2 - 2 cos(p0_b, z1_b)) + mean_b(2 - 2 cos(p1_b, z0_b)), cosines written out row by row."""

    def cos_rows(p, z):
        return torch.stack([(a * b).sum() / ((a * a).sum().sqrt() * (b * b).sum().sqrt()) for a, b in zip(p, z)])

    return (2 - 2 * cos_rows(p0, z1.detach())).mean() + (2 - 2 * cos_rows(p1, z0.detach())).mean()


def test_byol_loss_matches_formula_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    p0, p1, z0, z1 = (torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4))
    loss = BYOLLoss()(p0, p1, z0, z1)
    ref_inputs = [t.detach().clone().requires_grad_(True) for t in (p0, p1, z0, z1)]
    ref = _reference_loss(*ref_inputs)
    assert loss.dtype == torch.float64 and loss.shape == ()
    assert abs(loss.item() - ref.item()) < 1e-12
    loss.backward(), ref.backward()
    for got, want in zip((p0, p1), ref_inputs[:2]):
        assert torch.allclose(got.grad, want.grad, rtol=0, atol=1e-12)
    assert z0.grad is None and z1.grad is None  # stop-gradient inside the loss


def test_byol_loss_range_and_pairing():
    g = torch.Generator().manual_seed(1)
    p0, p1 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    loss = BYOLLoss()
    # p0 pairs with z1 and p1 with z0; the scale of the targets does not matter
    assert float(loss(p0, p1, 3 * p1, 0.5 * p0)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(p0, p1, -p1, -p0)) == pytest.approx(8.0, abs=1e-5)
    assert float(loss(p0, p1, p0, p1)) > 0.5  # the wrong pairing is not rewarded
    with pytest.raises(ValueError):
        loss(p0, p1, p0[:3], p1)


# ---- wrapper ---------------------------------------------------------------------------------

PROJ, PRED = (32, 16), (24, 16)
BACKBONE = "timm/test_resnet"  # a 0.4M-parameter timm ResNet: the wrapper logic, fast on CPU


def _byol(seed: int = 0) -> BYOL:
    torch.manual_seed(seed)
    return BYOL(build_backbone(BACKBONE, in_channels=1), projection_dims=PROJ, prediction_dims=PRED)


def _views(n=4, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, size, size, generator=g), torch.randn(n, 1, size, size, generator=g)


def test_byol_wrapper_shapes_target_and_params():
    model = _byol()
    assert all(not p.requires_grad for p in model.target_modules().parameters())
    online = {id(p) for p in model.online_parameters()}
    target = {id(p) for p in model.target_modules().parameters()}
    assert online and not online & target
    assert online | target == {id(p) for p in model.parameters()}
    assert online == {id(p) for p in model.parameters() if p.requires_grad}
    # the target starts as an exact copy and is checkpointed with the model
    for (n, o), (_, t) in zip(model.online_modules().state_dict().items(), model.target_modules().state_dict().items()):
        assert torch.equal(o, t), n
    keys = model.state_dict().keys()
    assert any(k.startswith("pair.target.backbone.") for k in keys) and any(k.startswith("pair.target.projector.") for k in keys)

    x0, x1 = _views()
    p0, p1, z0, z1 = model(x0, x1)
    assert p0.shape == p1.shape == z0.shape == z1.shape == (4, PROJ[-1])
    assert p0.requires_grad and not z0.requires_grad and z0.grad_fn is None
    BYOLLoss()(p0, p1, z0, z1).backward()
    assert all(p.grad is None for p in model.target_modules().parameters())
    assert all(p.grad is not None for p in model.online_parameters())
    with pytest.raises(ValueError):
        BYOL(build_backbone(BACKBONE, in_channels=1), projection_dims=(32, 16), prediction_dims=(24, 8))


def test_byol_batch_norm_statistics_per_view():
    """solo-learn forwards each view on its own: in train mode p0 depends on view 0 only (its BN
    statistics are view 0's), not on the other view of the batch."""
    model = _byol().train()
    x0, x1 = _views()
    _, _, z0_alone, _ = model(x0, x0)
    p0, _, z0, _ = model(x0, x1)
    p0_other, _, z0_other, _ = model(x0, x1 * 3 + 1)
    torch.testing.assert_close(p0, p0_other)
    torch.testing.assert_close(z0, z0_other)
    torch.testing.assert_close(z0, z0_alone)


def test_byol_reinit_target_copies_online():
    model = _byol()
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)  # weights loaded after construction
    key = model.backbone.first_conv
    assert not torch.equal(model.backbone.trunk.state_dict()[key], model.target_backbone.trunk.state_dict()[key])
    model.reinit_target()
    for o, t in zip(model.online_modules().state_dict().values(), model.target_modules().state_dict().values()):
        assert torch.equal(o, t)
    assert all(not p.requires_grad for p in model.target_modules().parameters())


def test_byol_ssl_trainer_ema_and_grad_clip():
    """One SSLTrainer iteration: LARS-free SGD on the online params, EMA moves the target to
    tau * target_0 + (1 - tau) * online_1 for every parameter; buffers are not copied by the EMA, the target's BN
    statistics come from its own train-mode forward."""
    model = _byol()
    target_0 = [t.detach().clone() for t in model.pair.target.parameters()]
    x0, x1 = _views(n=8)
    data = [{"image": a, "image_2": b} for a, b in zip(x0, x1)]
    opt = torch.optim.SGD(model.online_parameters(), lr=0.5)
    trainer = SSLTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=DataLoader(data, batch_size=8),
        network=model, optimizer=opt, loss_function=BYOLLoss(),
    )
    ema = EMATargetUpdate(pair=model.pair, base_momentum=0.9, final_momentum=1.0)
    ema.attach(trainer)
    clip = GradientClip(max_norm=1e-3)
    clip.attach(trainer)
    trainer.run()
    assert clip.last_norm > 1e-3
    assert ema.momentum == 0.9
    online_1 = list(model.pair.online.parameters())
    moved = 0.0
    for t0, t1, o1 in zip(target_0, model.pair.target.parameters(), online_1):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * o1, atol=1e-6)
        moved = max(moved, float((o1.detach() - t0).abs().max()))
    assert moved > 0  # the online net changed, so the target moved towards it
    # the target ran its own train-mode forward (no grad) on the same batch with the same weights as the online net
    # (step 0), one forward per view, so its BN statistics were updated twice and equal the online's; the EMA itself
    # does not copy them
    for (name, o), t in zip(model.pair.online.named_buffers(), model.pair.target.buffers()):
        torch.testing.assert_close(t, o, msg=name)
        if name.endswith("num_batches_tracked"):
            assert int(t) == 2


# ---- augmentation ----------------------------------------------------------------------------


def _raw_image(size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth raw MR-like intensities, far above 255
    base = torch.linspace(0, 1, size)[None, :, None] * torch.linspace(0, 1, size)[None, None, :]
    return 300 + 1200 * base + 20 * torch.rand(1, size, size, generator=g)


def test_byol_augment_default_shape_and_plain_tensor():
    torch.manual_seed(0)
    img = MetaTensor(_raw_image(96))
    out = BYOLAugment()(img)
    assert out.shape == (1, 224, 224) and out.dtype == torch.float32 and type(out) is torch.Tensor
    torch.manual_seed(3)
    a = BYOLAugment(size=48)(img)
    torch.manual_seed(3)
    b = BYOLAugment(size=48)(img)
    assert a.shape == (1, 48, 48) and torch.equal(a, b)  # global RNG: reproducible under a seed


def test_byol_augment_keeps_raw_intensities_and_normalises():
    img = _raw_image()
    plain = dict(scale=(1.0, 1.0), hflip_prob=0.0, jitter_prob=0.0)
    torch.manual_seed(0)
    raw = BYOLAugment(size=64, mean=0.0, std=1.0, **plain)(img)
    assert torch.allclose(raw, img, atol=1e-3)  # whole-image crop at the same size: no clamp, no rescale
    assert raw.max() > 1000
    torch.manual_seed(0)
    normed = BYOLAugment(size=64, **plain)(img)  # default ACDC statistics
    assert torch.allclose(normed, (raw - 67.27) / 84.66, atol=1e-5)
    torch.manual_seed(0)
    half = BYOLAugment(size=32, mean=0.0, std=1.0, **plain)(img)
    assert half.shape == (1, 32, 32) and abs(float(half.mean()) - float(img.mean())) < 0.02 * float(img.mean())


def test_byol_augment_jitter_without_clamp():
    img = _raw_image()
    common = dict(size=64, scale=(1.0, 1.0), hflip_prob=0.0, jitter_prob=1.0, mean=0.0, std=1.0)
    for seed in range(5):
        torch.manual_seed(seed)
        out = BYOLAugment(brightness=0.2, contrast=0.0, **common)(img)
        ratio = out / img
        assert torch.allclose(ratio, ratio.mean().expand_as(ratio), atol=1e-4)  # one brightness factor
        assert 0.8 - 1e-6 <= float(ratio.mean()) <= 1.2 + 1e-6
        torch.manual_seed(seed)
        out = BYOLAugment(brightness=0.0, contrast=0.2, **common)(img)
        m = img.mean()
        assert abs(float(out.mean() - m)) < 1e-2  # contrast blends with the mean: the mean is kept
        f = (out - m) / (img - m)
        f = f[(img - m).abs() > 10]
        assert torch.allclose(f, f.mean().expand_as(f), atol=1e-3) and 0.8 - 1e-5 <= float(f.mean()) <= 1.2 + 1e-5
        assert out.max() > 1.0  # not clamped to [0, 1] as torchvision's float ColorJitter would


# ---- gradient clipping -----------------------------------------------------------------------


def _clip_run(max_norm):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    data = [{"image": torch.randn(4), "label": 100 * torch.randn(3)} for _ in range(8)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=DataLoader(data, batch_size=8), network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=1.0), loss_function=torch.nn.MSELoss(), amp=False,
    )
    before = [p.detach().clone() for p in net.parameters()]
    norms = []

    @trainer.on(IterationEvents.MODEL_COMPLETED)  # after optimizer.step(): the gradients that were applied
    def _record(engine):
        norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in net.parameters()])))

    clip = None
    if max_norm is not None:
        clip = GradientClip(max_norm)
        clip.attach(trainer)
    trainer.run()
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, net.parameters())])
    return norms[0], float(torch.linalg.vector_norm(step)), clip


def test_gradient_clip_with_supervised_trainer():
    unclipped, _, _ = _clip_run(None)
    assert unclipped > 5.0
    norm, step, clip = _clip_run(5.0)
    assert norm <= 5.0 + 1e-4 and norm == pytest.approx(5.0, rel=1e-4)
    assert step == pytest.approx(norm, rel=1e-4)  # SGD lr 1 applied the clipped gradient
    assert clip.last_norm == pytest.approx(unclipped, rel=1e-5)


def test_gradient_clip_rejects_bad_args_and_plain_engines():
    from ignite.engine import Engine

    with pytest.raises(ValueError):
        GradientClip(0.0)
    with pytest.raises(ValueError, match="BACKWARD_COMPLETED"):
        GradientClip(1.0).attach(Engine(lambda e, b: None))


# ---- BYOL-ImageNet converter -----------------------------------------------------------------

conv = load_script("convert_byol_imagenet")


def _tv_state(name: str) -> dict:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)()
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 1.5)
    return model.state_dict()


def test_convert_byol_imagenet_resnet50(tmp_path):
    state = _tv_state("resnet50")
    fake = {
        "target_backbone": {f"module.{k}": v for k, v in state.items()},
        "online_backbone": {f"module.{k}": v + 1 if v.is_floating_point() else v for k, v in state.items()},
        "predictor": {"module.net.0.weight": torch.zeros(2, 2)},
    }
    ckpt = tmp_path / "resnet50_byol_imagenet2012.pth.tar"
    torch.save(fake, ckpt)
    out = tmp_path / "byol_imagenet.pt"
    summary = conv.convert(str(ckpt), str(out))
    assert summary["tensors"] == 318
    header = read_encoder(str(out))
    assert header["arch"] == "timm/resnet50" and header["in_channels"] == 3 and header["method"] == "byol-imagenet"
    assert header["normalization"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert header["source_key"] == "target_backbone"

    backbone = pretrained_backbone(arch="timm/resnet50", weights=str(out), in_channels=1)
    trunk = backbone.trunk.state_dict()
    assert torch.equal(trunk["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))  # 3 → 1 channel
    for k in ("layer4.2.conv3.weight", "layer3.5.bn2.running_var", "bn1.bias"):
        assert torch.equal(trunk[k], state[k])  # the target backbone, not the online one
    assert backbone.load_report.converted

    with pytest.raises(ValueError, match="online_backbone"):
        conv.convert(str(ckpt), str(tmp_path / "x.pt"), key="momentum_backbone")
    bad = tmp_path / "broken.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth.tar"):
        conv.convert(str(bad), str(tmp_path / "x.pt"))
    with pytest.raises(FileNotFoundError, match="missing.pth.tar"):
        conv.convert(str(tmp_path / "missing.pth.tar"), str(tmp_path / "x.pt"))


def test_convert_by_order_for_renamed_keys(tmp_path):
    state = _tv_state("resnet18")
    renamed = {f"module.encoder.{i}": v for i, (k, v) in enumerate(state.items()) if not k.startswith("fc.")}
    ckpt = tmp_path / "legacy.pth.tar"
    torch.save({"target_backbone": renamed}, ckpt)
    with pytest.raises(ValueError, match="by_order"):
        conv.convert(str(ckpt), str(tmp_path / "x.pt"), arch="timm/resnet18")
    out = tmp_path / "enc.pt"
    conv.convert(str(ckpt), str(out), by_order=True, arch="timm/resnet18")
    loaded = read_encoder(str(out))["state_dict"]
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(loaded[k], v), k
