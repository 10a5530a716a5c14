"""The model zoo's export checks on every finetuning bundle (a train.json with ``pretrained_encoder``): its
``network_def`` exports with ``python -m monai.bundle ckpt_export`` to TorchScript — scripted, or traced where the
bundle's ``metadata.json`` says ``"torchscript": {"use_trace": true, "reason": ...}`` — and the exported model
gives the eager model's outputs on a fixed input; ``verify_net_in_out`` passes against the bundle's
``network_data_format``, whose spatial axes are the config's (rows first, as the pictures load). A bundle that
cannot export says ``"torchscript": {"skip": "<reason>"}`` and is skipped here by name, never silently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import BUNDLES

FINETUNING = [b for b in BUNDLES if "pretrained_encoder" in json.loads((b / "configs" / "train.json").read_text())
              and "network_def" in json.loads((b / "configs" / "train.json").read_text())]


def _meta(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def _spatial(parser) -> list[int]:
    """The input size the (smoke) config trains on: image_size (2D, [H, W]) or roi_size (3D)."""
    size = parser.get_parsed_content("roi_size") if "roi_size" in parser else parser.get_parsed_content("image_size")
    return list(size) if isinstance(size, (list, tuple)) else [int(size)] * 2


def test_finetuning_bundles_found():
    assert {"flexibleunet_tools", "unet_acdc", "unetr_btcv"} <= {b.name for b in FINETUNING}


@pytest.mark.parametrize("bundle", FINETUNING, ids=[b.name for b in FINETUNING])
def test_network_data_format_matches_the_config(bundle):
    """The declared input size is the published config's, axis for axis (2D: [H, W] rows first)."""
    from monai.bundle import ConfigParser

    if "skip" in _meta(bundle).get("torchscript", {}):
        pytest.skip(f"{bundle.name}: {_meta(bundle)['torchscript']['skip']}")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    fmt = _meta(bundle)["network_data_format"]
    assert fmt["inputs"]["image"]["spatial_shape"] == _spatial(parser), bundle.name
    assert fmt["inputs"]["image"]["num_channels"] == parser.get_parsed_content("in_channels")


@pytest.mark.parametrize("bundle", FINETUNING, ids=[b.name for b in FINETUNING])
def test_ckpt_export_matches_eager_and_verify_net_in_out(bundle, tmp_path, demo_data):
    from monai.bundle import ConfigParser

    from monai_ssl_ext.workflow import smoke_settings

    setting = _meta(bundle).get("torchscript", {})
    if "skip" in setting:
        pytest.skip(f"{bundle.name} cannot export to TorchScript: {setting['skip']}")
    configs = [str(bundle / "configs" / "train.json"), str(bundle / "configs" / "smoke.json")]
    data = {"dataset_dir": demo_data(smoke_settings(bundle, ["train.json"])["demo_data"])}  # e.g. classes from data
    parser = ConfigParser()
    parser.read_config(configs)
    parser.update(data)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    shape = [1, parser.get_parsed_content("in_channels"), *_spatial(parser)]
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"),
           "--ckpt_file", str(ckpt), "--meta_file", str(bundle / "configs" / "metadata.json"),
           "--config_file", json.dumps(configs), "--dataset_dir", data["dataset_dir"]]
    if setting.get("use_trace"):
        cmd += ["--use_trace", "True", "--input_shape", json.dumps(shape)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net(x), rtol=1e-4, atol=1e-5)

    from monai.bundle import verify_net_in_out

    sizes = {"_meta_#network_data_format#inputs#image#spatial_shape": _spatial(parser)}  # the smoke size
    if _meta(bundle)["network_data_format"]["outputs"]["pred"].get("type") == "image":  # a map the input's size
        sizes["_meta_#network_data_format#outputs#pred#spatial_shape"] = _spatial(parser)
    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"), config_file=configs,
                      **sizes, **data)
