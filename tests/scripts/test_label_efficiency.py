"""scripts/label_efficiency.py: tiny real sweeps (smoke settings, demo data) of flexibleunet_tools,
unet_acdc and unetr_btcv. Each run's reported value must be the TEST metric that the bundle's
evaluate config computes on the run's best-validation ``model.pt`` (its MetricsSaver CSVs, over the
test images), never the validation value; the best validation value is a separate column;
summary.md is numpy's mean ± sample std of results.csv; the table has one row per
budget × init × seed; MLflow holds the runs (test_* metrics) under a summary run with the
results.csv / summary.md / plot artifacts; ``--skip_done`` reuses runs; bad arguments fail before
anything runs."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, load_script, read_bundle_config

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


def _read_rows(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def _saved_metrics(run_dir) -> dict:
    """The evaluate run's MetricsSaver ``eval/metrics.csv``: ``{name: value}``."""
    lines = (Path(run_dir) / "eval" / "metrics.csv").read_text().split()
    return {name: float(value) for name, value in (line.split(",", 1) for line in lines)}


def _per_image(run_dir, metric) -> list[tuple[str, float]]:
    """The evaluate run's per-image ``eval/<metric>_raw.csv``: ``[(file name, mean over classes)]``
    (ACDC: one row per slice, so a file name repeats)."""
    with open(Path(run_dir) / "eval" / f"{metric}_raw.csv") as f:
        return [(Path(r["filename"]).name, float(r["mean"])) for r in csv.DictReader(f)]


def _cells(summary: str, budgets, inits, metric: str | None = None) -> dict:
    """``{(budget, init): (mean, std)}`` parsed from summary.md's first table (the reported metric), or from the
    table under the line ``<metric>:``."""
    out = {}
    lines = summary.splitlines()
    if metric is not None:
        lines = lines[lines.index(f"{metric}:") + 1:]
    started = False
    for line in lines:
        if line.startswith("|"):
            started = True
        elif started:
            break  # the end of this table
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if parts and parts[0] in [str(b) for b in budgets]:
            for init, cell in zip(inits, parts[-len(inits):]):
                m = re.fullmatch(r"(-?[0-9.]+|nan) ± (-?[0-9.]+|nan)", cell)
                assert m, (cell, summary)
                out[(parts[0], init)] = (float(m.group(1)), float(m.group(2)))
    return out


