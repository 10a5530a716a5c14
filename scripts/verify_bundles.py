"""Static checks of the MONAI bundles under ``bundles/`` (nothing is instantiated or trained).

Usage::

    python scripts/verify_bundles.py [--bundles_dir bundles] [--schema ../shared/schema/meta_schema_20240725.json] \\
        [--names simclr_surgical,other] [--full] [--work_dir DIR] [--wheel False]

Prints one line ``<bundle>: <problem>`` per problem, then a status table, one row per bundle and one column per
check (:data:`COLUMNS`: ``ok``, the problem, or ``skipped: <reason>``), and exits with status 1 if there is any
problem (0 and a one-line summary otherwise). The columns:

* ``metadata``: ``configs/metadata.json`` valid (schema, ``version`` in ``changelog``);
* ``pins``: ``required_packages_version`` self-contained but for one pin
  (:func:`monai_ssl_ext.sharing.pin_problems`);
* ``rules``: every other static check below (files, configs, hygiene, glossary, published settings);
* ``package`` (``--full``): the model-zoo zip (and, unless ``--wheel False``, the monai-ssl-ext wheel) builds
  (:func:`monai_ssl_ext.sharing.package_bundle`, what ``scripts/package_bundle.py`` runs);
* ``round trip`` (``--full``): the zip unpacked with ``python -m monai.bundle download --url file://...`` runs its
  smoke ``train.json`` from the downloaded copy on the bundle's demo data (``scripts/make_demo_data.py``);
* ``export`` (``--full``): ``configs/inference.json``'s ``network_def`` exports with ``monai.bundle.ckpt_export``
  (scripted, or traced as ``metadata.json``'s ``torchscript`` says; its ``skip`` reason is reported as skipped).

Without ``--full`` the three slow columns say ``skipped: --full``. Called from Python, :func:`main` prints the
table only with ``table=True`` (the command line always does); :func:`report` returns the rows.

The static checks, for each ``bundles/<name>/``:

* the required files exist (:data:`REQUIRED_FILES`);
* ``configs/metadata.json`` validates against the MONAI metadata JSON schema: the file given by
  ``--schema``, or else the URL named in the metadata's ``schema`` field (downloaded only then);
* the metadata ``version`` is a key of its ``changelog``;
* every ``configs/*.json`` loads and parses with ``monai.bundle.ConfigParser`` (no component is
  instantiated and no expression is evaluated); a config that does not load on its own is
  accepted when it loads merged onto ``train.json`` (overlays such as ``multi_gpu_train.json``);
* config hygiene (:func:`_check_expressions`): no ``$`` expression holds a ``lambda``, names a
  private attribute (``._x``, ``getattr(x, '_x')``) or is longer than :data:`MAX_EXPRESSION`
  characters (name the parts, or move the Python into ``monai_ssl_ext``); no root id of any config
  file indexes into a list (``train#handlers#4#save_dict``: a new handler silently shifts it);
* training loaders (:func:`_check_training_loaders`): the ``train#dataloader`` of ``train.json``, and
  of any other config that defines its own and holds a random transform (:data:`RANDOM_TRANSFORM`),
  is ``augmenting_loader`` (augmentations seeded per item: the same for any ``num_workers``,
  persistent workers, an exact resume); an override of ``train#dataloader#_target_`` keeps it, and
  the sampler of such a loader (``train#sampler``, multi-GPU) is a seeded one (:data:`SEEDED_SAMPLERS`);
* the glossary of shared ids (:data:`GLOSSARY`, the README's "Adding a bundle"): an id with a
  glossary name has the glossary's type (``normalization`` is exactly ``{mean, std}``, a CT window
  goes in ``intensity_window``, ...); no forbidden synonym (:data:`SYNONYMS`: ``lr``,
  ``max_epochs``, ``weights``, ...) is a root id; ``init_weights`` appears only in pretraining
  configs (``SSLTrainer``), ``pretrained_encoder`` only in the others; a ``label_budget``
  declaration in ``metadata.json`` names a config and ids that exist;
* ``docs/README.md`` has a ``## Published settings`` section with a markdown table whose first
  column is a backticked config id (nested ids with ``#``) and whose second column is a
  backticked JSON literal; every row must equal the raw (unresolved) value of that id in
  ``configs/train.json`` (numbers with tolerance 1e-12). An empty table is a problem.

The checks are importable: :func:`verify_bundle` returns the list of problems of one bundle,
:func:`bundle_report` the status row of one bundle.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REQUIRED_FILES = (
    "configs/metadata.json",
    "configs/train.json",
    "configs/multi_gpu_train.json",
    "configs/smoke.json",
    "configs/logging.conf",
    "docs/README.md",
    "LICENSE",
)
SETTINGS_HEADING = "Published settings"
FLOAT_TOL = 1e-12
DEFAULT_BUNDLES_DIR = Path(__file__).resolve().parent.parent / "bundles"

MAX_EXPRESSION = 100  # characters of one "$..." expression

# The shared config ids (README, "Adding a bundle"): id -> (type check name, meaning).
GLOSSARY: dict[str, tuple[str, str]] = {
    "bundle_root": ("str", "folder the run's relative paths start from"),
    "dataset_dir": ("str", "folder of the dataset (images, labels, datalists)"),
    "output_dir": ("str", "folder of this bundle's run outputs"),
    "ckpt_dir": ("str", "folder of checkpoints, the best model and encoder.pt"),
    "device": ("str", "torch device expression (cuda:LOCAL_RANK under torchrun)"),
    "seed": ("int", "seed of set_determinism and of every seeded choice"),
    "amp": ("bool", "automatic mixed precision in trainer and evaluator"),
    "channels_last": ("bool", "SSL trainer: convolution weights and views stored channels-last "
                              "(same values; on where measured faster)"),
    "epochs": ("int", "training epochs (trainer max_epochs)"),
    "epoch_length": ("int|null", "iterations per epoch (null: the whole loader)"),
    "batch_size": ("int", "items per batch, per process"),
    "num_workers": ("int", "DataLoader worker processes"),
    "learning_rate": ("number", "base learning rate of the optimizer"),
    "backbone": ("str", "trunk name for build_backbone (efficientnet-b0, resnet50, timm/<name>, vit)"),
    "in_channels": ("int", "input image channels"),
    "num_classes": ("int", "output classes (segmentation: background included)"),
    "image_size": ("size", "2D input size: int or [H, W]"),
    "roi_size": ("size", "3D crop / sliding-window size: int or [D, H, W]"),
    "normalization": ("normalization", "{mean, std} of the map applied to inputs (channel-wise)"),
    "intensity_window": ("intensity_window", "CT window {a_min, a_max, b_min, b_max, clip} (ScaleIntensityRanged)"),
    "init_weights": ("spec", "weight spec a pretraining run starts from (path, timm/<name>, null)"),
    "pretrained_encoder": ("spec", "weight spec a finetuning run loads (path to encoder.pt, timm/<name>, null)"),
    "resume": ("bool", "continue from ckpt_dir/checkpoint_last.pt"),
    "checkpoint_interval": ("int", "epochs between writes of checkpoint_last.pt (and after the last epoch)"),
    "export_interval": ("int", "epochs between writes of encoder.pt (0: only at the end)"),
    "label_budget": ("str|int", "labelled training items per class, or a named budget ('100%' = all)"),
    "val_interval": ("int", "epochs between validations"),
    "network_def": ("component", "the network (a _target_ component)"),
    "network": ("component|expr", "network_def on the device (DDP-wrapped in multi_gpu_train.json)"),
    "loss": ("component|expr", "the loss"),
    "optimizer": ("component|expr", "the optimizer"),
    "lr_scheduler": ("component|expr", "the learning-rate schedule"),
    "train": ("dict", "train#datalist, #dataset, #dataloader, #handlers, #trainer, ..."),
    "validate": ("dict", "validate#datalist, #dataset, #dataloader, #handlers, #evaluator, ..."),
    "knn_interval": ("int", "epochs between online kNN evaluations of the trunk (KNNMonitor; 0: off)"),
    "knn_datalist": ("str|null", "labelled items of the kNN monitor: path,label CSV, JSON datalist, or a list ($); null: off"),
    "knn_transform": ("component", "MONAI transform loading a kNN item as the trunk's input (load, resize, normalise)"),
    "progress_bar": ("bool", "an ignite/tqdm progress bar (epoch, iteration, loss, time left) instead of per-iteration log lines"),
    "frozen": ("bool", "finetuning: keep the pretrained encoder fixed (no gradient, eval-mode batch norm); only the head trains"),
}
# forbidden root ids -> the glossary id to use
SYNONYMS: dict[str, str] = {
    "lr": "learning_rate", "base_lr": "learning_rate", "max_epochs": "epochs", "num_epochs": "epochs",
    "n_epochs": "epochs", "weights": "init_weights / pretrained_encoder", "pretrained": "pretrained_encoder",
    "pretrained_weights": "init_weights / pretrained_encoder", "checkpoint_dir": "ckpt_dir",
    "model_dir": "ckpt_dir", "data_dir": "dataset_dir", "dataset_path": "dataset_dir", "bs": "batch_size",
    "workers": "num_workers", "use_amp": "amp", "random_seed": "seed", "n_classes": "num_classes",
    "out_channels": "num_classes", "img_size": "image_size / roi_size", "spatial_size": "image_size / roi_size",
    "norm": "normalization", "mean": "normalization", "std": "normalization", "window": "intensity_window",
    "a_min": "intensity_window", "a_max": "intensity_window", "model": "network",
}
WINDOW_KEYS = {"a_min", "a_max", "b_min", "b_max", "clip"}
LABEL_BUDGET_KEYS = {"config", "id", "unit", "seed_ids", "sweep"}

_SCHEMA_CACHE: dict[str, Any] = {}  # url -> parsed schema (downloaded at most once per process)


# ------------------------------------------------------------------------------- metadata


def _load_schema(schema: str | os.PathLike | dict | None, meta: dict) -> tuple[dict | None, str | None]:
    """(schema dict, problem) from an explicit path / dict, or else the metadata's ``schema`` URL."""
    if isinstance(schema, dict):
        return schema, None
    if schema is not None:
        path = Path(schema)
        if not path.is_file():
            return None, f"schema file {str(path)!r} does not exist"
        try:
            return json.loads(path.read_text(encoding="utf-8")), None
        except (OSError, json.JSONDecodeError) as e:
            return None, f"schema file {str(path)!r} is not valid JSON: {e}"
    url = meta.get("schema")
    if not isinstance(url, str) or not url:
        return None, "configs/metadata.json: no 'schema' URL to validate against (and no --schema given)"
    if url not in _SCHEMA_CACHE:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                dst = Path(tmp) / "schema.json"
                with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 (URL from the bundle metadata)
                    dst.write_bytes(r.read())
                _SCHEMA_CACHE[url] = json.loads(dst.read_text(encoding="utf-8"))
        except Exception as e:  # network, HTTP or JSON errors all become a problem
            return None, f"could not download the metadata schema {url!r}: {e} (pass --schema PATH)"
    return _SCHEMA_CACHE[url], None


