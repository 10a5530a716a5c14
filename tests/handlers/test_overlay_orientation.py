"""Segmentation overlays (``OverlayWriter``, the one writer of every segmentation inference) keep the input's
orientation and draw the prediction and the ground truth in their own colours, in 2D and on the middle slices
of 3D volumes; an image that is non-square and marked in one corner catches a transpose or a flip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from monai_ssl_ext.handlers import OverlayWriter
from monai_ssl_ext.handlers.contours import mask_contour

PRED, GT = (0, 255, 0), (0, 0, 255)


def _ring(shape, r0, r1, c0, c1) -> np.ndarray:
    """The one-pixel border of the rectangle rows r0..r1-1, columns c0..c1-1 (definition of its outline)."""
    ring = np.zeros(shape, bool)
    ring[r0:r1, c0:c1] = True
    ring[r0 + 1:r1 - 1, c0 + 1:c1 - 1] = False
    return ring


def test_mask_contour_follows_class_boundaries():
    labels = np.zeros((6, 9), int)
    labels[1:5, 1:4] = 1
    labels[1:5, 4:8] = 2  # touches class 1 along a column
    edge = mask_contour(labels, 1)
    # brute force from the definition: a foreground pixel with a 4-neighbour of another class (border = 0)
    p = np.pad(labels, 1)
    ref = np.zeros_like(edge)
    for r in range(6):
        for c in range(9):
            v = labels[r, c]
            ref[r, c] = v > 0 and any(p[r + 1 + dr, c + 1 + dc] != v for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)))
    np.testing.assert_array_equal(edge, ref)
    assert edge[2, 3] and edge[2, 4]  # both sides of the boundary between the classes
    np.testing.assert_array_equal(mask_contour(labels > 0, 1), _ring((6, 9), 1, 5, 1, 8))  # binary: outer ring only
    everywhere = np.ones((4, 5), bool)  # "foreground everywhere": its outline is the picture's border
    np.testing.assert_array_equal(mask_contour(everywhere, 1), _ring((4, 5), 0, 4, 0, 5))


def _picture(tmp_path, h=12, w=20):
    """Grey picture, H != W, a white marker in the top-left corner (rows 1..3, columns 1..7)."""
    img = np.full((h, w, 3), 90, np.uint8)
    img[1:4, 1:8] = 255
    Image.fromarray(img).save(tmp_path / "frame.png")
    return img


def test_2d_overlay_keeps_corners_and_colours(tmp_path):
    src = _picture(tmp_path)
    h, w = src.shape[:2]
    pred = torch.zeros(1, h, w)
    pred[0, 1:4, 1:8] = 1  # the marker, top left, as LoadPictured gives it (row first)
    label = torch.zeros(1, h, w)
    label[0, 6:11, 12:19] = 1  # ground truth in the bottom-right corner
    writer = OverlayWriter(str(tmp_path / "out"), color=PRED, alpha=1.0, label_key="label", label_color=GT, width=1)
    mask_path, overlay_path = writer.write(pred, str(tmp_path / "frame.png"), label)
    mask = np.asarray(Image.open(mask_path))
    assert mask.shape == (h, w) and np.array_equal(mask == 255, pred[0].numpy() > 0)
    o = np.asarray(Image.open(overlay_path))
    fill = pred[0].numpy() > 0
    ring = _ring((h, w), 6, 11, 12, 19)
    assert np.all(o[fill] == PRED) and np.all(o[ring] == GT)
    untouched = ~fill & ~ring
    np.testing.assert_array_equal(o[untouched], src[untouched])  # inside the ground truth too
    # contour style: outlines only, the marker's inside keeps the picture
    writer = OverlayWriter(str(tmp_path / "c"), color=PRED, alpha=1.0, label_key="label", label_color=GT, width=1,
                           style="contour")
    o = np.asarray(Image.open(writer.write(pred, str(tmp_path / "frame.png"), label)[1]))
    pred_ring = _ring((h, w), 1, 4, 1, 8)
    assert np.all(o[pred_ring] == PRED) and np.all(o[ring] == GT)
    assert np.all(o[2, 2:7] == 255)  # the white marker's middle row
    np.testing.assert_array_equal(o[~pred_ring & ~ring], src[~pred_ring & ~ring])


def test_2d_compare_file_and_foreground_everywhere(tmp_path):
    src = _picture(tmp_path)
    h, w = src.shape[:2]
    everywhere = torch.ones(1, h, w)
    label = torch.zeros(1, h, w)
    label[0, 1:4, 1:8] = 1
    writer = OverlayWriter(str(tmp_path / "out"), color=PRED, alpha=1.0, label_key="label", label_color=GT, width=1,
                           compare_postfix="_compare")
    _, overlay_path = writer.write(everywhere, str(tmp_path / "frame.png"), label)
    assert np.all(np.asarray(Image.open(overlay_path)) == PRED)  # the overlay is the prediction alone: all tinted
    c = np.asarray(Image.open(tmp_path / "out" / "frame_compare.png"))
    border = _ring((h, w), 0, h, 0, w)
    gt_ring = _ring((h, w), 1, 4, 1, 8)
    assert np.all(c[border] == PRED) and np.all(c[gt_ring] == GT)  # a wrong model: outline at the border
    np.testing.assert_array_equal(c[~border & ~gt_ring], src[~border & ~gt_ring])
    with pytest.raises(ValueError, match="ground truth"):
        writer.write(everywhere, str(tmp_path / "frame.png"), torch.zeros(1, w, h))


X, Y, Z = 12, 14, 16  # three different lengths: a swapped axis changes a panel's shape


def _volume() -> np.ndarray:
    """(X, Y, Z) background 10; three bright bars along the edges through the origin corner, each crossing the
    middle slice of one axis as a 3 x 5 block in that slice's top-left corner (rows = first remaining axis)."""
    v = np.full((X, Y, Z), 10.0, np.float32)
    v[:3, :5, :] = 100  # axis-2 slice (x, y): rows x < 3, columns y < 5
    v[:, :3, :5] = 100  # axis-0 slice (y, z): rows y < 3, columns z < 5
    v[:3, :, :5] = 100  # axis-1 slice (x, z): rows x < 3, columns z < 5
    return v


