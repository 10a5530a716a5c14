"""Segmentation metrics against hand-computed confusion matrices on tiny label maps.

Three items, 3 classes (0 background, 1 "RV", 2 "LV"), 3x4 maps. Confusion matrices M[label, pred] counted by hand:

  item A  label          pred            M_A = [[5, 1, 0],
          0 0 1 1        0 1 1 1               [1, 2, 0],
          0 2 2 1        0 2 2 0               [1, 0, 2]]
          0 0 2 0        0 0 0 0

  item B  label          pred            M_B = [[6, 2, 0],      class 1 absent from the label,
          0 0 0 0        1 1 0 0               [0, 0, 0],      predicted on 2 background pixels
          0 2 2 0        0 2 2 0               [1, 0, 3]]      (the false positive MONAI's default hides)
          0 2 2 0        0 2 0 0

  item C  label = pred   0 0 0 0 / 0 2 2 0 / 0 0 0 0           M_C = diag(10, 0, 2): class 1 absent from both

Per class c: TP = M[c, c], FP = column sum - TP, FN = row sum - TP, IoU = TP / (TP + FP + FN),
Dice = 2 TP / (2 TP + FP + FN). The expected values below are those fractions, worked out in the comments.
"""

from __future__ import annotations

import csv
import os
from fractions import Fraction as F

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.bundle import ConfigParser
from monai.metrics import DiceMetric, MeanIoU

from monai_ssl_ext.metrics import (
    PerImageDiceMetric,
    PerImageIoUMetric,
    PooledDice,
    PooledIoU,
    segmentation_confusion_matrix,
)

C = 3
LABEL_A = [[0, 0, 1, 1], [0, 2, 2, 1], [0, 0, 2, 0]]
PRED_A = [[0, 1, 1, 1], [0, 2, 2, 0], [0, 0, 0, 0]]
LABEL_B = [[0, 0, 0, 0], [0, 2, 2, 0], [0, 2, 2, 0]]
PRED_B = [[1, 1, 0, 0], [0, 2, 2, 0], [0, 2, 0, 0]]
LABEL_C = [[0, 0, 0, 0], [0, 2, 2, 0], [0, 0, 0, 0]]
PRED_C = LABEL_C


def onehot(m, c=C) -> torch.Tensor:
    """(c, H, W) float one-hot of a label map given as nested lists."""
    t = torch.tensor(m)
    return torch.stack([(t == k).float() for k in range(c)])


def pair(label, pred, c=C):
    return onehot(pred, c), onehot(label, c)


def approx(x):
    return pytest.approx(float(x), abs=1e-6)


# --- confusion matrix ---------------------------------------------------------------------------------------------


def test_confusion_matrix_by_hand():
    pa, ya = pair(LABEL_A, PRED_A)
    pb, yb = pair(LABEL_B, PRED_B)
    assert segmentation_confusion_matrix(pa[None], ya[None]).tolist() == [[5, 1, 0], [1, 2, 0], [1, 0, 2]]
    assert segmentation_confusion_matrix([pb], [yb]).tolist() == [[6, 2, 0], [0, 0, 0], [1, 0, 3]]
    # a batch sums the items
    both = segmentation_confusion_matrix(torch.stack([pa, pb]), torch.stack([ya, yb]))
    assert both.tolist() == [[11, 3, 0], [1, 2, 0], [2, 0, 5]]


# --- pooled (torchmetrics JaccardIndex semantics) -----------------------------------------------------------------

# pooled M = M_A + M_B = [[11, 3, 0], [1, 2, 0], [2, 0, 5]]
# class 0: TP 11, FP 3, FN 3 -> 11/17;  class 1: TP 2, FP 3, FN 1 -> 2/6;  class 2: TP 5, FP 0, FN 2 -> 5/7
POOLED_NO_BG = (F(1, 3) + F(5, 7)) / 2  # = 11/21
POOLED_ALL = (F(11, 17) + F(1, 3) + F(5, 7)) / 3
# ignore_index=0 (torchmetrics): row 0 dropped -> M' = [[0,0,0],[1,2,0],[2,0,5]]
# class 1: TP 2, FP 0 (the 3 background pixels predicted as 1 no longer count), FN 1 -> 2/3; class 2: 5/7
POOLED_IGNORE0 = (F(2, 3) + F(5, 7)) / 2  # = 29/42
# Dice, no background: class 1: 4 / (4 + 3 + 1) = 1/2; class 2: 10 / (10 + 0 + 2) = 5/6
POOLED_DICE_NO_BG = (F(1, 2) + F(5, 6)) / 2  # = 2/3