def _check_metadata(bundle: Path, schema) -> list[str]:
    problems: list[str] = []
    meta_file = bundle / "configs" / "metadata.json"
    if not meta_file.is_file():
        return problems  # already reported as a missing file
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        return [f"configs/metadata.json: not valid JSON: {e}"]
    if not isinstance(meta, dict):
        return ["configs/metadata.json: not a JSON object"]

    schema_dict, problem = _load_schema(schema, meta)
    if problem:
        problems.append(problem)
    else:
        import jsonschema

        try:
            cls = jsonschema.validators.validator_for(schema_dict)
            cls.check_schema(schema_dict)
            errors = sorted(cls(schema_dict).iter_errors(meta), key=lambda e: [str(p) for p in e.absolute_path])
        except jsonschema.exceptions.SchemaError as e:
            errors = []
            problems.append(f"the metadata schema itself is invalid: {e.message}")
        seen = set()
        for err in errors:
            err = jsonschema.exceptions.best_match([err])  # the most specific cause of anyOf/oneOf errors
            where = "/".join(str(p) for p in err.absolute_path) or "<root>"
            msg = f"configs/metadata.json: schema violation at {where}: {err.message}"
            if msg not in seen:  # the same value can be checked by several (pattern) properties
                seen.add(msg)
                problems.append(msg)

    version = meta.get("version")
    changelog = meta.get("changelog")
    if version is None:
        problems.append("configs/metadata.json: no 'version'")
    elif not isinstance(changelog, dict) or str(version) not in changelog:
        problems.append(f"configs/metadata.json: version {version!r} is not a key of 'changelog'")
    return problems


