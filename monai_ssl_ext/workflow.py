"""Run a bundle's configs in-process, the way ``python -m monai.bundle run`` does, keeping what
the callers need: the training loss of every iteration, the parser, the ``output_dir`` and the
evaluator's final metrics.

The one runner of the repository: ``scripts/quickstart.py``, the label-efficiency sweep
(:mod:`monai_ssl_ext.sweep`) and the test harness (``tests/bundle_runner.py``, also under
``torchrun`` for the multi-GPU configs) all call :func:`run_bundle`.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BundleRun", "command_line", "config_dir", "evaluator_metrics", "run_bundle", "smoke_files", "smoke_settings"]

#: merged after the configs when ``smoke=True``
SMOKE_CONFIG = "smoke.json"


def smoke_files(bundle_dir: str | os.PathLike, configs: list[str]) -> list[str]:
    """The tiny settings merged after ``configs`` in a smoke run: ``smoke.json``, then for each
    config ``X.json`` that has one, ``smoke_X.json`` (what a variant such as ``train_3d.json`` or
    ``train_vit.json`` needs beyond smoke.json: a 3D or ViT trunk small enough, its demo data)."""
    cfg = Path(bundle_dir) / "configs"
    extra = [cfg / f"smoke_{Path(c).name}" for c in configs]
    return [str(cfg / SMOKE_CONFIG)] + [str(p) for p in extra if p.is_file()]


def smoke_settings(bundle_dir: str | os.PathLike, configs: list[str]) -> dict:
    """The merged smoke files of :func:`smoke_files` as one dict (later files win), e.g. the
    ``demo_data`` kind and ``smoke_outputs`` the harness reads."""
    merged: dict = {}
    for f in smoke_files(bundle_dir, configs):
        merged.update(json.loads(Path(f).read_text()))
    return merged


@dataclass
class BundleRun:
    """What :func:`run_bundle` returns (also readable as a mapping: ``res["losses"]``)."""

    #: training loss per iteration of ``train#trainer`` (empty when the configs train nothing)
    losses: list[float] = field(default_factory=list)
    #: the resolved ``output_dir`` (None where the configs define none)
    output_dir: str | None = None
    #: the workflow's ``ConfigParser``
    parser: Any = None
    #: the ``ConfigWorkflow`` itself (initialised, run and finalised)
    workflow: Any = None
    #: final ``state.metrics`` of the evaluator the configs ran (None where there is not exactly one)
    metrics: dict | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def keys(self):
        return ("losses", "output_dir", "parser", "workflow", "metrics")


def config_dir() -> str:
    """The absolute folder of the running bundle's configs: the folder of the first config file the
    ``ConfigWorkflow`` evaluating this call read (the folder MONAI takes ``metadata.json`` and
    ``logging.conf`` from). How a config reaches files shipped in its own ``configs/`` (e.g.
    ``"$monai_ssl_ext.workflow.config_dir() + '/datalists'"``) wherever the bundle was copied,
    downloaded or unzipped, independently of ``bundle_root`` and of the folder it runs from.

    Raises:
        RuntimeError: not called while a ``ConfigWorkflow`` evaluates a config (e.g. a bare
            ``ConfigParser``): set the id that uses it explicitly there.
    """
    from .overrides import _running_workflow

    wf = _running_workflow()
    if wf is None:
        raise RuntimeError("config_dir() is only known while a ConfigWorkflow (python -m monai.bundle run) "
                           "evaluates the config: set the id that uses it (e.g. `datalist_dir`) explicitly.")
    return str(Path(wf.config_root_path).resolve())


def config_path(bundle_dir: str | os.PathLike, name: str | os.PathLike) -> str:
    """``name`` in the bundle's ``configs/``, else ``name`` as a path."""
    cand = Path(bundle_dir) / "configs" / name
    return str(cand if cand.is_file() or not Path(name).is_file() else Path(name).resolve())


def _quote(value: Any) -> str:
    """A shell word that ``python -m monai.bundle run`` (fire) parses back to ``value``."""
    text = value if isinstance(value, str) else repr(value)
    if isinstance(value, str) and "'" in text:
        return '"' + "".join("\\" + c if c in '\\"$`' else c for c in text) + '"'
    return shlex.quote(text)


