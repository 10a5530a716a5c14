"""Small helpers that keep Python out of bundle configs, each checked on values written here."""

from __future__ import annotations

import pytest

from monai_ssl_ext.data import image_items
from monai_ssl_ext.encoders import arch_if_random
from monai_ssl_ext.utils import epoch_milestones


def test_epoch_milestones():
    assert epoch_milestones([0.6, 0.8], 100) == [60, 80]
    assert epoch_milestones([0.6, 0.8], 2) == [1, 2]  # 1.2 -> 1, 1.6 -> 2
    assert epoch_milestones([0.01], 10) == [1]  # never epoch 0


def test_image_items_from_datalist_or_paths():
    datalist = [{"image": "a.png", "label": "a_mask.png"}, {"image": "b.png", "label": "b_mask.png"}]
    assert image_items(datalist) == [{"image": "a.png"}, {"image": "b.png"}]
    assert image_items(["a.png", "b.png"]) == [{"image": "a.png"}, {"image": "b.png"}]


@pytest.mark.parametrize("spec,expected", [(None, "resnet18"), ("random", "resnet18"),
                                           ("runs/x/encoder.pt", None), ("timm/resnet18", None)])
def test_arch_if_random(spec, expected):
    assert arch_if_random("resnet18", spec) == expected