# -------------------------------------------------------------------------------- configs


def _check_configs(bundle: Path) -> list[str]:
    from monai.bundle import ConfigParser

    def parse(files) -> str | None:
        try:
            parser = ConfigParser()
            parser.read_config(files)
            parser.parse()
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None

    problems: list[str] = []
    train = bundle / "configs" / "train.json"
    for cfg in sorted((bundle / "configs").glob("*.json")):
        if cfg.name == "metadata.json":
            continue
        err = parse(str(cfg))
        if err and cfg != train and train.is_file():
            # an overlay (multi_gpu_train.json, smoke.json, ...) may use nested ids such as
            # "train#trainer#max_epochs" that only exist once merged onto train.json
            err_merged = parse([str(train), str(cfg)])
            if err_merged is None:
                continue
            err = f"{err}; merged onto train.json: {err_merged}"
        if err:
            problems.append(f"configs/{cfg.name}: does not parse with ConfigParser: {err}")
    return problems


# ----------------------------------------------------------------------- config hygiene

_LAMBDA = re.compile(r"\blambda\b")
_PRIVATE = re.compile(r"\.\s*_[A-Za-z0-9_]|getattr\([^)]*,\s*['\"]_")
_INDEX_SEGMENT = re.compile(r"(^|#)\d+(#|$)")


