"""Label-efficiency sweeps: run a finetuning bundle over label budgets × initialisations × seeds,
report the TEST-set score of the checkpoint selected on validation, track every run in one MLflow
store, and write a table and a plot of test metric vs label budget.

Three steps, each usable alone: :func:`plan_sweep` checks every argument against the bundle's
merged configs and lists the runs (a :class:`SweepPlan`; nothing runs or is written);
:func:`run_sweep` runs them (:class:`SweepResults`); :func:`report` writes results.csv,
summary.md, the plot and the MLflow summary run. :func:`sweep` chains them;
``scripts/label_efficiency.py`` is its command line (usage there).

The label budget. A finetuning bundle declares its label budget in ``configs/metadata.json``::

    "label_budget": {"config": "train.json", "id": "perc", "unit": "...",
                     "seed_ids": ["seed", "perc_seed"], "sweep": [10, 50, 100]}

Without ``budget_key`` the sweep uses that declaration: ``id`` is the budget key, ``sweep`` the
default budgets, ``seed_ids`` the ids every seed sets, ``config`` the config to run and ``unit``
the default axis label. ``budgets`` and ``seed_key`` default to the declaration also when
``budget_key`` names the declared id; a bundle without a declaration needs ``budget_key`` and
``budgets``. A bundle whose declared config has no evaluate config (simclr_cholec's linear probe
tests in the same run) is refused with a message saying so.

What is reported. Validation only SELECTS: the bundle's CheckpointSaver keeps the
best-validation ``model.pt`` of each run. The sweep then runs the bundle's ``evaluate`` config
(default ``evaluate.json``) on that checkpoint and reports its evaluator's final ``test_metric``
(default: the validation metric with ``val_`` replaced by ``test_``, e.g. ``val_mean_iou`` →
``test_mean_iou``; an error naming ``--test_metric`` if the evaluate config computes no such
metric, checked before anything runs where the config names its metrics, and after the evaluate run
otherwise). ``metric`` is the validation metric (default: the bundle's ``validate#key_metric``, the
one the checkpoint is selected on); its best value over the run's MLflow history (max; min with
``--minimize``) is kept as the secondary column ``best_val_value``. When the evaluate config
evaluates the same ``validate#datalist`` as training's validation (no held-out test split, e.g.
BTCV, whose test labels are not public), the sweep warns and says so in ``summary.md``.
``eval_overrides`` (a dict and/or config files) apply to the evaluate run only, e.g. to point it
at another test list.

How it runs. Each (budget, init, seed) is one ordinary bundle run (``monai.bundle.create_workflow``
+ ``run`` + ``finalize``, i.e. ``monai.bundle.run`` keeping the workflow handle, with
``--tracking mlflow``) of ``configs`` (default ``train.json``) + the config files in
``overrides``, then, in the same process and on the same ``output_dir``, the evaluate run of
``configs`` + ``evaluate`` + ``overrides`` + ``eval_overrides`` (no tracking), with these ids
overridden:

* ``<budget_key>`` = budget, ``<init_key>`` (default ``pretrained_encoder``) = the init's weight
  spec, every id in ``seed_key`` = seed;
* ``output_dir`` = ``<out_dir>/runs/<init>/<budget_key><budget>/seed<seed>`` (checkpoints, logs
  and the evaluate run's ``eval/`` of the run; ``bundle_root`` and with it the default
  ``dataset_dir`` are left alone);
* ``tracking_uri`` = ``<out_dir>/mlruns.db`` (all runs in one store), ``experiment_name`` =
  ``<bundle>-label-efficiency``, ``run_name`` = ``<init>-<budget_key><budget>-seed<seed>``;
* ``resume`` = False where the bundle defines it, and the run folder is emptied first: every run
  starts fresh, unless ``--skip_done`` and the run's ``label_efficiency.json`` (written when the run
  finished) holds a result for the same settings, in which case the run is skipped.

MLflow. Each sweep invocation opens a summary run ``label-efficiency-summary`` (tag
``sweep_role=summary``) in the experiment; every cell's run is its child (``mlflow.parentRunId``)
with params ``sweep_init``, ``sweep_init_spec``, ``sweep_budget_key``, ``sweep_budget``,
``sweep_seed`` (+ ``sweep_x``), ``sweep_test_metric``, ``sweep_val_metric``, ``sweep_evaluate``;
the bundle logs the validation history (``val_*``); the sweep adds the evaluate run's metrics
under test names (``test_*`` as computed, any other name ``k`` as ``test_<k>``, so never as a
``val_`` metric), ``best_<metric>`` (the selection value), and the evaluate run's ``eval/`` folder
as artifacts. The summary run gets the sweep's params, ``<test_metric>.mean|std|n.<init>.<budget_key><budget>``
metrics and the artifacts ``results.csv``, ``summary.md`` and ``label_efficiency.png``.

Outputs in ``out_dir``: ``results.csv`` (one row per run: ``test_metric``, ``test_value``,
``val_metric``, ``best_val_value``, ...), ``summary.md`` (rows = budgets, columns = inits, test
mean ± sample std over seeds), ``label_efficiency.png`` (test metric vs budget or ``budget_to_x``,
one line per init, ±1 std error bars, inits offset by about 1% of the x range so that overlapping
bars stay visible), ``mlruns.db`` (+ ``mlruns/`` artifacts), ``runs/`` (per-run outputs, each with
``label_efficiency.json``). A failed run is marked FAILED in MLflow (and so is the summary run,
which still gets the ``results.csv`` of the runs finished so far) and stops the sweep;
``--skip_done`` continues from there. On a small shared CPU, tiny (smoke) runs are several times
faster with ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import inspect
import math
import os
import re
import shutil
import time
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .encoders import timm_spec_model
from .workflow import evaluator_metrics, run_bundle

__all__ = ["SweepError", "SweepPlan", "SweepResults", "label_budget", "plan_sweep", "report", "run_sweep", "sweep"]

ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = ROOT / "bundles"
RESULT_FILE = "label_efficiency.json"
CSV_FIELDS = ["init", "budget", "x", "seed", "test_metric", "test_value", "val_metric", "best_val_value",
              "run_id", "run_name", "output_dir"]
SUMMARY_RUN = "label-efficiency-summary"
# ids the sweep sets itself: user overrides must not touch them
_SWEEP_IDS = ("output_dir", "tracking_uri", "experiment_name", "run_name")
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


class SweepError(ValueError):
    """A sweep that cannot run as asked (unknown bundle, key, file, init, ...)."""


# ---- argument normalisation (fire hands over strings, tuples, dicts, ...) --------------------

def _parse(value: Any, what: str) -> Any:
    """A JSON / Python-literal string → its value; other values unchanged."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text or text[0] not in "[{(":
        return value
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:  # Python-style quotes mixed with JSON's null / true / false (names only, not inside strings)
        names = {"null": "None", "true": "True", "false": "False"}
        tokens = [
            (t.type, names.get(t.string, t.string) if t.type == tokenize.NAME else t.string)
            for t in tokenize.generate_tokens(io.StringIO(text).readline)
        ]
        return ast.literal_eval(tokenize.untokenize(tokens))
    except (ValueError, SyntaxError, tokenize.TokenError) as e:
        raise SweepError(f"cannot parse {what} {value!r}: {e}") from None


def _as_list(value: Any, what: str) -> list:
    value = _parse(value, what)
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and "," in value:
        return [_parse_scalar(v) for v in value.split(",") if v.strip()]
    return [value]


def _parse_scalar(text: str) -> Any:
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _null_spec(spec: Any) -> bool:
    return spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none", "null", "random"))


def _x_lookup(mapping: dict, budget: Any) -> Any:
    """``budget_to_x[budget]``, matching keys as given, as strings or as numbers (JSON keys are strings)."""
    if budget in mapping:
        return mapping[budget]
    for k, v in mapping.items():
        if str(k) == str(budget):
            return v
        try:
            if float(k) == float(budget):
                return v
        except (TypeError, ValueError):
            pass
    raise KeyError(budget)


# ---- bundle and config checks ----------------------------------------------------------------

def resolve_bundle(bundle: str | os.PathLike) -> Path:
    """A bundle name under ``bundles/`` or a path to a bundle folder (with ``configs/``)."""
    path = Path(bundle)
    for cand in (BUNDLES_DIR / str(bundle), path):
        if (cand / "configs").is_dir():
            return cand.resolve()
    known = sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "configs").is_dir()) if BUNDLES_DIR.is_dir() else []
    raise SweepError(f"unknown bundle {str(bundle)!r}: not a folder under {BUNDLES_DIR} nor a path to a bundle (known: {known})")


def _config_path(bundle_dir: Path, name: str, what: str) -> str:
    cand = bundle_dir / "configs" / name
    if cand.is_file():
        return str(cand)
    if Path(name).is_file():
        return str(Path(name).resolve())
    raise SweepError(f"{what} {name!r} not found in {bundle_dir / 'configs'} (nor as a path)")


def _read_parser(files: list[str]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(files)
    return parser


def _split_overrides(overrides: Any, bundle_dir: Path) -> tuple[list[str], dict]:
    """``overrides`` → (extra config files, id → value dict). Accepts a dict, a JSON string, a
    list of config files (names in the bundle's configs/ or paths) and/or dicts."""
    overrides = _parse(overrides, "overrides")
    if overrides is None:
        return [], {}
    if isinstance(overrides, dict):
        return [], dict(overrides)
    if isinstance(overrides, str):
        overrides = [overrides]
    files, pairs = [], {}
    for item in overrides:
        item = _parse(item, "overrides")
        if isinstance(item, dict):
            pairs.update(item)
        elif isinstance(item, str):
            files.append(_config_path(bundle_dir, item, "override config"))
        else:
            raise SweepError(f"overrides: expected config file names or dicts, got {item!r}")
    return files, pairs


def _run_dir(out_dir: Path, init: str, budget_key: str, budget: Any, seed: Any) -> Path:
    return out_dir / "runs" / init / f"{budget_key}{budget}" / f"seed{seed}"


def _run_name(init: str, budget_key: str, budget: Any, seed: Any) -> str:
    return f"{init}-{budget_key}{budget}-seed{seed}"


# ---- MLflow ----------------------------------------------------------------------------------

def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, name: str, artifact_dir: Path) -> str:
    from monai.utils import path_to_uri

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=path_to_uri(artifact_dir))


