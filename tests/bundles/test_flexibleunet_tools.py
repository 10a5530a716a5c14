"""Bundle-specific checks of ``bundles/flexibleunet_tools`` (the generic run of every config on demo
data is the shared bundle harness's job).

* a SimCLR ``encoder.pt`` (MONAI efficientnet-b0 trunk) and a timm ``tf_efficientnet_b0`` trunk load
  into the bundle's FlexibleUNet encoder with nothing missing or unused (apart from ``_fc.*``) and
  give the same stage features as the source trunk;
* an unreadable / wrong encoder file fails with its path in the message;
* the training label pipeline keeps masks binary (the source resized labels with "area");
* encoder / decoder learning rates and ``freeze``; ``perc``;
* the best-by-IoU tracker survives a resume; inference writes masks at the original image size;
  evaluation without a model names the missing file.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_bundle_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "flexibleunet_tools" / "configs"
SMOKE = {"epochs": 2, "epoch_length": 2, "batch_size": 2, "num_workers": 0, "image_size": [64, 64], "val_interval": 1}
DEMO_SIZE = (48, 80)  # (H, W): not square, so a transposed mask has the wrong shape

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _parser(files, overrides=None):
    return read_bundle_config(CONFIGS, files, overrides)


def _workflow(files, bundle_root, dataset_dir, workflow_type="train", **overrides):
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset_dir),
        **overrides,
    )


def _errors(exc: BaseException) -> str:
    """Messages of an exception and everything it was raised from (MONAI wraps config errors)."""
    out = []
    while exc is not None:
        out.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(out)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "scripts" / "make_demo_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("tools")
    mod.tools(str(out), size=DEMO_SIZE)
    return out


def _randomize_bn(module: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so a mis-mapped BN tensor shows."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)


# ---------------------------------------------------------------------------- encoder hand-off


@pytest.mark.parametrize("arch,method", [("efficientnet-b0", "simclr"), ("timm/tf_efficientnet_b0", "timm")])
def test_encoder_loads_into_flexibleunet_exactly(tmp_path, arch, method):
    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone(arch)
    _randomize_bn(backbone)
    backbone.eval()
    path = str(tmp_path / "encoder.pt")
    norm = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    payload = export_encoder(backbone, path, method=method, normalization=norm)

    parser = _parser(["train.json"], {"pretrained_encoder": path, "bundle_root": str(tmp_path)})
    report = parser.get_parsed_content("encoder_report")
    net = parser.get_parsed_content("network_def").eval()

    assert report is not None and report.ok
    assert len(report.loaded) == len(payload["state_dict"])
    assert report.missing == [] and report.unused == [] and report.mismatched == []
    assert report.ignored and all(k.startswith("_fc.") for k in report.ignored)
    assert report.header["method"] == method and "normalization_warning" not in report.header

    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = backbone.feature_maps(x)
        got = list(net.encoder(x))
    ref_shapes = {tuple(f.shape): f for f in ref}
    compared = 0
    for f in got:  # compare the maps whose shapes match (timm may return a different list)
        r = ref_shapes.get(tuple(f.shape))
        if r is None:
            continue
        err = float((f - r).abs().max() / r.abs().max().clamp_min(1e-12))
        assert err <= 1e-5, f"{arch}: stage {tuple(f.shape)} differs (max rel err {err:.2e})"
        compared += 1
    assert compared == len(got) == 5


def test_encoder_normalization_mismatch_is_reported(tmp_path):
    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks import build_backbone

    path = str(tmp_path / "encoder.pt")
    export_encoder(build_backbone("efficientnet-b0"), path, method="simclr",
                   normalization={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    report = _parser(["train.json"], {"pretrained_encoder": path}).get_parsed_content("encoder_report")
    assert "normalization" in report.header.get("normalization_warning", "")


@pytest.mark.parametrize("kind", ["garbage", "truncated", "wrong_arch"])
def test_bad_encoder_file_names_the_file(tmp_path, kind):
    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks import build_backbone

    path = tmp_path / f"{kind}_encoder.pt"
    if kind == "garbage":
        path.write_bytes(b"this is not a torch file")
    else:
        export_encoder(build_backbone("resnet18" if kind == "wrong_arch" else "efficientnet-b0"), str(path),
                       method="simclr", normalization={"mean": [0.5] * 3, "std": [0.5] * 3})
        if kind == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
    parser = _parser(["train.json"], {"pretrained_encoder": str(path)})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("encoder_report")
    text = _errors(info.value)
    assert "EncoderLoadError" in text and str(path) in text, text


# ---------------------------------------------------------------------------- data pipeline


def test_label_resize_keeps_labels_binary(demo):
    from monai.transforms import Compose, Resized

    parser = _parser(["train.json"], {"dataset_dir": str(demo), "image_size": [100, 60]})
    items = parser.get_parsed_content("train#datalist")
    det = parser.get_parsed_content("train#deterministic_transforms")
    rand = Compose(parser.get_parsed_content("train#random_transforms"))
    rand.set_random_state(seed=0)
    for item in items:
        d = Compose(det)(dict(item))
        assert tuple(d["image"].shape) == (3, 100, 60) and tuple(d["label"].shape) == (1, 100, 60)
        for _ in range(3):
            out = rand(dict(d))
            assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
        assert set(torch.unique(d["label"]).tolist()) == {0.0, 1.0}
    # the source's train Resized (no mode, i.e. "area") would not have kept them binary
    until_threshold = [t for t in det[: next(i for i, t in enumerate(det) if type(t).__name__ == "AsDiscreted") + 1]]
    area = Resized(keys="label", spatial_size=[100, 60])(Compose(until_threshold)(dict(items[0])))
    assert not set(torch.unique(area["label"]).tolist()) <= {0.0, 1.0}


def test_perc_subset_is_seeded(demo):
    from monai_ssl_ext.data import load_datalist, percent_subset

    full = load_datalist(demo / "datalist.json", "training", base_dir=str(demo))
    a = _parser(["train.json"], {"dataset_dir": str(demo), "perc": 50}).get_parsed_content("train#datalist")
    b = _parser(["train.json"], {"dataset_dir": str(demo), "perc": 50}).get_parsed_content("train#datalist")
    assert a == b == percent_subset(full, 50, seed=42) and len(a) == len(full) // 2
    assert _parser(["train.json"], {"dataset_dir": str(demo)}).get_parsed_content("train#datalist") == full


@pytest.fixture(scope="module")
def ssl_encoder(tmp_path_factory):
    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks import build_backbone

    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    export_encoder(build_backbone("efficientnet-b0"), str(path), method="simclr",
                   normalization={"mean": [0.5] * 3, "std": [0.5] * 3})
    return str(path)


@pytest.mark.parametrize("freeze", [False, True, "true", "false"])  # strings: `--freeze true` on the CLI
def test_learning_rates_and_freeze(tmp_path, freeze, ssl_encoder):
    """SPEC A.4: a SimCLR encoder at 1e-5 under a 1e-4 decoder; --freeze: Adam 1e-5 on the rest."""
    parser = _parser(["train.json"], {"bundle_root": str(tmp_path), "freeze": freeze, "pretrained_encoder": ssl_encoder})
    parser.get_parsed_content("initialize")
    net = parser.get_parsed_content("network_def")
    opt = parser.get_parsed_content("optimizer")
    enc = {id(p) for p in net.encoder.parameters()}
    dec = {id(p) for n, p in net.named_parameters() if not n.startswith("encoder.")}
    groups = [({id(p) for p in g["params"]}, g["lr"]) for g in opt.param_groups]
    if freeze in (True, "true"):
        assert all(not p.requires_grad for p in net.encoder.parameters())
        assert groups == [(dec, 1e-5)]
    else:
        assert all(p.requires_grad for p in net.parameters())
        assert groups == [(enc, 1e-5), (dec, 1e-4)]


@pytest.mark.parametrize("spec", [None, "random"])
def test_baselines_train_everything_at_the_decoder_rate(tmp_path, spec):
    """SPEC A.4: the random / ImageNet baselines train all parameters at 1e-4 (ImageNet's
    spec, timm:<name>, goes through the same rule: see test_encoders' encoder_learning_rate)."""
    parser = _parser(["train.json"], {"bundle_root": str(tmp_path), "pretrained_encoder": spec})
    net = parser.get_parsed_content("network_def")
    opt = parser.get_parsed_content("optimizer")
    assert {g["lr"] for g in opt.param_groups} == {1e-4}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))


