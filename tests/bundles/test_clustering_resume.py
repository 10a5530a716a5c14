"""A SwAV / DeepCluster-v2 run killed (SIGKILL) after an epoch-end checkpoint and started again with the same
command ends with the queue, the memory bank, the cluster assignments, the centroids (= prototypes) and the weights
of an uninterrupted run: the clustering state is saved with the network and the resumed run neither refills the
bank nor reclusters differently."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from killed_runs import assert_same_state, ckpt_epoch, finish, kill_after_checkpoint, start, train_losses

EPOCHS = 4
STATE_KEYS = {
    # the queue of each coded crop (ring buffer, pointer, fill count)
    "swav_slices": ("queues.", "prototypes."),
    # the memory bank (embeddings, assignments, seen), the k-means centroids and fit count
    "deepclusterv2_slices": ("memory.", "kmeans.", "prototypes."),
}


def _command(bundle: str, override: Path, data: str, root: Path) -> list[str]:
    cfg = ROOT / "bundles" / bundle / "configs"
    files = [str(cfg / "train.json"), str(cfg / "smoke.json"), str(override)]
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr(files),
            "--dataset_dir", data, "--bundle_root", str(root)]


@pytest.mark.parametrize("bundle", sorted(STATE_KEYS))
def test_killed_clustering_run_resumes_with_the_same_state(bundle, demo_data, tmp_path):
    data = demo_data("ssl_slices")
    override = tmp_path / "resume.json"
    override.write_text(json.dumps({"epochs": EPOCHS}))  # smoke sizes: 2 iterations an epoch, batch 4
    ckpt = Path("runs") / bundle / "models" / "checkpoint_last.pt"
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    proc_a, log_a = start(_command(bundle, override, data, root_a), tmp_path / "a.log")  # uninterrupted, beside B
    proc_b, log_b = start(_command(bundle, override, data, root_b), tmp_path / "b1.log")
    first = kill_after_checkpoint(proc_b, log_b, tmp_path / "b1.log", root_b / ckpt)
    killed_at = ckpt_epoch(root_b / ckpt)
    assert killed_at is not None and 1 <= killed_at < EPOCHS, f"kill did not land mid-run (epoch {killed_at})"

    proc_b2, log_b2 = start(_command(bundle, override, data, root_b), tmp_path / "b2.log")
    resumed = finish(proc_b2, log_b2, tmp_path / "b2.log")
    out_a = finish(proc_a, log_a, tmp_path / "a.log")
    assert f"resumed from {root_b / ckpt} at epoch {killed_at}" in resumed, resumed[-3000:]
    assert train_losses(resumed) == train_losses(out_a)[killed_at * 2:]
    if bundle == "deepclusterv2_slices":
        assert "memory bank filled" in first and "memory bank filled" not in resumed  # the bank came back

    net_a = torch.load(root_a / ckpt, map_location="cpu", weights_only=True)["network"]
    net_b = torch.load(root_b / ckpt, map_location="cpu", weights_only=True)["network"]
    state = {k: v for k, v in net_a.items() if k.startswith(STATE_KEYS[bundle])}
    assert {k.split(".")[0] for k in state} == {p.rstrip(".") for p in STATE_KEYS[bundle]}
    if bundle == "swav_slices":
        assert all(int(net_a[k]) > 0 for k in net_a if k.endswith(".count"))  # the queues were written
    else:
        assert int(net_a["kmeans.fits"]) == EPOCHS and bool((net_a["memory.assignments"] >= 0).all())
    assert_same_state(net_a, net_b, "network")
