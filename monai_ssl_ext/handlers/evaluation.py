"""Evaluation handlers for a classifier's test run, and the metric output transform they use.

* :func:`stack_from_engine` -- the metric ``output_transform`` for ignite classification metrics
  on MONAI engines whose outputs are decollated.
* :class:`BestCheckpointLoader` and :class:`ClassificationReport` -- ignite handlers for the test
  run: load the best-by-validation checkpoint (if one was written), then write accuracy,
  per-class accuracy and the confusion matrix as JSON.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..io import atomic_write_text

__all__ = ["BestCheckpointLoader", "ClassificationReport", "stack_from_engine"]

logger = logging.getLogger("monai_ssl_ext.downstream")


def stack_from_engine(keys: Sequence[str]):
    """Like ``monai.handlers.from_engine(keys)`` for metrics that want batch tensors (ignite's
    ``Accuracy``/``ConfusionMatrix``): returns ``(pred (B, C), label (B,))``-style stacked tensors
    both from a batch output dict (``decollate=False``) and from a decollated list of dicts."""
    keys = [keys] if isinstance(keys, str) else list(keys)

    def _transform(output):
        if isinstance(output, dict):
            out = [torch.as_tensor(output[k]) for k in keys]
        else:
            out = [torch.stack([torch.as_tensor(item[k]) for item in output]) for k in keys]
        return tuple(out) if len(out) > 1 else out[0]

    return _transform


class BestCheckpointLoader:
    """Before an evaluator runs, load ``path`` (a ``CheckpointSaver`` file) into ``network``;
    when the file does not exist (no validation ran), keep the current weights and say so.

    Args:
        path: the checkpoint, e.g. ``model_best_val_acc.pt``.
        network: the module to load into.
        key: the ``save_dict`` key the network was saved under.
        required: raise instead of warning when the file is missing.
    """

    def __init__(self, path: str, network: nn.Module, key: str = "model", required: bool = False):
        self.path, self.network, self.key, self.required = path, network, key, required

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine) -> None:
        if not os.path.isfile(self.path):
            if self.required:
                raise FileNotFoundError(f"best checkpoint {self.path} does not exist")
            logger.warning(f"no best checkpoint at {self.path}: evaluating the final weights")
            return
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if self.key in state and isinstance(state[self.key], dict):
            state = state[self.key]
        self.network.load_state_dict(state)
        logger.info(f"loaded the best checkpoint {self.path}")


class ClassificationReport:
    """When an evaluator completes, write its classification results to ``path`` (JSON):
    ``accuracy``, ``per_class_accuracy`` (recall per true class; null for absent classes),
    ``confusion_matrix`` (rows: true class, columns: prediction), ``class_counts``, ``n`` and
    ``extra`` (e.g. the label budget and the encoder).

    Args:
        path: output JSON file.
        accuracy_key / confusion_key: names of the ignite ``Accuracy`` and ``ConfusionMatrix``
            metrics in ``engine.state.metrics`` (the confusion matrix is optional).
        class_names: optional names, stored alongside.
        extra: more entries for the file.
    """

    def __init__(
        self,
        path: str,
        accuracy_key: str = "test_acc",
        confusion_key: str | None = "test_confusion",
        class_names: Sequence[str] | None = None,
        extra: dict | None = None,
    ):
        self.path, self.accuracy_key, self.confusion_key = path, accuracy_key, confusion_key
        self.class_names = list(class_names) if class_names is not None else None
        self.extra = dict(extra or {})

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        from ..distributed import get_rank

        if get_rank() != 0:
            return
        metrics = engine.state.metrics
        out: dict[str, Any] = {"accuracy": float(metrics[self.accuracy_key])}
        cm = metrics.get(self.confusion_key) if self.confusion_key else None
        if cm is not None:
            cm = torch.as_tensor(cm).to(torch.int64).cpu()
            rows = cm.sum(dim=1)
            out["per_class_accuracy"] = [
                (float(cm[i, i]) / float(rows[i])) if rows[i] > 0 else None for i in range(cm.shape[0])
            ]
            out["confusion_matrix"] = cm.tolist()
            out["class_counts"] = rows.tolist()
            out["n"] = int(rows.sum())
        if self.class_names is not None:
            out["class_names"] = self.class_names
        out["extra"] = json.loads(json.dumps(self.extra, default=str))
        atomic_write_text(self.path, json.dumps(out, indent=2))
        logger.info(f"accuracy {out['accuracy']:.4f} written to {self.path}")