@pytest.mark.parametrize("epochs", [50, 100])
def test_warm_restart_cycle_spans_the_run(tmp_path, epochs):
    """A.4's CosineAnnealingWarmRestarts(T_0=100) with 100 epochs is one cycle over the run; tied to
    `epochs`, a 50-epoch run completes its cycle too: the rate falls to its minimum at the end."""
    parser = _parser(["train.json"], {"bundle_root": str(tmp_path), "epochs": epochs})
    sched = parser.get_parsed_content("lr_scheduler")
    opt = parser.get_parsed_content("optimizer")
    assert sched.T_0 == epochs
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[-1]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] < 1e-4 * 0.01 and lrs == sorted(lrs, reverse=True)


def test_encoder_learning_rate_rule():
    from monai_ssl_ext.encoders import encoder_learning_rate

    for spec in (None, "null", "random", "timm:tf_efficientnet_b0"):
        assert encoder_learning_rate(spec, ssl_lr=1e-5, baseline_lr=1e-4) == 1e-4
    assert encoder_learning_rate("/runs/simclr/models/encoder.pt", ssl_lr=1e-5, baseline_lr=1e-4) == 1e-5


# ---------------------------------------------------------------------------- workflows


def test_resume_keeps_best_model_tracker(tmp_path, demo):
    wf = _workflow(["train.json", "smoke.json"], tmp_path, demo)
    wf.initialize()
    wf.run()
    best = wf.parser.get_parsed_content("validate#evaluator").state.best_metric
    wf.finalize()
    ckpt_dir = tmp_path / "runs" / "flexibleunet_tools" / "models"
    state = torch.load(ckpt_dir / "checkpoint_last.pt", weights_only=True)
    saved = [(s["priority"], s["filename"]) for s in state["best"]["saved"]]
    assert len(saved) == 1 and saved[0][0] == pytest.approx(best)
    assert state["best"]["best_metric"] == pytest.approx(best)
    assert state["engine"]["epoch"] == 2

    wf = _workflow(["train.json", "smoke.json"], tmp_path, demo, epochs=3)
    wf.initialize()
    saver = wf.parser.get_parsed_content("validate#best_saver")
    trainer = wf.parser.get_parsed_content("train#trainer")
    seen = {}
    from ignite.engine import Events

    @trainer.on(Events.EPOCH_STARTED)
    def _record(engine):
        seen.setdefault("epoch", engine.state.epoch)
        seen.setdefault("saved", [tuple(s) for s in saver._key_metric_checkpoint.state_dict()["_saved"]])

    wf.run()
    wf.finalize()
    assert seen["epoch"] == 3  # resumed after epoch 2
    assert seen["saved"] == [tuple(s) for s in saved]


