"""scripts/label_efficiency.py: a tiny real sweep of flexibleunet_tools (smoke settings, demo data):
2 budgets × 2 inits (random, an exported SimCLR-format encoder.pt) × 2 seeds → results.csv,
summary.md, the PNG plot and 8 MLflow runs with the sweep params; ``--skip_done`` reuses them;
``evaluate`` reports the evaluate.json score; unknown bundles / keys fail before anything runs."""

from __future__ import annotations

import csv
import json
import math

import pytest

from conftest import load_script

BUNDLE = "flexibleunet_tools"


@pytest.fixture
def one_thread():
    """Tiny CPU runs on a shared machine are several times faster single-threaded."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def encoder(tmp_path):
    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks import build_backbone

    path = tmp_path / "simclr" / "encoder.pt"
    export_encoder(build_backbone("efficientnet-b0"), str(path), method="simclr",
                   normalization={"mean": [0.5] * 3, "std": [0.5] * 3})
    return str(path)


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_sweep_tools(demo_data, tmp_path, encoder, one_thread):
    le = load_script("label_efficiency")
    out = tmp_path / "sweep"
    res = le.sweep(
        bundle=BUNDLE, budget_key="perc", budgets="[50, 100]",
        inits=json.dumps({"random": None, "simclr": encoder}),  # a JSON string, as from the CLI
        seeds=[0, 1], metric="val_mean_iou", out_dir=str(out), overrides=["smoke.json"],
        budget_label="% of training images", dataset_dir=demo_data("tools"),
    )

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    assert {(r["init"], r["budget"], r["seed"]) for r in rows} == {
        (i, b, s) for i in ("random", "simclr") for b in ("50", "100") for s in ("0", "1")
    }
    assert all(math.isfinite(float(r["value"])) and 0.0 <= float(r["value"]) <= 1.0 for r in rows), rows
    assert all(r["metric"] == "max(val_mean_iou)" for r in rows)
    assert len({r["run_id"] for r in rows}) == 8
    assert len({r["output_dir"] for r in rows}) == 8

    summary = (out / "summary.md").read_text()
    assert "| perc | random | simclr |" in summary
    table_rows = [line for line in summary.splitlines() if line.startswith("| 50 ") or line.startswith("| 100 ")]
    assert len(table_rows) == 2 and all(line.count("±") == 2 for line in table_rows), summary
    assert res["summary"] == summary

    from PIL import Image

    png = out / "label_efficiency.png"
    assert png.stat().st_size > 5000
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] >= 400 and img.size[1] >= 300
        img.verify()

    # one MLflow store, one experiment, one finished run per cell with the sweep params
    assert res["tracking_uri"].endswith("/sweep/mlruns.db")
    client = _client(res["tracking_uri"])
    exp = client.get_experiment_by_name(f"{BUNDLE}-label-efficiency")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 8
    by_id = {r["run_id"]: r for r in rows}
    for run in runs:
        row = by_id[run.info.run_id]
        p = run.data.params
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"{row['init']}-perc{row['budget']}-seed{row['seed']}"
        assert (p["sweep_init"], p["sweep_budget"], p["sweep_seed"]) == (row["init"], row["budget"], row["seed"])
        assert p["perc"] == row["budget"] and p["seed"] == row["seed"]  # the bundle really got them
        assert (p["pretrained_encoder"] == "null") == (row["init"] == "random") == (p["sweep_init_spec"] == "null")
        if row["init"] == "simclr":
            assert p["encoder.method"] == "simclr"
        history = [m.value for m in client.get_metric_history(run.info.run_id, "val_mean_iou")]
        assert len(history) == 2  # smoke: 2 epochs, validation every epoch
        assert float(row["value"]) == pytest.approx(max(history))
        assert run.data.metrics["sweep_val_mean_iou"] == pytest.approx(float(row["value"]))

    # --skip_done: every cell finished with the same settings -> nothing runs again
    again = le.sweep(
        bundle=BUNDLE, budget_key="perc", budgets=[50, 100], inits={"random": None, "simclr": encoder},
        seeds=[0, 1], out_dir=str(out), overrides=["smoke.json"], dataset_dir=demo_data("tools"), skip_done=True,
    )
    assert sorted(r["run_id"] for r in again["rows"]) == sorted(by_id)
    assert len(client.search_runs([exp.experiment_id])) == 8


def test_sweep_evaluate(demo_data, tmp_path, encoder, one_thread):
    """With ``evaluate``, the reported value is the evaluate.json score (= its metrics.csv)."""
    le = load_script("label_efficiency")
    out = tmp_path / "sweep_eval"
    norm = {"mean": [0.5] * 3, "std": [0.5] * 3}
    res = le.sweep(
        bundle=BUNDLE, budget_key="perc", budgets=[50], seeds=[3],
        inits={"simclr": {"pretrained_encoder": encoder, "normalization": norm, "learning_rate": 0.0002}},
        seed_key=["seed", "perc_seed"], out_dir=str(out), overrides={"epochs": 1},
        configs=["train.json", "smoke.json"], evaluate="evaluate.json",
        budget_to_x={"50": 4}, budget_label="training images", logx=True, dataset_dir=demo_data("tools"),
    )
    (row,) = res["rows"]
    assert row["metric"] == "evaluate.json:val_mean_iou" and row["x"] == 4
    saved = dict(line.split(",", 1) for line in (out / "runs/simclr/perc50/seed3/eval/metrics.csv").read_text().split())
    assert row["value"] == pytest.approx(float(saved["val_mean_iou"]))
    run = _client(res["tracking_uri"]).get_run(row["run_id"])
    (executed,) = (out / "runs/simclr/perc50/seed3").glob("config_*.json")  # MONAI's executed config
    assert json.loads(executed.read_text())["perc_seed"] == 3  # one seed set both seed keys
    assert run.data.params["seed"] == "3" and run.data.params["sweep_x"] == "4"
    assert run.data.params["learning_rate"] == "0.0002"  # the init's own overrides reached the bundle
    assert json.loads(run.data.params["sweep_init.normalization"]) == norm
    assert run.data.metrics["eval_val_mean_iou"] == pytest.approx(row["value"])
    assert "| perc | training images | simclr |" in (out / "summary.md").read_text()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bundle": "no_such_bundle"}, "unknown bundle 'no_such_bundle'"),
        ({"budget_key": "percent"}, "budget_key 'percent' is not a config id of bundle 'flexibleunet_tools'"),
        ({"seed_key": "['seed', 'subset_seed']"}, "seed_key 'subset_seed' is not a config id of bundle 'flexibleunet_tools'"),
        ({"init_key": "init_weights"}, "init_key 'init_weights' is not a config id of bundle 'flexibleunet_tools'"),
        ({"overrides": {"epochz": 3}}, "override 'epochz' is not a config id"),
        ({"inits": '{"ssl": "missing/encoder.pt"}'}, "init 'ssl': encoder file not found: missing/encoder.pt"),
        ({"evaluate": "nope.json"}, "evaluate config 'nope.json' not found"),
        ({"budget_to_x": {50: 10}}, "budget_to_x has no (numeric) entry for budget 100"),
        ({"inits": {"imagenet": {"pretrained_encoder": "timm:x", "norm": 1}}}, "init 'imagenet': override 'norm' is not"),
    ],
    ids=["bundle", "budget_key", "seed_key", "init_key", "override", "encoder", "evaluate", "budget_to_x", "init_dict"],
)
def test_bad_arguments_fail_before_running(tmp_path, kwargs, message):
    le = load_script("label_efficiency")
    args = {"bundle": BUNDLE, "budget_key": "perc", "budgets": [50, 100], "out_dir": str(tmp_path / "out"), **kwargs}
    with pytest.raises(le.SweepError) as err:
        le.sweep(**args)
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_sweep_acdc(demo_data, tmp_path, one_thread):
    """The SSL-MedSeg protocol on unet_acdc: subset ratios × {random, BYOL-style encoder} × seeds,
    both seed ids set by the sweep seed, x axis = number of labelled slices."""
    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks import build_backbone

    encoder = tmp_path / "byol" / "encoder.pt"  # unet_acdc's smoke trunk is timm resnet18, 1 channel
    export_encoder(build_backbone("timm/resnet18", in_channels=1), str(encoder), method="byol",
                   normalization={"mean": [67.27], "std": [84.66]})
    le = load_script("label_efficiency")
    out = tmp_path / "acdc_sweep"
    res = le.sweep(
        bundle="unet_acdc", budget_key="subset_ratio", budgets=[0.5, 1.0], seeds=[0, 13],
        seed_key=["seed", "subset_seed"], inits={"random": None, "byol_acdc": str(encoder)},
        metric="val_mean_iou", out_dir=str(out), overrides=["smoke.json"], budget_to_x={0.5: 16, 1.0: 32},
        budget_label="labelled slices", dataset_dir=demo_data("acdc"),
    )
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(math.isfinite(float(r["value"])) for r in rows)
    assert {r["x"] for r in rows} == {"16", "32"}
    assert "| random | byol_acdc |" in (out / "summary.md").read_text()
    assert (out / "label_efficiency.png").stat().st_size > 5000
    client = _client(res["tracking_uri"])
    for run in client.search_runs([client.get_experiment_by_name("unet_acdc-label-efficiency").experiment_id]):
        p = run.data.params
        assert p["seed"] == p["subset_seed"] == p["sweep_seed"]
        assert p["subset_ratio"] == p["sweep_budget"]


def test_sweep_btcv(demo_data, tmp_path, one_thread):
    """The BTCV protocol on unetr_btcv: 6 vs 12 training volumes × {random, ViT-autoencoder trunk}."""
    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks import build_backbone

    encoder = tmp_path / "vitae" / "encoder.pt"  # the smoke UNETR's ViT size
    vit = build_backbone("vit", spatial_dims=3, in_channels=1, img_size=32, patch_size=16, hidden_size=48,
                         mlp_dim=96, num_layers=12, num_heads=4)
    export_encoder(vit, str(encoder), method="vitautoenc")
    le = load_script("label_efficiency")
    out = tmp_path / "btcv_sweep"
    res = le.sweep(
        bundle="unetr_btcv", budget_key="train_volumes", budgets=[6, 12], seeds=[0],
        inits={"random": None, "ssl": str(encoder)}, metric="val_mean_dice", out_dir=str(out),
        overrides=["smoke.json"], budget_label="training volumes", dataset_dir=demo_data("btcv"),
    )
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(math.isfinite(float(r["value"])) for r in rows)
    assert "| random | ssl |" in (out / "summary.md").read_text()
    assert (out / "label_efficiency.png").is_file()
    client = _client(res["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("unetr_btcv-label-efficiency").experiment_id])
    assert sorted(r.data.params["n_train_volumes"] for r in runs) == ["12", "12", "6", "6"]
    assert {r.data.params.get("encoder.method") for r in runs} == {None, "vitautoenc"}
