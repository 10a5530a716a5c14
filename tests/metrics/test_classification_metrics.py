"""Classification metrics (macro F1 / precision / recall, accuracy: SSL4GIE's Hyperkvasir task), the class weights
and the class-weighted cross-entropy, against numbers worked out by hand and formulas written here."""

from __future__ import annotations

import pytest
import torch

from monai_ssl_ext.metrics import ClassificationScore, classification_confusion_matrix, classification_scores
from monai_ssl_ext.networks import class_weights

# A 3-class confusion matrix M[true, predicted] and its scores, worked out by hand:
#   TP = (3, 2, 1); column sums (4, 3, 3) -> FP = (1, 1, 2); row sums (4, 4, 2) -> FN = (1, 2, 1)
#   precision = (3/4, 2/3, 1/3) -> macro 7/12;  recall = (3/4, 1/2, 1/2) -> macro 7/12
#   F1 = 2TP / (2TP + FP + FN) = (6/8, 4/7, 2/5) -> macro (3/4 + 4/7 + 2/5) / 3 = 241/420;  accuracy 6/10
HAND_M = [[3, 1, 0], [0, 2, 2], [1, 0, 1]]
HAND = {"macro_precision": 7 / 12, "macro_recall": 7 / 12, "macro_f1": 241 / 420, "accuracy": 0.6}


def _pairs(m):
    """(predictions, labels) that give the confusion matrix ``m``."""
    pred, label = [], []
    for t, row in enumerate(m):
        for p, n in enumerate(row):
            pred += [p] * n
            label += [t] * n
    return torch.tensor(pred), torch.tensor(label)


# ---- metrics and class weights ------------------------------------------------------------------------------------


def test_scores_of_a_hand_made_confusion():
    s = classification_scores(torch.tensor(HAND_M))
    for k, v in HAND.items():
        assert s[k] == pytest.approx(v, abs=1e-12), k
    assert s["precision"].tolist() == pytest.approx([3 / 4, 2 / 3, 1 / 3])
    assert s["recall"].tolist() == pytest.approx([3 / 4, 1 / 2, 1 / 2])
    assert s["f1"].tolist() == pytest.approx([6 / 8, 4 / 7, 2 / 5])
    assert s["support"].tolist() == [4, 4, 2]


def test_confusion_from_scores_and_metric_over_batches():
    """The ignite metric pooled over two batches of logits gives the hand-made matrix's scores."""
    pred, label = _pairs(HAND_M)
    logits = torch.nn.functional.one_hot(pred, 3).float() * 5.0 + 0.1 * torch.randn(len(pred), 3)
    assert classification_confusion_matrix(logits, label, 3).tolist() == HAND_M
    for score, value in HAND.items():
        metric = ClassificationScore(num_classes=3, score=score)
        metric.reset()
        metric.update((logits[:4], label[:4]))
        metric.update((logits[4:], label[4:].reshape(-1, 1)))  # (B, 1) labels too
        assert metric.compute() == pytest.approx(value, abs=1e-12), score
        assert metric.pooled_confusion_matrix.tolist() == HAND_M


def test_zero_division_scores_one_not_the_sources_two():
    """Class 2 never predicted and absent from the labels: precision, recall and F1 are 0/0 and score 1 (the source's
    smoothed precision / recall give 1 too; its smoothed F1 2(0+s)/(0+0+s) would give 2, an F1 above 1, which is
    not reproduced); class 1 present but never predicted: precision 1 (0/0), recall 0, F1 0."""
    m = [[2, 0, 0], [1, 0, 0], [0, 0, 0]]
    s = classification_scores(torch.tensor(m))
    assert s["precision"].tolist() == pytest.approx([2 / 3, 1.0, 1.0])
    assert s["recall"].tolist() == pytest.approx([1.0, 0.0, 1.0])
    assert s["f1"].tolist() == pytest.approx([4 / 5, 0.0, 1.0])
    s0 = classification_scores(torch.tensor(m), zero_division=0.0)
    assert s0["f1"].tolist() == pytest.approx([4 / 5, 0.0, 0.0])
    assert s0["accuracy"] == pytest.approx(2 / 3)


def test_bad_metric_input_is_named():
    with pytest.raises(ValueError, match=r"labels outside \[0, 3\): \[3\]"):
        classification_confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="4 classes, expected 3"):
        classification_confusion_matrix(torch.zeros(2, 4), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="score must be one of"):
        ClassificationScore(num_classes=3, score="f1")


def test_class_weights_of_a_hand_made_count():
    """Counts (2, 1, 5), N = 8, C = 3: w = 8 / (3 * N_c) = (4/3, 8/3, 8/15)."""
    items = [{"label": v} for v in (0, 2, 2, 1, 2, 0, 2, 2)]
    assert class_weights(items, 3).tolist() == pytest.approx([4 / 3, 8 / 3, 8 / 15])
    assert class_weights([0, 1, 0, 1], 2).tolist() == pytest.approx([1.0, 1.0])  # balanced: all 1
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have no training items"):
        class_weights([0, 2, 2], 3)
    with pytest.raises(ValueError, match="outside"):
        class_weights([0, 3], 3)


def test_weighted_loss_value_and_gradient():
    """The bundle's loss (CrossEntropyLoss with the class weights) against -sum_i w_{y_i} log p_i(y_i) / sum_i w_{y_i},
    values and gradients."""
    w = class_weights([0, 0, 1, 2, 2, 2], 3)
    loss_fn = torch.nn.CrossEntropyLoss(weight=w)
    torch.manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=True)
    y = torch.tensor([0, 2, 1, 2, 0])
    got = loss_fn(logits, y)
    (g_got,) = torch.autograd.grad(got, logits)
    x = logits.detach().double().requires_grad_(True)
    logp = x - torch.log(torch.exp(x).sum(dim=1, keepdim=True))
    wy = w.double()[y]
    ref = -(wy * logp[torch.arange(5), y]).sum() / wy.sum()
    (g_ref,) = torch.autograd.grad(ref, x)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(g_got.double(), g_ref, atol=1e-6)