def _runs_named(client, exp_id: str, name: str) -> list:
    safe = name.replace("'", "\\'")
    return client.search_runs([exp_id], filter_string=f"attributes.run_name = '{safe}'", max_results=1000)


def _open_run(client, exp_id: str, name: str, params: dict, tags: dict | None = None) -> str:
    """Create this cell's MLflow run (the bundle's MLFlowHandler attaches to the unfinished run of
    the same name). Earlier unfinished runs of that name (killed sweeps) would be picked up instead:
    mark them failed and rename them ``<name>-stale-<id>``."""
    for old in _runs_named(client, exp_id, name):
        if old.info.status != "FINISHED":
            client.set_terminated(old.info.run_id, status="FAILED")
            client.update_run(old.info.run_id, name=f"{name}-stale-{old.info.run_id[:8]}")
    run = client.create_run(exp_id, run_name=name, tags={"sweep": "label_efficiency", **(tags or {})})
    from mlflow.entities import Param

    client.log_batch(run.info.run_id, params=[Param(k, "null" if v is None else str(v)) for k, v in params.items()])
    return run.info.run_id


def _best_from_history(client, run_id: str, metric: str, minimize: bool) -> float:
    history = client.get_metric_history(run_id, metric)
    if not history:
        have = sorted(client.get_run(run_id).data.metrics)
        raise SweepError(
            f"MLflow run {run_id} has no validation metric {metric!r} (it has {have}); pass --metric with one of them"
        )
    values = [m.value for m in history if math.isfinite(m.value)]
    if not values:
        return float("nan")
    return min(values) if minimize else max(values)


# ---- one run ---------------------------------------------------------------------------------

