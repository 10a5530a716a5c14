"""Every bundle: metadata and files verified, every config run on demo data through its
smoke.json, MLflow tracking read back, and all multi_gpu_train.json configs in one torchrun
session (2 gloo processes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bundle_runner import assert_trained, run_config, run_configs
from conftest import BUNDLES, ROOT, SCHEMA, load_script
from monai_ssl_ext.workflow import smoke_settings

IDS = [b.name for b in BUNDLES]


def smoke(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "smoke.json").read_text())


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_bundle_verifies(bundle):
    assert SCHEMA.is_file(), f"vendored schema missing: {SCHEMA}"
    problems = load_script("verify_bundles").verify_bundle(str(bundle), schema=str(SCHEMA))
    assert problems == []


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_bundle_runs(bundle, demo_data, tmp_path):
    """train.json with MLflow tracking, then every other config, in one bundle_root."""
    from mlflow.tracking import MlflowClient

    for config in run_configs(bundle):
        tracking = "mlflow" if config == "train.json" else None
        configs = [config] if config == "train.json" or _standalone(bundle, config) else ["train.json", config]
        settings = smoke_settings(bundle, configs)  # smoke.json, then a variant's smoke_<config>.json
        expected = settings.get("smoke_outputs", {})
        data_dir = demo_data(settings["demo_data"])  # a variant may train on other data
        # a training variant (train_3d.json, train_vit.json) writes into its own bundle_root
        root = tmp_path / Path(config).stem if config.startswith("train_") else tmp_path
        res = run_config(bundle, configs, str(root), data_dir, tracking=tracking)
        if config == "train.json" or res["losses"]:
            assert_trained(res["losses"], f"{bundle.name}/{config}")
        if config.startswith("train_"):  # a training variant declares what it writes, as train.json does
            assert expected.get(config), f"{bundle.name}: smoke_{config} declares no smoke_outputs for {config}"
        for rel in expected.get(config, []):
            assert os.path.exists(os.path.join(res["output_dir"], rel)), f"{bundle.name}/{config}: {rel} not written"
        if tracking:
            uri = res["parser"].get_parsed_content("tracking_uri")
            client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(res["parser"].get_parsed_content("experiment_name"))
            run = client.search_runs([exp.experiment_id])[0]
            history = client.get_metric_history(run.info.run_id, "train_loss")
            assert [round(m.value, 4) for m in history] == [round(v, 4) for v in res["losses"]]
            assert any(k.startswith("encoder") or k in ("backbone", "pretrained_encoder") for k in run.data.params)
            assert "learning_rate" in run.data.params
            if "validate#evaluator" in res["parser"]:  # validation metrics in the same run
                assert any(k.startswith("val_") for k in run.data.metrics), run.data.metrics
            knn_interval = settings.get("knn_interval")
            if knn_interval:  # the online kNN monitor is on: one knn_acc point per evaluation, epoch as step
                epochs = res["parser"].get_parsed_content("epochs")
                steps = [e for e in range(1, epochs + 1) if e % knn_interval == 0 or e == epochs]
                knn = client.get_metric_history(run.info.run_id, "knn_acc")
                assert sorted(m.step for m in knn) == steps and all(0 <= m.value <= 1 for m in knn), knn
            artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
            assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts), artifacts
            # the exported encoder and the best model travel with the run
            for rel in expected.get("train.json", []):
                name = os.path.basename(rel)
                if rel.startswith("models/") and name != "checkpoint_last.pt":
                    assert name in artifacts, f"{bundle.name}: {name} not logged to MLflow ({artifacts})"


def _pretraining(bundle: Path) -> bool:
    """Bundles whose train.json trains on views: an SSLTrainer, or a multi-view / multi-crop transform."""
    text = (bundle / "configs" / "train.json").read_text()
    trainer = json.loads(text).get("train", {}).get("trainer", {})
    return trainer.get("_target_", "").endswith("SSLTrainer") or any(
        f'"{t}"' in text for t in ("MultiViewd", "MultiCropd", "monai_ssl_ext.transforms.MultiViewd"))


PRETRAINING = [b for b in BUNDLES if _pretraining(b)]


def test_pretraining_bundles_found():
    assert {"simclr_cholec", "byol_acdc", "vitautoenc_ct"} <= {b.name for b in PRETRAINING}


def _training_variants(bundle: Path) -> list[list[str]]:
    """train.json and each training variant merged onto it (``train_3d.json``, ``train_vit.json``)."""
    return [["train.json"]] + [["train.json", n] for n in run_configs(bundle) if n.startswith("train_")]


PRETRAINING_VARIANTS = [(b, v) for b in PRETRAINING for v in _training_variants(b)]


@pytest.mark.parametrize("bundle,configs", PRETRAINING_VARIANTS,
                         ids=[f"{b.name}-{Path(v[-1]).stem}" for b, v in PRETRAINING_VARIANTS])
def test_views_differ_between_reads(bundle, configs, demo_data, tmp_path):
    """The same item read twice from ``train#dataset`` as configured (caching included) gives new
    views: a cache that stores the views freezes the augmentation for the whole run. Every
    training variant (2D, 3D, ViT) is checked."""
    import torch
    from monai.bundle import ConfigWorkflow
    from monai_ssl_ext.workflow import smoke_files

    cfg = bundle / "configs"
    wf = ConfigWorkflow(config_file=[str(cfg / c) for c in configs] + smoke_files(bundle, configs), workflow_type=None,
                        meta_file=str(cfg / "metadata.json"), logging_file=str(cfg / "logging.conf"),
                        bundle_root=str(tmp_path), dataset_dir=demo_data(smoke_settings(bundle, configs)["demo_data"]))
    wf.initialize()
    dataset = wf.parser.get_parsed_content("train#dataset")
    view_keys = wf.parser.get_parsed_content("train#trainer").view_keys  # the trainer's, defaults included
    first, second = dataset[0], dataset[0]
    first, second = (x[0] if isinstance(x, list) else x for x in (first, second))  # crop-sample lists
    # the un-augmented input kept beside the views (MultiViewd's original_key) is not a view
    originals = set(re.findall(r'"original_key": "([^"]+)"', "".join((cfg / c).read_text() for c in configs)))
    for key in [k for k in view_keys if k not in originals]:
        a, b = torch.as_tensor(first[key]), torch.as_tensor(second[key])
        assert a.shape == b.shape, (key, a.shape, b.shape)
        assert not torch.equal(a, b), f"{bundle.name}: view '{key}' is identical in two reads of item 0"
    if len(view_keys) > 1:  # a single-view recipe (MAE) has only the two reads of view 0, compared above
        assert not torch.equal(torch.as_tensor(first[view_keys[0]]), torch.as_tensor(first[view_keys[1]]))


def _standalone(bundle: Path, config: str) -> bool:
    """Configs that define their own network are run alone, the others on top of train.json."""
    content = json.loads((bundle / "configs" / config).read_text())
    return "network_def" in content


def test_multi_gpu_configs_one_torchrun(demo_data, tmp_path):
    """Every multi_gpu_train.json trains in one 2-process gloo session, and only rank 0 prints the
    per-iteration loss and per-epoch lines: rank 0 prints one ``train_loss:`` line per iteration,
    rank 1 none (each rank's stdout is read from torchrun's per-rank log files)."""
    bundles = [b for b in BUNDLES if (b / "configs" / "multi_gpu_train.json").is_file()]
    assert bundles
    jobs = [
        {"name": b.name, "bundle": str(b), "bundle_root": str(tmp_path / b.name), "dataset_dir": demo_data(smoke(b)["demo_data"])}
        for b in bundles
    ]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"jobs": jobs, "out": str(tmp_path)}))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log_dir = tmp_path / "torchrun_logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--log-dir", str(log_dir), "--tee", "3",
           str(ROOT / "tests" / "bundle_runner.py"), str(spec)]
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for b in bundles:
        for r, res in enumerate(ranks):
            assert_trained(res[b.name]["losses"], f"{b.name} multi-GPU rank {r}")
        for rel in smoke(b).get("smoke_outputs", {}).get("train.json", []):
            assert os.path.exists(os.path.join(ranks[0][b.name]["output_dir"], rel)), f"{b.name} multi-GPU: {rel}"
    # each rank's stdout (torchrun's per-rank log file), split per bundle at the runner's job markers
    from bundle_runner import JOB_MARKER

    for r in (0, 1):
        (log,) = log_dir.glob(f"*/attempt_*/{r}/stdout.log")
        per_job: dict[str, list[str]] = {}
        for line in log.read_text().splitlines():
            if line.startswith(JOB_MARKER):
                per_job[line[len(JOB_MARKER):].strip()] = []
            elif per_job:
                per_job[list(per_job)[-1]].append(line)
        assert set(per_job) == {b.name for b in bundles}, f"rank {r}: job markers {sorted(per_job)}"
        for b in bundles:
            loss_lines = [ln for ln in per_job[b.name] if "train_loss:" in ln]
            epoch_lines = [ln for ln in per_job[b.name] if "Epoch[" in ln]  # ignite's and StatsHandler's per-epoch lines
            if r == 0:
                iterations = len(ranks[0][b.name]["losses"])
                assert len(loss_lines) == iterations, f"{b.name} rank 0: {len(loss_lines)} train_loss lines for {iterations} iterations"
                assert epoch_lines, f"{b.name} rank 0: no per-epoch lines"
            else:
                assert not loss_lines and not epoch_lines, f"{b.name} rank {r} printed stats lines: {(loss_lines + epoch_lines)[:3]}"


# which way each key metric improves, from what it measures (not from the configs)
METRIC_DIRECTION = {"loss": "lower", "l1": "lower", "iou": "higher", "dice": "higher", "acc": "higher", "f1": "higher",
                    "map": "higher"}


def _direction(metric: str) -> str:
    found = {d for word, d in METRIC_DIRECTION.items() if word in metric}
    assert len(found) == 1, f"key metric {metric!r}: add what it measures to METRIC_DIRECTION"
    return found.pop()


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_best_checkpoint_direction(bundle):
    """The best model is the one with the best key metric: a loss is saved with a negative sign
    and compared with lower_is_better, a score is not (source A's mode="max" on val_loss kept
    the worst model)."""
    from monai.bundle import ConfigParser

    checked = 0
    for name in run_configs(bundle):
        parser = ConfigParser()
        files = [name] if name == "train.json" or _standalone(bundle, name) else ["train.json", name]
        parser.read_config([str(bundle / "configs" / f) for f in files])
        if "validate#best_saver" not in parser:
            continue
        key_metric = parser["validate#evaluator#key_val_metric"]
        if isinstance(key_metric, str):  # a reference such as "@validate#key_metric"
            key_metric = parser[key_metric.lstrip("@")]
        (metric,) = key_metric
        lower = _direction(metric) == "lower"
        saver = parser["validate#best_saver"]
        assert bool(saver.get("key_metric_negative_sign", False)) == lower, f"{bundle.name}/{name}: {metric}"
        cmp = json.dumps(parser["validate#evaluator"].get("metric_cmp_fn", ""))
        assert ("lower_is_better" in cmp) == lower, f"{bundle.name}/{name}: {metric} compared the wrong way"
        checked += 1
    if "validate" in json.loads((bundle / "configs" / "train.json").read_text()):
        assert checked, f"{bundle.name}: validation without a best_saver"


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_cpu_demo_overrides_only_existing_ids(bundle):
    """``configs/cpu_demo.json`` (the documented CPU-sized run, not run by the harness) holds only
    differences: every id it sets exists in train.json with another value, no component
    (``_target_``), no list-index override; train.json + cpu_demo.json parses; the README shows it."""
    from monai.bundle import ConfigParser

    cfg = bundle / "configs"
    demo_file = cfg / "cpu_demo.json"
    assert demo_file.is_file(), f"{bundle.name}: no configs/cpu_demo.json"
    demo = json.loads(demo_file.read_text())
    assert demo and "_target_" not in json.dumps(demo), f"{bundle.name}/cpu_demo.json: sets a component"
    train = ConfigParser()
    train.read_config(str(cfg / "train.json"))
    for key, value in demo.items():
        assert not any(part.isdigit() for part in key.split("#")), f"{bundle.name}/cpu_demo.json: list-index id {key!r}"
        known = key in train
        assert known, f"{bundle.name}/cpu_demo.json: {key!r} is not an id of train.json"
        assert train[key] != value, f"{bundle.name}/cpu_demo.json: {key!r} repeats train.json's value {value!r}"
    merged = ConfigParser()
    merged.read_config([str(cfg / "train.json"), str(demo_file)])
    merged.parse()
    for key, value in demo.items():
        assert merged[key] == value, f"{bundle.name}: {key!r} not overridden by cpu_demo.json"
    assert "configs/cpu_demo.json" in (bundle / "docs" / "README.md").read_text(), f"{bundle.name}: README lacks the cpu_demo.json command"
