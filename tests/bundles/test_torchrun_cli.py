"""The documented multi-GPU command, literally: torchrun + ``python -m monai.bundle run`` with
train.json and multi_gpu_train.json (plus smoke.json for size), 2 gloo processes on CPU."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT


def test_unetr_btcv_multi_gpu_cli(demo_data, tmp_path):
    cfg = "bundles/unetr_btcv/configs"
    config_file = f"['{cfg}/train.json','{cfg}/multi_gpu_train.json','{cfg}/smoke.json']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "monai.bundle", "run", "--config_file", config_file,
           "--bundle_root", str(tmp_path), "--dataset_dir", demo_data("btcv")]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    models = tmp_path / "runs" / "unetr_btcv" / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint_last.pt").is_file()
    assert proc.stdout.count("train_loss") >= 4  # rank 0 logged every iteration of 2 epochs × 2
