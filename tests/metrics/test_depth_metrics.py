"""SSL4GIE depth metrics (monai_ssl_ext.metrics, gie_depth): hand-made values, the padding geometry of the
alignment back to the original picture, and the pooled validation SSI-MSE against numpy least squares."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_ssl_ext.transforms import SquareResized
from monai_ssl_ext.metrics import (AlignDepthd, DepthErrorMetric, ScaleShiftInvariantMSE, align_depth_to_original,
                                   depth_errors)


def test_depth_errors_on_a_hand_made_example():
    target = torch.tensor([[0.2, 0.4], [0.0, 0.5]])  # one pixel without ground truth
    pred = torch.tensor([[0.1, 0.5], [0.9, 0.5]])
    # x10: target 2, 4, 5 (valid), prediction 1, 5, 5 -> errors -1, +1, 0
    e = depth_errors(pred, target)
    assert e["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert e["abs_rel"] == pytest.approx(0.25)  # median of 1/2, 1/4, 0
    assert e["abs"] == pytest.approx(2 / 3)
    assert all(math.isnan(v) for v in depth_errors(pred, torch.zeros_like(target)).values())


@pytest.mark.parametrize("h,w", [(6, 10), (7, 10), (10, 5)])
def test_alignment_undoes_the_square_padding(h, w):
    """With the network size equal to the square side nothing is resampled: an affine copy of the padded label
    aligns back to exactly the original ground truth, cropped at the padding offsets (odd pads included)."""
    g = torch.Generator().manual_seed(h * w)
    depth = 0.1 + 0.8 * torch.rand(1, h, w, generator=g)
    side = max(h, w)
    label = SquareResized("label", spatial_size=side, mode="bilinear")({"label": depth})["label"]
    top, left = (side - h) // 2, (side - w) // 2
    torch.testing.assert_close(label.as_tensor()[:, top:top + h, left:left + w] if hasattr(label, "as_tensor")
                               else label[:, top:top + h, left:left + w], depth)
    assert float(label.sum()) == pytest.approx(float(depth.sum()), rel=1e-6)  # the padding is 0
    pred = 3.0 * label - 0.25
    out = align_depth_to_original(pred, label, (h, w))
    torch.testing.assert_close(out, depth, rtol=1e-5, atol=1e-5)


def test_alignment_clips_to_unit_range():
    label = torch.tensor([[[0.0, 0.5], [1.0, 0.0]]])  # two valid pixels -> an exact affine fit of any prediction
    pred = torch.tensor([[[5.0, 0.0], [1.0, -4.0]]])
    out = align_depth_to_original(pred, label, (2, 2))
    # the valid pixels fix s p + t through (0 -> 0.5) and (1 -> 1): s = 0.5, t = 0.5; 5 -> 3 (clipped to 1),
    # -4 -> -1.5 (clipped to 0)
    torch.testing.assert_close(out, torch.tensor([[[1.0, 0.5], [1.0, 0.0]]]))


def test_depth_error_metric_is_the_mean_of_per_image_values():
    g = np.random.default_rng(0)
    preds, targets, ref = [], [], {"rmse": [], "abs_rel": [], "abs": []}
    for h, w in [(5, 7), (6, 6), (4, 9)]:  # images of different sizes
        d = g.uniform(0.1, 1.0, (1, h, w))
        d[0, 0, :2] = 0.0
        p = np.clip(d + g.normal(0, 0.05, d.shape), 0, 1)
        m = d > 0
        err = (p - d)[m] * 10
        ref["rmse"].append(np.sqrt(np.mean(err**2)))
        rel = np.sort(np.abs(err) / (d[m] * 10))
        ref["abs_rel"].append(rel[(rel.size - 1) // 2])  # torch.median, as the source: the lower middle value
        ref["abs"].append(np.mean(np.abs(err)))
        preds.append(torch.from_numpy(p))
        targets.append(torch.from_numpy(d))
    for kind in ("rmse", "abs_rel", "abs"):
        metric = DepthErrorMetric(kind)
        metric(preds[:2], targets[:2])
        metric(preds[2:], targets[2:])
        assert float(metric.aggregate()) == pytest.approx(np.mean(ref[kind]), rel=1e-5)
    with pytest.raises(ValueError, match="kind"):
        DepthErrorMetric("delta1")


def test_validation_ssi_mse_pools_pixels_of_the_split():
    g = torch.Generator().manual_seed(3)
    pred = torch.rand(5, 1, 8, 8, generator=g, dtype=torch.float64)
    label = 0.1 + torch.rand(5, 1, 8, 8, generator=g, dtype=torch.float64)
    label[:, :, :2] = 0.0
    metric = ScaleShiftInvariantMSE()
    metric.reset()
    metric.update((list(pred[:2]), list(label[:2])))
    metric.update((pred[2:], label[2:]))
    total, n = 0.0, 0
    for p, d in zip(pred[:, 0].numpy(), label[:, 0].numpy()):
        m = d > 0
        a = np.stack([p[m], np.ones(m.sum())], 1)
        coef, *_ = np.linalg.lstsq(a, d[m], rcond=None)
        total += ((a @ coef - d[m]) ** 2).sum()
        n += m.sum()
    assert metric.compute() == pytest.approx(total / (2 * n), rel=1e-6)  # accumulated from float32


def test_align_depthd_outputs_and_skips_items_without_ground_truth():
    depth = 0.1 + torch.rand(1, 6, 8)
    label = SquareResized("label", spatial_size=16)({"label": depth})["label"]
    out = AlignDepthd()({"pred": label * 2, "label": label, "depth": depth})
    assert out["pred_full"].shape == (1, 6, 8) and torch.equal(out["label_full"], depth)
    item = {"pred": label, "label": label}
    assert AlignDepthd()(item) == item