def check_sweep(res, out: Path, budgets, inits, seeds, test_metric, val_metric, test_files, val_files=()):
    """What every sweep must satisfy; returns the results.csv rows and the cell runs by id."""
    rows = _read_rows(out)
    # one row per budget × init × seed, each its own run
    assert sorted((r["budget"], r["init"], r["seed"]) for r in rows) == sorted(
        (str(b), i, str(s)) for b in budgets for i in inits for s in seeds)
    assert len({r["run_id"] for r in rows}) == len({r["output_dir"] for r in rows}) == len(rows)
    assert {r["test_metric"] for r in rows} == {test_metric}
    assert {r["val_metric"] for r in rows} == {f"max({val_metric})"}
    assert [r["run_id"] for r in res["rows"]] == [r["run_id"] for r in rows]

    client = _client(res["tracking_uri"])
    exp = client.get_experiment_by_name(res["experiment"])
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id])}
    differs = 0
    for row in rows:
        value, best_val = float(row["test_value"]), float(row["best_val_value"])
        assert math.isfinite(value) and math.isfinite(best_val)
        # the reported value is the evaluate run's test metric ...
        saved = _saved_metrics(row["output_dir"])
        assert value == pytest.approx(saved[test_metric], abs=1e-6), row
        # ... over the test images only (never the validation images) ...
        per_image = _per_image(row["output_dir"], test_metric)
        assert sorted({name for name, _ in per_image}) == sorted(test_files), per_image
        assert not {name for name, _ in per_image} & set(val_files)
        assert value == pytest.approx(np.nanmean([v for _, v in per_image]), abs=1e-5)
        # ... while best_val_value is the best of the training run's validation history
        run = runs[row["run_id"]]
        history = [m.value for m in client.get_metric_history(row["run_id"], val_metric)]
        assert history and best_val == pytest.approx(max(history))
        differs += abs(value - best_val) > 1e-6
        # MLflow: the test value under a test_ name, never appended to the validation history
        m = run.data.metrics
        test_name = test_metric if test_metric.startswith("test_") else f"test_{test_metric}"
        assert m[test_name] == pytest.approx(value)
        assert m[f"best_{val_metric}"] == pytest.approx(best_val)
        assert m[val_metric] == pytest.approx(history[-1])
        assert len(history) == 2  # smoke: 2 epochs, validation every epoch, nothing else logged as val_
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == res["summary_run_id"]
        assert "eval/metrics.csv" in _artifacts(client, row["run_id"], "eval")
    # the test data are not the validation data: some run scores differently on them
    assert differs, [(r["test_value"], r["best_val_value"]) for r in rows]

    # summary.md: numpy's mean ± sample std of results.csv's test values
    summary = (out / "summary.md").read_text()
    assert res["summary"] == summary and test_metric in summary
    cells = _cells(summary, budgets, inits)
    assert len(cells) == len(budgets) * len(inits)
    for b in budgets:
        for i in inits:
            vals = np.array([float(r["test_value"]) for r in rows if r["budget"] == str(b) and r["init"] == i])
            std = vals.std(ddof=1) if len(vals) > 1 else 0.0
            assert cells[(str(b), i)] == pytest.approx((vals.mean(), std), abs=1e-4), (b, i, summary)
    # every other metric the evaluate runs wrote: its own results.csv column and summary table
    others = [k for k in rows[0] if k.startswith("test_") and k not in ("test_metric", "test_value", test_metric)]
    for key in others:
        cells = _cells(summary, budgets, inits, key)
        for b in budgets:
            for i in inits:
                vals = np.array([float(r[key]) for r in rows if r["budget"] == str(b) and r["init"] == i])
                std = vals.std(ddof=1) if len(vals) > 1 else 0.0
                assert cells[(str(b), i)] == pytest.approx((vals.mean(), std), abs=1e-4), (key, b, i)

    # the summary run: sweep params, per-cell stats, the three artifacts (= the files on disk)
    summary_run = runs[res["summary_run_id"]]
    assert summary_run.info.status == "FINISHED" and summary_run.data.tags["sweep_role"] == "summary"
    assert summary_run.data.params["sweep_test_metric"] == test_metric
    arts = _artifacts(client, res["summary_run_id"])
    assert {"results.csv", "summary.md", "label_efficiency.png"} <= set(arts)
    local = Path(client.download_artifacts(res["summary_run_id"], "results.csv", str(out / "dl")))
    assert local.read_text() == (out / "results.csv").read_text()
    b0, i0 = budgets[0], inits[0]
    assert summary_run.data.metrics[f"{test_metric}.mean.{i0}.{res['budget_key']}{b0}"] == pytest.approx(
        np.mean([float(r["test_value"]) for r in rows if r["budget"] == str(b0) and r["init"] == i0]))
    assert (out / "label_efficiency.png").stat().st_size > 5000
    cell_runs = {k: r for k, r in runs.items() if r.data.tags.get("sweep_role") != "summary"}
    assert set(cell_runs) == {r["run_id"] for r in rows}
    return rows, cell_runs


def _artifacts(client, run_id, path=None) -> list[str]:
    return [a.path for a in client.list_artifacts(run_id, path)]