def _run_pooled(metric, updates):
    metric.reset()
    for y_pred, y in updates:
        metric.update((y_pred, y))
    return metric.compute()


def test_pooled_iou_single_batch_and_multi_batch_accumulation():
    pa, ya = pair(LABEL_A, PRED_A)
    pb, yb = pair(LABEL_B, PRED_B)
    batched = [(torch.stack([pa, pb]), torch.stack([ya, yb]))]
    two_batches = [(pa[None], ya[None]), (pb[None], yb[None])]
    as_lists = [([pa], [ya]), ([pb], [yb])]
    for updates in (batched, two_batches, as_lists):
        m = PooledIoU(num_classes=C)
        assert _run_pooled(m, updates) == approx(POOLED_NO_BG)
        assert m.confusion_matrix.tolist() == [[11, 3, 0], [1, 2, 0], [2, 0, 5]]
        assert m.per_class.tolist() == [approx(F(11, 17)), approx(F(1, 3)), approx(F(5, 7))]
    assert _run_pooled(PooledIoU(include_background=True), two_batches) == approx(POOLED_ALL)
    # the pooled value is not the mean of per-item values: item A alone 7/12, item B alone 3/8
    assert _run_pooled(PooledIoU(), two_batches[:1]) == approx((F(1, 2) + F(2, 3)) / 2)
    assert _run_pooled(PooledIoU(), two_batches[1:]) == approx((F(0) + F(3, 4)) / 2)


def test_pooled_iou_torchmetrics_ignore_index_drops_background_labelled_pixels():
    pa, ya = pair(LABEL_A, PRED_A)
    pb, yb = pair(LABEL_B, PRED_B)
    updates = [(pa[None], ya[None]), (pb[None], yb[None])]
    assert _run_pooled(PooledIoU(ignore_index=0, absent_score=0.0), updates) == approx(POOLED_IGNORE0)
    # ignore_index wins over include_background
    assert _run_pooled(PooledIoU(ignore_index=0, include_background=True), updates) == approx(POOLED_IGNORE0)
    assert POOLED_IGNORE0 > POOLED_NO_BG  # hiding background false positives flatters the model


def test_pooled_dice():
    pa, ya = pair(LABEL_A, PRED_A)
    pb, yb = pair(LABEL_B, PRED_B)
    assert _run_pooled(PooledDice(), [(pa[None], ya[None]), (pb[None], yb[None])]) == approx(POOLED_DICE_NO_BG)


def test_pooled_absent_class_handling():
    pc, yc = pair(LABEL_C, PRED_C)  # class 1 never labelled nor predicted: pooled union 0
    # class 2: 2/2 = 1. absent_score=None leaves class 1 out of the mean (torchmetrics >= 0.11 "macro")
    assert _run_pooled(PooledIoU(), [(pc[None], yc[None])]) == approx(1.0)
    # absent_score=0.0: torchmetrics <= 0.10 JaccardIndex default, class 1 scores 0 and stays in the mean
    assert _run_pooled(PooledIoU(absent_score=0.0), [(pc[None], yc[None])]) == approx(0.5)
    assert _run_pooled(PooledIoU(ignore_index=0, absent_score=0.0), [(pc[None], yc[None])]) == approx(0.5)


def test_pooled_reset_and_errors():
    from ignite.exceptions import NotComputableError

    m = PooledIoU(num_classes=C)
    with pytest.raises(NotComputableError):
        m.compute()
    pa, ya = pair(LABEL_A, PRED_A)
    m.update((pa[None], ya[None]))
    m.reset()
    assert float(m.confusion_matrix.sum()) == 0
    with pytest.raises(ValueError):
        m.update((pa[None], ya[None, :2]))


# --- per item (SSL-MedSeg test protocol; source A fixed) ----------------------------------------------------------

