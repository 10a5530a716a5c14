"""Log a run's parameters (hyperparameters, encoder header) to the MLflow run that MONAI's
``--tracking mlflow`` opens."""

from __future__ import annotations

import json

from ignite.engine import Engine, Events

__all__ = ["TrackParams", "flatten_params"]


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


def _mlflow_handlers(engine: Engine) -> list:
    """The MONAI ``MLFlowHandler`` instances attached to ``engine``. Ignite has no public listing
    of an engine's handlers: this is the one place that reads ``Engine._event_handlers``."""
    from monai.handlers import MLFlowHandler

    found = []
    for fn, *_ in engine._event_handlers.get(Events.STARTED, []):
        handler = getattr(fn, "__self__", None)
        if isinstance(handler, MLFlowHandler) and handler not in found:
            found.append(handler)
    return found


class TrackParams:
    """Hand ``params`` and ``artifacts`` to the ``MLFlowHandler`` that MONAI's ``--tracking mlflow``
    attaches to the same engine, through that handler's own arguments: ``experiment_param``
    (logged when its run starts) and ``artifacts`` (files logged when the run completes). Does
    nothing when tracking is off.

    Args:
        params: dict of parameters (nested dicts are flattened with dots; a ``LoadReport`` is
            expanded to its header).
        artifacts: files (or folders) to log at the end of the run, e.g. the exported
            ``encoder.pt`` and the best model; missing ones are skipped.
    """

    def __init__(self, params: dict, artifacts: list[str] | tuple[str, ...] = ()):
        self.params = params
        self.artifacts = tuple(str(a) for a in ([artifacts] if isinstance(artifacts, str) else artifacts))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        flat = flatten_params(self.params)
        for handler in _mlflow_handlers(engine):
            handler.artifacts = tuple(a for a in handler.artifacts if a) + self.artifacts
            if handler.cur_run is None:  # its start() (after this handler) logs them
                handler.experiment_param = {**(handler.experiment_param or {}), **flat}
            else:  # attached before this handler: log through the public client
                from mlflow.entities import Param

                logged = handler.client.get_run(handler.cur_run.info.run_id).data.params
                new = [Param(k, v) for k, v in flat.items() if k not in logged]
                if new:
                    handler.client.log_batch(handler.cur_run.info.run_id, params=new)
