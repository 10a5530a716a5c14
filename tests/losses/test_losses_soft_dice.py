"""SSL4GIE's polyp loss is ``SoftDiceLoss`` (Binary_segmentation/Metrics/losses.py): per image
``1 - 2 (sum(p t) + s) / (sum(p^2) + sum(t^2) + s)`` with ``p = sigmoid(logits)``, ``s = 1e-8``, averaged over the
batch. gie_polyp_segmentation uses MONAI's ``DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=2e-8,
smooth_dr=1e-8)`` for it (``2 (I + s) = 2 I + 2 s``); checked here against that formula, values and gradients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.losses import DiceLoss

BUNDLE_TRAIN = Path(__file__).resolve().parents[2] / "bundles" / "gie_polyp_segmentation" / "configs" / "train.json"


def soft_dice_formula(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1e-8) -> torch.Tensor:
    """Written from the source's definition, in float64, one image at a time."""
    losses = []
    for x, t in zip(logits.double(), targets.double()):
        p = 1.0 / (1.0 + torch.exp(-x))
        score = 2.0 * ((p * t).sum() + smooth) / ((p * p).sum() + (t * t).sum() + smooth)
        losses.append(1.0 - score)
    return torch.stack(losses).mean()


def bundle_loss() -> DiceLoss:
    """The loss exactly as the bundle's train.json configures it."""
    cfg = json.loads(BUNDLE_TRAIN.read_text())["loss"]
    assert cfg.pop("_target_") == "DiceLoss"
    return DiceLoss(**cfg)


@pytest.mark.parametrize("case", ["random", "empty_target", "all_target", "confident"])
def test_values_and_gradients_match_the_formula(case):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 1, 9, 7, generator=g, dtype=torch.float64) * 2
    targets = (torch.rand(3, 1, 9, 7, generator=g) > 0.6).double()
    if case == "empty_target":
        targets[1] = 0
    elif case == "all_target":
        targets[:] = 1
    elif case == "confident":
        logits = (targets * 2 - 1) * 8
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    got = bundle_loss()(a, targets)
    want = soft_dice_formula(b, targets)
    assert torch.allclose(got.double(), want, rtol=1e-10, atol=1e-12)
    got.backward()
    want.backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-14)


def test_hand_computed_value():
    """One 2-pixel image: logits (0, 0) -> p = (0.5, 0.5), target (1, 0): 1 - 2 * 0.5 / (0.5 + 1) = 1/3."""
    loss = bundle_loss()(torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]]]]))
    assert loss.item() == pytest.approx(1 / 3, abs=1e-7)


def test_not_the_linear_denominator():
    """The squared denominator matters: with squared_pred=False the value differs (the test can fail)."""
    logits = torch.tensor([[[[0.3, -1.2, 2.0, 0.1]]]])
    t = torch.tensor([[[[1.0, 0.0, 1.0, 0.0]]]])
    linear = DiceLoss(sigmoid=True, squared_pred=False, smooth_nr=2e-8, smooth_dr=1e-8)(logits, t)
    assert abs(linear.item() - soft_dice_formula(logits, t).item()) > 1e-3