# item A, background included: class 0 5/(5+2+1) = 5/8, class 1 2/(2+1+1) = 1/2, class 2 2/(2+0+1) = 2/3
IOU_A = [F(5, 8), F(1, 2), F(2, 3)]
# item B: class 0 6/(6+1+2) = 2/3, class 1 0/(0+2+0) = 0 (predicted, not labelled), class 2 3/(3+0+1) = 3/4
IOU_B = [F(2, 3), F(0), F(3, 4)]
# item C: class 0 10/10, class 1 absent from both -> absent_score 1, class 2 2/2
IOU_C = [F(1), F(1), F(1)]
# Dice A: 10/13, 4/6, 4/5; Dice B: 12/15, 0/2, 6/7
DICE_A = [F(10, 13), F(2, 3), F(4, 5)]
DICE_B = [F(4, 5), F(0), F(6, 7)]


def mean(xs):
    return sum(xs, F(0)) / len(xs)


def _items():
    pa, ya = pair(LABEL_A, PRED_A)
    pb, yb = pair(LABEL_B, PRED_B)
    pc, yc = pair(LABEL_C, PRED_C)
    return [pa, pb, pc], [ya, yb, yc]


def test_per_item_iou_with_background_absent_score_one():
    preds, labels = _items()
    m = PerImageIoUMetric()
    m(y_pred=preds, y=labels)  # a list of (C, H, W) items, as after decollation
    buf = m.get_buffer()
    assert buf.shape == (3, 3)
    for row, expected in zip(buf.tolist(), (IOU_A, IOU_B, IOU_C)):
        assert row == [approx(v) for v in expected]
    expected = mean([mean(IOU_A), mean(IOU_B), mean(IOU_C)])  # (43/72 + 17/36 + 1) / 3
    assert float(m.aggregate()) == approx(expected)
    # absent_score=0: item C's class 1 scores 0
    m0 = PerImageIoUMetric(absent_score=0.0)
    m0(y_pred=torch.stack(preds[2:]), y=torch.stack(labels[2:]))  # batched tensor input
    assert m0.get_buffer()[0].tolist() == [1.0, 0.0, 1.0]


def test_per_item_iou_false_positive_on_absent_class_vs_monai():
    preds, labels = _items()
    pa, pb = preds[:2]
    ya, yb = labels[:2]
    ours = PerImageIoUMetric(include_background=False)
    ours(y_pred=[pa, pb], y=[ya, yb])
    # without background: A (1/2 + 2/3)/2 = 7/12, B (0 + 3/4)/2 = 3/8, mean 23/48
    assert float(ours.aggregate()) == approx(mean([mean(IOU_A[1:]), mean(IOU_B[1:])]))
    assert float(ours.aggregate()) == approx(F(23, 48))

    monai_default = MeanIoU(include_background=False, reduction="mean")  # ignore_empty=True
    monai_default(y_pred=[pa, pb], y=[ya, yb])
    details = monai_default.get_buffer()
    assert torch.isnan(details[1, 0])  # the false-positive class is skipped ...
    # ... so item B scores 3/4 instead of 3/8 and the mean is (7/12 + 3/4)/2 = 2/3 instead of 23/48
    assert float(monai_default.aggregate()) == approx(F(2, 3))
    assert float(monai_default.aggregate()) > float(ours.aggregate())

    # the same skip, requested explicitly, reproduces MONAI / source A
    skip = PerImageIoUMetric(include_background=False, ignore_empty=True)
    skip(y_pred=[pa, pb], y=[ya, yb])
    assert float(skip.aggregate()) == approx(F(2, 3))
    # cross-check: MONAI with ignore_empty=False gives the per-item scores of absent_score=1
    monai_fixed = MeanIoU(include_background=False, reduction="mean", ignore_empty=False)
    monai_fixed(y_pred=[pa, pb], y=[ya, yb])
    assert float(monai_fixed.aggregate()) == approx(F(23, 48))


def test_per_item_dice():
    preds, labels = _items()
    m = PerImageDiceMetric()
    m(y_pred=preds[:2], y=labels[:2])
    for row, expected in zip(m.get_buffer().tolist(), (DICE_A, DICE_B)):
        assert row == [approx(v) for v in expected]
    assert float(m.aggregate()) == approx(mean([mean(DICE_A), mean(DICE_B)]))
    nobg = PerImageDiceMetric(include_background=False)
    nobg(y_pred=preds[:2], y=labels[:2])
    assert float(nobg.aggregate()) == approx(mean([mean(DICE_A[1:]), mean(DICE_B[1:])]))
    monai = DiceMetric(include_background=False, reduction="mean")  # ignore_empty=True default
    monai(y_pred=preds[:2], y=labels[:2])
    # MONAI skips item B's class 1: B scores 6/7 instead of 3/7
    assert float(monai.aggregate()) == approx(mean([mean(DICE_A[1:]), F(6, 7)]))


