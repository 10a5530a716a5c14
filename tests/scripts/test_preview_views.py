"""scripts/preview_views.py: the grid's input is what the bundle loads (its transforms before the multi-view step,
in the stored orientation), each view is a fresh augmentation of it, 3D volumes give their three middle slices;
the PNG has a row per image and a column per input / view (per axis in 3D)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, load_script
from monai_ssl_ext.preview import _panels, bundle_view_samples


def test_2d_input_is_the_loaded_picture_and_views_differ(demo_data, tmp_path):
    from monai_ssl_ext.transforms import LoadPictured

    data = demo_data("hyperkvasir")
    samples = bundle_view_samples(ROOT / "bundles" / "mocov3_hyperkvasir", data, ["train.json"], n=3,
                                  image_size=32, bundle_root=str(tmp_path))
    assert len(samples) == 3
    for s in samples:
        raw = LoadPictured("image")({"image": s["source"]["image"]})["image"]
        assert s["input"].shape == raw.shape  # channel first, rows down: the stored orientation
        assert s["input"].dtype == torch.uint8  # the bundle crops in uint8, before converting to float
        np.testing.assert_array_equal(s["input"].numpy(), raw.numpy())
        v1, v2 = s["views"]
        assert v1.shape == v2.shape == (3, 32, 32) and not torch.equal(v1, v2)


def test_3d_variant_gives_three_middle_slices(demo_data, tmp_path):
    samples = bundle_view_samples(ROOT / "bundles" / "simclr_cholec", demo_data("tcia"), ["train.json", "train_3d.json"],
                                  n=1, roi_size=[16, 16, 16], bundle_root=str(tmp_path))
    (s,) = samples
    assert s["input"].ndim == 4 and [v.shape for v in s["views"]] == [(1, 16, 16, 16)] * 2
    vol = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    panels = _panels(vol)
    assert [p.shape for p in panels] == [(3, 4), (2, 4), (2, 3)]
    ref = vol[0, 1].numpy()  # the middle slice along axis 0, min-max scaled
    np.testing.assert_allclose(panels[0], (ref - ref.min()) / (ref.max() - ref.min()))


def test_script_writes_the_grid(demo_data, tmp_path):
    out = tmp_path / "views.png"
    load_script("preview_views").main("mocov3_hyperkvasir", demo_data("hyperkvasir"), out=str(out), n=2,
                                      overrides={"image_size": 32, "bundle_root": str(tmp_path)})
    w, h = Image.open(out).size
    assert w > h  # 2 rows x 3 columns (input, view 1, view 2)


def test_a_bundle_without_views_is_refused(demo_data, tmp_path):
    with pytest.raises(ValueError, match="MultiViewd"):
        bundle_view_samples(ROOT / "bundles" / "unet_acdc", demo_data("acdc"), ["train.json"], n=1,
                            bundle_root=str(tmp_path))