def _run_workflow(files: list[str], bundle_dir: Path, tracking: str | None, pairs: dict):
    """One ordinary bundle run (``python -m monai.bundle run``, printed) of ``files``."""
    return run_bundle(bundle_dir, files, pairs, tracking=tracking, echo=True, record_loss=False,
                      workflow_type="train")


def _test_name(name: str) -> str:
    """MLflow name of an evaluate-run metric: ``test_*`` as is, anything else ``test_<name>``
    (never the bundle's own ``val_*`` name, which holds the validation history)."""
    return name if name.startswith("test_") else f"test_{name}"


def _metric_names(parser) -> list[str] | None:
    """The metric names of ``validate#key_metric`` + ``validate#additional_metrics`` of an
    unresolved config, key metric first; None where the config does not spell them as dicts."""
    names = []
    for key in ("validate#key_metric", "validate#additional_metrics"):
        if key not in parser:
            if key == "validate#key_metric":
                return None
            continue
        value = parser.get(key)
        if not isinstance(value, dict):
            return None
        names += [str(k) for k in value]
    return names


def _metric_def(parser, name: str) -> dict | None:
    """What defines metric ``name`` in ``validate#key_metric`` / ``validate#additional_metrics``
    (its config less ``output_transform`` / ``save_details``); None where not spelled as a dict."""
    for group in ("validate#key_metric", "validate#additional_metrics"):
        value = _raw(parser, group)
        if isinstance(value, dict) and isinstance(value.get(name), dict):
            return {k: v for k, v in value[name].items() if k not in ("output_transform", "save_details")}
    return None


def _raw(parser, key: str) -> Any:
    return parser.get(key) if key in parser else None


_REF_RE = re.compile(r"[@%]([A-Za-z_][\w#]*)")


def _same_config(a, b, key: str, depth: int = 6) -> bool:
    """Whether ``key`` is spelled the same in the unresolved configs ``a`` and ``b``, and so are the
    ids it references (``@id``), recursively: then both resolve to the same value."""
    if _raw(a, key) != _raw(b, key):
        return False
    if depth == 0:
        return True
    refs = set(_REF_RE.findall(json.dumps(_raw(a, key), default=str)))
    return all(_same_config(a, b, ref, depth - 1) for ref in refs if ref != key)


def _evaluator_metrics(res) -> dict:
    """Final metrics of the evaluator that the evaluate config ran."""
    try:
        return evaluator_metrics(res.parser)
    except LookupError as e:
        raise SweepError(str(e)) from None


# ---- outputs ---------------------------------------------------------------------------------

def _fmt(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.4f}"


def _value(row: dict, key: str | None) -> float:
    """The row's reported ``test_value`` (``key`` None) or its evaluate-run metric ``key`` (nan if absent)."""
    if key is None:
        return float(row["test_value"])
    value = (row.get("metrics") or {}).get(key)
    return float(value) if value not in (None, "") else math.nan


def aggregate(rows: list[dict], budgets: list, inits: list[str], key: str | None = None) -> dict:
    """``{(budget, init): (mean, sample std, n)}`` over seeds (std 0 for one seed) of the reported ``test_value``,
    or of the evaluate-run metric ``key``."""
    out = {}
    for b in budgets:
        for i in inits:
            vals = [_value(r, key) for r in rows if str(r["budget"]) == str(b) and r["init"] == i]
            vals = [v for v in vals if math.isfinite(v)]
            if not vals:
                continue
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            out[(str(b), i)] = (mean, std, len(vals))
    return out


def metric_names(rows: list[dict], reported: str) -> list[str]:
    """Every scalar metric the evaluate runs wrote, the reported one first, then the others sorted."""
    names = {k for r in rows for k in (r.get("metrics") or {})}
    return [reported] + sorted(names - {reported})


def _table(rows, budgets, inits, budget_key, budget_to_x, budget_label, key, n_seeds) -> list[str]:
    stats = aggregate(rows, budgets, inits, key)
    head = [budget_key] + ([budget_label or "x"] if budget_to_x else []) + list(inits)
    lines = ["| " + " | ".join(str(h) for h in head) + " |", "|" + "---|" * len(head)]
    for b in budgets:
        cells = [str(b)] + ([str(_x_lookup(budget_to_x, b))] if budget_to_x else [])
        for i in inits:
            s = stats.get((str(b), i))
            if s is None:
                cells.append("—")
            else:
                cell = f"{_fmt(s[0])} ± {_fmt(s[1])}"
                cells.append(cell if s[2] == len(n_seeds) else f"{cell} ({s[2]})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary_markdown(rows, budgets, inits, budget_key, metric_label, budget_to_x=None, budget_label=None, title=None,
                     notes=None, metrics=()) -> str:
    """Markdown tables, mean ± sample std over seeds per (budget, init): the rows' reported ``test_value``
    (``metric_label``), then one table per further evaluate-run metric in ``metrics``; then ``notes`` (lines)."""
    lines = [f"# {title}", ""] if title else []
    n_seeds = sorted({r["seed"] for r in rows}, key=str)
    lines += [f"{metric_label}: mean ± sample std over seeds {n_seeds} (n per cell in brackets when not all seeds finished).", ""]
    lines += _table(rows, budgets, inits, budget_key, budget_to_x, budget_label, None, n_seeds)
    for key in metrics:
        lines += ["", f"{key}:", ""] + _table(rows, budgets, inits, budget_key, budget_to_x, budget_label, key, n_seeds)
    if notes:
        lines += [""] + list(notes)
    return "\n".join(lines) + "\n"


