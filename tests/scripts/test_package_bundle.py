"""Sharing a bundle: scripts/package_bundle.py writes the model-zoo zip (configs, docs, LICENSE; no run outputs)
and the monai-ssl-ext wheel; `python -m monai.bundle download --url file://...zip` unpacks it elsewhere, and the
downloaded copy runs its smoke config from there (offline round trip); a file over 25 MB is refused by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT, load_script
from monai_ssl_ext.sharing import bundle_files
from monai_ssl_ext.workflow import run_bundle


def test_zip_wheel_download_and_run_from_the_copy(demo_data, tmp_path):
    src = tmp_path / "src" / "flexibleunet_tools"
    shutil.copytree(ROOT / "bundles" / "flexibleunet_tools", src)
    (src / "runs" / "x").mkdir(parents=True)
    (src / "runs" / "x" / "checkpoint_last.pt").write_bytes(b"0" * 10)  # run outputs never travel
    result = load_script("package_bundle").main(str(src), out_dir=str(tmp_path / "dist"))
    version = __import__("json").loads((src / "configs" / "metadata.json").read_text())["version"]
    assert os.path.basename(result["zip"]) == f"flexibleunet_tools_v{version}.zip"
    names = zipfile.ZipFile(result["zip"]).namelist()
    assert "flexibleunet_tools/configs/metadata.json" in names and "flexibleunet_tools/LICENSE" in names
    assert "flexibleunet_tools/docs/README.md" in names and not any("/runs/" in n for n in names)
    assert os.path.basename(result["wheel"]).startswith("monai_ssl_ext-") and result["wheel"].endswith(".whl")
    assert any(n.startswith("monai_ssl_ext/encoders.py") for n in zipfile.ZipFile(result["wheel"]).namelist())

    zoo = tmp_path / "zoo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "monai.bundle", "download", "--name", "flexibleunet_tools",
                    "--url", f"file://{result['zip']}",
                    "--bundle_dir", str(zoo)], check=True, cwd=tmp_path, env=env, capture_output=True)
    copy = zoo / "flexibleunet_tools"
    assert (copy / "configs" / "train.json").read_text() == (src / "configs" / "train.json").read_text()
    res = run_bundle(copy, ["train.json"], {"bundle_root": str(tmp_path / "out"), "dataset_dir": demo_data("tools")},
                     smoke=True)
    assert res["losses"] and (tmp_path / "out" / "runs" / "flexibleunet_tools" / "models" / "model.pt").is_file()


def test_a_file_over_25_mb_is_refused(tmp_path):
    copy = tmp_path / "unet_acdc"
    shutil.copytree(ROOT / "bundles" / "unet_acdc", copy)
    big = copy / "docs" / "weights.bin"
    with open(big, "wb") as f:
        f.truncate(26 * 1024 * 1024)  # sparse: no 26 MB written
    with pytest.raises(ValueError, match=r"weights\.bin.*25 MB.*large_files\.yml"):
        bundle_files(copy)


@pytest.mark.parametrize("bundle", sorted(p.name for p in (ROOT / "bundles").iterdir() if (p / "configs").is_dir()))
def test_every_bundle_packs_within_the_limits(bundle):
    files = bundle_files(ROOT / "bundles" / bundle)  # raises on a file over 25 MB
    assert any(f.as_posix() == "configs/metadata.json" for f in files) and any(f.name == "LICENSE" for f in files)
