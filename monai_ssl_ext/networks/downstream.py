"""Downstream evaluation of a pretrained encoder: the linear probe of the SimCLR surgical-video
recipe (frozen trunk + ``nn.Linear``) and the small helpers its bundle config uses.

* :class:`LinearProbe` -- ``classifier(backbone(x))`` where ``backbone`` is a
  :class:`~monai_ssl_ext.networks.backbones.Backbone` (pooled trunk features, never a projection
  head: the source's EfficientNet probe saw the SimCLR projection output). The trunk is frozen:
  no gradients, and it stays in eval mode when the probe is put in training mode, so BatchNorm
  running statistics are not updated.
* :func:`encoder_normalization` -- the input normalisation to finetune with: the one recorded in
  the encoder header (what pretraining used), else the config's.
* :func:`probe_datalist` -- a labelled frame list (from a ``path,label`` CSV), optionally cut to a
  class-balanced label budget (1% = 200 / 10% = 2000 frames per class / 100%). Each split's labels
  come from its own list (the source read test labels from the training list).
* :class:`RunSignature` -- checkpointable settings, so that resuming a probe written with another
  label budget or encoder fails instead of silently continuing it.
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
from .backbones import Backbone

__all__ = [
    "BestCheckpointLoader",
    "ClassificationReport",
    "LinearProbe",
    "RunSignature",
    "encoder_normalization",
    "probe_datalist",
    "stack_from_engine",
]

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


class LinearProbe(nn.Module):
    """A linear classifier on a frozen encoder: ``classifier(backbone(x))``.

    Args:
        backbone: the pretrained trunk; ``backbone(x)`` gives pooled ``(B, feature_dim)`` features.
        num_classes: number of output classes.

    The backbone's parameters get ``requires_grad=False``, its forward runs under
    ``torch.no_grad()``, and :meth:`train` leaves it in eval mode (BatchNorm uses and keeps its
    running statistics, dropout is off). Only ``classifier`` is trainable: give the optimizer
    ``probe.classifier.parameters()`` (or :meth:`trainable_parameters`).
    """

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise TypeError(f"LinearProbe: backbone must be a monai_ssl_ext Backbone, got {type(backbone).__name__}")
        if int(num_classes) < 1:
            raise ValueError(f"LinearProbe: num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.classifier = nn.Linear(backbone.feature_dim, int(num_classes))
        self.backbone.eval()

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.eval()  # frozen: no BatchNorm statistic updates, no dropout
        return self

    def trainable_parameters(self):
        return self.classifier.parameters()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features ``(B, feature_dim)``, without gradients."""
        if self.backbone.training:  # someone called backbone.train() directly
            self.backbone.eval()
        with torch.no_grad():
            return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def encoder_normalization(backbone: nn.Module, normalization: dict | None = None, channels: int | None = None) -> dict:
    """The input normalisation ``{"mean": [...], "std": [...]}`` for finetuning ``backbone``.

    When the backbone was loaded from an encoder file or timm weights
    (:func:`~monai_ssl_ext.encoders.pretrained_backbone` keeps the header in
    ``backbone.load_report``) and the header records a normalisation, that one is used, so the
    finetuning inputs match the pretraining inputs; a different ``normalization`` from the config
    is reported as a warning. Otherwise (random trunk, or an encoder exported without one) the
    config's ``normalization`` is used. A single mean/std is repeated to ``channels`` channels.
    """
    report = getattr(backbone, "load_report", None)
    header = (getattr(report, "header", None) or {}).get("normalization") or {}
    if header.get("mean") and header.get("std"):
        chosen = {"mean": [float(v) for v in header["mean"]], "std": [float(v) for v in header["std"]]}
        from ..encoders import same_normalization  # encoders imports this package

        if normalization and not same_normalization(chosen, normalization):
            logger.warning(
                f"the config's normalization {normalization} differs from the encoder header's {chosen} "
                f"({getattr(report, 'source', '?')}): using the header's, as in pretraining"
            )
        else:
            logger.info(f"input normalization from the encoder header: {chosen}")
    elif normalization:
        chosen = {"mean": [float(v) for v in normalization["mean"]], "std": [float(v) for v in normalization["std"]]}
        logger.info(f"input normalization from the config (no encoder header): {chosen}")
    else:
        raise ValueError(
            "no input normalization: the encoder header records none and the config's `normalization` is null"
        )
    if channels is not None:
        for k in ("mean", "std"):
            if len(chosen[k]) == 1 and channels > 1:
                chosen[k] = chosen[k] * int(channels)
            elif len(chosen[k]) != channels:
                raise ValueError(f"normalization {k} has {len(chosen[k])} values for {channels} input channels")
    return chosen


def probe_datalist(
    source: str | os.PathLike | Sequence[dict],
    num_classes: int | None = None,
    budget: str | int | None = None,
    seed: int = 42,
    check_files: bool = True,
) -> list[dict]:
    """Labelled items ``{"image", "label"}`` of one split, for training or evaluating a probe.

    Args:
        source: a ``path,label`` frame CSV (read with
            :func:`~monai_ssl_ext.data.read_frame_csv`: the labels are that file's own) or a list
            of such items.
        num_classes: labels must lie in ``[0, num_classes)``; unlabelled frames (``-1``) are dropped.
        budget: a label budget for :func:`~monai_ssl_ext.data.budget_subset` (``"1%"`` = 200,
            ``"10%"`` = 2000 per class, ``"100%"``/None = all), class-balanced with ``seed``.
        check_files: check that every listed image exists.
    """
    from ..data import budget_subset, read_frame_csv

    name = str(source) if isinstance(source, (str, os.PathLike)) else "<items>"
    items = read_frame_csv(source, check_files=check_files) if isinstance(source, (str, os.PathLike)) else list(source)
    items = [d for d in items if d["label"] != -1]
    if not items:
        raise ValueError(f"{name}: no labelled items (every label is -1)")
    if num_classes is not None:
        bad = [d for d in items if not (0 <= int(d["label"]) < num_classes)]
        if bad:
            raise ValueError(
                f"{name}: {len(bad)} item(s) have labels outside 0..{num_classes - 1}, e.g. "
                f"{bad[0]['image']!r} with label {bad[0]['label']} (config `num_classes`)"
            )
    if budget is not None:
        items = budget_subset(items, budget, seed=seed)
    counts: dict[int, int] = {}
    for d in items:
        counts[d["label"]] = counts.get(d["label"], 0) + 1
    logger.info(f"{name}: {len(items)} items, per class {dict(sorted(counts.items()))}")
    return items


class RunSignature:
    """Settings stored in a resumable checkpoint and compared when it is loaded: resuming a run
    that was written with another label budget, seed or encoder raises instead of continuing it.

    Args:
        kwargs: the settings, e.g. ``label_budget="1%", pretrained_encoder=".../encoder.pt"``.
    """

    def __init__(self, **kwargs: Any):
        self.settings = {k: json.dumps(v, sort_keys=True, default=str) for k, v in kwargs.items()}

    def state_dict(self) -> dict:
        return dict(self.settings)

    def load_state_dict(self, state: dict) -> None:
        diff = {k: (state.get(k), v) for k, v in self.settings.items() if state.get(k) != v}
        if diff:
            text = ", ".join(f"{k}: checkpoint {old} vs now {new}" for k, (old, new) in diff.items())
            raise RuntimeError(
                f"the checkpoint to resume was written with other settings ({text}): "
                "set `resume` to false, or use another output folder"
            )


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
