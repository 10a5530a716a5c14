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


class TrackParams:
    """Send ``params`` to every ``MLFlowHandler`` attached to the engine, once the run is open
    (first iteration). Does nothing when tracking is off.

    Args:
        params: dict of parameters (nested dicts are flattened with dots; a ``LoadReport`` is
            expanded to its header).
    """

    def __init__(self, params: dict):
        self.params = params

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED(once=1), self)

    def __call__(self, engine: Engine) -> None:
        from monai.handlers import MLFlowHandler

        flat = flatten_params(self.params)
        for handlers in engine._event_handlers.values():
            for fn, *_ in handlers:
                handler = getattr(fn, "__self__", None)
                if isinstance(handler, MLFlowHandler) and handler.cur_run is not None:
                    handler._delete_exist_param_in_dict(flat)
                    if flat:
                        handler._log_params(flat)
                    return