def _strings(obj, path: str = ""):
    """(id, string) of every string value in a config."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, f"{path}#{k}" if path else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{path}#{i}")
    elif isinstance(obj, str):
        yield path, obj


def _load_configs(bundle: Path) -> dict[str, dict]:
    out = {}
    for cfg in sorted((bundle / "configs").glob("*.json")):
        if cfg.name == "metadata.json":
            continue
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # reported by the parse check
        if isinstance(data, dict):
            out[cfg.name] = data
    return out


def _check_expressions(bundle: Path) -> list[str]:
    problems: list[str] = []
    for name, config in _load_configs(bundle).items():
        for key in config:
            if isinstance(key, str) and _INDEX_SEGMENT.search(key):
                problems.append(
                    f"configs/{name}: `{key}` overrides a list item by position (a new item shifts it): "
                    "give the item its own id and reference it")
        for where, text in _strings(config):
            if not text.startswith("$"):
                continue
            if _LAMBDA.search(text):
                problems.append(f"configs/{name}: `{where}` holds a lambda ({text!r}): use a function of monai_ssl_ext")
            if _PRIVATE.search(text):
                problems.append(f"configs/{name}: `{where}` names a private attribute ({text!r})")
            if len(text) > MAX_EXPRESSION:
                problems.append(
                    f"configs/{name}: `{where}` is a {len(text)}-character expression (at most {MAX_EXPRESSION}): "
                    "split it into named ids or move it into monai_ssl_ext")
    return problems


# ---------------------------------------------------------------------- training loaders

TRAINING_LOADER = "augmenting_loader"
SEEDED_SAMPLERS = ("SeededDistributedSampler", "SeededRandomSampler", "SeededSequentialSampler")
# `_target_` names of random transforms: MONAI's and the package's Rand*, the SSL view makers
RANDOM_TRANSFORM = re.compile(r"^Rand[A-Z]|Augment$|^(MultiViewd|MultiCropd|OneOfDistinctViewsd)$")


def _class_name(target) -> str | None:
    """The class name of a ``_target_`` string (``monai_ssl_ext.seeding.augmenting_loader`` -> ``augmenting_loader``)."""
    return target.rsplit(".", 1)[-1] if isinstance(target, str) else None


def _short_target(component) -> str | None:
    """The class name of a component's ``_target_``."""
    return _class_name(component.get("_target_")) if isinstance(component, dict) else None


def _targets(config: dict):
    """The class names of every ``_target_`` in a config, at any depth."""
    return (_class_name(text) for where, text in _strings(config) if where.endswith("_target_"))


def _train_entry(config: dict, key: str):
    """``train#<key>`` of a config, nested (``"train": {key: ...}``) or as a root id."""
    train = config.get("train")
    if isinstance(train, dict) and key in train:
        return train[key]
    return config.get(f"train#{key}")


def _has_random_transform(config: dict) -> bool:
    return any(RANDOM_TRANSFORM.search(name) for name in _targets(config))


def _check_training_loaders(bundle: Path) -> list[str]:
    """A training loader that augments at random is ``augmenting_loader`` (module docstring): a plain
    ``DataLoader`` draws the augmentations in its workers, so they change with ``num_workers``, persistent
    workers repeat their stream's history, and a resumed run draws other ones."""
    why = (f"a training loader is `{TRAINING_LOADER}` (monai_ssl_ext.seeding: augmentations seeded per item, "
           "the same for any num_workers, persistent workers, exact resume)")
    problems: list[str] = []
    configs = _load_configs(bundle)
    train = configs.get("train.json", {})
    main_loader = _short_target(_train_entry(train, "dataloader"))
    for name, config in configs.items():
        standalone = name == "train.json" or "network_def" in config  # else it is merged onto train.json
        random = _has_random_transform(config) or (not standalone and _has_random_transform(train))
        own = _train_entry(config, "dataloader")
        loader = _short_target(own)
        if loader is not None and loader != TRAINING_LOADER and (name == "train.json" or random):
            problems.append(f"configs/{name}: `train#dataloader` is `{loader}`: {why}")
        swapped = _class_name(config.get("train#dataloader#_target_"))
        if swapped is not None and swapped != TRAINING_LOADER and main_loader == TRAINING_LOADER:
            problems.append(f"configs/{name}: `train#dataloader#_target_` replaces train.json's `{TRAINING_LOADER}` "
                            f"with `{swapped}`: {why}")
        if (loader or swapped or (None if standalone else main_loader)) != TRAINING_LOADER:
            continue
        samplers = {"train#sampler": _train_entry(config, "sampler"),
                    "train#dataloader#sampler": own.get("sampler") if isinstance(own, dict)
                    else config.get("train#dataloader#sampler")}
        for key, component in samplers.items():
            sampler = _short_target(component)
            if sampler is not None and sampler not in SEEDED_SAMPLERS:
                problems.append(f"configs/{name}: `{key}` is `{sampler}`: `{TRAINING_LOADER}` needs a seeded "
                                f"sampler ({', '.join(SEEDED_SAMPLERS)}) that hands each item its seed")
    return problems