def plot(rows, budgets, inits, path, metric_label, budget_label, budget_to_x=None, logx=False, title=None,
         metrics=()) -> str:
    """The reported metric against the budget (mean ± std over seeds, one line per init), and one more panel per
    evaluate-run metric in ``metrics``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        xs = [float(_x_lookup(budget_to_x, b) if budget_to_x else b) for b in budgets]
        categorical = False
    except (TypeError, ValueError):  # non-numeric budgets: evenly spaced, labelled ticks
        xs, categorical, logx = [float(k) for k in range(len(budgets))], True, False
    span = (max(xs) - min(xs)) or abs(xs[0]) or 1.0  # one budget: offsets relative to its size
    markers, styles = "osD^v<>p", ["-", "--", "-.", ":"]
    panels = [(None, metric_label)] + [(k, k) for k in metrics]
    cols = min(len(panels), 3)
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.4 * cols, 4.4 * rows_n), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels):
        stats = aggregate(rows, budgets, inits, key)
        for k, i in enumerate(inits):
            # a small horizontal offset per init keeps overlapping error bars visible (cosmetic only)
            off = (k - (len(inits) - 1) / 2) * 0.012
            pts = []
            for b, x in zip(budgets, xs):
                s = stats.get((str(b), i))
                if s is not None:
                    pts.append((x * (1 + 2 * off) if logx else x + off * span, s[0], s[1]))
            if pts:
                pts.sort()
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], capsize=3, label=i,
                            marker=markers[k % len(markers)], linestyle=styles[k % len(styles)])
        if logx:
            ax.set_xscale("log")
        else:  # ticks at the budgets themselves, written out (no "+3e1" offset)
            ax.set_xticks(xs, [str(b) for b in budgets] if categorical else [f"{x:g}" for x in xs])
            if len(xs) == 1:
                ax.set_xlim(xs[0] - 0.1 * span, xs[0] + 0.1 * span)
        ax.set_xlabel(budget_label)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(title="initialisation")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def write_csv(rows: list[dict], path: Path) -> None:
    """One row per run: :data:`CSV_FIELDS`, then one column per evaluate-run metric."""
    from monai_ssl_ext.io import atomic_write

    extra = sorted({k for r in rows for k in (r.get("metrics") or {})} - set(CSV_FIELDS))

    def write(f) -> None:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS + extra)
        writer.writeheader()
        for r in rows:
            metrics = r.get("metrics") or {}
            writer.writerow({**{k: r.get(k, "") for k in CSV_FIELDS}, **{k: metrics.get(k, "") for k in extra}})

    atomic_write(path, write, mode="w", newline="")



# ---- the sweep: plan, run, report ------------------------------------------------------------

def label_budget(bundle_dir: str | os.PathLike) -> dict | None:
    """The bundle's label-budget declaration (``"label_budget"`` of ``configs/metadata.json``):
    ``{"config", "id", "unit", "seed_ids", "sweep"}``; None where it declares none."""
    meta = Path(bundle_dir) / "configs" / "metadata.json"
    if not meta.is_file():
        return None
    try:
        decl = json.loads(meta.read_text()).get("label_budget")
    except json.JSONDecodeError as e:
        raise SweepError(f"{meta}: not valid JSON ({e})") from None
    if decl is None:
        return None
    if not isinstance(decl, dict) or not decl.get("id"):
        raise SweepError(f"{meta}: `label_budget` must be a dict with at least an `id`, got {decl!r}")
    return decl


@dataclass
class SweepPlan:
    """A checked sweep: every key, file, init and metric verified against the merged configs;
    ``runs`` are the (budget, init, seed) cells in the order they run."""

    bundle_dir: Path
    bundle_name: str
    budget_key: str
    budgets: list
    init_labels: list[str]
    specs: dict  # init label -> weight spec (absolute path, "timm/..." or None)
    init_extra: dict  # init label -> its own config overrides
    init_key: str
    seeds: list
    seed_keys: list[str]
    config_files: list[str]
    extra_files: list[str]
    pairs: dict  # overrides of every run
    evaluate: str
    eval_files: list[str]
    eval_pairs: dict  # overrides of the evaluate run only
    metric: str
    test_metric: str
    selected_on: str
    minimize: bool
    val_reported: str
    metric_label: str
    eval_on_val: bool
    notes: list[str]
    set_resume: bool
    out: Path
    uri: str
    experiment: str
    budget_label: str
    budget_to_x: dict | None = None
    logx: bool = False
    skip_done: bool = False
    runs: list[tuple] = field(default_factory=list)

    def run_dir(self, init: str, budget: Any, seed: Any) -> Path:
        return _run_dir(self.out, init, self.budget_key, budget, seed)

    def run_name(self, init: str, budget: Any, seed: Any) -> str:
        return _run_name(init, self.budget_key, budget, seed)

    def describe(self) -> str:
        """One line per planned run: its name, swept ids and output folder (``--dry_run``)."""
        out = []
        for b, i, s in self.runs:
            shown = {self.budget_key: b, self.init_key: self.specs[i], **self.init_extra[i], **{k: s for k in self.seed_keys}}
            out.append(f"  {self.run_name(i, b, s)}: " + " ".join(f"{k}={v!r}" for k, v in shown.items())
                       + f" -> {self.run_dir(i, b, s)}")
        return "\n".join(out)


@dataclass
class SweepResults:
    """What :func:`run_sweep` ran: one results.csv row per finished run, the MLflow handles."""

    rows: list[dict]
    summary_run_id: str
    client: Any
    exp_id: str
    timings: list[float] = field(default_factory=list)


def plan_sweep(
    bundle: str,
    budget_key: str | None = None,
    budgets: Any = None,
    inits: Any = None,
    seeds: Any = (0,),
    seed_key: Any = None,
    init_key: str = "pretrained_encoder",
    metric: str | None = None,
    test_metric: str | None = None,
    minimize: bool = False,
    out_dir: str = "runs/label_efficiency",
    overrides: Any = None,
    configs: Any = None,
    evaluate: str | None = "evaluate.json",
    eval_overrides: Any = None,
    budget_label: str | None = None,
    budget_to_x: Any = None,
    logx: bool = False,
    experiment: str | None = None,
    skip_done: bool = False,
    dry_run: bool = False,
    **config_overrides: Any,
) -> SweepPlan:
    """Check a sweep's arguments against the bundle's merged configs and list its runs; nothing is
    run or written. The arguments are :func:`sweep`'s; ``budget_key``, ``budgets``, ``seed_key`` and
    ``configs`` default to the bundle's ``label_budget`` declaration in ``configs/metadata.json``
    (``id``, ``sweep``, ``seed_ids``, ``config``). Raises :class:`SweepError`."""
    if "eval_metric" in config_overrides:
        raise SweepError("eval_metric was renamed: pass --test_metric (the evaluate run's metric to report)")
    bundle_dir = resolve_bundle(bundle)
    bundle_name = bundle_dir.name
    decl = label_budget(bundle_dir)
    if budget_key is None:
        if decl is None:
            raise SweepError(f"bundle {bundle_name!r} declares no `label_budget` in configs/metadata.json: "
                             "pass --budget_key (the config id of the label budget)")
        budget_key = str(decl["id"])
        if configs is None and decl.get("config"):
            configs = [decl["config"]]
    declared = decl is not None and str(decl.get("id")) == str(budget_key)
    if budgets is None and declared and decl.get("sweep") is not None:
        budgets = decl["sweep"]
    if seed_key is None:
        seed_key = list(decl["seed_ids"]) if declared and decl.get("seed_ids") else "seed"
    if budget_label is None and declared and decl.get("unit") and budget_to_x is None:
        budget_label = str(decl["unit"])
    if configs is None:
        configs = ("train.json",)
    budgets = _as_list(budgets, "budgets")
    if not budgets:
        raise SweepError("budgets: give at least one budget")
    seeds = _as_list(seeds, "seeds")
    if not seeds:
        raise SweepError("seeds: give at least one seed")
    seed_keys = [str(k) for k in _as_list(seed_key, "seed_key")]
    inits = _parse(inits, "inits")
    if inits is None:
        inits = {"random": None}
    if not isinstance(inits, dict) or not inits:
        raise SweepError(f"inits must be a dict {{label: weight spec or null}}, got {inits!r}")
    for label in inits:
        if not _LABEL_RE.match(str(label)):
            raise SweepError(f"init label {label!r}: use letters, digits and _.+- only (it names folders and runs)")
    init_labels = [str(k) for k in inits]
    budget_to_x = _parse(budget_to_x, "budget_to_x")
    if budget_to_x is not None:
        if not isinstance(budget_to_x, dict):
            raise SweepError(f"budget_to_x must be a dict {{budget: x}}, got {budget_to_x!r}")
        for b in budgets:
            try:
                float(_x_lookup(budget_to_x, b))
            except KeyError:
                raise SweepError(f"budget_to_x has no (numeric) entry for budget {b!r}: {budget_to_x}") from None
    if len({str(b) for b in budgets}) != len(budgets) or len({str(s) for s in seeds}) != len(seeds):
        raise SweepError(f"budgets and seeds must be distinct: budgets={budgets}, seeds={seeds}")
    if _null_spec(evaluate) or evaluate is False:
        raise SweepError("the sweep reports the test score of the best-validation checkpoint: "
                         "--evaluate must name the bundle's evaluate config (default evaluate.json)")
    config_names = [Path(c).name for c in _as_list(configs, "configs")]
    if declared and decl.get("config") in config_names and evaluate == "evaluate.json" \
            and not (bundle_dir / "configs" / evaluate).is_file():
        raise SweepError(
            f"bundle {bundle_name!r} declares its label budget {budget_key!r} on {decl.get('config')}, and has no "
            f"evaluate config {evaluate!r} to test the best-validation checkpoint with: the label-efficiency sweep "
            "does not support this bundle (pass --evaluate with a config that tests the selected checkpoint)")

    # files and overrides, then check every key against the merged config before running anything
    config_files = [_config_path(bundle_dir, c, "config") for c in _as_list(configs, "configs")]
    extra_files, pairs = _split_overrides(overrides, bundle_dir)
    pairs.update(config_overrides)
    eval_file = _config_path(bundle_dir, evaluate, "evaluate config")
    eval_extra_files, eval_pairs_user = _split_overrides(eval_overrides, bundle_dir)
    parser = _read_parser(config_files + extra_files)
    where = f"bundle {bundle_name!r} ({', '.join(Path(f).name for f in config_files + extra_files)})"
    for what, key in [("budget_key", budget_key), ("init_key", init_key)] + [("seed_key", k) for k in seed_keys]:
        if key not in parser:
            raise SweepError(f"{what} {key!r} is not a config id of {where}")
    if "output_dir" not in parser:
        raise SweepError(f"{where} defines no `output_dir`: the sweep gives each run its own output_dir")
    swept = {budget_key, init_key, *seed_keys, *_SWEEP_IDS}
    for key in pairs:
        if key in swept:
            raise SweepError(f"override {key!r} is set by the sweep itself; use budgets / inits / seeds / out_dir")
        if key not in parser:
            raise SweepError(f"override {key!r} is not a config id of {where}")
    for key, value in pairs.items():
        parser[key] = value
    eval_files = config_files + [eval_file] + extra_files + eval_extra_files
    eval_parser = _read_parser(eval_files)
    eval_where = f"the evaluate run ({', '.join(Path(f).name for f in eval_files)})"
    for key in eval_pairs_user:
        if key in swept:
            raise SweepError(f"eval_override {key!r} is set by the sweep itself")
        if key not in eval_parser:
            raise SweepError(f"eval_override {key!r} is not a config id of {eval_where}")
    for key, value in {**pairs, **eval_pairs_user}.items():
        eval_parser[key] = value
    if "output_dir" not in eval_parser:
        raise SweepError(f"evaluate config {evaluate!r} leaves no `output_dir`")

    # metrics: validation (selection, secondary column) and test (reported)
    val_names = _metric_names(parser)
    if metric is None:
        if not val_names:
            raise SweepError(f"cannot tell the validation key metric of {where} (no `validate#key_metric` dict): "
                             "pass --metric")
        metric = val_names[0]
    elif val_names and metric != val_names[0]:
        print(f"note: the checkpoint is selected on the key metric {val_names[0]!r}; --metric {metric!r} only "
              "fills the best_val_value column", flush=True)
    if test_metric is None:
        test_metric = "test_" + (metric[4:] if metric.startswith("val_") else metric)
    eval_names = _metric_names(eval_parser)
    if eval_names is not None and test_metric not in eval_names:
        raise SweepError(f"{eval_where} computes no metric {test_metric!r} (it computes {eval_names}); "
                         f"pass --test_metric with one of them")
    selected_on = val_names[0] if val_names else metric
    val_def, test_def = _metric_def(parser, metric), _metric_def(eval_parser, test_metric)
    if val_def is not None and test_def is not None and val_def != test_def:
        print(f"note: the test metric {test_metric!r} is not defined like the validation metric {metric!r}: "
              f"{test_def} vs {val_def}", flush=True)
    eval_on_val = "validate#datalist" in parser and _same_config(parser, eval_parser, "validate#datalist")
    notes = []
    if eval_on_val:
        notes.append(f"Note: {Path(evaluate).name} evaluates the same `validate#datalist` as training's validation, "
                     "the data the checkpoint was selected on: these are NOT held-out test scores.")
        print("warning: " + notes[-1].removeprefix("Note: "), flush=True)
    specs, init_extra = {}, {}
    for label, spec in inits.items():
        init_extra[str(label)] = {}
        if isinstance(spec, dict):  # {init_key: spec, other ids this init needs (e.g. normalization)}
            extra = dict(spec)
            spec = extra.pop(init_key, None)
            for key in extra:
                if key in swept and key != init_key:
                    raise SweepError(f"init {label!r}: {key!r} is set by the sweep itself")
                if key not in parser:
                    raise SweepError(f"init {label!r}: override {key!r} is not a config id of {where}")
            init_extra[str(label)] = extra
        if _null_spec(spec):
            specs[str(label)] = None
        elif not isinstance(spec, str):
            raise SweepError(f"init {label!r}: a weight spec is a path, 'timm/<model-name>' or null, got {spec!r}")
        elif timm_spec_model(spec, warn=False) is not None:
            specs[str(label)] = spec
        elif not os.path.isfile(spec):
            if not dry_run:
                raise SweepError(f"init {label!r}: encoder file not found: {spec}")
            print(f"warning: init {label!r}: encoder file not found (yet): {spec}", flush=True)
            specs[str(label)] = os.path.abspath(spec)
        else:
            specs[str(label)] = os.path.abspath(spec)
    set_resume = "resume" in parser

    set_resume = "resume" in parser

    out = Path(out_dir).resolve()
    from monai.utils import path_to_sqlite_uri

    uri = path_to_sqlite_uri(str(out / "mlruns.db"))
    experiment = experiment or f"{bundle_name}-label-efficiency"
    val_reported = f"{'min' if minimize else 'max'}({metric})"
    metric_label = f"{test_metric} ({Path(evaluate).name}, best-{metric} checkpoint)"
    budget_label = budget_label or (budget_key if budget_to_x is None else "x")
    runs = [(b, i, s) for b in budgets for i in init_labels for s in seeds]
    return SweepPlan(
        bundle_dir=bundle_dir, bundle_name=bundle_name, budget_key=budget_key, budgets=budgets, init_labels=init_labels,
        specs=specs, init_extra=init_extra, init_key=init_key, seeds=seeds, seed_keys=seed_keys,
        config_files=config_files, extra_files=extra_files, pairs=pairs, evaluate=evaluate, eval_files=eval_files,
        eval_pairs=eval_pairs_user, metric=metric, test_metric=test_metric, selected_on=selected_on, minimize=minimize,
        val_reported=val_reported, metric_label=metric_label, eval_on_val=eval_on_val, notes=notes,
        set_resume=set_resume, out=out, uri=uri, experiment=experiment, budget_label=budget_label,
        budget_to_x=budget_to_x, logx=logx, skip_done=skip_done, runs=runs,
    )


def run_sweep(plan: SweepPlan) -> SweepResults:
    """Run every cell of ``plan`` (train, then evaluate the best-validation checkpoint), each an
    MLflow child run of a new summary run; ``results.csv`` is rewritten after every run. A failed
    run marks itself and the summary run FAILED (the summary run still gets the results.csv of
    the runs finished so far) and stops the sweep."""
    p = plan
    p.out.mkdir(parents=True, exist_ok=True)
    client = _client(p.uri)
    exp_id = _experiment_id(client, p.experiment, p.out / "mlruns")
    sweep_params = {"sweep_bundle": p.bundle_name, "sweep_budget_key": p.budget_key,
                    "sweep_budgets": json.dumps(p.budgets), "sweep_inits": json.dumps(p.specs),
                    "sweep_seeds": json.dumps(p.seeds), "sweep_seed_keys": json.dumps(p.seed_keys),
                    "sweep_val_metric": p.val_reported, "sweep_test_metric": p.test_metric,
                    "sweep_evaluate": Path(p.evaluate).name, "sweep_eval_on_validation_data": p.eval_on_val,
                    "sweep_configs": json.dumps([Path(f).name for f in p.config_files + p.extra_files])}
    summary_id = _open_run(client, exp_id, SUMMARY_RUN, sweep_params, tags={"sweep_role": "summary"})
    results = SweepResults(rows=[], summary_run_id=summary_id, client=client, exp_id=exp_id)
    try:
        for b, init, seed in p.runs:
            results.rows.append(_one_run(p, results, b, init, seed))
            write_csv(results.rows, p.out / "results.csv")
    except BaseException:
        write_csv(results.rows, p.out / "results.csv")
        try:
            client.log_artifact(summary_id, str(p.out / "results.csv"))
        finally:
            client.set_terminated(summary_id, status="FAILED")
        raise
    return results


def report(plan: SweepPlan, results: SweepResults) -> dict:
    """Write ``results.csv``, ``summary.md`` (rows = budgets, columns = inits, test mean ± sample
    std over seeds) and ``label_efficiency.png`` into the plan's ``out_dir``, log the per-cell
    statistics and the three files to the MLflow summary run and finish it; returns
    :func:`sweep`'s result dict."""
    p, rows, client, summary_id = plan, results.rows, results.client, results.summary_run_id
    out = p.out
    write_csv(rows, out / "results.csv")
    data = "validation data, NOT held out" if p.eval_on_val else "test data"
    title = f"{p.bundle_name}: label efficiency ({data})"
    others = metric_names(rows, p.test_metric)[1:]
    table = summary_markdown(rows, p.budgets, p.init_labels, p.budget_key, p.metric_label, budget_to_x=p.budget_to_x,
                             budget_label=p.budget_label, title=title, metrics=others,
                             notes=p.notes + [f"Checkpoints selected on validation {p.selected_on}; the best validation "
                                              f"{p.metric} of each run is the `best_val_value` column of results.csv "
                                              "(not a test score)."])
    (out / "summary.md").write_text(table)
    png = plot(rows, p.budgets, p.init_labels, out / "label_efficiency.png", p.metric_label, p.budget_label,
               budget_to_x=p.budget_to_x, logx=p.logx, title=title, metrics=others)
    try:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        stats = [Metric(f"{key or p.test_metric}.{name}.{i}.{p.budget_key}{b}", float(v), now, 0)
                 for key in [None, *others]
                 for (b, i), (mean, std, n) in aggregate(rows, p.budgets, p.init_labels, key).items()
                 for name, v in (("mean", mean), ("std", std), ("n", n))]
        if stats:
            client.log_batch(summary_id, metrics=stats)
        for path in (out / "results.csv", out / "summary.md", Path(png)):
            client.log_artifact(summary_id, str(path))
    except BaseException:
        client.set_terminated(summary_id, status="FAILED")
        raise
    client.set_terminated(summary_id, status="FINISHED")
    for old in _runs_named(client, results.exp_id, SUMMARY_RUN):
        if old.info.run_id != summary_id and "sweep_superseded_by" not in old.data.tags:
            client.set_tag(old.info.run_id, "sweep_superseded_by", summary_id)
    print("\n" + table)
    print(f"results: {out / 'results.csv'}\nsummary: {out / 'summary.md'}\nplot:    {png}\nMLflow:  {p.uri} "
          f"(experiment {p.experiment!r}, summary run {summary_id})")
    if results.timings:
        print(f"{len(results.timings)} runs in {sum(results.timings):.1f} s")
    return {"rows": rows, "summary": table, "results_csv": str(out / "results.csv"), "summary_md": str(out / "summary.md"),
            "plot": png, "tracking_uri": p.uri, "experiment": p.experiment, "summary_run_id": summary_id,
            "metric": p.metric, "test_metric": p.test_metric, "budget_key": p.budget_key,
            "eval_on_validation_data": p.eval_on_val}


