"""Run bundle configs in-process the way ``python -m monai.bundle run`` does, recording the
training loss. Used by tests/bundles/test_bundles.py and, under torchrun, for the multi-GPU configs."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

# smoke.json (and smoke_<config>.json) are merged onto every run; cpu_demo.json is a documented
# CPU-sized override for users
NON_RUN_CONFIGS = {"metadata.json", "cpu_demo.json"}

#: printed (flushed) on stdout before each torchrun job, so a rank's output splits per bundle
JOB_MARKER = "bundle_runner job: "


def run_configs(bundle: Path) -> list[str]:
    """The configs the harness runs, train.json first (the others use what it writes)."""
    names = sorted(
        p.name for p in (bundle / "configs").glob("*.json")
        if p.name not in NON_RUN_CONFIGS and not p.name.startswith(("multi_gpu", "smoke"))
    )
    return ["train.json"] + [n for n in names if n != "train.json"]


def run_config(bundle: Path, configs: list[str], bundle_root: str, dataset_dir: str, tracking=None, **override) -> dict:
    """Run ``configs`` (merged in order, then smoke.json) and return
    ``{"losses": [...], "output_dir": ..., "parser": ...}`` (the package runner's result)."""
    from monai_ssl_ext.workflow import run_bundle

    overrides = {"bundle_root": bundle_root, "dataset_dir": dataset_dir, **override}
    return run_bundle(bundle, configs, overrides, tracking=tracking, smoke=True)


def main(spec_file: str) -> None:
    """torchrun entry: run every multi-GPU job in ``spec_file`` and write per-rank losses."""
    spec = json.loads(Path(spec_file).read_text())
    rank = int(os.environ.get("RANK", 0))
    results = {}
    for job in spec["jobs"]:
        print(f"{JOB_MARKER}{job['name']}", flush=True)
        # the bundles share one process group: keep it (and ignite's view of it) between jobs
        res = run_config(
            Path(job["bundle"]), ["train.json", "multi_gpu_train.json"], job["bundle_root"], job["dataset_dir"], finalize=[]
        )
        results[job["name"]] = {"losses": res["losses"], "output_dir": res["output_dir"]}
    Path(spec["out"]).joinpath(f"rank{rank}.json").write_text(json.dumps(results))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def assert_trained(losses: list[float], where: str) -> None:
    assert losses, f"{where}: no training iterations ran"
    assert all(math.isfinite(v) for v in losses), f"{where}: non-finite loss {losses}"
    assert len(set(losses)) > 1, f"{where}: loss never changed {losses}"


if __name__ == "__main__":
    main(sys.argv[1])
