"""gie_polyp_segmentation's test metrics: Dice, IoU, precision and recall per image at the ORIGINAL resolution (the
prediction's logits resized bilinearly to the ground truth's size, then sigmoid > 0.5 i.e. logit >= 0), with the
bundle's own postprocessing and metric settings, against hand-computed numbers. Convention (the source's
``(0 + smooth) / (0 + smooth)``): a ratio with an empty denominator scores 1, so an image without a polyp scores
Dice = IoU = precision = 0 and recall = 1 with a non-empty prediction, and 1 everywhere with an empty one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_ssl_ext.metrics import (PerImageDiceMetric, PerImageIoUMetric, PerImagePrecisionMetric,
                                   PerImageRecallMetric, binary_ratio_scores)

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "gie_polyp_segmentation" / "configs"


def postprocessing():
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    return parser.get_parsed_content("validate#postprocessing")


def items():
    """(network-size logits, original-size label) of three test images.

    A: label 4 x 6, polyp = columns 0-2; logits 2 x 3 = +5 in column 0, -5 elsewhere. Bilinear (align_corners=False)
       to 4 x 6: output column x samples source column (x + 0.5) / 2 - 0.5 -> columns 0, 1 get +5, +2.5 (polyp),
       column 2 gets -2.5: predicted columns 0-1: TP 8, FP 0, FN 4.
    B: label 4 x 4 EMPTY; logits 2 x 2 = +5 top-left only -> upsampled positive on the top-left 2 x 2 (the (1, 1)
       pixel: 0.75 * 0.75 * 5 - (1 - 0.5625) * 5 = 0.625 > 0): TP 0, FP 4, FN 0.
    C: label 3 x 5 EMPTY; logits all -5: nothing predicted.
    """
    a_logits = torch.tensor([[[5.0, -5.0, -5.0], [5.0, -5.0, -5.0]]])
    a_label = torch.zeros(1, 4, 6)
    a_label[:, :, :3] = 1
    b_logits = torch.tensor([[[5.0, -5.0], [-5.0, -5.0]]])
    b_label = torch.zeros(1, 4, 4)
    c_logits = torch.full((1, 2, 2), -5.0)
    c_label = torch.zeros(1, 3, 5)
    return [(a_logits, a_label), (b_logits, b_label), (c_logits, c_label)]


EXPECTED = {  # per image A, B, C, from the counts in items()
    "dice": [2 * 8 / (2 * 8 + 0 + 4), 0.0, 1.0],
    "iou": [8 / 12, 0.0, 1.0],
    "precision": [8 / 8, 0 / 4, 1.0],
    "recall": [8 / 12, 1.0, 1.0],
}


def test_postprocessing_resizes_to_the_ground_truth():
    post = postprocessing()
    outs = [post({"pred": p, "label": y}) for p, y in items()]
    assert [tuple(o["pred"].shape) for o in outs] == [(1, 4, 6), (1, 4, 4), (1, 3, 5)]
    a = torch.zeros(1, 4, 6)
    a[:, :, :2] = 1
    b = torch.zeros(1, 4, 4)
    b[:, :2, :2] = 1
    assert torch.equal(torch.as_tensor(outs[0]["pred"]), a)
    assert torch.equal(torch.as_tensor(outs[1]["pred"]), b)
    assert torch.as_tensor(outs[2]["pred"]).sum() == 0


@pytest.mark.parametrize("kind,metric_class", [("dice", PerImageDiceMetric), ("iou", PerImageIoUMetric),
                                               ("precision", PerImagePrecisionMetric),
                                               ("recall", PerImageRecallMetric)])
def test_metrics_at_original_resolution(kind, metric_class):
    post = postprocessing()
    outs = [post({"pred": p, "label": y}) for p, y in items()]
    metric = metric_class(include_background=True, absent_score=1.0)
    metric(y_pred=[o["pred"] for o in outs], y=[o["label"] for o in outs])  # lists: images of different sizes
    per_image = metric.get_buffer().flatten().tolist()
    assert per_image == pytest.approx(EXPECTED[kind], abs=1e-6)
    assert float(metric.aggregate()) == pytest.approx(sum(EXPECTED[kind]) / 3, abs=1e-6)


def test_bundle_reports_these_metrics():
    """evaluate.json scores the polyp channel (include_background true: the only channel) with absent_score 1."""
    cfg = json.loads((CONFIGS / "evaluate.json").read_text())
    metrics = {**cfg["validate#key_metric"], **cfg["validate#additional_metrics"]}
    targets = {name: m["_target_"] for name, m in metrics.items()}
    assert targets == {"test_mean_dice": "PerImageDice", "test_mean_iou": "PerImageIoU",
                       "test_mean_precision": "PerImagePrecision", "test_mean_recall": "PerImageRecall"}
    assert all(m["include_background"] is True and m["absent_score"] == 1.0 for m in metrics.values())


def test_at_network_resolution_the_numbers_differ():
    """Scoring at the network's 2 x 3 size (label downsampled) would give another Dice for image A: the test above
    would catch a pipeline that does not go back to the original resolution."""
    (logits, _), = items()[:1]
    pred = (logits >= 0).float()
    label_small = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]])  # columns 0-2 of 6 -> nearest at 2 x 3
    dice_small = PerImageDiceMetric()(y_pred=pred[None], y=label_small[None]).item()
    assert dice_small == pytest.approx(2 * 2 / (2 * 2 + 0 + 2))
    assert dice_small != pytest.approx(EXPECTED["dice"][0])


def test_ratio_scores_reject_unknown_kind_and_shape_mismatch():
    with pytest.raises(ValueError, match="precision"):
        binary_ratio_scores(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), "f1")
    with pytest.raises(ValueError, match="same shape"):
        binary_ratio_scores(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3), "recall")
