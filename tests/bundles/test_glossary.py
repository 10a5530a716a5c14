"""The shared config ids mean one thing (README, "Adding a bundle", glossary) and configs stay
readable: ``scripts/verify_bundles.py`` refuses a bundle that breaks each rule, and passes all six."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from conftest import BUNDLES, ROOT, SCHEMA, load_script

vb = load_script("verify_bundles")
IDS = [b.name for b in BUNDLES]


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_every_bundle_keeps_the_rules(bundle):
    assert vb._check_expressions(bundle) == []
    assert vb._check_glossary(bundle) == []


def _copy(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(ROOT / "bundles" / name, dst, ignore=shutil.ignore_patterns("runs", "data", "__pycache__"))
    return dst


def _edit(bundle: Path, config: str, change) -> None:
    path = bundle / "configs" / config
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=4))


def _problems(bundle: Path) -> list[str]:
    return vb.verify_bundle(str(bundle), schema=str(SCHEMA))


def test_copied_bundle_passes(tmp_path):
    assert _problems(_copy(tmp_path, "flexibleunet_tools")) == []


def _set(key, value):
    def change(data):
        data[key] = value
    return change


def _handler(key, value):
    def change(data):
        data["validate"]["handlers"][0][key] = value
    return change


CASES = {
    "lambda": ("train.json", _handler("output_transform", "$lambda x: x['loss']"), r"lambda"),
    "private attribute": ("train.json", _set("network", "$@network_def._modules['encoder']"), r"private attribute"),
    "getattr private": ("train.json", _set("network", "$getattr(@network_def, '_modules')"), r"private attribute"),
    "long expression": ("train.json", _set("ckpt_dir", "$@output_dir + '/" + "m" * 100 + "'"), r"118-character expression \(at most 100\)"),
    "list-index override": ("evaluate.json", _set("validate#handlers#1#save_dir", "x"), r"overrides a list item"),
    "window in normalization": (
        "train.json", _set("normalization", {"a_min": -57, "a_max": 164, "b_min": 0.0, "b_max": 1.0, "clip": True}),
        r"`normalization`.*exactly `mean` and `std`.*intensity_window"),
    "synonym lr": ("train.json", _set("lr", 0.1), r"`lr` is a synonym of the glossary id `learning_rate`"),
    "synonym max_epochs": ("cpu_demo.json", _set("max_epochs", 3), r"`max_epochs` is a synonym"),
    "synonym weights": ("train.json", _set("weights", None), r"`weights` is a synonym"),
    "wrong type": ("train.json", _set("epochs", "100"), r"`epochs`.*must be int"),
    "init_weights in finetuning": ("train.json", _set("init_weights", None), r"`init_weights` is the start of a pretraining"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_verify_bundle_refuses(tmp_path, case):
    config, change, pattern = CASES[case]
    bundle = _copy(tmp_path, "flexibleunet_tools")
    _edit(bundle, config, change)
    problems = _problems(bundle)
    assert any(re.search(pattern, p) for p in problems), problems


def test_pretrained_encoder_in_pretraining_refused(tmp_path):
    bundle = _copy(tmp_path, "simclr_cholec")
    _edit(bundle, "train.json", _set("pretrained_encoder", None))
    assert any("`pretrained_encoder` is what finetuning loads" in p for p in _problems(bundle))


def test_label_budget_declaration_checked(tmp_path):
    bundle = _copy(tmp_path, "unet_acdc")
    meta = bundle / "configs" / "metadata.json"
    data = json.loads(meta.read_text())
    data["label_budget"]["id"] = "subset_fraction"
    meta.write_text(json.dumps(data))
    assert any("'subset_fraction' is not a root id" in p for p in _problems(bundle))


def test_readme_glossary_lists_every_id():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Adding a bundle"):]
    for cid in vb.GLOSSARY:
        assert f"`{cid}`" in section, cid
    for cid in vb.SYNONYMS:
        assert f"`{cid}`" in section, cid


# ------------------------------------------------------------------ helpers behind the rules


def test_encoder_param_groups():
    from monai.networks.nets import FlexibleUNet

    from monai_ssl_ext.utils import encoder_param_groups, non_encoder_params

    net = FlexibleUNet(in_channels=3, out_channels=2, backbone="efficientnet-b0", spatial_dims=2, pretrained=False)
    groups = encoder_param_groups(net, 1e-5)
    opt = torch.optim.Adam(groups, lr=1e-4)
    enc = {id(p) for p in net.encoder.parameters()}
    assert {id(p) for p in opt.param_groups[0]["params"]} == enc and opt.param_groups[0]["lr"] == 1e-5
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in net.parameters()} - enc
    assert opt.param_groups[1]["lr"] == 1e-4
    assert {id(p) for p in non_encoder_params(net)} == {id(p) for p in net.parameters()} - enc
    with pytest.raises(AttributeError):
        encoder_param_groups(torch.nn.Linear(2, 2), 1e-5)


def test_image_meta():
    from monai.data import MetaTensor

    from monai_ssl_ext.utils import image_meta

    batch = [{"image": MetaTensor(torch.zeros(1), meta={"filename_or_obj": f"f{i}"})} for i in range(2)]
    assert [m["filename_or_obj"] for m in image_meta(batch)] == ["f0", "f1"]


def test_intensity_window_header(tmp_path):
    from monai_ssl_ext.encoders import export_encoder, load_encoder, read_encoder
    from monai_ssl_ext.networks import build_backbone

    window = {"a_min": -57, "a_max": 164, "b_min": 0.0, "b_max": 1.0, "clip": True}
    backbone = build_backbone("resnet10", spatial_dims=2, in_channels=1)
    with pytest.raises(ValueError, match="intensity_window"):
        export_encoder(backbone, str(tmp_path / "bad.pt"), method="x", normalization=window)
    path = str(tmp_path / "encoder.pt")
    export_encoder(backbone, path, method="x", intensity_window=window)
    header = read_encoder(path)
    assert header["intensity_window"] == window and header["normalization"] == {}
    report = load_encoder(build_backbone("resnet10", spatial_dims=2, in_channels=1), path,
                          expected_intensity_window={**window, "a_min": -175, "a_max": 250})
    assert "intensity_window_warning" in report.header
    # an encoder file written before intensity_window existed: the window was under normalization
    payload = torch.load(path, weights_only=True)
    payload["normalization"] = payload.pop("intensity_window")
    torch.save(payload, path)
    header = read_encoder(path)
    assert header["intensity_window"] == window and header["normalization"] == {}
    report = load_encoder(build_backbone("resnet10", spatial_dims=2, in_channels=1), path,
                          expected_intensity_window=window)
    assert "intensity_window_warning" not in report.header


def test_timm_weight_spec_spelling(tmp_path, monkeypatch):
    from monai_ssl_ext import encoders

    assert encoders.timm_spec_model("timm/resnet18") == "resnet18"
    assert encoders.is_baseline_init("timm/resnet18") and not encoders.is_baseline_init(str(tmp_path))
    with pytest.warns(DeprecationWarning, match="timm/resnet18"):
        assert encoders.timm_spec_model("timm:resnet18") == "resnet18"
    assert encoders.timm_spec_model("some/encoder.pt") is None
    monkeypatch.chdir(tmp_path)  # a path that exists on disk wins
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "resnet18").write_bytes(b"")
    assert encoders.timm_spec_model("timm/resnet18") is None
    seen = []
    monkeypatch.setattr(encoders, "_timm_payload", lambda name, spec=None: seen.append(name) or {"x": 1})
    monkeypatch.setattr(encoders, "select_trunk", lambda payload, trunk, source: payload)
    monkeypatch.chdir(ROOT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert encoders.resolve_weight_spec("timm/resnet18") == ("timm/resnet18", {"x": 1})
    assert seen == ["resnet18"]
