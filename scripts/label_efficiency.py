"""Label-efficiency sweep: run a finetuning bundle over label budgets × initialisations × seeds,
report the TEST-set score of the checkpoint selected on validation, track every run in one MLflow
store, and write a table and a plot of test metric vs label budget.

Usage (from the repository root)::

    # flexibleunet_tools: % of training images × {random, SimCLR, ImageNet} × 3 seeds (an init may
    # be a dict of overrides holding the weight spec: ImageNet weights want ImageNet normalisation)
    python scripts/label_efficiency.py --bundle flexibleunet_tools \\
        --budgets "[10,25,50,100]" --seeds "[0,1,2]" \\
        --inits '{"random": null, "simclr": "runs/simclr_cholec/models/encoder.pt",
                  "imagenet": {"pretrained_encoder": "timm/tf_efficientnet_b0",
                               "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}}' \\
        --budget_label "% of training images" \\
        --out_dir runs/label_efficiency/tools --dataset_dir data/tools --epochs 20

    # tiny smoke sweep on demo data (python scripts/make_demo_data.py tools --out_dir data/demo/tools)
    python scripts/label_efficiency.py --bundle flexibleunet_tools --budgets "[50,100]" \\
        --inits '{"random": null}' --seeds "[0,1]" --overrides "['smoke.json']" \\
        --dataset_dir data/demo/tools --out_dir runs/label_efficiency/smoke

    # unet_acdc data-efficiency protocol (SPEC D.2): random slice fractions; one seed sets both the
    # training seed and the subset seed (the declared seed_ids); x axis = number of labelled slices
    python scripts/label_efficiency.py --bundle unet_acdc \\
        --budgets "[0.01,0.1,1.0]" --seeds "[0,13,42]" \\
        --inits '{"random": null, "imagenet": "timm/resnet50", "byol_acdc": "runs/byol_acdc/models/encoder.pt"}' \\
        --budget_to_x "{0.01: 15, 0.1: 150, 1.0: 1498}" \\
        --budget_label "labelled training slices" --logx --out_dir runs/label_efficiency/acdc

Add ``--dry_run`` to check the keys and metric names and print the planned runs without running anything.

``--budget_key`` (the config id of the label budget), ``--budgets``, ``--seed_key`` and
``--configs`` default to the bundle's ``label_budget`` declaration in ``configs/metadata.json``
(``id``, ``sweep``, ``seed_ids``, ``config``); pass them to sweep another id, e.g.
``--budget_key subset_ratio --seed_key "['seed','subset_seed']"``.

A thin command line over :mod:`monai_ssl_ext.sweep` (``plan_sweep`` → ``run_sweep`` → ``report``),
whose docstring says what is reported, how each run runs, what MLflow holds and what ``out_dir``
gets: ``results.csv``, ``summary.md``, ``label_efficiency.png``, ``mlruns.db``, ``runs/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from monai_ssl_ext.sweep import (  # noqa: E402
    BUNDLES_DIR,
    CSV_FIELDS,
    RESULT_FILE,
    SUMMARY_RUN,
    SweepError,
    SweepPlan,
    SweepResults,
    aggregate,
    label_budget,
    plan_sweep,
    plot,
    report,
    resolve_bundle,
    run_sweep,
    summary_markdown,
    sweep,
    write_csv,
)

__all__ = ["BUNDLES_DIR", "CSV_FIELDS", "RESULT_FILE", "SUMMARY_RUN", "SweepError", "SweepPlan", "SweepResults",
           "aggregate", "label_budget", "plan_sweep", "plot", "report", "resolve_bundle", "run_sweep",
           "summary_markdown", "sweep", "write_csv"]


def cli(**kwargs) -> None:
    try:
        sweep(**kwargs)
    except SweepError as e:
        sys.exit(f"label_efficiency: error: {e}")


if __name__ == "__main__":
    fire.Fire(sweep if len(sys.argv) > 1 and sys.argv[1] in ("--help", "-h") else cli)