# ----------------------------------------------------------------------------- glossary


def _is_ref(v) -> bool:
    return isinstance(v, str) and v.startswith(("$", "@", "%"))


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _type_problem(kind: str, v) -> str | None:
    """Why ``v`` (a raw config value) is not of glossary type ``kind`` (None if it is)."""
    if _is_ref(v) and kind not in ("normalization", "intensity_window", "component"):
        return None  # computed: the value is checked where it is written
    ok = {
        "str": lambda: isinstance(v, str),
        "int": lambda: isinstance(v, int) and not isinstance(v, bool),
        "int|null": lambda: v is None or (isinstance(v, int) and not isinstance(v, bool)),
        "str|null": lambda: v is None or isinstance(v, str),
        "str|int": lambda: isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)),
        "number": lambda: _num(v),
        "bool": lambda: isinstance(v, bool),
        "size": lambda: (isinstance(v, int) and not isinstance(v, bool)) or (
            isinstance(v, list) and bool(v) and all(isinstance(x, int) and not isinstance(x, bool) or _is_ref(x) for x in v)),
        "spec": lambda: v is None or isinstance(v, str),
        "component": lambda: isinstance(v, dict) and "_target_" in v,
        "component|expr": lambda: (isinstance(v, dict) and "_target_" in v) or isinstance(v, str),
        "dict": lambda: isinstance(v, dict),
    }
    if kind == "normalization":
        if _is_ref(v):
            return None
        if not isinstance(v, dict) or set(v) != {"mean", "std"}:
            keys = sorted(v) if isinstance(v, dict) else type(v).__name__
            hint = "; a CT window goes in `intensity_window`" if isinstance(v, dict) and set(v) & WINDOW_KEYS else ""
            return f"must be a dict with exactly `mean` and `std`, got {keys}{hint}"
        return None
    if kind == "intensity_window":
        if _is_ref(v) or v is None:  # null: no CT window (2D images, MR)
            return None
        if not isinstance(v, dict) or not {"a_min", "a_max"} <= set(v) or not set(v) <= WINDOW_KEYS:
            return f"must be a dict {{a_min, a_max[, b_min, b_max, clip]}}, got {v!r}"
        return None
    return None if ok[kind]() else f"must be {kind}, got {json.dumps(v)}"


def _is_pretraining(config: dict) -> bool:
    return "SSLTrainer" in _targets(config)


def _check_glossary(bundle: Path) -> list[str]:
    problems: list[str] = []
    configs = _load_configs(bundle)
    train = configs.get("train.json", {})
    for name, config in configs.items():
        standalone = name == "train.json" or "network_def" in config
        pretraining = _is_pretraining(config) if standalone else _is_pretraining(train)
        for key, value in config.items():
            if not isinstance(key, str) or "#" in key:
                continue
            if key in SYNONYMS:
                problems.append(f"configs/{name}: `{key}` is a synonym of the glossary id `{SYNONYMS[key]}`: use that")
            if key in GLOSSARY:
                why = _type_problem(GLOSSARY[key][0], value)
                if why:
                    problems.append(f"configs/{name}: `{key}` ({GLOSSARY[key][1]}) {why}")
            if key == "init_weights" and not pretraining:
                problems.append(f"configs/{name}: `init_weights` is the start of a pretraining run; a finetuning "
                                "config loads its encoder with `pretrained_encoder`")
            if key == "pretrained_encoder" and pretraining:
                problems.append(f"configs/{name}: `pretrained_encoder` is what finetuning loads; a pretraining "
                                "config starts from `init_weights`")
    problems += _check_label_budget(bundle, configs)
    return problems


def _check_label_budget(bundle: Path, configs: dict[str, dict]) -> list[str]:
    meta_file = bundle / "configs" / "metadata.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    if not isinstance(meta, dict) or "label_budget" not in meta:
        return []
    decl = meta["label_budget"]
    where = "configs/metadata.json: `label_budget`"
    if not isinstance(decl, dict) or set(decl) != LABEL_BUDGET_KEYS:
        keys = sorted(decl) if isinstance(decl, dict) else type(decl).__name__
        return [f"{where} must have exactly {sorted(LABEL_BUDGET_KEYS)}, got {keys}"]
    problems = []
    config = configs.get(decl["config"])
    if config is None:
        return [f"{where}: config {decl['config']!r} is not a config file of the bundle"]
    defined = set(config) | (set(configs.get("train.json", {})) if "network_def" not in config else set())
    for cid in [decl["id"], *(decl["seed_ids"] if isinstance(decl["seed_ids"], list) else [None])]:
        if cid not in defined:
            problems.append(f"{where}: id {cid!r} is not a root id of configs/{decl['config']}")
    if not isinstance(decl["sweep"], list) or not decl["sweep"]:
        problems.append(f"{where}: `sweep` must be a non-empty list of budgets")
    if not isinstance(decl["unit"], str) or not decl["unit"]:
        problems.append(f"{where}: `unit` must say what one budget counts")
    return problems


