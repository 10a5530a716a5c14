"""Segmentation metrics that count false positives on classes absent from the label.

MONAI's ``MeanIoU`` / ``MeanDice`` (and source A's copy ``IoUMetric``) default to ``ignore_empty=True``: a class
with no pixel in an item's label scores NaN and is skipped, so a predicted right-ventricle blob on a slice without
right ventricle, or a predicted tool on a frame without tool, costs nothing. The metrics here count it.

Two families, both usable as ``key_val_metric`` / ``additional_metrics`` of a MONAI evaluator, with the inputs
produced by ``AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=C)`` and
``output_transform=monai.handlers.from_engine(["pred", "label"])`` (lists of one-hot ``(C, *spatial)`` tensors, or
batched one-hot ``(B, C, *spatial)`` tensors):

**Pooled** (:class:`PooledIoU`, :class:`PooledDice`; ignite ``Metric``): one confusion matrix ``M[t, p]`` (pixels
with label class ``t`` predicted as ``p``) summed over every pixel of every item of the evaluation run (and over
DDP ranks, with an all-reduce), then per class ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` (Dice
``2 TP_c / (2 TP_c + FP_c + FN_c)``) with ``TP_c = M[c, c]``, ``FP_c = sum_t M[t, c] - TP_c``,
``FN_c = sum_p M[c, p] - TP_c``, and the unweighted mean over the kept classes ("macro"). This is torchmetrics'
``JaccardIndex`` (SSL-MedSeg validation, SPEC D.2). Background handling, two different things:

* ``include_background=False`` (default) leaves class 0 out of the mean but keeps its pixels, so a background
  pixel predicted as RV is an RV false positive;
* ``ignore_index=k`` is torchmetrics' ``ignore_index``: pixels whose *label* is ``k`` are dropped before counting
  (legacy torchmetrics <= 0.10 zeroes row ``k`` of the confusion matrix, ``confmat[ignore_index] = 0``; current
  ``MulticlassJaccardIndex`` removes those pixels in ``_multiclass_confusion_matrix_format``: the same counts) and
  class ``k`` leaves the mean. A background pixel predicted as RV then is *not* an RV false positive.
  ``JaccardIndex(num_classes=4, ignore_index=0)`` as SSL-MedSeg used it is ``PooledIoU(ignore_index=0,
  absent_score=0.0)`` (torchmetrics 0.7-0.10: a class with zero pooled union scores ``absent_score=0.0`` and stays
  in the mean); current torchmetrics (>= 0.11, ``average="macro"``) drops zero-union classes from the mean, which
  is ``absent_score=None`` here.

The source logged torchmetrics' per-batch value (batch 192, about the size of the validation split), so its
"pooled over the split" number is, up to that batching, this one.

**Per item** (:class:`PerImageIoU`, :class:`PerImageDice` handlers over :class:`PerImageIoUMetric`,
:class:`PerImageDiceMetric`): per item and class the same ``TP/FP/FN`` counts, ``IoU = TP / (TP + FP + FN)``;
a class absent from both label and prediction scores ``absent_score`` (1.0), a class absent from the label but
predicted scores 0. Reduction (``"mean"``): mean over classes per item, then mean over items. This is SSL-MedSeg's
test protocol, per slice ``torchmetrics.functional.iou(pred, target, ignore_index=None, absent_score=1.0,
num_classes=4)`` (background included) averaged over slices; with ``include_background=False`` it is the fixed
form of source A's ``IoUMetric(include_background=False)`` / ``DiceMetric(include_background=False)``.
The handlers store the per-item ``(N, C)`` scores in ``engine.state.metric_details`` (``save_details=True``) for
``MetricsSaver``, whose ``<name>_raw.csv`` "mean" column is the per-item mean and whose summary "mean" row is the
reported number (and "std" its spread over items).

For comparison: MONAI's ``MeanIoU(ignore_empty=False)`` / ``DiceMetric(ignore_empty=False)`` give the per-item
scores of ``absent_score=1.0``; ``ignore_empty=True`` (their default, and source A's) is ``ignore_empty=True``
here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

__all__ = [
    "segmentation_confusion_matrix",
    "scores_from_confusion_matrix",
    "per_item_scores",
    "PooledIoU",
    "PooledDice",
    "PerImageIoUMetric",
    "PerImageDiceMetric",
    "PerImageIoU",
    "PerImageDice",
]

_KINDS = ("iou", "dice")


def _batched(x) -> torch.Tensor:
    """One-hot ``(B, C, *spatial)`` tensor from a tensor of that shape or a list of ``(C, *spatial)`` items."""
    if isinstance(x, (list, tuple)):
        return torch.stack([torch.as_tensor(i) for i in x])
    return torch.as_tensor(x)


def _check_pair(y_pred: torch.Tensor, y: torch.Tensor) -> None:
    if y_pred.shape != y.shape or y_pred.dim() < 3:
        raise ValueError(
            "y_pred and y must be one-hot tensors of the same shape (B, C, *spatial) "
            f"(e.g. after AsDiscreted(argmax=[True, False], to_onehot=C)), got {tuple(y_pred.shape)} and {tuple(y.shape)}."
        )


def segmentation_confusion_matrix(y_pred, y) -> torch.Tensor:
    """Confusion matrix ``M[t, p]`` (float64): the number of pixels with label class ``t`` and predicted class ``p``,
    summed over the batch, from one-hot ``y_pred`` and ``y`` of shape ``(B, C, *spatial)`` (or lists of
    ``(C, *spatial)`` items). Rows are labels, columns predictions, as in torchmetrics."""
    y_pred, y = _batched(y_pred), _batched(y)
    _check_pair(y_pred, y)
    b, c = y.shape[:2]
    p = y_pred.reshape(b, c, -1).to(torch.float64)
    t = y.reshape(b, c, -1).to(torch.float64)
    return torch.einsum("btn,bpn->tp", t, p)


def _tp_fp_fn(y_pred, y, include_background: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-item, per-channel ``TP = sum(p * y)``, ``FP = sum(p) - TP``, ``FN = sum(y) - TP`` (float64, ``(B, C')``)
    of binary / one-hot ``(B, C, *spatial)`` inputs (lists of ``(C, *spatial)`` items of one size allowed)."""
    y_pred, y = _batched(y_pred), _batched(y)
    _check_pair(y_pred, y)
    if not include_background:
        y_pred, y = y_pred[:, 1:], y[:, 1:]
    b, c = y.shape[:2]
    p = y_pred.reshape(b, c, -1).to(torch.float64)
    t = y.reshape(b, c, -1).to(torch.float64)
    tp = (p * t).sum(-1)
    return tp, p.sum(-1) - tp, t.sum(-1) - tp


