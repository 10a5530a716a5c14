"""Handlers of a classification bundle (SSL4GIE Hyperkvasir):

* :func:`key_metric_value` -- the ``step_transform`` that steps ``ReduceLROnPlateau`` on the evaluator's key metric
  (``LrScheduleHandler`` in the validation handlers);
* :class:`ConfusionMatrixWriter` -- after a test run: ``confusion_matrix.csv``, ``confusion_matrix.png`` and
  ``per_class.csv`` (precision / recall / F1 / support per class);
* :class:`ClassPredictionWriter` -- after an inference run: one CSV row per picture (file, predicted class,
  probability of every class).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events

from ..io import atomic_write_text

__all__ = ["ClassPredictionWriter", "ConfusionMatrixWriter", "key_metric_value"]

logger = logging.getLogger("monai_ssl_ext.classification")


def key_metric_value(engine: Engine) -> float:
    """The value of ``engine``'s key metric in this run (``engine.state.metrics[engine.state.key_metric_name]``), to
    step ``ReduceLROnPlateau(mode="max")`` on the validation macro F1 as the source does."""
    name = getattr(engine.state, "key_metric_name", None)
    if name is None or name not in engine.state.metrics:
        raise KeyError(f"key_metric_value: the engine has no computed key metric (metrics: {sorted(engine.state.metrics)})")
    return float(engine.state.metrics[name])


def _csv_text(rows: Sequence[Sequence]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _check_names(owner: str, class_names: Sequence[str]) -> list[str]:
    names = [str(n) for n in class_names]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"{owner}: class_names must be at least 2 distinct names, got {names!r}")
    return names


class ConfusionMatrixWriter:
    """When an evaluator completes, write its classification results to ``output_dir``:

    * ``confusion_matrix.csv`` -- rows: true class, columns: predicted class (counts, with class names);
    * ``per_class.csv`` -- ``class, support, precision, recall, f1`` (0 / 0 scores the metric's ``zero_division``);
    * ``confusion_matrix.png`` -- the matrix as a picture (row-normalised colours, counts written in the cells).

    The matrix is the one ``metric`` (a :class:`~monai_ssl_ext.metrics.ClassificationScore` of the same evaluator,
    e.g. ``@validate#key_metric#test_macro_f1``) pooled in this run, all ranks included; only rank 0 writes.
    """

    def __init__(self, output_dir: str, class_names: Sequence[str], metric, zero_division: float | None = None,
                 title: str | None = None):
        if not hasattr(metric, "pooled_confusion_matrix"):
            raise TypeError(f"ConfusionMatrixWriter: metric must be a ClassificationScore, got {type(metric).__name__}")
        self.output_dir = str(output_dir)
        self.class_names = _check_names("ConfusionMatrixWriter", class_names)
        self.metric, self.title = metric, title
        self.zero_division = float(metric.zero_division if zero_division is None else zero_division)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from ..distributed import get_rank
        from ..metrics import classification_scores

        if get_rank() != 0:
            return
        cm = self.metric.pooled_confusion_matrix
        if cm is None:
            raise RuntimeError("ConfusionMatrixWriter: the metric was not computed in this run")
        cm = cm.to(torch.int64).cpu()
        if cm.shape[0] != len(self.class_names):
            raise ValueError(f"ConfusionMatrixWriter: {cm.shape[0]} classes in the metric, {len(self.class_names)} class_names")
        os.makedirs(self.output_dir, exist_ok=True)
        scores = classification_scores(cm, self.zero_division)
        names = self.class_names
        atomic_write_text(os.path.join(self.output_dir, "confusion_matrix.csv"), _csv_text(
            [["true \\ predicted"] + names] + [[n] + cm[i].tolist() for i, n in enumerate(names)]))
        atomic_write_text(os.path.join(self.output_dir, "per_class.csv"), _csv_text(
            [["class", "support", "precision", "recall", "f1"]]
            + [[n, int(scores["support"][i]), f"{float(scores['precision'][i]):.6f}",
                f"{float(scores['recall'][i]):.6f}", f"{float(scores['f1'][i]):.6f}"] for i, n in enumerate(names)]))
        self._plot(cm, os.path.join(self.output_dir, "confusion_matrix.png"), scores)
        logger.info(f"confusion matrix and per-class scores written to {self.output_dir}")

    def _plot(self, cm: torch.Tensor, path: str, scores: dict) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = cm.shape[0]
        rows = cm.sum(dim=1, keepdim=True).clamp_min(1).to(torch.float64)
        frac = (cm.to(torch.float64) / rows).numpy()
        size = max(4.0, 0.55 * n + 2.5)
        fig, ax = plt.subplots(figsize=(size + 1.0, size))
        im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if frac[i, j] > 0.5 else "black")
        ax.set_xticks(range(n), labels=self.class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels=self.class_names, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        title = self.title or f"macro F1 {scores['macro_f1']:.3f}, accuracy {scores['accuracy']:.3f}"
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
        fig.tight_layout()
        tmp = f"{path}.tmp.png"
        fig.savefig(tmp, dpi=120)
        plt.close(fig)
        os.replace(tmp, path)



class ClassPredictionWriter:
    """Write an inference run's class predictions to a CSV, one row per picture:
    ``file, predicted_label, predicted_class, prob_<class 0>, ..., prob_<class C-1>`` (softmax of the logits).

    Args:
        path: output CSV (written atomically when the run completes).
        class_names: class names, index = label.
        data_root_dir: ``file`` is relative to this folder when the picture lies inside it (else absolute).
        pred_key: key of the logits ``(C,)`` in each decollated output item.
        image_key: key whose metadata names the source file (``filename_or_obj``).
    """

    def __init__(self, path: str, class_names: Sequence[str], data_root_dir: str | None = None,
                 pred_key: str = "pred", image_key: str = "image"):
        self.path = str(path)
        self.class_names = _check_names("ClassPredictionWriter", class_names)
        self.data_root_dir = os.path.abspath(data_root_dir) if data_root_dir else None
        self.pred_key, self.image_key = pred_key, image_key
        self.rows: list[list] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _file(self, item) -> str:
        from ..transforms.checks import source_name

        name = source_name(item, self.image_key)
        if self.data_root_dir and not name.startswith("<"):
            full = os.path.abspath(name)
            if full.startswith(self.data_root_dir + os.sep):
                return os.path.relpath(full, self.data_root_dir).replace(os.sep, "/")
        return name

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            logits = torch.as_tensor(item[self.pred_key]).detach().float().cpu().reshape(-1)
            if logits.numel() != len(self.class_names):
                raise ValueError(f"ClassPredictionWriter: {logits.numel()} scores for {len(self.class_names)} classes "
                                 f"({self._file(item)})")
            probs = torch.softmax(logits, dim=0)
            k = int(probs.argmax())
            self.rows.append([self._file(item), k, self.class_names[k]] + [f"{float(p):.6f}" for p in probs])

    def _write(self, engine: Engine) -> None:
        from ..distributed import get_rank

        if get_rank() != 0:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        header = ["file", "predicted_label", "predicted_class"] + [f"prob_{n}" for n in self.class_names]
        atomic_write_text(self.path, _csv_text([header] + self.rows))
        logger.info(f"{len(self.rows)} predictions written to {self.path}")