# ---------------------------------------------------------------------- published settings


def _split_cells(line: str) -> list[str]:
    """Split a markdown table row on ``|`` outside backtick spans (``\\|`` is a literal pipe)."""
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    cells, cur, i, tick = [], [], 0, 0
    while i < len(s):
        c = s[i]
        if c == "`":
            j = i
            while j < len(s) and s[j] == "`":
                j += 1
            run = j - i
            if tick == 0:
                tick = run
            elif tick == run:
                tick = 0
            cur.append(s[i:j])
            i = j
            continue
        if c == "\\" and i + 1 < len(s) and s[i + 1] == "|":
            cur.append("|")
            i += 2
            continue
        if c == "|" and tick == 0:
            cells.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    cells.append("".join(cur).strip())
    return cells


_SEPARATOR_CELL = re.compile(r"^:?-{1,}:?$")
_CODE = re.compile(r"^(`+)(.*?)\1$", re.DOTALL)


def _code_span(cell: str) -> str | None:
    m = _CODE.match(cell.strip())
    if not m:
        return None
    text = m.group(2)
    if len(text) >= 2 and text.startswith(" ") and text.endswith(" ") and text.strip():
        text = text[1:-1]
    return text


def parse_published_settings(readme_text: str) -> tuple[list[tuple[int, str, str]], list[str]]:
    """Rows ``(line number, config id, JSON literal text)`` of the ``## Published settings`` tables.

    Returns ``(rows, problems)``; problems cover a missing section and malformed rows.
    """
    lines = readme_text.splitlines()
    start = None
    in_fence = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        if not in_fence and re.match(rf"^##\s+{re.escape(SETTINGS_HEADING)}\b", line.strip(), re.IGNORECASE):
            start = i + 1
            break
    if start is None:
        return [], [f"docs/README.md: no '## {SETTINGS_HEADING}' section"]
    rows: list[tuple[int, str, str]] = []
    problems: list[str] = []
    table: list[tuple[int, str]] = []

    def flush():
        if not table:
            return
        body = table
        if len(table) >= 2 and all(_SEPARATOR_CELL.match(c.replace(" ", "")) for c in _split_cells(table[1][1]) if c):
            body = table[2:]  # header + separator
        for lineno, text in body:
            cells = _split_cells(text)
            if len(cells) < 2:
                problems.append(f"docs/README.md:{lineno}: settings row needs at least 2 columns: {text.strip()!r}")
                continue
            cid, val = _code_span(cells[0]), _code_span(cells[1])
            if cid is None or not cid.strip():
                problems.append(f"docs/README.md:{lineno}: first column must be a backticked config id: {cells[0]!r}")
            elif val is None:
                problems.append(f"docs/README.md:{lineno}: second column must be a backticked JSON value: {cells[1]!r}")
            else:
                rows.append((lineno, cid.strip(), val))
        table.clear()

    in_fence = False
    for i in range(start, len(lines)):
        line = lines[i]
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            flush()
            continue
        if in_fence:
            continue
        if re.match(r"^#{1,2}\s", line):
            break
        if line.lstrip().startswith("|"):
            table.append((i + 1, line))
        else:
            flush()
    flush()
    if not rows and not problems:
        problems.append(f"docs/README.md: the '## {SETTINGS_HEADING}' section has no table rows")
    return rows, problems


