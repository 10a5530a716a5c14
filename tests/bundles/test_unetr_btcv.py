"""Bundle-specific checks of ``bundles/unetr_btcv`` (the generic run of every config on demo data
is the shared bundle harness's job).

* ``train_volumes`` 6 / 12 / 24 selects the shipped MSD-style datalist: that many training
  volumes (a subset of the 24), always the same 6 validation volumes img0035-0040, 20 test images;
* a ViT encoder exported from ``build_backbone("vit", ...)`` loads into the bundle's ``UNETR.vit``
  with nothing missing or unused, and ``UNETR.vit`` then computes the trunk's hidden states;
* inference writes NIfTI label maps on the input's grid (same affine and shape as the input);
* the demo data holds every file the shipped datalists name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_bundle_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "unetr_btcv" / "configs"
SHIPPED = CONFIGS / "datalists"
TRAIN_24 = [*range(1, 11), *range(21, 35)]
VAL = list(range(35, 41))
TINY = {"roi_size": [32, 32, 32], "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4,
        "sw_batch_size": 2, "num_workers": 0}

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _parser(files, overrides=None):
    return read_bundle_config(CONFIGS, files, overrides)


def _case(path: str) -> int:
    return int("".join(c for c in Path(path).name if c.isdigit()))


@pytest.mark.parametrize("n", [6, 12, 24])
def test_train_volumes_selects_datalist(n, tmp_path):
    parser = _parser(["train.json"], {"dataset_dir": str(tmp_path), "train_volumes": n, "datalist_dir": str(SHIPPED)})
    train = parser.get_parsed_content("train#datalist")
    val = parser.get_parsed_content("validate#datalist")
    assert len(train) == n
    ids = [_case(d["image"]) for d in train]
    assert ids == [_case(d["label"]) for d in train] and len(set(ids)) == n and set(ids) <= set(TRAIN_24)
    if n == 24:
        assert sorted(ids) == TRAIN_24
    assert [_case(d["image"]) for d in val] == VAL
    assert all(d["image"].startswith(str(tmp_path) + os.sep + "imagesTr") for d in train + val)
    assert all(d["label"].startswith(str(tmp_path) + os.sep + "labelsTr") for d in train + val)
    content = json.loads(Path(parser.get_parsed_content("datalist_file")).read_text())
    assert [_case(p) for p in content["test"]] == list(range(61, 81))
    assert all(p.startswith("imagesTs/") for p in content["test"])


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_a_relocated_bundle_reads_its_own_datalists(config, tmp_path, monkeypatch):
    """The bundle copied elsewhere (as `monai.bundle download` or an unzip puts it) and run from a third folder with
    another bundle_root: `datalist_dir` is the copy's own configs/datalists (`workflow.config_dir()`), not a path
    of this repository."""
    import shutil

    from monai.bundle import ConfigWorkflow

    copy = tmp_path / "zoo" / "unetr_btcv"
    shutil.copytree(CONFIGS.parent, copy)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    wf = ConfigWorkflow(config_file=str(copy / "configs" / config), workflow_type=None, run_id="datalist_file",
                        init_id="datalist_dir", bundle_root=str(tmp_path / "out"), dataset_dir=str(tmp_path))
    wf.initialize()
    (path,) = map(Path, wf.run())  # evaluated by the workflow, as `python -m monai.bundle run` does
    assert path.parent == (copy / "configs" / "datalists").resolve() and path.is_file()
    assert path.read_text() == (SHIPPED / path.name).read_text()


def test_config_dir_outside_a_workflow_names_the_fix():
    from monai_ssl_ext.workflow import config_dir

    with pytest.raises(RuntimeError, match="datalist_dir"):
        config_dir()


def test_invalid_train_volumes_fails(tmp_path):
    parser = _parser(["train.json"], {"dataset_dir": str(tmp_path), "train_volumes": 7, "datalist_dir": str(SHIPPED)})
    with pytest.raises(Exception):
        parser.get_parsed_content("datalist_file")


def test_vit_encoder_loads_into_unetr(tmp_path):
    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("vit", spatial_dims=3, in_channels=1, img_size=32, patch_size=16, hidden_size=48,
                              mlp_dim=96, num_layers=12, num_heads=4, proj_type="conv")
    path = str(tmp_path / "encoder.pt")
    export_encoder(backbone, path, method="vitautoenc")
    parser = _parser(["train.json"], {**TINY, "bundle_root": str(tmp_path), "pretrained_encoder": path})
    net = parser.get_parsed_content("network_def")
    report = parser.get_parsed_content("encoder_report")
    assert report.ok and not report.missing and not report.unused and not report.mismatched
    assert len(report.loaded) == len(net.vit.state_dict()) == len(backbone.trunk.state_dict())
    backbone.trunk.eval()
    net.vit.eval()
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        ref_out, ref_hidden = backbone.trunk(x)
        out, hidden = net.vit(x)
        net(x)  # the whole UNETR runs with the loaded trunk
    assert len(hidden) == len(ref_hidden) == 12
    for a, b in zip([out, *hidden], [ref_out, *ref_hidden]):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-5


def test_demo_data_covers_shipped_datalists(tmp_path):
    from conftest import load_script

    load_script("make_demo_data").btcv(out_dir=str(tmp_path))
    for name in ("dataset_0.json", "dataset_0_init_6.json", "dataset_0_init_12.json"):
        content = json.loads((CONFIGS / "datalists" / name).read_text())
        assert json.loads((tmp_path / name).read_text()) == content
        for item in content["training"] + content["validation"]:
            assert (tmp_path / item["image"]).is_file() and (tmp_path / item["label"]).is_file()
        assert all((tmp_path / p).is_file() for p in content["test"])
    import nibabel as nib

    label = np.asarray(nib.load(str(tmp_path / "labelsTr" / "label0001.nii.gz")).dataobj)
    image = np.asarray(nib.load(str(tmp_path / "imagesTr" / "img0001.nii.gz")).dataobj)
    assert label.max() < 14 and len(np.unique(label)) > 3
    assert -1000 <= image.min() and image.max() <= 1000


def test_inference_writes_nifti_on_input_grid(tmp_path):
    import nibabel as nib
    from conftest import load_script
    from monai.bundle import ConfigWorkflow
    from monai.networks.nets import UNETR

    data = tmp_path / "data"
    load_script("make_demo_data").btcv(out_dir=str(data), size=24, depth=20)
    root = tmp_path / "root"
    ckpt = root / "runs" / "unetr_btcv" / "models"
    ckpt.mkdir(parents=True)
    net = UNETR(in_channels=1, out_channels=14, img_size=[32, 32, 32], feature_size=8, hidden_size=48, mlp_dim=96,
                num_heads=4, proj_type="conv", norm_name="instance", res_block=True, dropout_rate=0.0)
    torch.save(net.state_dict(), ckpt / "model.pt")
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"), meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type=None, bundle_root=str(root),
        dataset_dir=str(data), datalist_dir=str(data), **TINY,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    test = json.loads((data / "dataset_0.json").read_text())["test"]
    for rel in test:
        src = nib.load(str(data / rel))
        out = root / "runs" / "unetr_btcv" / "predictions" / Path(rel).name.replace(".nii.gz", "_seg.nii.gz")
        pred = nib.load(str(out))
        assert pred.shape == src.shape, (rel, pred.shape, src.shape)
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-4)
        values = np.asarray(pred.dataobj)
        assert values.min() >= 0 and values.max() < 14 and np.allclose(values, np.round(values))


def test_wrong_size_vit_encoder_fails_with_path(tmp_path):
    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks import build_backbone

    backbone = build_backbone("vit", spatial_dims=3, in_channels=1, img_size=32, patch_size=16, hidden_size=24,
                              mlp_dim=48, num_layers=12, num_heads=4, proj_type="conv")
    path = str(tmp_path / "small_encoder.pt")
    export_encoder(backbone, path, method="vitautoenc")
    parser = _parser(["train.json"], {**TINY, "bundle_root": str(tmp_path), "pretrained_encoder": path})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("encoder_report")
    messages, exc = [], info.value
    while exc is not None:
        messages.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("small_encoder.pt" in m for m in messages), messages