def test_sweep_tools(demo_data, tmp_path, encoder, one_thread):
    le = load_script("label_efficiency")
    out = tmp_path / "sweep"
    data = demo_data("tools")
    res = le.sweep(  # no budget_key: the bundle's metadata.json declares it (perc, seed ids seed + perc_seed)
        bundle=BUNDLE, budgets="[50, 100]",
        inits=json.dumps({"random": None, "simclr": encoder}),  # a JSON string, as from the CLI
        seeds=[0, 1], out_dir=str(out), overrides=["smoke.json"],
        budget_label="% of training images", dataset_dir=data,
    )
    assert res["metric"] == "val_mean_iou" and res["test_metric"] == "test_mean_iou"  # the bundle's defaults
    datalist = json.loads((Path(data) / "datalist.json").read_text())
    rows, runs = check_sweep(
        res, out, [50, 100], ["random", "simclr"], [0, 1], "test_mean_iou", "val_mean_iou",
        test_files=[Path(d["image"]).name for d in datalist["testing"]],
        val_files=[Path(d["image"]).name for d in datalist["validation"]],
    )
    summary = (out / "summary.md").read_text()
    assert "| perc | random | simclr |" in summary and "NOT held-out" not in summary
    assert "test_mean_dice" in rows[0] and "test_mean_dice:" in summary  # every evaluate metric, not only IoU
    by_id = {r["run_id"]: r for r in rows}
    for run in runs.values():
        row, p = by_id[run.info.run_id], run.data.params
        assert run.info.run_name == f"{row['init']}-perc{row['budget']}-seed{row['seed']}"
        assert (p["sweep_init"], p["sweep_budget"], p["sweep_seed"]) == (row["init"], row["budget"], row["seed"])
        assert p["perc"] == row["budget"] and p["seed"] == row["seed"]  # the bundle really got them
        (executed,) = Path(row["output_dir"]).glob("config_*.json")  # MONAI's executed config
        assert json.loads(executed.read_text())["perc_seed"] == int(row["seed"])  # the declared seed ids
        assert (p["pretrained_encoder"] == "null") == (row["init"] == "random") == (p["sweep_init_spec"] == "null")
        if row["init"] == "simclr":
            assert p["encoder.method"] == "simclr"
        assert "test_mean_dice" in run.data.metrics

    # --skip_done: every cell finished with the same settings -> nothing runs again
    again = le.sweep(
        bundle=BUNDLE, budgets=[50, 100], inits={"random": None, "simclr": encoder},
        seeds=[0, 1], out_dir=str(out), overrides=["smoke.json"], dataset_dir=data, skip_done=True,
    )
    assert sorted(r["run_id"] for r in again["rows"]) == sorted(by_id)
    assert [r["test_value"] for r in again["rows"]] == [float(r["test_value"]) for r in rows]
    client = _client(res["tracking_uri"])
    exp = client.get_experiment_by_name(f"{BUNDLE}-label-efficiency")
    all_runs = client.search_runs([exp.experiment_id])
    assert len(all_runs) == 8 + 2  # 8 cells, one summary run per invocation
    old = client.get_run(res["summary_run_id"])
    assert old.data.tags["sweep_superseded_by"] == again["summary_run_id"]


