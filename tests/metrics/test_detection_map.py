"""COCO-style detection AP (``monai_ssl_ext.metrics.detection_scores`` / ``DetectionMAP``) against answers worked
out by hand from the definition: greedy matching by score at IoU >= t, precision envelope, 101 recall points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_ssl_ext.metrics import DetectionMAP, detection_scores

RECALL_POINTS = np.linspace(0, 1, 101)


def ap_101(tp_flags_by_score: list[bool], n_gt: int) -> float:
    """AP from the definition: walk the detections by decreasing score, precision/recall after each, envelope
    p_i(r) = max precision at recall >= r, averaged over r = 0, 0.01, ..., 1 (0 where the recall is never
    reached)."""
    tp = np.cumsum(tp_flags_by_score)
    precision = tp / np.arange(1, len(tp) + 1)
    recall = tp / n_gt
    return float(np.mean([max([p for p, r in zip(precision, recall) if r >= t - 1e-12], default=0.0)
                          for t in RECALL_POINTS]))


def hand_case():
    """Two images, one polyp each. Image 1: an exact detection (0.9) and a false positive elsewhere (0.95).
    Image 2: a detection covering 64% of the polyp (IoU 0.64, score 0.8)."""
    gt = [np.array([[0, 0, 10, 10]], float), np.array([[20, 20, 30, 30]], float)]
    pred = [np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float), np.array([[20, 20, 30, 26.4]], float)]
    scores = [np.array([0.9, 0.95]), np.array([0.8])]
    return pred, scores, gt


def test_hand_made_boxes_known_answer():
    pred, scores, gt = hand_case()
    out = detection_scores(pred, scores, gt)
    # by score: FP (0.95), exact (0.9), IoU-0.64 (0.8). At t <= 0.60 both are hits: precision 0, 1/2, 2/3 at
    # recall 0, 1/2, 1 -> envelope 2/3 everywhere -> AP 2/3. At t >= 0.65 only the exact one: precision 1/2 at
    # recall 1/2 -> envelope 1/2 on the 51 points r <= 0.5, 0 above -> AP 25.5 / 101.
    ap_low, ap_high = 2 / 3, 25.5 / 101
    assert out["map50"] == pytest.approx(ap_low, abs=1e-9)
    assert out["map75"] == pytest.approx(ap_high, abs=1e-9)
    # t = 0.50, 0.55, 0.60 (3 thresholds) low, 0.65 ... 0.95 (7) high
    assert out["map"] == pytest.approx((3 * ap_low + 7 * ap_high) / 10, abs=1e-9)
    # the same from the definition-level helper
    assert ap_101([False, True, True], 2) == pytest.approx(ap_low)
    assert ap_101([False, True, False], 2) == pytest.approx(ap_high)
    # mean recall: 1 for t <= 0.60, 1/2 above
    assert out["mar"] == pytest.approx((3 * 1 + 7 * 0.5) / 10)


def test_false_positive_on_empty_image_counts():
    """A third image without polyp gets a high-scoring detection: it ranks first and halves the precision."""
    pred, scores, gt = hand_case()
    pred = pred + [np.array([[1, 1, 5, 5]], float)]
    scores = scores + [np.array([0.99])]
    gt = gt + [np.zeros((0, 4))]
    out = detection_scores(pred, scores, gt)
    # t = 0.5: by score FP, FP, TP, TP -> precision 0, 0, 1/3, 1/2 at recall 0, 0, 1/2, 1 -> envelope 1/2
    assert out["map50"] == pytest.approx(ap_101([False, False, True, True], 2)) and out["map50"] == pytest.approx(0.5)


def test_perfect_and_missing_detections():
    gt = [np.array([[0, 0, 10, 10], [20, 20, 40, 30]], float)]
    perfect = detection_scores([gt[0]], [np.array([0.5, 0.7])], gt)
    assert perfect == {"map": pytest.approx(1.0), "map50": pytest.approx(1.0), "map75": pytest.approx(1.0),
                       "mar": pytest.approx(1.0)}
    none = detection_scores([np.zeros((0, 4))], [np.zeros(0)], gt)
    assert none["map"] == 0.0 and none["map50"] == 0.0


def test_duplicate_detection_is_a_false_positive():
    """Two detections on one polyp: the lower-scoring one cannot match it again."""
    gt = [np.array([[0, 0, 10, 10]], float)]
    out = detection_scores([np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float)], [np.array([0.9, 0.8])], gt)
    assert out["map50"] == pytest.approx(ap_101([True, False], 1)) and out["map50"] == pytest.approx(1.0)
    out = detection_scores([np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float)], [np.array([0.8, 0.9])], gt)
    assert out["map50"] == pytest.approx(1.0)  # order of equal boxes does not matter


def test_ignite_metric_accumulates_images():
    pred, scores, gt = hand_case()
    expected = detection_scores(pred, scores, gt)
    for name in ("map", "map50", "map75"):
        metric = DetectionMAP(score=name)
        metric.reset()
        for p, s, g in zip(pred, scores, gt):  # one image per iteration, torch tensors as the detector gives them
            metric.update(([{"boxes": torch.as_tensor(p), "scores": torch.as_tensor(s)}], [{"boxes": torch.as_tensor(g)}]))
        assert metric.compute() == pytest.approx(expected[name])
    with pytest.raises(ValueError, match="score must be one of"):
        DetectionMAP(score="ap")