def test_source_a_binary_tool_iou():
    """Source A: ``IoUMetric(include_background=False)`` on 2-class one-hot (background, tool); its ``IoUMetric`` is
    a copy of MONAI's ``MeanIoU`` with ``ignore_empty=True``, so tool-free frames are skipped."""

    def tool(mask):
        return onehot(mask, 2)

    # T1: no tool, 2 pixels predicted as tool -> 0 ;  T2: tool 4 px, 3 hit + 1 extra -> 3 / (3 + 1 + 1) = 3/5
    # T3: no tool, nothing predicted -> 1
    lab = [[[0, 0, 0], [0, 0, 0]], [[1, 1, 0], [1, 1, 0]], [[0, 0, 0], [0, 0, 0]]]
    pre = [[[1, 1, 0], [0, 0, 0]], [[1, 1, 1], [1, 0, 0]], [[0, 0, 0], [0, 0, 0]]]
    preds, labels = [tool(p) for p in pre], [tool(x) for x in lab]
    ours = PerImageIoUMetric(include_background=False)
    ours(y_pred=preds, y=labels)
    assert ours.get_buffer().flatten().tolist() == [0.0, approx(F(3, 5)), 1.0]
    assert float(ours.aggregate()) == approx(F(8, 15))
    source = MeanIoU(include_background=False, reduction="mean")
    source(y_pred=preds, y=labels)
    assert float(source.aggregate()) == approx(F(3, 5))
    dice = PerImageDiceMetric(include_background=False)
    dice(y_pred=preds, y=labels)  # T2: 6 / (6 + 1 + 1) = 3/4
    assert float(dice.aggregate()) == approx((0 + F(3, 4) + 1) / 3)


# --- through a MONAI SupervisedEvaluator built from a config ------------------------------------------------------


def _evaluator_config(tmp_path, batch_size):
    preds, labels = _items()
    # fixed predictions: the network is the identity, the "image" holds the logits (one-hot * 5)
    data = [
        {"image": 5.0 * p, "label": torch.tensor(lab)[None].float(), "name": n}
        for p, lab, n in zip(preds, (LABEL_A, LABEL_B, LABEL_C), ("a", "b", "c"))
    ]
    out = "$monai.handlers.from_engine(['pred', 'label'])"
    return {
        "imports": ["$import monai", "$import torch", "$import monai_ssl_ext"],
        "data": data,
        "dataloader": {"_target_": "DataLoader", "dataset": {"_target_": "Dataset", "data": "@data"},
                       "batch_size": batch_size, "shuffle": False},
        "network": "$torch.nn.Identity()",
        "postprocessing": {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False],
                           "to_onehot": C},
        "key_metric": {"val_mean_iou": {"_target_": "PooledIoU", "num_classes": C, "output_transform": out}},
        "additional_metrics": {
            "val_mean_dice": {"_target_": "PooledDice", "num_classes": C, "output_transform": out},
            "val_iou_torchmetrics": {"_target_": "PooledIoU", "ignore_index": 0, "absent_score": 0.0,
                                     "output_transform": out},
            "test_iou": {"_target_": "PerImageIoU", "include_background": True, "output_transform": out},
            "test_iou_no_bg": {"_target_": "PerImageIoU", "include_background": False, "output_transform": out},
            "test_dice": {"_target_": "PerImageDice", "output_transform": out},
            "monai_iou": {"_target_": "MeanIoUHandler", "include_background": False, "output_transform": out},
        },
        "handlers": [{"_target_": "MetricsSaver", "save_dir": str(tmp_path), "metrics": "*", "metric_details": "*",
                      "batch_transform": "$lambda x: [{'filename_or_obj': xx['name']} for xx in x]",
                      "summary_ops": ["mean", "std"]}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "$torch.device('cpu')",
                      "val_data_loader": "@dataloader", "network": "@network", "postprocessing": "@postprocessing",
                      "key_val_metric": "@key_metric", "additional_metrics": "@additional_metrics",
                      "val_handlers": "@handlers"},
    }


