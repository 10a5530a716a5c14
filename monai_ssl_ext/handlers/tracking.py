"""Log a run's parameters (hyperparameters, encoder header) to the MLflow run that MONAI's
``--tracking mlflow`` opens, name that run after the bundle and its key settings
(:func:`run_name`), and link a finetuning run to the pretraining run that exported its encoder
(the encoder header's ``mlflow_run_id``, written by :class:`EncoderExport` from
:func:`mlflow_run_id`, becomes the tag ``pretraining_run_id``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ignite.engine import Engine, Events

__all__ = ["TrackParams", "config_params", "flatten_params", "mlflow_run_id", "run_name"]

# root ids that are not run parameters: the workflow's own lists and the test harness's keys
NOT_PARAMS = {"imports", "initialize", "run", "finalize", "demo_data", "smoke_outputs"}
MAX_ITEMS = 16  # a list / dict longer than this is data, not a parameter
MLFLOW_BATCH = 100  # MLflow's limit of params per log_batch call
#: root ids that name a run, in this order, where the config has them and they are not null
RUN_NAME_IDS = ("backbone", "pretrained_encoder", "init_weights", "seed")
#: the tag of a finetuning run that names the MLflow run which exported its encoder
LINEAGE_TAG = "pretraining_run_id"
_SCALARS = (int, float, str, bool, type(None))


def _is_param_value(value, depth: int = 0) -> bool:
    """A scalar (number, string, bool, null) or a short list / dict of scalars (one level of short
    lists inside a dict, e.g. ``{"mean": [...], "std": [...]}``)."""
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, os.PathLike):
        return True
    if depth >= 2:
        return False
    if isinstance(value, (list, tuple)):
        return len(value) <= MAX_ITEMS and all(_is_param_value(v, depth + 1) and not isinstance(v, (list, tuple, dict))
                                               for v in value)
    if isinstance(value, dict):
        return len(value) <= MAX_ITEMS and all(isinstance(k, str) and _is_param_value(v, depth + 1)
                                               for k, v in value.items())
    return False


def _plain(value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _has_component(raw) -> bool:
    if isinstance(raw, dict):
        return "_target_" in raw or any(_has_component(v) for v in raw.values())
    if isinstance(raw, list):
        return any(_has_component(v) for v in raw)
    return False


def _is_expression(raw) -> bool:
    return isinstance(raw, str) and raw.startswith("$")


def _has_reference(raw) -> bool:
    if isinstance(raw, str):
        return raw.startswith(("$", "@", "%"))
    if isinstance(raw, dict):
        return any(_has_reference(v) for v in raw.values())
    if isinstance(raw, list):
        return any(_has_reference(v) for v in raw)
    return False


def config_params(parser) -> dict:
    """The run parameters of a parsed bundle config: every root id whose value is a scalar or a
    short list / dict of scalars (paths included). Components (``_target_``) are skipped; so are
    ``$`` expressions that produce objects (a device, a network) and expressions the run never
    evaluated (evaluating them here could have side effects)."""
    raw_config = parser.get() or {}
    resolved = getattr(parser.ref_resolver, "resolved_content", {})
    out: dict = {}
    for key, raw in raw_config.items():
        if not isinstance(key, str) or key in NOT_PARAMS or "#" in key or _has_component(raw):
            continue
        if not _has_reference(raw):
            value = raw
        elif key in resolved:
            value = resolved[key]
        elif _is_expression(raw):
            continue
        else:  # a literal that references other ids (e.g. "@epochs", {"mean": "@mean"})
            try:
                value = parser.get_parsed_content(key)
            except Exception:
                continue
        if _is_param_value(value):
            out[key] = _plain(value)
    return out


def _running_parser():
    """The ``ConfigParser`` of the running ``ConfigWorkflow`` (``monai_ssl_ext.overrides``), or else
    the ``ConfigParser`` whose ``get_parsed_content`` is instantiating this handler."""
    from monai.bundle import ConfigParser

    from monai_ssl_ext.overrides import _running_workflow, caller_of_type

    workflow = _running_workflow()
    return workflow.parser if workflow is not None else caller_of_type(ConfigParser)


def flatten_params(params: dict, prefix: str = "") -> dict[str, str]:
    """Nested dict → flat ``{"a.b": "value"}`` with values rendered as short strings."""
    out: dict[str, str] = {}
    for k, v in (params or {}).items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_params(v, f"{name}."))
        elif hasattr(v, "params"):  # a LoadReport
            out.update(flatten_params(v.params(), f"{name}."))
        else:
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            out[name] = text[:500]
    return out


def attached(engine: Engine, cls) -> list[tuple]:
    """``(event, bound method, handler)`` for every method of a ``cls`` instance registered on
    ``engine``. Ignite has no public listing of an engine's handlers: this is the one place that
    reads ``Engine._event_handlers``."""
    found = []
    for event, entries in list(getattr(engine, "_event_handlers", {}).items()):  # none on a stand-in engine
        for fn, *_ in entries:
            handler = getattr(fn, "__self__", None)
            if isinstance(handler, cls):
                found.append((event, fn, handler))
    return found


def _mlflow_handlers(engine: Engine) -> list:
    """The MONAI ``MLFlowHandler`` instances attached to ``engine`` (at STARTED)."""
    from monai.handlers import MLFlowHandler

    found = []
    for event, _, handler in attached(engine, MLFlowHandler):
        if event == Events.STARTED and handler not in found:
            found.append(handler)
    return found


def mlflow_run_id(engine: Engine) -> str | None:
    """The id of the MLflow run the engine's ``MLFlowHandler`` records into (None without tracking,
    or before the run started)."""
    for handler in _mlflow_handlers(engine):
        if handler.cur_run is not None:
            return handler.cur_run.info.run_id
    return None


def _short(value) -> str:
    """A setting as a run-name word: an exported encoder by the run folder it came from
    (``runs/byol_acdc/models/encoder.pt`` -> ``byol_acdc``), another path by its file name."""
    text = str(value)
    path = Path(text)
    if text.endswith(".pt") and path.parent.name == "models" and path.parent.parent.name:
        return path.parent.parent.name
    return path.name if os.sep in text and not text.startswith("timm/") else text


def run_name(parser) -> str:
    """``<experiment_name> <id>=<value> ...`` for the :data:`RUN_NAME_IDS` the config sets (and the
    label budget id its metadata declares), e.g. ``unet_acdc backbone=timm/resnet50
    pretrained_encoder=byol_acdc subset_ratio=0.01 seed=13``."""
    ids = list(RUN_NAME_IDS)
    budget = (parser.get("_meta_", {}) or {}).get("label_budget", {}) or {}
    if budget.get("id"):
        ids.insert(-1, budget["id"])
    words = [str(parser.get_parsed_content("experiment_name")) if "experiment_name" in parser else "run"]
    for key in ids:
        if key in parser:
            value = parser.get_parsed_content(key)
            if value is not None:
                words.append(f"{key}={_short(value)}")
    return " ".join(words)[:250]


class TrackParams:
    """Hand the run's parameters and ``artifacts`` to the ``MLFlowHandler`` that MONAI's
    ``--tracking mlflow`` attaches to the same engine, through that handler's own arguments:
    ``experiment_param`` (logged when its run starts) and ``artifacts`` (files logged when the
    run completes). Does nothing when tracking is off.

    The parameters are derived from the config (:func:`config_params`: every root id with a
    scalar or short list / dict value, read from the running ``ConfigWorkflow``'s parser at
    STARTED) plus ``params``, what the config passes explicitly (e.g. ``@encoder_report``, a
    count of training items); an explicit key wins over a derived one.

    Args:
        params: dict of extra parameters (nested dicts are flattened with dots; a ``LoadReport`` is
            expanded to its header).
        artifacts: files (or folders) to log at the end of the run, e.g. the exported
            ``encoder.pt`` and the best model; missing ones are skipped.
        derive: False logs ``params`` only.
    """

    def __init__(self, params: dict | None = None, artifacts: list[str] | tuple[str, ...] = (), derive: bool = True):
        self.params = dict(params or {})
        self.artifacts = tuple(str(a) for a in ([artifacts] if isinstance(artifacts, str) else artifacts))
        self.derive = derive
        self.parser = _running_parser() if derive else None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def all_params(self) -> dict[str, str]:
        """The flat ``{name: text}`` parameters this handler logs."""
        parser = self.parser if self.parser is not None or not self.derive else _running_parser()
        derived = config_params(parser) if parser is not None else {}
        return flatten_params({**derived, **self.params})

    def __call__(self, engine: Engine) -> None:
        handlers = _mlflow_handlers(engine)
        if not handlers:
            return
        flat = self.all_params()
        parser = self.parser if self.parser is not None else _running_parser()
        parent = next((v for k, v in flat.items() if k.endswith(".mlflow_run_id")), None)
        for handler in handlers:
            handler.artifacts = tuple(a for a in handler.artifacts if a) + self.artifacts
            if handler.cur_run is None and handler.run_name is None and parser is not None:
                handler.run_name = run_name(parser)
            if parent:  # lineage: the pretraining run whose encoder this run loaded
                engine.add_event_handler(Events.STARTED, _tag_later(handler, LINEAGE_TAG, parent))
            if handler.cur_run is None:  # its start() (after this handler) logs one batch of them
                given = dict(handler.experiment_param or {})
                room = max(MLFLOW_BATCH - len(given), 0)
                names = [k for k in flat if k not in given]
                handler.experiment_param = {**given, **{k: flat[k] for k in names[:room]}}
                rest = {k: flat[k] for k in names[room:]}
                if rest:  # handlers added while STARTED fires run after the MLFlowHandler's start()
                    engine.add_event_handler(Events.STARTED, _log_later(handler, rest))
            else:  # attached before this handler: log through the public client
                _log_params(handler, flat)


def _log_params(handler, flat: dict[str, str]) -> None:
    from mlflow.entities import Param

    if handler.cur_run is None:
        return
    run_id = handler.cur_run.info.run_id
    logged = handler.client.get_run(run_id).data.params
    new = [Param(k, v) for k, v in flat.items() if k not in logged]
    for i in range(0, len(new), MLFLOW_BATCH):
        handler.client.log_batch(run_id, params=new[i:i + MLFLOW_BATCH])


def _log_later(handler, flat: dict[str, str]):
    done = []

    def log(engine: Engine) -> None:
        if not done:
            done.append(True)
            _log_params(handler, flat)

    return log


def _tag_later(handler, key: str, value: str):
    """Set a tag on the handler's run once it exists (its start() may run after this handler)."""
    done = []

    def tag(engine: Engine) -> None:
        if not done and handler.cur_run is not None:
            done.append(True)
            handler.client.set_tag(handler.cur_run.info.run_id, key, value)

    return tag
