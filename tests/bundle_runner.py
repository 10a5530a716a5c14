"""Run bundle configs in-process the way ``python -m monai.bundle run`` does, recording the
training loss. Used by tests/test_bundles.py and, under torchrun, for the multi-GPU configs."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

NON_RUN_CONFIGS = {"metadata.json", "smoke.json"}


def run_configs(bundle: Path) -> list[str]:
    """The configs the harness runs, train.json first (the others use what it writes)."""
    names = sorted(
        p.name for p in (bundle / "configs").glob("*.json")
        if p.name not in NON_RUN_CONFIGS and not p.name.startswith("multi_gpu")
    )
    return ["train.json"] + [n for n in names if n != "train.json"]


def run_config(bundle: Path, configs: list[str], bundle_root: str, dataset_dir: str, tracking=None, **override) -> dict:
    """Run ``configs`` (merged in order, then smoke.json) and return
    ``{"losses": [...], "output_dir": ..., "parser": ...}``."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    cfg = bundle / "configs"
    files = [str(cfg / c) for c in configs] + [str(cfg / "smoke.json")]
    wf = ConfigWorkflow(
        config_file=files,
        meta_file=str(cfg / "metadata.json"),
        logging_file=str(cfg / "logging.conf"),
        workflow_type=None,
        tracking=tracking,
        bundle_root=bundle_root,
        dataset_dir=dataset_dir,
        **override,
    )
    wf.initialize()
    losses: list[float] = []
    run_expr = json.dumps(wf.parser.get(wf.run_id)).replace("::", "#")
    if "train#trainer" in run_expr:  # only configs that train: evaluate.json must not build a trainer
        trainer = wf.parser.get_parsed_content("train#trainer")

        def record(engine):
            out = engine.state.output
            out = out[0] if isinstance(out, (list, tuple)) else out
            losses.append(float(out["loss"] if isinstance(out, dict) else out))

        trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    output_dir = wf.parser.get_parsed_content("output_dir")
    wf.run()
    wf.finalize()
    return {"losses": losses, "output_dir": output_dir, "parser": wf.parser}


def main(spec_file: str) -> None:
    """torchrun entry: run every multi-GPU job in ``spec_file`` and write per-rank losses."""
    spec = json.loads(Path(spec_file).read_text())
    rank = int(os.environ.get("RANK", 0))
    results = {}
    for job in spec["jobs"]:
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