def command_line(files: list[str], tracking: Any = None, overrides: dict | None = None) -> str:
    """The ``python -m monai.bundle run`` command equivalent to a :func:`run_bundle` call."""
    return (f"python -m monai.bundle run --config_file \"{files}\"" + (f" --tracking {tracking}" if tracking else "")
            + " " + " ".join(f"--{k} {_quote(v)}" for k, v in (overrides or {}).items())).rstrip()


def evaluator_metrics(parser) -> dict:
    """Final metrics of the evaluator a run resolved: the one under ``evaluator`` or
    ``validate#evaluator``, else the only one; ``LookupError`` when that does not tell."""
    from monai.engines import Evaluator

    resolved = parser.ref_resolver.resolved_content  # ids use "::" inside the resolver
    for engine_id in ("evaluator", "validate::evaluator"):
        if isinstance(resolved.get(engine_id), Evaluator):
            return dict(resolved[engine_id].state.metrics)
    engines = [v for v in resolved.values() if isinstance(v, Evaluator)]
    if len(engines) == 1:
        return dict(engines[0].state.metrics)
    raise LookupError(
        f"the evaluate config ran {len(engines)} evaluators and none under the ids 'evaluator' or 'validate#evaluator'"
    )


def run_bundle(
    bundle_dir: str | os.PathLike,
    configs: str | list[str] = ("train.json",),
    overrides: dict | None = None,
    *,
    tracking: str | dict | None = None,
    smoke: bool = False,
    record_loss: bool = True,
    echo: bool = False,
    workflow_type: str | None = None,
    **more_overrides: Any,
) -> BundleRun:
    """Run ``configs`` of the bundle at ``bundle_dir`` (merged in order) with a MONAI
    ``ConfigWorkflow``: initialize, run, finalize — what ``python -m monai.bundle run`` does.

    Args:
        bundle_dir: the bundle folder (with ``configs/``).
        configs: config file names in ``configs/`` (or paths), merged in order.
        overrides: ``{id: value}`` config overrides (``bundle_root``, ``dataset_dir``, ``epochs``,
            ...); ``finalize=[]`` keeps the process group alive between torchrun jobs.
        tracking: ``"mlflow"`` (or a settings dict) for MONAI's experiment tracking.
        smoke: merge the bundle's ``smoke.json`` (and ``smoke_<config>.json`` of each config that
            has one, :func:`smoke_files`) last: the test harness's tiny settings.
        record_loss: record ``train#trainer``'s loss every iteration when the configs train.
        echo: print the equivalent ``python -m monai.bundle run`` command first.
        workflow_type: ``ConfigWorkflow``'s property set (None: metadata only).
        more_overrides: more ``id=value`` overrides.

    ``metadata.json`` and ``logging.conf`` next to the configs are used when they exist.
    """
    from monai.bundle import ConfigWorkflow

    cfg = Path(bundle_dir) / "configs"
    names = [configs] if isinstance(configs, (str, os.PathLike)) else list(configs)
    files = [config_path(bundle_dir, c) for c in names] + (smoke_files(bundle_dir, names) if smoke else [])
    pairs = {**(overrides or {}), **more_overrides}
    if echo:
        print(f"\n=== {command_line(files, tracking, pairs)}\n", flush=True)
    meta, logging_file = cfg / "metadata.json", cfg / "logging.conf"
    wf = ConfigWorkflow(
        config_file=files,
        meta_file=str(meta) if meta.is_file() else None,
        logging_file=str(logging_file) if logging_file.is_file() else None,
        workflow_type=workflow_type,
        tracking=tracking,
        **pairs,
    )
    wf.initialize()
    losses: list[float] = []
    run_expr = json.dumps(wf.parser.get(wf.run_id)).replace("::", "#")
    if record_loss and "train#trainer" in run_expr:  # only configs that train: evaluate.json must not build a trainer
        from ignite.engine import Events

        trainer = wf.parser.get_parsed_content("train#trainer")

        def record(engine):
            out = engine.state.output
            out = out[0] if isinstance(out, (list, tuple)) else out
            losses.append(float(out["loss"] if isinstance(out, dict) else out))

        trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    output_dir = wf.parser.get_parsed_content("output_dir") if "output_dir" in wf.parser else None
    wf.run()
    wf.finalize()
    try:
        metrics = evaluator_metrics(wf.parser)
    except LookupError:
        metrics = None
    return BundleRun(losses=losses, output_dir=output_dir, parser=wf.parser, workflow=wf, metrics=metrics)