def sweep(bundle: str, **options: Any) -> dict:
    """Run ``bundle`` over ``budgets`` × ``inits`` × ``seeds``, report each run's test score:
    :func:`plan_sweep`, then (unless ``dry_run``) :func:`run_sweep` and :func:`report`. Returns
    ``{"rows": [...], "summary": markdown, "results_csv", "summary_md", "plot", "tracking_uri",
    "experiment", "summary_run_id", "metric", "test_metric", "budget_key", "eval_on_validation_data"}``
    (with ``dry_run``: ``rows`` empty and ``plan`` the planned (budget, init, seed) cells).

    Args:
        bundle: bundle name under ``bundles/`` or a path to a bundle folder.
        budget_key: config id of the label budget (``perc``, ``subset_ratio``, ``train_volumes``);
            default: the ``id`` of the bundle's ``label_budget`` declaration in ``configs/metadata.json``.
        budgets: budget values (list, or a JSON string such as ``"[0.01,0.1,1.0]"``); default: the
            declaration's ``sweep`` (when ``budget_key`` is the declared id).
        inits: ``{label: weight spec}`` (JSON string or dict; null = random), set as ``init_key``.
            Default ``{"random": null}``. A value may also be a dict of config overrides for that
            init, holding the weight spec under ``init_key`` (e.g. ``{"pretrained_encoder":
            "timm/tf_efficientnet_b0", "normalization": {...ImageNet mean/std...}}``).
        seeds: seeds; each sets every id in ``seed_key`` (a key or a list of keys; default: the
            declaration's ``seed_ids`` when ``budget_key`` is the declared id, else ``seed``).
        init_key: config id that takes the weight spec (default ``pretrained_encoder``).
        metric: the VALIDATION metric (MLflow history of the training run; default: the bundle's
            ``validate#key_metric``, the one its CheckpointSaver selects ``model.pt`` on). Its best
            value (max, or min with ``minimize``) goes to the secondary column ``best_val_value``.
        test_metric: the reported metric, computed by the ``evaluate`` run on the selected
            checkpoint (default: ``metric`` with ``val_`` → ``test_``, e.g. ``test_mean_iou``).
        out_dir: folder for results.csv, summary.md, label_efficiency.png, mlruns.db and runs/.
        overrides: extra config overrides for every run: a dict (``{"epochs": 20}``), and/or a list
            of config files merged after ``configs`` (``["smoke.json"]``).
        configs: the bundle's config files to run (default: the declaration's ``config`` when
            ``budget_key`` is not given, else ``["train.json"]``).
        evaluate: the config run after training on top of ``configs`` (default ``evaluate.json``);
            it loads the run's best-validation ``model.pt`` and evaluates the test data.
        eval_overrides: overrides (dict and/or config files) for the evaluate run only, e.g.
            ``{"validate#datalist": "$monai_ssl_ext.data.load_datalist('other.json', 'test')"}``.
        budget_label: x-axis label (default: the declaration's ``unit``, else ``budget_key``, or
            "x" with ``budget_to_x``).
        budget_to_x: ``{budget: x}`` to plot budgets as other numbers (e.g. labelled slices).
        logx: log-scale x axis.
        experiment: MLflow experiment (default ``<bundle>-label-efficiency``).
        skip_done: reuse finished runs (their ``label_efficiency.json``) with the same settings.
        dry_run: check everything and print the planned runs, run nothing.
        config_overrides: further ``--id value`` pairs, merged into ``overrides``
            (``--dataset_dir data/tools --epochs 20``).
    """
    plan = plan_sweep(bundle, **options)
    print(f"label-efficiency sweep: {plan.bundle_name}, {len(plan.runs)} runs ({len(plan.budgets)} budgets × "
          f"{len(plan.init_labels)} inits × {len(plan.seeds)} seeds), reported: {plan.test_metric} of "
          f"{Path(plan.evaluate).name} on the best-{plan.metric} checkpoint, MLflow {plan.uri} experiment "
          f"{plan.experiment!r}", flush=True)
    if options.get("dry_run", False):
        print(plan.describe())
        return {"rows": [], "plan": plan.runs, "tracking_uri": plan.uri, "experiment": plan.experiment,
                "metric": plan.metric, "test_metric": plan.test_metric, "budget_key": plan.budget_key,
                "budgets": plan.budgets, "seed_keys": plan.seed_keys, "configs": [Path(f).name for f in plan.config_files],
                "eval_on_validation_data": plan.eval_on_val}
    return report(plan, run_sweep(plan))