def values_equal(a: Any, b: Any, tol: float = FLOAT_TOL) -> bool:
    """JSON value equality with numbers compared to ``tol`` (booleans are not numbers)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k], tol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(values_equal(x, y, tol) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _check_settings(bundle: Path) -> list[str]:
    from monai.bundle import ConfigParser

    readme, train = bundle / "docs" / "README.md", bundle / "configs" / "train.json"
    if not readme.is_file() or not train.is_file():
        return []  # already reported
    rows, problems = parse_published_settings(readme.read_text(encoding="utf-8"))
    if not rows:
        return problems
    parser = ConfigParser()
    try:
        parser.read_config(str(train))  # raw, unresolved: no parse(), so "@a#b" stays as written
    except Exception:
        return problems  # already reported by the config check
    for lineno, cid, literal in rows:
        try:
            expected = json.loads(literal)
        except json.JSONDecodeError as e:
            problems.append(f"docs/README.md:{lineno}: value of `{cid}` is not a JSON literal: {literal!r} ({e})")
            continue
        try:
            actual = parser[cid]
        except (KeyError, IndexError, ValueError, TypeError):
            problems.append(f"docs/README.md:{lineno}: `{cid}` is not an id of configs/train.json")
            continue
        if not values_equal(expected, actual):
            problems.append(
                f"docs/README.md:{lineno}: `{cid}` is {json.dumps(expected)} in the README but "
                f"{json.dumps(actual)} in configs/train.json"
            )
    return problems


# ----------------------------------------------------------------------------------- API


def verify_bundle(bundle_dir: str | os.PathLike, schema: str | os.PathLike | dict | None = None) -> list[str]:
    """All problems of one bundle folder (an empty list means it passed every check).

    Args:
        bundle_dir: ``bundles/<name>``.
        schema: path to the metadata JSON schema (or the schema as a dict); None downloads the
            URL named in ``configs/metadata.json`` (``"schema"``).
    """
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        return [f"bundle folder {str(bundle)!r} does not exist"]
    problems = [f"missing required file {rel}" for rel in REQUIRED_FILES if not (bundle / rel).is_file()]
    problems += _check_metadata(bundle, schema)
    if (bundle / "configs").is_dir():
        problems += _check_configs(bundle)
        problems += _check_expressions(bundle)
        problems += _check_glossary(bundle)
        problems += _check_training_loaders(bundle)
    problems += _check_settings(bundle)
    return problems


def _names(names: str | Iterable[str] | None) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, str):
        return [n.strip() for n in names.split(",") if n.strip()]
    return [str(n).strip() for n in names if str(n).strip()]


def verify_bundles(
    bundles_dir: str | os.PathLike | None = None,
    schema: str | os.PathLike | None = None,
    names: str | Iterable[str] | None = None,
) -> dict[str, list[str]]:
    """``{bundle name: problems}`` for the bundles in ``bundles_dir`` (all, or the given names).

    A missing folder, no bundles or an unknown name is reported under the key ``"<bundles>"``.
    """
    root = Path(bundles_dir) if bundles_dir is not None else DEFAULT_BUNDLES_DIR
    if not root.is_dir():
        return {"<bundles>": [f"bundles folder {str(root)!r} does not exist"]}
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    wanted = _names(names)
    results: dict[str, list[str]] = {}
    if wanted is None:
        wanted = available
        if not wanted:
            results["<bundles>"] = [f"no bundles in {str(root)!r}"]
    for name in wanted:
        if name not in available:
            results.setdefault("<bundles>", []).append(f"no bundle {name!r} in {str(root)!r}")
            continue
        results[name] = verify_bundle(root / name, schema=schema)
    return results


# -------------------------------------------------------------------------------- status report

COLUMNS = ("metadata", "pins", "rules", "package", "round trip", "export")
FULL_COLUMNS = ("package", "round trip", "export")
OK = "ok"
SKIPPED = "skipped: "
MAX_CELL = 110  # characters of a table cell (the problem lines above the table hold the whole text)


def is_failure(status: str) -> bool:
    """A table cell that is neither ``ok ...`` nor ``skipped: ...``."""
    return not (status == OK or status.startswith(OK + " (") or status.startswith(SKIPPED))


def _status(problems: list[str]) -> str:
    return OK if not problems else "; ".join(problems)


def _error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}".strip()


_DEMO: dict[tuple[str, str], str] = {}


def _demo_data(kind: str, work: Path) -> str:
    """The demo data of ``kind`` (``scripts/make_demo_data.py``), made once per work folder."""
    key = (kind, str(work))
    if key not in _DEMO:
        scripts = str(Path(__file__).resolve().parent)
        if scripts not in sys.path:
            sys.path.insert(0, scripts)
        import make_demo_data

        out = work / "demo_data" / kind
        getattr(make_demo_data, kind)(out_dir=str(out))
        _DEMO[key] = str(out)
    return _DEMO[key]


def bundle_report(bundle_dir: str | os.PathLike, schema: str | os.PathLike | dict | None = None, full: bool = False,
                  work_dir: str | os.PathLike | None = None, wheel: bool = True,
                  problems: list[str] | None = None) -> dict[str, str]:
    """``{column: status}`` of one bundle (:data:`COLUMNS`); the slow columns only with ``full`` (outputs under
    ``work_dir``, a temporary folder if None). ``problems``: the bundle's :func:`verify_bundle` problems when
    already known."""
    _ensure_project_importable()
    from monai_ssl_ext import sharing

    bundle = Path(bundle_dir)
    row: dict[str, str] = {}
    meta_problems = [p for p in (f"missing required file {r}" for r in REQUIRED_FILES if r == "configs/metadata.json"
                                 and not (bundle / r).is_file())] + _check_metadata(bundle, schema)
    row["metadata"] = _status(meta_problems)
    try:
        row["pins"] = _status(sharing.pin_problems(bundle))
    except Exception as e:  # no metadata, unreadable pins
        row["pins"] = _error(e)
    static = verify_bundle(bundle, schema=schema) if problems is None else problems
    row["rules"] = _status([p for p in static if p not in meta_problems])
    if not full:
        row.update({c: SKIPPED + "--full" for c in FULL_COLUMNS})
        return row
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="verify_bundles_") as tmp:
            return bundle_report(bundle, schema, full, tmp, wheel, problems)
    work = Path(work_dir) / bundle.name
    zip_path = None
    try:
        zip_path = sharing.package_bundle(bundle, work / "dist", wheel=wheel)["zip"]
        row["package"] = OK + (" (zip + wheel)" if wheel else " (zip)")
    except Exception as e:
        row["package"] = _error(e)
    dataset_dir = None
    try:
        from monai_ssl_ext.workflow import smoke_settings

        dataset_dir = _demo_data(smoke_settings(bundle, ["train.json"])["demo_data"], Path(work_dir))
    except Exception as e:
        row["round trip"] = f"no demo data: {_error(e)}"
    if zip_path is None:
        row["round trip"] = SKIPPED + "the package did not build"
    elif dataset_dir is not None:
        try:
            sharing.round_trip(bundle, work / "round_trip", dataset_dir, zip_path=zip_path)
            row["round trip"] = OK
        except Exception as e:
            row["round trip"] = _error(e)
    try:
        how = sharing.export_status(bundle, work / "export", dataset_dir)
        row["export"] = how if how.startswith(SKIPPED) else f"{OK} ({how})"
    except Exception as e:
        row["export"] = _error(e)
    return row


def _ensure_project_importable() -> None:
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # run from a checkout without installing the package
        sys.path.insert(0, root)


def report(
    bundles_dir: str | os.PathLike | None = None,
    schema: str | os.PathLike | None = None,
    names: str | Iterable[str] | None = None,
    full: bool = False,
    work_dir: str | os.PathLike | None = None,
    wheel: bool = True,
    problems: dict[str, list[str]] | None = None,
) -> dict[str, dict[str, str]]:
    """``{bundle: {column: status}}`` for the bundles in ``bundles_dir`` (all, or the given names);
    ``problems``: :func:`verify_bundles`' result when already known."""
    root = Path(bundles_dir) if bundles_dir is not None else DEFAULT_BUNDLES_DIR
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))) \
        if root.is_dir() else []
    wanted = [n for n in (_names(names) or available) if n in available]
    problems = problems or {}
    if full and work_dir is None:
        with tempfile.TemporaryDirectory(prefix="verify_bundles_") as tmp:
            return {n: bundle_report(root / n, schema, full, tmp, wheel, problems.get(n)) for n in wanted}
    return {n: bundle_report(root / n, schema, full, work_dir, wheel, problems.get(n)) for n in wanted}