def test_sweep_eval_overrides(demo_data, tmp_path, encoder, one_thread):
    """The reported column follows the evaluate run's data: pointed (eval_overrides) at the
    validation list, the evaluate run of the best-validation model.pt gives exactly the best
    validation value; the init's overrides and both seed ids reach the bundle."""
    le = load_script("label_efficiency")
    out = tmp_path / "sweep_eval"
    norm = {"mean": [0.5] * 3, "std": [0.5] * 3}
    on_val = "$monai_ssl_ext.data.load_datalist(@datalist_file, 'validation', base_dir=@dataset_dir)"
    res = le.sweep(
        bundle=BUNDLE, budget_key="perc", budgets=[50], seeds=[3],
        inits={"simclr": {"pretrained_encoder": encoder, "normalization": norm, "learning_rate": 0.0002}},
        seed_key=["seed", "perc_seed"], out_dir=str(out), configs=["train.json", "smoke.json"],
        eval_overrides={"validate#datalist": on_val}, budget_to_x={"50": 4}, budget_label="training images",
        logx=True, dataset_dir=demo_data("tools"),
    )
    (row,) = res["rows"]
    assert row["x"] == 4 and row["test_metric"] == "test_mean_iou"
    assert row["test_value"] == pytest.approx(_saved_metrics(row["output_dir"])["test_mean_iou"], abs=1e-6)
    assert row["test_value"] == pytest.approx(row["best_val_value"], abs=1e-5)
    assert all(name.startswith("val_") for name, _ in _per_image(row["output_dir"], "test_mean_iou"))
    run = _client(res["tracking_uri"]).get_run(row["run_id"])
    (executed,) = (out / "runs/simclr/perc50/seed3").glob("config_*.json")  # MONAI's executed config
    assert json.loads(executed.read_text())["perc_seed"] == 3  # one seed set both seed keys
    assert run.data.params["seed"] == "3" and run.data.params["sweep_x"] == "4"
    assert run.data.params["learning_rate"] == "0.0002"  # the init's own overrides reached the bundle
    assert json.loads(run.data.params["sweep_init.normalization"]) == norm
    assert run.data.metrics["test_mean_iou"] == pytest.approx(row["test_value"])
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
        ({"evaluate": None}, "--evaluate must name the bundle's evaluate config"),
        ({"eval_overrides": {"eval_dirr": "x"}}, "eval_override 'eval_dirr' is not a config id"),
        ({"test_metric": "test_nope"}, "computes no metric 'test_nope' (it computes ['test_mean_iou', "),
        ({"eval_metric": "val_mean_iou"}, "eval_metric was renamed: pass --test_metric"),
        ({"metric": "val_mean_dice", "evaluate": "train.json"},  # default val_mean_dice -> test_mean_dice
         "computes no metric 'test_mean_dice' (it computes ['val_mean_iou', 'val_mean_dice']); pass --test_metric"),
        ({"budget_to_x": {50: 10}}, "budget_to_x has no (numeric) entry for budget 100"),
        ({"inits": {"imagenet": {"pretrained_encoder": "timm:x", "norm": 1}}}, "init 'imagenet': override 'norm' is not"),
        ({"bundle": "byol_acdc", "budget_key": None}, "bundle 'byol_acdc' declares no `label_budget` in configs/metadata.json: pass --budget_key"),
        ({"bundle": "simclr_cholec", "budget_key": None, "budgets": None},
         "bundle 'simclr_cholec' declares its label budget 'label_budget' on linear_probe.json, and has no evaluate config"),
        ({"budget_key": "percent", "budgets": None}, "budgets: give at least one budget"),
    ],
    ids=["bundle", "budget_key", "seed_key", "init_key", "override", "encoder", "evaluate", "no_evaluate",
         "eval_override", "test_metric", "eval_metric", "default_test_metric", "budget_to_x", "init_dict",
         "no_declaration", "declared_without_evaluate", "undeclared_key_no_budgets"],
)
def test_bad_arguments_fail_before_running(tmp_path, kwargs, message):
    le = load_script("label_efficiency")
    args = {"bundle": BUNDLE, "budget_key": "perc", "budgets": [50, 100], "out_dir": str(tmp_path / "out"), **kwargs}
    with pytest.raises(le.SweepError) as err:
        le.sweep(**args)
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_declared_label_budget(tmp_path):
    """Every finetuning bundle sweeps without --budget_key: the plan follows its metadata.json
    ``label_budget`` (id, default budgets = ``sweep``, seed ids, config); a bundle whose declared
    config has no evaluate step is refused with a message saying so."""
    le = load_script("label_efficiency")
    declared = {}
    for bundle in sorted((ROOT / "bundles").iterdir()):
        meta = bundle / "configs" / "metadata.json"
        decl = json.loads(meta.read_text()).get("label_budget") if meta.is_file() else None
        if decl:
            declared[bundle.name] = decl
    assert {"flexibleunet_tools", "unet_acdc", "unetr_btcv", "simclr_cholec"} <= set(declared)
    for name, decl in declared.items():
        configs = ROOT / "bundles" / name / "configs"
        if not (configs / "evaluate.json").is_file():
            with pytest.raises(le.SweepError, match="does not support this bundle"):
                le.sweep(bundle=name, out_dir=str(tmp_path / name), dry_run=True)
            continue
        evaluate = read_bundle_config(configs, [decl["config"], "evaluate.json"])
        dry = le.sweep(bundle=name, out_dir=str(tmp_path / name), dry_run=True,
                       test_metric=next(iter(evaluate.get("validate#key_metric"))))
        assert dry["budget_key"] == decl["id"] and dry["budgets"] == decl["sweep"], name
        assert dry["seed_keys"] == decl.get("seed_ids", ["seed"]) and dry["configs"] == [decl["config"]], name
        assert [b for b, _, _ in dry["plan"]] == decl["sweep"], name
        assert not (tmp_path / name).exists()