# the command line (fire) and help() show plan_sweep's options for sweep
sweep.__signature__ = inspect.signature(plan_sweep).replace(return_annotation=dict)  # type: ignore[attr-defined]


def _one_run(plan: SweepPlan, results: SweepResults, b: Any, init: str, seed: Any) -> dict:
    """Train one (budget, init, seed) cell, evaluate its best-validation checkpoint; its results.csv row."""
    c = SimpleNamespace(**vars(plan), client=results.client, exp_id=results.exp_id, summary_id=results.summary_run_id,
                        timings=results.timings)
    client, budget_key, metric, test_metric = c.client, c.budget_key, c.metric, c.test_metric
    name = _run_name(init, budget_key, b, seed)
    run_dir = _run_dir(c.out, init, budget_key, b, seed)
    x = _x_lookup(c.budget_to_x, b) if c.budget_to_x is not None else b
    signature = {"bundle": c.bundle_name, "init": init, "init_spec": c.specs[init],
                 "init_overrides": {k: repr(v) for k, v in c.init_extra[init].items()}, "budget_key": budget_key,
                 "budget": b, "seed": seed, "seed_keys": c.seed_keys, "val_metric": c.val_reported,
                 "test_metric": test_metric, "evaluate": [Path(f).name for f in c.eval_files],
                 "eval_overrides": {k: repr(v) for k, v in c.eval_pairs.items()},
                 "overrides": {k: repr(v) for k, v in c.pairs.items()},
                 "configs": [Path(f).name for f in c.config_files + c.extra_files]}
    done = run_dir / RESULT_FILE
    if c.skip_done and done.is_file():
        prev = json.loads(done.read_text())
        if prev.get("signature") == signature:
            print(f"--- {name}: done ({test_metric} = {prev['row']['test_value']}), skipped", flush=True)
            return {**prev["row"], "test_value": float(prev["row"]["test_value"]),
                    "best_val_value": float(prev["row"]["best_val_value"]), "x": x,
                    "metrics": {k: float(v) for k, v in (prev["row"].get("metrics") or {}).items()}}
        print(f"--- {name}: settings changed since the finished run, running again", flush=True)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_pairs = {**c.pairs, **c.init_extra[init]}
    run_pairs.update({budget_key: b, c.init_key: c.specs[init], **{k: seed for k in c.seed_keys}})
    # an expression, so that MONAI's tracking patch can build save_execute_config from it
    run_pairs.update({"output_dir": "$" + repr(str(run_dir)), "tracking_uri": c.uri, "experiment_name": c.experiment,
                      "run_name": name})
    if c.set_resume:
        run_pairs["resume"] = False
    params = {"sweep_init": init, "sweep_init_spec": c.specs[init], "sweep_budget_key": budget_key,
              "sweep_budget": b, "sweep_seed": seed, "sweep_val_metric": c.val_reported,
              "sweep_test_metric": test_metric, "sweep_evaluate": Path(c.evaluate).name}
    if c.budget_to_x is not None:
        params["sweep_x"] = x
    params.update({f"sweep_init.{k}": json.dumps(v) for k, v in c.init_extra[init].items()})
    t0 = time.time()
    run_id = _open_run(client, c.exp_id, name, params, tags={"mlflow.parentRunId": c.summary_id})
    try:
        # 1. train: validation every val_interval, CheckpointSaver keeps the best-validation model.pt
        _run_workflow(c.config_files + c.extra_files, c.bundle_dir, "mlflow", run_pairs)
        best_val = _best_from_history(client, run_id, metric, c.minimize)
        # 2. test: the evaluate config on the same output_dir loads that model.pt
        eval_pairs = {k: v for k, v in run_pairs.items() if k not in ("tracking_uri", "experiment_name", "run_name")}
        eval_pairs.update(c.eval_pairs)
        wf = _run_workflow(c.eval_files, c.bundle_dir, None, eval_pairs)
        metrics = _evaluator_metrics(wf)
        if test_metric not in metrics:
            raise SweepError(f"the evaluate run ({Path(c.evaluate).name}) computed no metric {test_metric!r} "
                             f"(it computed {sorted(metrics)}); pass --test_metric with one of them")
        value = float(metrics[test_metric])
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        logged = [Metric(_test_name(k), float(v), now, 0) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)]
        logged.append(Metric(f"best_{metric}", best_val, now, 0))
        client.log_batch(run_id, metrics=logged)
        eval_dir = wf.parser.ref_resolver.resolved_content.get("eval_dir")
        if isinstance(eval_dir, str) and os.path.isdir(eval_dir):
            client.log_artifacts(run_id, eval_dir, artifact_path="eval")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    if client.get_run(run_id).info.status != "FINISHED":
        client.set_terminated(run_id, status="FINISHED")
    for old in _runs_named(client, c.exp_id, name):
        if old.info.run_id != run_id and "sweep_superseded_by" not in old.data.tags:
            client.set_tag(old.info.run_id, "sweep_superseded_by", run_id)
    row = {"init": init, "budget": b, "x": x, "seed": seed, "test_metric": test_metric, "test_value": value,
           "val_metric": c.val_reported, "best_val_value": best_val, "run_id": run_id, "run_name": name,
           "output_dir": str(run_dir),
           "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    done.parent.mkdir(parents=True, exist_ok=True)
    from monai_ssl_ext.io import atomic_write_text

    atomic_write_text(done, json.dumps({"signature": signature, "row": row}, indent=1, default=str))
    c.timings.append(time.time() - t0)
    print(f"--- {name}: {test_metric} = {_fmt(value)} (best {metric} = {_fmt(best_val)}; {c.timings[-1]:.1f} s)",
          flush=True)
    return row