def _ratio(kind: str, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, absent_score):
    num = tp if kind == "iou" else 2 * tp
    den = num + fp + fn
    fill = float("nan") if absent_score is None else float(absent_score)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(den, fill))


def scores_from_confusion_matrix(
    confmat: torch.Tensor, kind: str = "iou", ignore_index: int | None = None, absent_score: float | None = None
) -> torch.Tensor:
    """Per-class IoU or Dice ``(C,)`` from a confusion matrix ``M[t, p]``.

    ``ignore_index``: row ``ignore_index`` is zeroed first (pixels labelled that class are dropped, torchmetrics'
    semantics); the class's own score is still returned (callers leave it out of the mean). Classes with zero union
    (``TP + FP + FN = 0``) score ``absent_score`` (NaN when None)."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")
    cm = confmat.to(torch.float64).clone()
    if ignore_index is not None:
        cm[ignore_index, :] = 0
    tp = torch.diagonal(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    return _ratio(kind, tp, fp, fn, absent_score)


def per_item_scores(
    y_pred,
    y,
    kind: str = "iou",
    include_background: bool = True,
    absent_score: float = 1.0,
    ignore_empty: bool = False,
) -> torch.Tensor:
    """Per-item, per-class IoU or Dice ``(B, C')`` from one-hot ``(B, C, *spatial)`` inputs (``C' = C - 1`` without
    background). ``TP = sum(p * y)``, ``FP = sum(p) - TP``, ``FN = sum(y) - TP`` over the spatial dims; a class with
    ``TP + FP + FN = 0`` scores ``absent_score``; ``ignore_empty=True`` gives NaN to every class absent from the label
    (MONAI's / source A's default, which hides false positives; only for comparison)."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")
    tp, fp, fn = _tp_fp_fn(y_pred, y, include_background)
    out = _ratio(kind, tp, fp, fn, absent_score)
    if ignore_empty:
        out = torch.where(tp + fn > 0, out, torch.full_like(out, float("nan")))
    return out