def test_sweep_acdc(demo_data, tmp_path, one_thread):
    """The SSL-MedSeg protocol on unet_acdc: subset ratios × {random, BYOL-style encoder} × a seed
    (one seed keeps it fast; test_sweep_tools covers several), both seed ids set by the sweep seed,
    x axis = number of labelled slices; reported: test_mean_iou of evaluate.json on the test
    patient's slices."""
    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks import build_backbone

    encoder = tmp_path / "byol" / "encoder.pt"  # unet_acdc's smoke trunk is timm resnet18, 1 channel
    export_encoder(build_backbone("timm/resnet18", in_channels=1), str(encoder), method="byol",
                   normalization={"mean": [67.27], "std": [84.66]})
    le = load_script("label_efficiency")
    out = tmp_path / "acdc_sweep"
    data = demo_data("acdc")
    res = le.sweep(  # budget_key subset_ratio and seed ids seed + subset_seed: the bundle's declaration
        bundle="unet_acdc", budgets=[0.5, 1.0], seeds=[13], inits={"random": None, "byol_acdc": str(encoder)},
        out_dir=str(out), overrides=["smoke.json"], budget_to_x={0.5: 16, 1.0: 32},
        budget_label="labelled slices", dataset_dir=data,
    )
    index = json.loads((Path(data) / "acdc_slices.json").read_text())
    rows, runs = check_sweep(
        res, out, [0.5, 1.0], ["random", "byol_acdc"], [13], "test_mean_iou", "val_mean_iou",
        test_files=sorted({Path(d["image"]).name for d in index["test"]}),
        val_files=sorted({Path(d["image"]).name for d in index["validation"]}),
    )
    assert {r["x"] for r in rows} == {"16", "32"}
    assert "| random | byol_acdc |" in (out / "summary.md").read_text()
    for run in runs.values():
        p = run.data.params
        assert p["seed"] == p["subset_seed"] == p["sweep_seed"] == "13"
        assert p["subset_ratio"] == p["sweep_budget"]
        assert len([k for k in run.data.metrics if k.startswith("test_")]) > 1  # all evaluate metrics, test_ names


def test_sweep_btcv(demo_data, tmp_path, one_thread):
    """The BTCV protocol on unetr_btcv: 6 vs 12 training volumes × {random, ViT-autoencoder trunk}.
    BTCV's test labels are not public and the bundle's evaluate.json scores the validation volumes
    (the sweep says so); here eval_overrides point it at two held-out labelled volumes instead."""
    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks import build_backbone

    encoder = tmp_path / "vitae" / "encoder.pt"  # the smoke UNETR's ViT size
    vit = build_backbone("vit", spatial_dims=3, in_channels=1, img_size=32, patch_size=16, hidden_size=48,
                         mlp_dim=96, num_layers=12, num_heads=4)
    export_encoder(vit, str(encoder), method="vitautoenc")
    le = load_script("label_efficiency")
    data = demo_data("btcv")
    configs = ROOT / "bundles" / "unetr_btcv" / "configs"
    evaluate = read_bundle_config(configs, ["train.json", "evaluate.json"])
    test_metric = next(iter(evaluate.get("validate#key_metric")))  # today val_mean_dice: BTCV has no test labels
    args = dict(bundle="unetr_btcv", budgets=[6, 12], seeds=[0],  # budget_key: declared train_volumes
                inits={"random": None, "ssl": str(encoder)}, test_metric=test_metric,
                overrides=["smoke.json"], budget_label="training volumes", dataset_dir=data)
    dry = le.sweep(out_dir=str(tmp_path / "dry"), dry_run=True, **args)
    assert dry["metric"] == "val_mean_dice" and dry["budget_key"] == "train_volumes"
    if "validate#datalist" not in json.loads((configs / "evaluate.json").read_text()):
        # the evaluate run scores the selection data: warned, not hidden
        assert dry["eval_on_validation_data"]

    held_out = ["img0023", "img0024"]  # labelled, in neither the 6-/12-volume training lists nor validation
    test_list = tmp_path / "btcv_test.json"
    test_list.write_text(json.dumps({"test": [
        {"image": f"imagesTr/{i}.nii.gz", "label": f"labelsTr/{i.replace('img', 'label')}.nii.gz"} for i in held_out]}))
    lists = json.loads((Path(data) / "dataset_0_init_12.json").read_text())
    assert not {f"imagesTr/{i}.nii.gz" for i in held_out} & {d["image"] for d in lists["training"] + lists["validation"]}
    out = tmp_path / "btcv_sweep"
    res = le.sweep(out_dir=str(out), **args, eval_overrides={
        "validate#datalist": f"$monai_ssl_ext.data.load_datalist({str(test_list)!r}, 'test', base_dir=@dataset_dir)"})
    rows, runs = check_sweep(
        res, out, [6, 12], ["random", "ssl"], [0], test_metric, "val_mean_dice",
        test_files=[f"{i}.nii.gz" for i in held_out], val_files=[Path(d["image"]).name for d in lists["validation"]],
    )
    summary = (out / "summary.md").read_text()
    assert "| random | ssl |" in summary and "NOT held-out" not in summary
    assert sorted(r.data.params["n_train_volumes"] for r in runs.values()) == ["12", "12", "6", "6"]
    assert {r.data.params.get("encoder.method") for r in runs.values()} == {None, "vitautoenc"}
    assert all(len([k for k in r.data.metrics if k.startswith("test_")]) > 1 for r in runs.values())
