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
    y_pred, y = _batched(y_pred), _batched(y)
    _check_pair(y_pred, y)
    if not include_background:
        y_pred, y = y_pred[:, 1:], y[:, 1:]
    b, c = y.shape[:2]
    p = y_pred.reshape(b, c, -1).to(torch.float64)
    t = y.reshape(b, c, -1).to(torch.float64)
    tp = (p * t).sum(-1)
    fp = p.sum(-1) - tp
    fn = t.sum(-1) - tp
    out = _ratio(kind, tp, fp, fn, absent_score)
    if ignore_empty:
        out = torch.where(t.sum(-1) > 0, out, torch.full_like(out, float("nan")))
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