class _PooledScore(Metric):
    kind = "iou"

    def __init__(
        self,
        include_background: bool = False,
        ignore_index: int | None = None,
        absent_score: float | None = None,
        num_classes: int | None = None,
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        self.include_background = bool(include_background)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.absent_score = None if absent_score is None else float(absent_score)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.per_class: torch.Tensor | None = None
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        n = self.num_classes
        self._confmat = None if n is None else torch.zeros((n, n), dtype=torch.float64, device=self._device)

    @reinit__is_reduced
    def update(self, output: Sequence) -> None:
        if len(output) != 2:
            raise ValueError(f"output must be (y_pred, y), got {len(output)} items.")
        cm = segmentation_confusion_matrix(output[0], output[1]).to(self._device)
        if self._confmat is None:
            self._confmat = torch.zeros_like(cm)
        if cm.shape != self._confmat.shape:
            raise ValueError(f"got {cm.shape[0]} classes, expected {self._confmat.shape[0]}.")
        self._confmat += cm

    @property
    def confusion_matrix(self) -> torch.Tensor | None:
        """The accumulated (this rank's) confusion matrix ``M[label, prediction]``."""
        return self._confmat

    def kept_classes(self, num_classes: int) -> list[int]:
        """Class indices averaged: all but ``ignore_index``, and but 0 unless ``include_background``."""
        return [
            c
            for c in range(num_classes)
            if c != self.ignore_index and (self.include_background or c != 0)
        ]

    @sync_all_reduce("_confmat")
    def compute(self) -> float:
        if self._confmat is None or float(self._confmat.sum()) == 0:
            raise NotComputableError(f"{type(self).__name__} must have at least one example before it can be computed.")
        scores = scores_from_confusion_matrix(self._confmat, self.kind, self.ignore_index, self.absent_score)
        keep = self.kept_classes(scores.shape[0])
        self.per_class = scores.clone()
        kept = scores[keep]
        kept = kept[~torch.isnan(kept)]
        return float(kept.mean()) if kept.numel() else float("nan")


class PooledIoU(_PooledScore):
    """Mean IoU from one confusion matrix pooled over all pixels of all items of an evaluation run (and all DDP
    ranks): per class ``TP / (TP + FP + FN)``, unweighted mean over the kept classes. See the module docstring.

    Args:
        include_background: average class 0 too (default False). Its pixels count either way.
        ignore_index: torchmetrics' ``ignore_index``: drop pixels whose label is this class, and leave the class out
            of the mean (``ignore_index=0`` reproduces ``torchmetrics.JaccardIndex(num_classes=C, ignore_index=0)``,
            where background pixels predicted as foreground are not false positives).
        absent_score: score of a class with zero pooled union; None (default) leaves it out of the mean
            (torchmetrics >= 0.11 "macro"); 0.0 is torchmetrics <= 0.10's default.
        num_classes: number of channels (optional; set it so the state exists before the first update).
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``, e.g.
            ``monai.handlers.from_engine(["pred", "label"])``.
        device: where the confusion matrix is accumulated.

    After ``compute``, ``per_class`` holds all ``C`` per-class scores (ignored / background included) and
    ``confusion_matrix`` the counts.
    """

    kind = "iou"


class PooledDice(_PooledScore):
    """Mean Dice ``2 TP / (2 TP + FP + FN)`` from one pooled confusion matrix; same arguments as :class:`PooledIoU`."""

    kind = "dice"


class _PerImageScoreMetric(CumulativeIterationMetric):
    kind = "iou"

    def __init__(
        self,
        include_background: bool = True,
        absent_score: float = 1.0,
        ignore_empty: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.absent_score = float(absent_score)
        self.ignore_empty = ignore_empty
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return per_item_scores(
            y_pred, y, self.kind, self.include_background, self.absent_score, self.ignore_empty
        ).to(torch.float32)

    def aggregate(self, reduction: MetricReduction | str | None = None):  # type: ignore[override]
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise TypeError("the data to aggregate must be a PyTorch Tensor.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class PerImageIoUMetric(_PerImageScoreMetric):
    """Per-item IoU, ``(N, C)`` buffer, MONAI ``CumulativeIterationMetric`` (use :class:`PerImageIoU` in configs).

    Args:
        include_background: score class 0 too (default True, SSL-MedSeg's test protocol).
        absent_score: score of a class absent from both label and prediction (1.0). A class absent from the label
            but predicted scores 0.
        ignore_empty: NaN for every class absent from the label (MONAI's default; hides false positives). Only to
            reproduce published numbers of source A; default False.
        reduction: MONAI reduction of the ``(N, C)`` scores; "mean" = mean over classes per item, then over items.
        get_not_nans: also return the not-NaN counts.
    """

    kind = "iou"


class PerImageDiceMetric(_PerImageScoreMetric):
    """Per-item Dice ``2 TP / (2 TP + FP + FN)``; same arguments as :class:`PerImageIoUMetric`."""

    kind = "dice"


class _PerImageHandler(IgniteMetricHandler):
    metric_class: type = PerImageIoUMetric

    def __init__(
        self,
        include_background: bool = True,
        absent_score: float = 1.0,
        ignore_empty: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = self.metric_class(
            include_background=include_background,
            absent_score=absent_score,
            ignore_empty=ignore_empty,
            reduction=reduction,
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class PerImageIoU(_PerImageHandler):
    """Evaluator metric (ignite handler) for :class:`PerImageIoUMetric`: per item and class
    ``TP / (TP + FP + FN)``, ``absent_score`` (1.0) where label and prediction are both empty, 0 for a predicted
    class absent from the label; mean over classes, then over items. With ``save_details=True`` (default) the
    ``(N, C)`` per-item scores go to ``engine.state.metric_details[name]`` for ``MetricsSaver``.

    Args:
        include_background, absent_score, ignore_empty, reduction: as :class:`PerImageIoUMetric`.
        output_transform: e.g. ``monai.handlers.from_engine(["pred", "label"])``.
        save_details: keep the per-item scores.
    """

    metric_class = PerImageIoUMetric


class PerImageDice(_PerImageHandler):
    """Evaluator metric (ignite handler) for :class:`PerImageDiceMetric`; same arguments as :class:`PerImageIoU`."""

    metric_class = PerImageDiceMetric


# ---- classification: macro F1 / precision / recall and accuracy (SSL4GIE Hyperkvasir) -----------------------------
#
# One confusion matrix ``M[t, p]`` (items of true class ``t`` predicted as ``p``, prediction = argmax of the scores)
# pooled over the whole evaluation run (and the DDP ranks). Per class ``TP_c = M[c, c]``, ``FP_c = sum_t M[t, c] -
# TP_c``, ``FN_c = sum_p M[c, p] - TP_c``: precision ``TP / (TP + FP)``, recall ``TP / (TP + FN)``, F1 ``2 TP / (2 TP +
# FP + FN)`` (= the source's per-class "Dice of argmax" ``2 |P_c & T_c| / (|P_c| + |T_c|)``); the macro scores are
# the unweighted means over all classes; accuracy is ``trace(M) / sum(M)``. A ratio 0 / 0 (a class never predicted:
# precision; absent from the labels: recall; both: F1) scores ``zero_division`` (default 1.0, a perfect score for a
# class correctly never predicted; scikit-learn's default would be 0). The source's smoothed F1 ``2 (0 + s) / (0 + 0
# + s)`` gives such a class 2.0 -- an F1 above 1 that inflates its macro-F1 (by 1/12 for a 12-class set whose smallest
# class, hemorrhoids with 6 images, misses a split): not reproduced. Its precision / recall give 1.0, as here.

__all__ += ["CLASSIFICATION_SCORES", "ClassificationScore", "classification_confusion_matrix", "classification_scores"]

#: score names of :class:`ClassificationScore` / :func:`classification_scores`
CLASSIFICATION_SCORES = ("macro_f1", "macro_precision", "macro_recall", "accuracy")


def classification_confusion_matrix(y_pred, y, num_classes: int) -> torch.Tensor:
    """``M[t, p]`` (int64, ``(num_classes, num_classes)``) of a batch: ``y_pred`` is ``(B, C)`` scores (argmax
    taken) or ``(B,)`` class indices, ``y`` ``(B,)`` (or ``(B, 1)``) integer labels in ``[0, num_classes)``.

    Raises:
        ValueError: shapes that do not pair up, or labels / predictions outside ``[0, num_classes)``.
    """
    y_pred, y = torch.as_tensor(y_pred), torch.as_tensor(y)
    if y_pred.ndim == 2:
        if y_pred.shape[1] != num_classes:
            raise ValueError(f"classification scores have {y_pred.shape[1]} classes, expected {num_classes}.")
        y_pred = y_pred.argmax(dim=1)
    y = y.reshape(-1)
    y_pred = y_pred.reshape(-1)
    if y_pred.shape != y.shape:
        raise ValueError(f"{y_pred.numel()} predictions for {y.numel()} labels.")
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise ValueError(f"classification labels must be integers, got {y[y != y.round()][:5].tolist()}.")
    y, y_pred = y.long(), y_pred.long()
    for name, v in (("labels", y), ("predictions", y_pred)):
        bad = v[(v < 0) | (v >= num_classes)]
        if bad.numel():
            raise ValueError(f"{name} outside [0, {num_classes}): {sorted(set(bad.tolist()))[:5]}.")
    idx = y * num_classes + y_pred
    return torch.bincount(idx.cpu(), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_scores(confusion, zero_division: float = 1.0) -> dict:
    """Scores of a confusion matrix ``M[true, predicted]`` (see the comment above): ``accuracy``, ``macro_f1``,
    ``macro_precision``, ``macro_recall`` (floats) and the per-class ``precision``, ``recall``, ``f1`` (float64
    tensors) and ``support`` (items per true class)."""
    m = torch.as_tensor(confusion).to(torch.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"a confusion matrix must be square (C, C), got shape {tuple(m.shape)}.")
    total = float(m.sum())
    if total <= 0:
        raise ValueError("the confusion matrix is empty (no items).")
    tp = torch.diagonal(m)
    fp, fn = m.sum(dim=0) - tp, m.sum(dim=1) - tp

    def ratio(num, den):
        return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float(zero_division)))

    precision, recall, f1 = ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)
    return {"accuracy": float(tp.sum()) / total, "macro_f1": float(f1.mean()), "macro_precision": float(precision.mean()),
            "macro_recall": float(recall.mean()), "precision": precision, "recall": recall, "f1": f1,
            "support": m.sum(dim=1).to(torch.int64)}


class ClassificationScore(Metric):
    """Evaluator metric (ignite ``Metric``): one of :data:`CLASSIFICATION_SCORES` from a confusion matrix pooled over
    the run (all-reduced over DDP ranks). Inputs ``(y_pred (B, C) scores or (B,) indices, y (B,) labels)``, e.g.
    ``output_transform=monai_ssl_ext.handlers.stack_from_engine(["pred", "label"])``.

    Args:
        num_classes: number of classes.
        score: ``macro_f1`` (SSL4GIE's model selection), ``macro_precision``, ``macro_recall`` or ``accuracy``.
        zero_division: the score of a 0 / 0 per-class ratio (1.0: the source's smoothing).
    """

    def __init__(self, num_classes: int, score: str = "macro_f1", zero_division: float = 1.0,
                 output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        if score not in CLASSIFICATION_SCORES:
            raise ValueError(f"ClassificationScore: score must be one of {list(CLASSIFICATION_SCORES)}, got {score!r}.")
        if int(num_classes) < 2:
            raise ValueError(f"ClassificationScore: num_classes must be >= 2, got {num_classes!r}.")
        self.num_classes, self.score, self.zero_division = int(num_classes), score, float(zero_division)
        self.pooled_confusion_matrix: torch.Tensor | None = None
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._confmat = torch.zeros((self.num_classes, self.num_classes), dtype=torch.float64, device=self._device)
        self.pooled_confusion_matrix = None

    @reinit__is_reduced
    def update(self, output: Sequence) -> None:
        if len(output) != 2:
            raise ValueError(f"output must be (y_pred, y), got {len(output)} items.")
        y_pred, y = output
        self._confmat += classification_confusion_matrix(y_pred.detach(), y.detach(), self.num_classes).to(
            self._confmat)

    @property
    def confusion_matrix(self) -> torch.Tensor:
        """The accumulated (this rank's) confusion matrix ``M[label, prediction]``."""
        return self._confmat

    @sync_all_reduce("_confmat")
    def compute(self) -> float:
        if float(self._confmat.sum()) == 0:
            raise NotComputableError("ClassificationScore must have at least one example before it can be computed.")
        self.pooled_confusion_matrix = self._confmat.detach().clone()  # all ranks (set by the all-reduce above)
        return classification_scores(self._confmat, self.zero_division)[self.score]


# --- Depth (SSL4GIE C3VD, gie_depth) ----------------------------------------------------------------------------
# SSL4GIE's depth protocol (``Depth_estimation/eval_depth.py``, SPEC C.3), per test image (batch 1):
#   1. align the 224 x 224 prediction to the 224 x 224 target by per-image least squares (s, t) over target > 0
#      (``losses.depth.compute_scale_and_shift``);
#   2. resize the aligned prediction (bilinear) to the padded square of the original picture, max(h, w), and crop
#      the original h x w back out (the padding offsets of ``transforms.SquareResized``: floor((max - h) / 2) rows on top);
#   3. clip to [0, 1]; 4. multiply prediction and original-resolution ground truth by 10;
#   5. over the pixels with ground truth > 0: RMSE = sqrt(mean (p - d)^2), AbsRel = median |p - d| / d,
#      Abs = mean |p - d| (the median is torch.median's: the lower middle value for an even count, as the source);
#   6. the reported numbers are the means of the per-image values over the test images.
# Validation (checkpoint selection) is the SSI-MSE (the loss's data term, alpha = 0) at 224 x 224.

__all__ += ["AlignDepthd", "DepthAbsErr", "DepthAbsRel", "DepthErrorMetric", "DepthRMSE", "ScaleShiftInvariantMSE",
            "align_depth_to_original", "depth_errors"]

from monai.config import KeysCollection  # noqa: E402
from monai.transforms import MapTransform  # noqa: E402

#: the unit factor of SSL4GIE's C3VD metrics (depth / 65535 in [0, 1] times 10)
C3VD_METRIC_SCALE = 10.0
_DEPTH_ERRORS = ("rmse", "abs_rel", "abs")


def _plain_depth(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else x


def align_depth_to_original(pred: torch.Tensor, label: torch.Tensor, original_size) -> torch.Tensor:
    """Steps 1-3 of the protocol for one image: ``pred`` and ``label`` ``(1, S, S)`` (network input size),
    ``original_size`` ``(h, w)`` of the picture. Returns the aligned prediction ``(1, h, w)`` clipped to [0, 1]."""
    from .losses.depth import align_scale_shift

    p, d = _plain_depth(pred).float(), _plain_depth(label).float()
    if p.shape != d.shape or p.dim() != 3 or p.shape[0] != 1:
        raise ValueError(f"align_depth_to_original: pred {tuple(p.shape)} and label {tuple(d.shape)} must both be "
                         "(1, S, S)")
    aligned = align_scale_shift(p[None], d[None])[0]
    h, w = (int(v) for v in original_size)
    side = max(h, w)
    full = torch.nn.functional.interpolate(aligned[None], size=(side, side), mode="bilinear", align_corners=False)[0]
    top, left = (side - h) // 2, (side - w) // 2
    return full[:, top:top + h, left:left + w].clamp(0.0, 1.0)


def depth_errors(pred: torch.Tensor, target: torch.Tensor, scale: float = C3VD_METRIC_SCALE) -> dict[str, float]:
    """Steps 4-5 for one image: ``pred`` (aligned, clipped) and ``target`` of the same shape, target 0 = no ground
    truth. Returns ``{"rmse", "abs_rel", "abs"}`` (NaN when the image has no valid pixel)."""
    p, d = _plain_depth(pred).double() * scale, _plain_depth(target).double() * scale
    if p.shape != d.shape:
        raise ValueError(f"depth_errors: prediction {tuple(p.shape)} and target {tuple(d.shape)} differ in shape")
    valid = d > 0
    if not bool(valid.any()):
        return {k: float("nan") for k in _DEPTH_ERRORS}
    err = p[valid] - d[valid]
    return {"rmse": float(err.pow(2).mean().sqrt()), "abs_rel": float((err.abs() / d[valid]).median()),
            "abs": float(err.abs().mean())}


class AlignDepthd(MapTransform):
    """Evaluator post-processing: ``output_key = align_depth_to_original(d[pred], d[label], d[original].shape)``,
    the aligned prediction at the resolution of the original ground truth ``original_key`` (steps 1-3 of the
    protocol above), and ``target_key`` = that ground truth (a new key, so MONAI keeps it in the evaluator's
    output, where ``from_engine(["pred_full", "label_full"])`` finds it; the batch's own keys stay in the batch).
    Items without ``original_key`` are left as they are.

    Args:
        keys: the prediction key (``pred``).
        label_key: the target at network resolution (``label``).
        original_key: the ground truth at the picture's resolution (``depth``).
        output_key: where the aligned prediction goes (``pred_full``).
        target_key: where the ground truth at full resolution goes (``label_full``).
    """

    def __init__(self, keys: KeysCollection = "pred", label_key: str = "label", original_key: str = "depth",
                 output_key: str = "pred_full", target_key: str = "label_full"):
        super().__init__(keys, allow_missing_keys=False)
        self.label_key, self.original_key, self.output_key = label_key, original_key, output_key
        self.target_key = target_key

    def __call__(self, data):
        d = dict(data)
        if self.original_key not in d:
            return d
        for key in self.key_iterator(d):
            original = _plain_depth(d[self.original_key])
            d[self.output_key] = align_depth_to_original(d[key], d[self.label_key], original.shape[-2:])
            d[self.target_key] = original.float()
        return d


class DepthErrorMetric(CumulativeIterationMetric):
    """Per-image depth error after alignment (protocol above, steps 4-5), ``(N, 1)`` buffer; ``kind`` one of
    ``rmse``, ``abs_rel`` (median absolute relative error), ``abs`` (mean absolute error). ``y_pred``: the aligned
    prediction at the ground truth's resolution (``AlignDepthd``); ``y``: the ground truth, 0 = invalid.
    Reduction ``mean`` over images (NaN images, without valid pixels, are left out)."""

    def __init__(self, kind: str = "rmse", scale: float = C3VD_METRIC_SCALE,
                 reduction: MetricReduction | str = MetricReduction.MEAN) -> None:
        super().__init__()
        if kind not in _DEPTH_ERRORS:
            raise ValueError(f"DepthErrorMetric: kind must be one of {_DEPTH_ERRORS}, got {kind!r}")
        self.kind, self.scale, self.reduction = kind, float(scale), reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        values = [depth_errors(p, t, self.scale)[self.kind] for p, t in zip(y_pred, y)]
        return torch.tensor(values, dtype=torch.float32).view(-1, 1)

    def aggregate(self, reduction: MetricReduction | str | None = None):  # type: ignore[override]
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise TypeError("the data to aggregate must be a PyTorch Tensor.")
        f, _ = do_metric_reduction(data, reduction or self.reduction)
        return f


class _DepthErrorHandler(IgniteMetricHandler):
    kind = "rmse"

    def __init__(self, scale: float = C3VD_METRIC_SCALE, output_transform: Callable = lambda x: x,
                 save_details: bool = True) -> None:
        super().__init__(metric_fn=DepthErrorMetric(self.kind, scale), output_transform=output_transform,
                         save_details=save_details)


class DepthRMSE(_DepthErrorHandler):
    """Evaluator metric: mean over images of the per-image RMSE after alignment (SSL4GIE's "RMSE"), with
    ``output_transform=monai.handlers.from_engine(["pred_full", "label_full"])``; per-image values in
    ``engine.state.metric_details`` for ``MetricsSaver``."""

    kind = "rmse"


class DepthAbsRel(_DepthErrorHandler):
    """Mean over images of the per-image *median* absolute relative error (SSL4GIE's "Relative Error")."""

    kind = "abs_rel"


class DepthAbsErr(_DepthErrorHandler):
    """Mean over images of the per-image mean absolute error (SSL4GIE's "Absolute Error")."""

    kind = "abs"


class ScaleShiftInvariantMSE(Metric):
    """Validation SSI-MSE, the data term of :class:`~monai_ssl_ext.losses.ScaleShiftInvariantLoss` (``alpha=0``):
    per image align ``(s, t)`` over target > 0, then ``sum r^2 / (2 * valid pixels)`` pooled over every pixel of
    the split (and DDP ranks). Lower is better. Input ``(pred, label)`` at network resolution: lists of
    ``(1, H, W)`` items or ``(B, 1, H, W)`` tensors (``monai.handlers.from_engine(["pred", "label"])``).

    SSL4GIE averaged the batch-pooled value over validation batches of 384 weighted by batch size; pooled over the
    whole split here (the same when the batches hold equally many valid pixels)."""

    def __init__(self, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.zeros((), dtype=torch.float64, device=self._device)
        self._count = torch.zeros((), dtype=torch.float64, device=self._device)

    @reinit__is_reduced
    def update(self, output: Sequence) -> None:
        from .losses.depth import align_scale_shift

        if len(output) != 2:
            raise ValueError(f"output must be (y_pred, y), got {len(output)} items.")
        pred, label = (_batched(x).float() if isinstance(x, (list, tuple)) else _plain_depth(x).float() for x in output)
        pred, label = _plain_depth(pred), _plain_depth(label)
        aligned = align_scale_shift(pred, label)
        valid = label > 0
        self._sum += ((aligned - label)[valid].double() ** 2).sum().to(self._device)
        self._count += valid.sum().double().to(self._device)

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        if float(self._count) == 0:
            raise NotComputableError("ScaleShiftInvariantMSE: no valid ground-truth pixel was seen.")
        return float(self._sum / (2 * self._count))


# ---- binary segmentation: per-image precision and recall (SSL4GIE polyp segmentation) ------------------------------
#
# Per item (and channel, one for a binary mask) with ``TP = sum(p * y)``, ``FP = sum(p) - TP``, ``FN = sum(y) - TP``:
# precision ``TP / (TP + FP)``, recall ``TP / (TP + FN)``. A ratio with an empty denominator (nothing predicted:
# precision; nothing in the label: recall) scores ``absent_score`` (1.0), as the source's smoothed precision /
# recall of ``Binary_segmentation/Metrics/performance.py`` (its smoothed Dice of two empty masks is 2.0, above 1: not
# reproduced; Kvasir-SEG and CVC-ClinicDB have no empty masks). So an image without a polyp and a non-empty
# prediction scores Dice = IoU = precision = 0 and recall 1; with an empty prediction it scores 1 on all four.

__all__ += ["PerImagePrecision", "PerImagePrecisionMetric", "PerImageRecall", "PerImageRecallMetric",
            "binary_ratio_scores"]


def binary_ratio_scores(y_pred, y, kind: str, include_background: bool = True, absent_score: float = 1.0):
    """Per-item, per-channel precision or recall ``(B, C')`` of binary / one-hot ``(B, C, *spatial)`` inputs (lists
    of ``(C, *spatial)`` items of one size allowed); an empty denominator scores ``absent_score``."""
    if kind not in ("precision", "recall"):
        raise ValueError(f"kind must be 'precision' or 'recall', got {kind!r}.")
    tp, fp, fn = _tp_fp_fn(y_pred, y, include_background)
    den = tp + fp if kind == "precision" else tp + fn
    return torch.where(den > 0, tp / den.clamp_min(1e-300), torch.full_like(den, float(absent_score)))


class PerImagePrecisionMetric(_PerImageScoreMetric):
    """Per-item precision ``TP / (TP + FP)`` (``absent_score`` when nothing is predicted); arguments as
    :class:`PerImageIoUMetric` (``ignore_empty`` is not supported)."""

    kind = "precision"

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.ignore_empty:
            raise ValueError(f"{type(self).__name__}: ignore_empty is not supported.")
        return binary_ratio_scores(y_pred, y, self.kind, self.include_background, self.absent_score).to(torch.float32)


class PerImageRecallMetric(PerImagePrecisionMetric):
    """Per-item recall ``TP / (TP + FN)`` (``absent_score`` when the label is empty)."""

    kind = "recall"


class PerImagePrecision(_PerImageHandler):
    """Evaluator metric (ignite handler) for :class:`PerImagePrecisionMetric`; arguments as :class:`PerImageIoU`."""

    metric_class = PerImagePrecisionMetric


class PerImageRecall(_PerImageHandler):
    """Evaluator metric (ignite handler) for :class:`PerImageRecallMetric`; arguments as :class:`PerImageIoU`."""

    metric_class = PerImageRecallMetric


# ---- object detection: COCO-style mean average precision (SSL4GIE polyp detection) ------------------------------

__all__ += ["DETECTION_SCORES", "DetectionMAP", "detection_scores"]

#: name -> key of MONAI's COCOMetric result: mAP over IoU 0.50:0.05:0.95, AP at IoU 0.5 and 0.75, mean recall
DETECTION_SCORES = {
    "map": "mAP_IoU_0.50_0.95_0.05_MaxDet_{d}",
    "map50": "AP_IoU_0.50_MaxDet_{d}",
    "map75": "AP_IoU_0.75_MaxDet_{d}",
    "mar": "mAR_IoU_0.50_0.95_0.05_MaxDet_{d}",
}


def _boxes(x):
    import numpy as np

    arr = np.asarray(torch.as_tensor(x).detach().cpu().float().numpy() if x is not None else np.zeros((0, 4)), float)
    return arr.reshape(-1, 4)


def detection_scores(pred_boxes, pred_scores, gt_boxes, max_detections: int = 100) -> dict[str, float]:
    """COCO-style scores of one foreground class over a set of images: ``{"map", "map50", "map75", "mar"}``.

    Args:
        pred_boxes: per image, predicted boxes ``(D, 4)`` xyxy; pred_scores: per image, their scores ``(D,)``;
        gt_boxes: per image, ground-truth boxes ``(G, 4)`` xyxy (``G`` may be 0: every prediction there is a
            false positive).
        max_detections: the highest-scoring detections per image that count (COCO's 100).

    AP at an IoU threshold t (a detection matches an unmatched ground-truth box of IoU >= t, greedily by score,
    over all images pooled): the precision envelope ``max_{r' >= r} p(r')`` averaged over the 101 recall points
    0, 0.01, ..., 1 (pycocotools / torchmetrics ``MeanAveragePrecision``, the source's metric); ``map`` is the
    mean over t = 0.50, 0.55, ..., 0.95. Computed with MONAI's ``matching_batch`` + ``COCOMetric``. Without any
    ground-truth box the scores are undefined (COCO's -1).
    """
    import numpy as np
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou

    if not (len(pred_boxes) == len(pred_scores) == len(gt_boxes)):
        raise ValueError(f"detection_scores: {len(pred_boxes)} prediction, {len(pred_scores)} score and "
                         f"{len(gt_boxes)} ground-truth lists; one of each per image")
    d = int(max_detections)
    coco = COCOMetric(classes=["object"], iou_list=(0.5, 0.75), iou_range=(0.5, 0.95, 0.05), max_detection=(d,),
                      verbose=False)
    pb = [_boxes(b) for b in pred_boxes]
    ps = [np.asarray(torch.as_tensor(s).detach().cpu().float().numpy(), float).reshape(-1) for s in pred_scores]
    gb = [_boxes(b) for b in gt_boxes]
    for i, (b, s) in enumerate(zip(pb, ps)):
        if len(b) != len(s):
            raise ValueError(f"detection_scores: image {i} has {len(b)} boxes but {len(s)} scores")
    matches = matching_batch(box_iou, coco.iou_thresholds, pb, [np.zeros(len(b), int) for b in pb], ps, gb,
                             [np.zeros(len(b), int) for b in gb], max_detections=d)
    result = coco(matches)[0]
    return {name: float(result[key.format(d=d)]) for name, key in DETECTION_SCORES.items()}


class DetectionMAP(Metric):
    """Evaluator metric (ignite): one of :func:`detection_scores` (``score``: ``"map"`` = mAP@[.5:.95],
    ``"map50"``, ``"map75"``, ``"mar"``) over every image of the evaluation run (gathered over DDP ranks).

    Input (``output_transform``, default ``monai.handlers.from_engine(["pred", "label"])``, of a
    :class:`~monai_ssl_ext.engines.DetectionEvaluator`): the model's per-image predictions
    ``[{"boxes", "scores", ...}]`` and the targets ``[{"boxes", ...}]``, in the same pixel coordinates.
    """

    def __init__(self, score: str = "map", max_detections: int = 100, output_transform: Callable | None = None,
                 device: str | torch.device = "cpu"):
        if output_transform is None:
            from monai.handlers import from_engine

            output_transform = from_engine(["pred", "label"])
        if score not in DETECTION_SCORES:
            raise ValueError(f"DetectionMAP: score must be one of {sorted(DETECTION_SCORES)}, got {score!r}")
        self.score = score
        self.max_detections = int(max_detections)
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._items: list[tuple] = []

    def update(self, output) -> None:
        preds, targets = output
        if len(preds) != len(targets):
            raise ValueError(f"DetectionMAP: {len(preds)} predictions for {len(targets)} targets")
        for p, t in zip(preds, targets):
            self._items.append((_boxes(p["boxes"]), torch.as_tensor(p["scores"]).detach().cpu().reshape(-1).numpy(),
                                _boxes(t["boxes"])))

    def compute(self) -> float:
        items = list(self._items)
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, items)
            items = [it for part in gathered for it in part]
        if not items:
            raise NotComputableError("DetectionMAP needs at least one image before it can be computed.")
        pb, ps, gb = zip(*items)
        return detection_scores(pb, ps, gb, self.max_detections)[self.score]
