"""Quickstart: the whole chain on generated demo data, tracked in MLflow.

1. demo data in the Cholec80 frame layout and the tool-segmentation layout (``data/demo/``);
2. SimCLR pretraining (``bundles/simclr_cholec``), which exports ``encoder.pt``;
3. FlexibleUNet tool segmentation (``bundles/flexibleunet_tools``) finetuned from that encoder,
   then evaluated on the test list;
4. a summary of where everything went.

Usage (from the repository root)::

    python scripts/quickstart.py [--ssl_epochs 30] [--seg_epochs 20] [--out_root .]

Every step is an ordinary bundle run (:func:`monai_ssl_ext.workflow.run_bundle`, what
``python -m monai.bundle run`` does) with MLflow tracking on; the printed commands reproduce them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import fire

from monai_ssl_ext import demo
from monai_ssl_ext.workflow import run_bundle

ROOT = Path(__file__).resolve().parents[1]


def _run_bundle(name: str, configs: list[str], out_root: Path, **overrides):
    """One ordinary bundle run with MLflow tracking (the printed command reproduces it)."""
    return run_bundle(ROOT / "bundles" / name, configs, {"bundle_root": str(out_root), **overrides},
                      tracking="mlflow", echo=True)


def ssl_loss_history(out_root: str | Path, experiment: str = "simclr_cholec") -> list[float]:
    """Per-iteration SimCLR training loss of the latest run, read back from MLflow."""
    from mlflow.tracking import MlflowClient

    from monai.utils import path_to_sqlite_uri

    client = MlflowClient(tracking_uri=path_to_sqlite_uri(os.path.abspath(Path(out_root) / "runs" / "mlruns.db")))
    exp = client.get_experiment_by_name(experiment)
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)]


def main(
    out_root: str = ".",
    ssl_epochs: int = 30,
    seg_epochs: int = 20,
    image_size: int = 64,
    batch_size: int = 16,
    n_videos: int = 6,
    frames_per_video: int = 40,
    seed: int = 42,
) -> dict:
    """Run the quickstart chain; returns the paths it printed."""
    out = Path(out_root).resolve()
    data = out / "data" / "demo"
    print(f"demo data → {data}", flush=True)
    demo.cholec(out_dir=str(data / "cholec80"), n_videos=n_videos, frames_per_video=frames_per_video, size=image_size, seed=seed)
    demo.tools(out_dir=str(data / "tools"), size=image_size, seed=seed)

    ssl_out = out / "runs" / "simclr_cholec"
    _run_bundle(
        "simclr_cholec", ["train.json"], out,
        dataset_dir=str(data / "cholec80"), epochs=ssl_epochs, batch_size=batch_size, image_size=image_size,
        num_workers=0, seed=seed, resume=False,
    )
    encoder = ssl_out / "models" / "encoder.pt"
    seg_out = out / "runs" / "flexibleunet_tools"
    seg_common = dict(
        dataset_dir=str(data / "tools"), pretrained_encoder=str(encoder), image_size=[image_size, image_size],
        num_workers=0, seed=seed,
    )
    _run_bundle("flexibleunet_tools", ["train.json"], out, epochs=seg_epochs, batch_size=4, resume=False, **seg_common)
    _run_bundle("flexibleunet_tools", ["train.json", "evaluate.json"], out, **seg_common)

    losses = ssl_loss_history(out)
    quarter = max(1, len(losses) // 4)
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    metrics_file = seg_out / "eval" / "metrics.csv"
    seg_metrics = dict(line.split(",", 1) for line in metrics_file.read_text().split()) if metrics_file.is_file() else {}
    summary = {
        "demo_data": str(data),
        "simclr_encoder": str(encoder),
        "simclr_checkpoints": str(ssl_out / "models"),
        "simclr_loss_first_quarter": round(first, 4),
        "simclr_loss_last_quarter": round(last, 4),
        "segmentation_model": str(seg_out / "models" / "model.pt"),
        "segmentation_eval": str(seg_out / "eval"),
        **{f"segmentation_{k}": round(float(v), 4) for k, v in seg_metrics.items()},
        "segmentation_predictions": "python -m monai.bundle run --config_file "
        f"bundles/flexibleunet_tools/configs/inference.json --bundle_root {out} --dataset_dir {data / 'tools'}",
        "mlflow_db": str(out / "runs" / "mlruns.db"),
        "mlflow_ui": f"pip install mlflow && mlflow ui --backend-store-uri sqlite:///{out / 'runs' / 'mlruns.db'}",
    }
    print("\n=== quickstart summary")
    for k, v in summary.items():
        print(f"{k:28s} {v}")
    (out / "runs" / "quickstart_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def cli(**kwargs) -> None:
    main(**kwargs)


if __name__ == "__main__":
    fire.Fire(main if len(sys.argv) > 1 and sys.argv[1] in ("--help", "-h") else cli)