@pytest.mark.parametrize("batch_size", [1, 2])
def test_supervised_evaluator_from_config(tmp_path, batch_size):
    parser = ConfigParser(_evaluator_config(tmp_path, batch_size))
    evaluator = parser.get_parsed_content("evaluator")
    evaluator.run()
    metrics = evaluator.state.metrics
    # pooled over A, B, C: M = [[21, 3, 0], [1, 2, 0], [2, 0, 7]]
    # class 1: 2 / (2 + 3 + 1) = 1/3; class 2: 7 / (7 + 0 + 2) = 7/9
    assert metrics["val_mean_iou"] == approx((F(1, 3) + F(7, 9)) / 2)
    assert evaluator.state.best_metric == approx((F(1, 3) + F(7, 9)) / 2)
    # Dice: class 1: 4 / (4 + 3 + 1) = 1/2; class 2: 14 / (14 + 0 + 2) = 7/8
    assert metrics["val_mean_dice"] == approx((F(1, 2) + F(7, 8)) / 2)
    # torchmetrics: row 0 dropped -> class 1: 2 / (2 + 0 + 1) = 2/3; class 2: 7 / (7 + 0 + 2) = 7/9
    assert metrics["val_iou_torchmetrics"] == approx((F(2, 3) + F(7, 9)) / 2)
    assert metrics["test_iou"] == approx(mean([mean(IOU_A), mean(IOU_B), mean(IOU_C)]))
    assert metrics["test_iou_no_bg"] == approx(mean([mean(IOU_A[1:]), mean(IOU_B[1:]), mean(IOU_C[1:])]))
    assert metrics["test_dice"] == approx(mean([mean(DICE_A), mean(DICE_B), F(1)]))
    # MONAI's default skips B's and C's class 1: (7/12 + 3/4 + 1) / 3
    assert metrics["monai_iou"] == approx((F(7, 12) + F(3, 4) + 1) / 3)
    assert metrics["monai_iou"] > metrics["test_iou_no_bg"]

    details = evaluator.state.metric_details
    assert details["test_iou"].shape == (3, 3)
    assert details["test_iou"][1].tolist() == [approx(v) for v in IOU_B]
    assert "val_mean_iou" not in details  # pooled metrics have no per-item details

    with open(os.path.join(tmp_path, "test_iou_raw.csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["filename", "class0", "class1", "class2", "mean"]
    assert [r[0] for r in rows[1:]] == ["a", "b", "c"]
    assert float(rows[2][-1]) == pytest.approx(float(mean(IOU_B)), abs=1e-4)
    with open(os.path.join(tmp_path, "test_iou_summary.csv")) as f:
        summary = {r[0]: r[1:] for r in csv.reader(f)}
    assert float(summary["mean"][0]) == pytest.approx(float(metrics["test_iou"]), abs=1e-4)
    with open(os.path.join(tmp_path, "metrics.csv")) as f:
        saved = dict(r for r in csv.reader(f))
    assert float(saved["val_mean_iou"]) == pytest.approx(metrics["val_mean_iou"], abs=1e-4)

    # a second run starts from a clean state
    evaluator.run()
    assert evaluator.state.metrics["val_mean_iou"] == approx((F(1, 3) + F(7, 9)) / 2)


# --- DDP: 2 gloo processes, one item each ---------------------------------------------------------------------------


def _dist_worker(rank, tmpdir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmpdir}/rendezvous", rank=rank, world_size=2)
    preds, labels = _items()
    res = {}
    pooled = PooledIoU(num_classes=C)
    pooled.reset()
    pooled.update((preds[rank][None], labels[rank][None]))
    res["pooled"] = pooled.compute()
    res["local_confmat"] = pooled.confusion_matrix.clone()
    per_item = PerImageIoUMetric(include_background=False)
    per_item(y_pred=[preds[rank]], y=[labels[rank]])
    res["per_item"] = float(per_item.aggregate())
    torch.save(res, os.path.join(tmpdir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_metrics_under_ddp(tmp_path):
    mp.spawn(_dist_worker, args=(str(tmp_path),), nprocs=2, join=True)
    results = [torch.load(os.path.join(tmp_path, f"rank{r}.pt")) for r in range(2)]
    for rank, res in enumerate(results):
        assert res["pooled"] == approx(POOLED_NO_BG)  # summed over both ranks
        assert res["per_item"] == approx(F(23, 48))  # gathered over both ranks
    assert results[0]["local_confmat"].tolist() == [[5, 1, 0], [1, 2, 0], [1, 0, 2]]  # not left reduced
