"""Rules every bundle's configs keep, because each broke a landed bundle once (README, "Adding a
bundle"): pictures load row first, segmentation metrics count false positives, metrics are named
by their split, and a resume keeps the best model. Read from the config files, so a future bundle
is checked the day it lands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bundle_runner import run_configs
from conftest import BUNDLES, ROOT, SCHEMA, load_script

IDS = [b.name for b in BUNDLES]
PICTURES = (".png", ".jpg", ".jpeg", ".bmp")
# MONAI metrics whose default (ignore_empty=True) skips a class absent from the label, false
# positives included
FP_BLIND = ("MeanIoUHandler", "MeanDice", "MeanIoU", "DiceMetric", "MeanIoUMetric")


def _configs(bundle: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((bundle / "configs").glob("*.json"))}


def _components(obj, path=""):
    """(id, dict) of every component (a dict with a ``_target_``) in a config."""
    if isinstance(obj, dict):
        if "_target_" in obj:
            yield path, obj
        for k, v in obj.items():
            yield from _components(v, f"{path}#{k}" if path else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _components(v, f"{path}#{i}")


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_pictures_load_row_first(bundle, demo_data):
    """A bundle whose data are pictures loads them with LoadPictured: MONAI's LoadImaged reads
    (W, H), where a horizontal flip is vertical."""
    demo = Path(demo_data(json.loads((bundle / "configs" / "smoke.json").read_text())["demo_data"]))
    if not any(p.suffix.lower() in PICTURES for p in demo.rglob("*")):
        pytest.skip("no pictures in this bundle's data")
    for name, config in _configs(bundle).items():
        for where, comp in _components(config):
            assert comp["_target_"] not in ("LoadImaged", "CheckedLoadImaged", "LoadImage", "monai.transforms.LoadImaged"), \
                f"{bundle.name}/{name} {where}: pictures must load with LoadPictured"


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_segmentation_metrics_count_false_positives(bundle):
    for name, config in _configs(bundle).items():
        for where, comp in _components(config):
            if comp["_target_"].split(".")[-1] in FP_BLIND:
                assert comp.get("ignore_empty") is False, (
                    f"{bundle.name}/{name} {where}: {comp['_target_']} skips classes absent from the label, false "
                    "positives included: use monai_ssl_ext.metrics (PooledIoU, PerImageIoU, ...)")


def _metric_names(config: dict) -> list[str]:
    names = []
    for key in ("validate#key_metric", "validate#additional_metrics"):
        names += list(config.get(key, {}))
    validate = config.get("validate", {})
    names += list(validate.get("key_metric", {})) + list(validate.get("additional_metrics", {}))
    evaluator = validate.get("evaluator", {})
    for key in ("key_val_metric", "additional_metrics"):
        if isinstance(evaluator.get(key), dict):
            names += list(evaluator[key])
    return names


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_metrics_named_by_split(bundle):
    """Metrics computed on a test list are test_*; on the validation list val_*."""
    for name, config in _configs(bundle).items():
        datalist = json.dumps(config.get("validate#datalist", ""))
        if "validate#datalist" in config:  # an override names the list it scores
            assert "'test" in datalist or "'valid" in datalist, f"{bundle.name}/{name}: which split is {datalist}?"
        split = "test" if "'test" in datalist else "val"
        for metric in _metric_names(config):
            assert metric.startswith(f"{split}_"), f"{bundle.name}/{name}: {metric} is computed on the {split} list"


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_resume_keeps_the_best_model_everywhere(bundle):
    """Every config that keeps a best model (validate#best_saver) hands it and its evaluator to
    the ResumableCheckpoint of its trainer."""
    checked = 0
    for name in run_configs(bundle):
        config = _configs(bundle)[name]
        if "best_saver" not in config.get("validate", {}):
            continue
        handlers = config.get("train", {}).get("handlers", [])
        resumable = [h for h in handlers if isinstance(h, dict) and h.get("_target_") == "ResumableCheckpoint"]
        assert len(resumable) == 1, f"{bundle.name}/{name}: one ResumableCheckpoint in train#handlers"
        assert resumable[0].get("best_saver") == "@validate#best_saver", f"{bundle.name}/{name}"
        assert resumable[0].get("evaluator") == "@validate#evaluator", f"{bundle.name}/{name}"
        assert "@validate#best_saver" in config["validate"]["handlers"], f"{bundle.name}/{name}"
        checked += 1
    if "validate" in _configs(bundle)["train.json"]:
        assert checked, f"{bundle.name}: validation without validate#best_saver"


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_initialize_checks_the_command_line(bundle):
    """Every config that runs (defines `initialize`) first checks the command-line overrides."""
    for name, config in _configs(bundle).items():
        if "initialize" in config:
            assert config["initialize"][0] == "$monai_ssl_ext.overrides.check_cli_overrides()", f"{bundle.name}/{name}"


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_progress_bar_is_one_shared_id(bundle):
    """Every train.json has the opt-in `progress_bar` (default off) driving a RunProgress on its trainer."""
    train = _configs(bundle)["train.json"]
    assert train.get("progress_bar") is False, f"{bundle.name}: no `progress_bar`: false"
    bars = [c for _, c in _components(train) if c["_target_"] == "RunProgress"]
    assert [c.get("enabled") for c in bars] == ["@progress_bar"], f"{bundle.name}: {bars}"


# ------------------------------------------------------------------------- training loaders
# the rule lives in scripts/verify_bundles.py (_check_training_loaders, part of verify_bundle)


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_training_loaders_are_augmenting_loaders(bundle):
    """Every train.json trains from `augmenting_loader` (augmentations seeded per item: the same for
    any num_workers, persistent workers, exact resume), and multi-GPU overlays keep a seeded sampler."""
    assert load_script("verify_bundles")._check_training_loaders(bundle) == []
    train = _configs(bundle)["train.json"]["train"]["dataloader"]
    assert train["_target_"] == "augmenting_loader", bundle.name


def _loader_problems(tmp_path, edits: dict[str, dict], full: bool = False) -> list[str]:
    """Problems of a copy of gie_polyp_segmentation (random flips and affine) with ``edits``
    ({config file: {root id: value}}, None deletes the id) applied."""
    vb = load_script("verify_bundles")
    bundle = tmp_path / "gie_polyp_segmentation"
    shutil.copytree(ROOT / "bundles" / bundle.name, bundle, ignore=shutil.ignore_patterns("runs", "data", "__pycache__"))
    for name, changes in edits.items():
        path = bundle / "configs" / name
        data = json.loads(path.read_text()) if path.is_file() else {}
        for key, value in changes.items():
            if value is None:
                data.pop(key)
            else:
                data[key] = value
        path.write_text(json.dumps(data, indent=4))
    if full:
        return vb.verify_bundle(str(bundle), schema=str(SCHEMA))
    return vb._check_training_loaders(bundle)


def _plain(config: dict) -> dict:
    train = dict(config["train"])
    train["dataloader"] = {**train["dataloader"], "_target_": "DataLoader"}
    return train


def test_a_plain_training_loader_is_reported(tmp_path):
    configs = _configs(ROOT / "bundles" / "gie_polyp_segmentation")
    assert _loader_problems(tmp_path / "as_is", {}, full=True) == []
    # train.json's loader a plain DataLoader again, as before (verify_bundle reports it)
    problems = _loader_problems(tmp_path / "train", {"train.json": {"train": _plain(configs["train.json"])}}, full=True)
    assert any("configs/train.json: `train#dataloader` is `DataLoader`" in p for p in problems), problems
    # the multi-GPU overlay's sampler a plain DistributedSampler: it gives the items no seed
    sampler = {"_target_": "DistributedSampler", "dataset": "@train#dataset", "even_divisible": True, "shuffle": True}
    problems = _loader_problems(tmp_path / "sampler", {"multi_gpu_train.json": {"train#sampler": sampler}})
    assert problems == ["configs/multi_gpu_train.json: `train#sampler` is `DistributedSampler`: `augmenting_loader` "
                        "needs a seeded sampler (SeededDistributedSampler, SeededRandomSampler, SeededSequentialSampler) "
                        "that hands each item its seed"]
    # an overlay that swaps the loader, or brings its own plain one over train.json's random transforms
    problems = _loader_problems(tmp_path / "swap", {"train_vit.json": {"train#dataloader#_target_": "DataLoader"}})
    assert len(problems) == 1 and "configs/train_vit.json: `train#dataloader#_target_` replaces" in problems[0]
    own = {**configs["train.json"]["train"]["dataloader"], "_target_": "DataLoader"}
    problems = _loader_problems(tmp_path / "own", {"train_vit.json": {"train#dataloader": own}})
    assert problems and "configs/train_vit.json: `train#dataloader` is `DataLoader`" in problems[0]


def test_a_plain_loader_without_random_transforms_is_not_reported(tmp_path):
    """A config of its own (network_def) whose training items are not augmented (a linear probe on
    fixed features) may keep a plain DataLoader; the same config with a random flip may not."""
    train = _configs(ROOT / "bundles" / "gie_polyp_segmentation")["train.json"]
    fixed = {"network_def": train["network_def"], "preprocessing": {"_target_": "Compose", "transforms": []},
             "train": {"dataset": {"_target_": "Dataset", "data": [], "transform": "@preprocessing"},
                       "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "shuffle": True}}}
    assert _loader_problems(tmp_path / "fixed", {"probe.json": fixed}) == []
    flipped = {**fixed, "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "RandFlipd", "keys": "image", "prob": 0.5}]}}
    problems = _loader_problems(tmp_path / "flipped", {"probe.json": flipped})
    assert len(problems) == 1 and "configs/probe.json: `train#dataloader` is `DataLoader`" in problems[0]
