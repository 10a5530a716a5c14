"""Kvasir-SEG box reader (``monai_ssl_ext.gie.read_kvasir_boxes`` / ``kvasir_detection_items``): good file, box
outside the image, missing id, size disagreement; and the training pipeline's box-aware rot90 / flips (the
gie_polyp_detection train.json transforms) keep each box on its object."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_ssl_ext.gie import kvasir_detection_items, read_kvasir_boxes, write_split

ROOT = Path(__file__).resolve().parents[2]


def _fixture(tmp_path: Path, boxes: dict | None = None) -> tuple[Path, list[Path]]:
    """Two images (40 high x 60 wide, 50 x 30) and a bounding-boxes.json."""
    (tmp_path / "images").mkdir()
    sizes = {"aaa": (40, 60), "bbb": (50, 30)}
    paths = []
    for name, (h, w) in sizes.items():
        p = tmp_path / "images" / f"{name}.jpg"
        Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(p)
        paths.append(p)
    boxes = boxes if boxes is not None else {
        "aaa": {"height": 40, "width": 60, "bbox": [{"label": "polyp", "xmin": 5, "ymin": 10, "xmax": 60, "ymax": 30},
                                                    {"label": "polyp", "xmin": 0, "ymin": 0, "xmax": 3, "ymax": 4}]},
        "bbb": {"height": 50, "width": 30, "bbox": []},
    }
    (tmp_path / "bounding-boxes.json").write_text(json.dumps(boxes))
    return tmp_path / "bounding-boxes.json", paths


def test_reads_good_file(tmp_path):
    js, paths = _fixture(tmp_path)
    out = read_kvasir_boxes(js, paths)
    assert set(out) == {"aaa", "bbb"}
    np.testing.assert_array_equal(out["aaa"]["boxes"], [[5, 10, 60, 30], [0, 0, 3, 4]])  # xyxy, x along the width
    assert out["aaa"]["boxes"].dtype == np.float32 and out["aaa"]["labels"].tolist() == [1, 1]
    assert (out["aaa"]["height"], out["aaa"]["width"]) == (40, 60)
    assert out["bbb"]["boxes"].shape == (0, 4) and out["bbb"]["labels"].shape == (0,)


def test_box_outside_image_names_id_and_file(tmp_path):
    # xmax 61 > width 60 (the box would fit the transposed image: the check uses the real width)
    js, paths = _fixture(tmp_path, {"aaa": {"bbox": [{"xmin": 5, "ymin": 1, "xmax": 61, "ymax": 30}]},
                                    "bbb": {"bbox": []}})
    with pytest.raises(ValueError, match=r"'aaa'.*bounding-boxes\.json.*outside the image"):
        read_kvasir_boxes(js, paths)
    (tmp_path / "b").mkdir()  # ymax 51 > height 50
    js, paths = _fixture(tmp_path / "b", {"aaa": {"bbox": []}, "bbb": {"bbox": [{"xmin": 0, "ymin": 0, "xmax": 20, "ymax": 51}]}})
    with pytest.raises(ValueError, match=r"'bbb'.*outside"):
        read_kvasir_boxes(js, paths)


def test_empty_box_and_negative_coordinate_refused(tmp_path):
    js, paths = _fixture(tmp_path, {"aaa": {"bbox": [{"xmin": 10, "ymin": 5, "xmax": 10, "ymax": 8}]}, "bbb": {"bbox": []}})
    with pytest.raises(ValueError, match="'aaa'"):
        read_kvasir_boxes(js, paths)
    (tmp_path / "c").mkdir()
    js, paths = _fixture(tmp_path / "c", {"aaa": {"bbox": [{"xmin": -1, "ymin": 5, "xmax": 10, "ymax": 8}]}, "bbb": {"bbox": []}})
    with pytest.raises(ValueError, match="'aaa'"):
        read_kvasir_boxes(js, paths)


def test_missing_id_names_id_and_file(tmp_path):
    js, paths = _fixture(tmp_path, {"aaa": {"bbox": []}})
    with pytest.raises(ValueError, match=r"'bbb'.*bounding-boxes\.json.*no entry"):
        read_kvasir_boxes(js, paths)


def test_size_in_json_must_match_image(tmp_path):
    js, paths = _fixture(tmp_path, {"aaa": {"height": 60, "width": 40, "bbox": []}, "bbb": {"bbox": []}})
    with pytest.raises(ValueError, match=r"'aaa'.*height 60"):
        read_kvasir_boxes(js, paths)


def test_detection_items_from_split(tmp_path):
    js, paths = _fixture(tmp_path)
    split = tmp_path / "split_80_10_10.json"
    write_split({"training": [{"image": "images/aaa.jpg", "label": "masks/aaa.jpg"}],
                 "validation": [{"image": "images/bbb.jpg", "label": "masks/bbb.jpg"}],
                 "test": [{"image": "images/bbb.jpg", "label": "masks/bbb.jpg"}]}, split)
    items = kvasir_detection_items(split, "training")
    assert len(items) == 1 and items[0]["image"] == str(paths[0]) and "label" not in items[0]
    np.testing.assert_array_equal(items[0]["boxes"], [[5, 10, 60, 30], [0, 0, 3, 4]])


# ---- box-aware augmentation of train.json --------------------------------------------------------------------

def _box_transforms():
    """The bundle's own rot90 / hflip / vflip (with the axis swaps around them), every probability set to 1."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    import monai_ssl_ext  # noqa: F401

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "gie_polyp_detection" / "configs" / "train.json"))
    out = {}
    for name in ("rotate", "hflip", "vflip"):
        parser[f"train#{name}#prob"] = 1.0
    for name in ("to_box_axes", "rotate", "hflip", "vflip", "from_box_axes"):
        out[name] = parser.get_parsed_content(f"train#{name}")
    return out, Compose