def test_evaluate_without_model_names_the_path(tmp_path, demo):
    wf = _workflow(["train.json", "evaluate.json", "smoke.json"], tmp_path, demo, workflow_type="infer")
    with pytest.raises(Exception) as info:
        wf.initialize()
    text = _errors(info.value)
    assert "FileNotFoundError" in text and str(tmp_path / "runs" / "flexibleunet_tools" / "models" / "model.pt") in text


def test_inference_writes_masks_at_original_size(tmp_path, demo):
    """A 1x1 conv that calls bright-green pixels "tool" stands in for the network (the demo tools are
    grey bars, the tissue has little green): the written masks must match the ground-truth masks at
    the original (non-square) size, which fails if the resize is not inverted or the axes are swapped."""
    from PIL import Image

    net = torch.nn.Conv2d(3, 2, kernel_size=1)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[1, 1] = 1.0  # logit(tool) = normalised green + 0.216: tool where green > 100
        net.bias.copy_(torch.tensor([0.0, (0.5 - 100 / 255) / 0.5]))
    ckpt = tmp_path / "runs" / "flexibleunet_tools" / "models"
    ckpt.mkdir(parents=True)
    torch.save(net.state_dict(), ckpt / "model.pt")

    wf = _workflow(["inference.json"], tmp_path, demo, workflow_type="infer", image_size=[64, 64], num_workers=0,
                   network_def=torch.nn.Conv2d(3, 2, kernel_size=1))
    wf.initialize()
    wf.run()
    wf.finalize()
    out = tmp_path / "runs" / "flexibleunet_tools" / "predictions" / "images"
    h, w = DEMO_SIZE
    for i in range(4):
        src = np.asarray(Image.open(demo / "images" / f"test_{i:03d}.png").convert("RGB"))
        gt = np.asarray(Image.open(demo / "masks" / f"test_{i:03d}.png")) > 0
        mask = np.asarray(Image.open(out / f"test_{i:03d}_mask.png"))
        overlay = np.asarray(Image.open(out / f"test_{i:03d}_overlay.png"))
        assert mask.shape == (h, w) and overlay.shape == (h, w, 3)
        assert set(np.unique(mask).tolist()) <= {0, 255}
        pred = mask == 255
        iou = (pred & gt).sum() / max((pred | gt).sum(), 1)
        assert iou > 0.5, f"test_{i:03d}: IoU {iou:.2f} of the written mask with the ground truth"
        np.testing.assert_array_equal(overlay[~pred], src[~pred])
        assert np.all(np.any(overlay[pred] != src[pred], axis=-1))


def test_overlay_writer_orientation(tmp_path):
    from monai_ssl_ext.handlers import OverlayWriter
    from PIL import Image

    h, w = 6, 10
    img = np.full((h, w, 3), 100, np.uint8)
    Image.fromarray(img).save(tmp_path / "frame.png")
    onehot = torch.zeros(2, h, w)  # (C, H, W), as LoadPictured gives
    onehot[0] = 1
    onehot[1, 2, 7], onehot[0, 2, 7] = 1, 0  # pixel x=7, y=2 is tool
    writer = OverlayWriter(str(tmp_path / "out"), color=(0, 255, 0), alpha=1.0)
    mask_path, overlay_path = writer.write(onehot, str(tmp_path / "frame.png"))
    mask = np.asarray(Image.open(mask_path))
    assert mask.shape == (h, w) and mask[2, 7] == 255 and mask.sum() == 255
    overlay = np.asarray(Image.open(overlay_path))
    assert overlay[2, 7].tolist() == [0, 255, 0] and overlay[0, 0].tolist() == [100, 100, 100]
    with pytest.raises(ValueError, match="Invertd"):
        writer.write(torch.zeros(1, 5, 5), str(tmp_path / "frame.png"))
    with pytest.raises(ValueError, match="LoadPictured"):  # (W, H): MONAI's default picture order
        writer.write(torch.zeros(2, w, h), str(tmp_path / "frame.png"))