def format_table(rows: dict[str, dict[str, str]]) -> str:
    """The status rows as a markdown table (cells shortened to :data:`MAX_CELL` characters)."""

    def cell(text: str) -> str:
        text = " ".join(str(text).split()).replace("|", "\\|")
        return text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "…"

    lines = ["| bundle | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(row.get(c, "")) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(bundles_dir: str | None = None, schema: str | None = None, names: str | None = None, full: bool = False,
         table: bool = False, work_dir: str | None = None, wheel: bool = True) -> None:
    """CLI: print ``<bundle>: <problem>`` lines (and, with ``table``, the status table); exit 1 if there is any
    problem. ``full`` adds the package, round-trip and export checks (and implies the table)."""
    results = verify_bundles(bundles_dir, schema=schema, names=names)
    checked = [n for n in results if n != "<bundles>"]
    rows = report(bundles_dir, schema, checked, full, work_dir, wheel, results) if (table or full) and checked else {}
    n_problems = 0
    for name, problems in results.items():
        for p in problems:
            print(f"{name}: {p}")
        n_problems += len(problems)
    for name, row in rows.items():  # the slow checks' problems (the static ones are the lines above)
        for column in FULL_COLUMNS:
            if is_failure(row[column]):
                print(f"{name}: {column}: {row[column]}")
                n_problems += 1
        if is_failure(row["pins"]):  # not a static problem of verify_bundle
            print(f"{name}: pins: {row['pins']}")
            n_problems += 1
    if rows:
        print()
        print(format_table(rows))
        print()
    if n_problems:
        bad = sum(1 for n in checked if results.get(n) or any(is_failure(v) for v in rows.get(n, {}).values()))
        print(f"{n_problems} problem(s); {bad} of {len(checked)} bundle(s) failed", file=sys.stderr)
        sys.exit(1)
    print(f"OK: {len(checked)} bundle(s) verified: {', '.join(checked)}")


def cli(bundles_dir: str | None = None, schema: str | None = None, names: str | None = None, full: bool = False,
        work_dir: str | None = None, wheel: bool = True) -> None:
    """The command line: :func:`main` with the status table."""
    main(bundles_dir, schema, names, full=full, table=True, work_dir=work_dir, wheel=wheel)


if __name__ == "__main__":
    import fire

    fire.Fire(cli)