EXPECTED_SHAPE = {0: (Y, Z), 1: (X, Z), 2: (X, Y)}


def _engine_item(pred: np.ndarray, label: np.ndarray | None, image: np.ndarray, name: str):
    meta = {"filename_or_obj": name}
    item = {"pred": MetaTensor(torch.as_tensor(pred)[None], meta=dict(meta)),
            "original": MetaTensor(torch.as_tensor(image)[None], meta=dict(meta))}
    if label is not None:
        item["label"] = torch.as_tensor(label)[None]
    return item


def _run(writer, items):
    from ignite.engine import Engine

    engine = Engine(lambda e, b: b)
    writer.attach(engine)
    engine.run([items], max_epochs=1)


def test_3d_middle_slices_keep_the_marker_in_its_corner(tmp_path):
    vol = _volume()
    marker = vol > 50
    # nothing predicted: the panels show the volume itself
    writer = OverlayWriter(str(tmp_path / "plain"), original_key="original", color=PRED, alpha=1.0)
    _run(writer, [_engine_item(np.zeros_like(vol), None, vol, str(tmp_path / "ct001.nii.gz"))])
    for k, shape in EXPECTED_SHAPE.items():
        panel = np.asarray(Image.open(tmp_path / "plain" / f"ct001_overlay_axis{k}.png"))
        assert panel.shape == (*shape, 3), (k, panel.shape)
        expected = np.zeros(shape, bool)
        expected[:3, :5] = True  # top left, 3 rows x 5 columns
        np.testing.assert_array_equal(panel[..., 0] == 255, expected)
        np.testing.assert_array_equal(panel[..., 0] == 0, ~expected)

    # the marker predicted as class 1, ground truth = the marker as class 2 (a perfect model)
    writer = OverlayWriter(str(tmp_path / "out"), original_key="original", label_key="label", color=PRED, alpha=1.0,
                           label_color=GT, width=1)
    _run(writer, [_engine_item(marker.astype(np.float32), 2.0 * marker, vol, str(tmp_path / "ct001.nii.gz"))])
    for k, shape in EXPECTED_SHAPE.items():
        o = np.asarray(Image.open(tmp_path / "out" / f"ct001_overlay_axis{k}.png"))
        ring = _ring(shape, 0, 3, 0, 5)
        inside = np.zeros(shape, bool)
        inside[1, 1:4] = True  # the block's inside (outline 1 pixel, the picture border counts as outside)
        assert np.all(o[ring] == GT) and np.all(o[inside] == PRED), k
        assert np.all(o[~ring & ~inside] == 0), k  # background (scaled to black) untouched


def test_3d_prediction_everywhere_and_errors(tmp_path):
    vol = _volume()
    gt = (vol > 50).astype(np.float32)
    writer = OverlayWriter(str(tmp_path / "out"), original_key="original", label_key="label", color=PRED, alpha=1.0,
                           label_color=GT, width=1, axes=[2])
    _run(writer, [_engine_item(np.ones_like(vol), gt, vol, str(tmp_path / "ct002.nii.gz"))])
    o = np.asarray(Image.open(tmp_path / "out" / "ct002_overlay_axis2.png"))
    ring = _ring((X, Y), 0, 3, 0, 5)
    assert np.all(o[ring] == GT) and np.all(o[~ring] == PRED)  # everything tinted, the ground truth outlined
    assert not (tmp_path / "out" / "ct002_overlay_axis0.png").exists()  # only the axes asked for
    no_original = OverlayWriter(str(tmp_path / "x"))
    with pytest.raises(ValueError, match="original_key"):
        no_original.write_volume(torch.ones(1, X, Y, Z), "ct.nii.gz", None)
    with pytest.raises(ValueError, match="Invertd"):
        writer.write_volume(torch.ones(1, X, Y, Z), "ct.nii.gz", torch.zeros(1, Y, X, Z))
    with pytest.raises(ValueError, match="axes"):
        OverlayWriter(str(tmp_path / "x"), axes=[3])


def test_inference_items_keep_the_ground_truth():
    from monai_ssl_ext.handlers import inference_items

    items = inference_items([{"image": "a.png", "label": "a_gt.png", "patient": 3}, {"image": "b.png"}, "c.png"])
    assert items == [{"image": "a.png", "label": "a_gt.png"}, {"image": "b.png"}, {"image": "c.png"}]
    with pytest.raises(ValueError, match="item 0"):
        inference_items([{"label": "x.png"}])