def _object_image(h: int, w: int, box) -> torch.Tensor:
    """Asymmetric picture: an L-shaped bright object filling exactly ``box`` (xyxy), dark elsewhere."""
    img = torch.zeros(3, h, w)
    x0, y0, x1, y1 = box
    img[:, y0:y1, x0:x0 + 3] = 1.0  # vertical bar of the L
    img[:, y1 - 3:y1, x0:x1] = 1.0  # foot of the L
    return img


def _tight_box(img: torch.Tensor) -> list[int]:
    ys, xs = torch.nonzero(img[0] > 0.5, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@pytest.mark.parametrize("steps", [["rotate"], ["hflip"], ["vflip"], ["rotate", "hflip", "vflip"]])
def test_box_follows_its_object(steps):
    t, Compose = _box_transforms()
    h, w, box = 40, 64, (7, 5, 30, 22)  # non-square picture, off-centre box
    img = _object_image(h, w, box)
    assert _tight_box(img) == list(box)
    pipeline = Compose([t["to_box_axes"], *[t[s] for s in steps], t["from_box_axes"]])
    out = pipeline({"image": img.clone(), "boxes": np.array([box], np.float32), "labels": np.array([1])})
    moved = torch.as_tensor(out["image"])
    assert moved.shape[0] == 3
    if "rotate" in steps:
        assert tuple(moved.shape[1:]) == (w, h)
    else:
        assert tuple(moved.shape[1:]) == (h, w)
    assert not torch.equal(moved[:, : min(h, w), : min(h, w)], img[:, : min(h, w), : min(h, w)])  # it did move
    # the transformed box is exactly the object's new extent (x along the width, pixel corners)
    np.testing.assert_allclose(np.asarray(out["boxes"])[0], _tight_box(moved), atol=1e-4)


def test_empty_boxes_pass_through():
    t, Compose = _box_transforms()
    pipeline = Compose([t["to_box_axes"], t["rotate"], t["hflip"], t["vflip"], t["from_box_axes"]])
    out = pipeline({"image": torch.rand(3, 20, 30), "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)})
    assert np.asarray(out["boxes"]).reshape(-1, 4).shape == (0, 4)
