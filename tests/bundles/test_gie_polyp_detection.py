"""gie_polyp_detection beyond the harness: the evaluator wiring (DetectionEvaluator + DetectionMAP give the scores
of the detections), the inference writer (boxes JSON in Kvasir's format, PNG with predictions and ground truth in
their colours), and bad data stopping the bundle with the id and file named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image
from torch import nn

from monai_ssl_ext.engines import DetectionEvaluator, DetectionWriter
from monai_ssl_ext.metrics import DetectionMAP, detection_scores

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "gie_polyp_detection" / "configs"


class FixedDetector(nn.Module):
    """Returns preset detections for each image (eval mode), whatever the pixels."""

    def __init__(self, detections: list[dict]):
        super().__init__()
        self.detections = detections
        self.calls = 0
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None):
        out = []
        for _ in images:
            out.append({k: v.clone() for k, v in self.detections[self.calls].items()})
            self.calls += 1
        return out


def _items(tmp_path):
    """Two 40 x 60 images, one polyp each."""
    items = []
    for i, gt in enumerate(([5.0, 6.0, 25.0, 30.0], [30.0, 10.0, 50.0, 20.0])):
        img = MetaTensor(torch.full((3, 40, 60), 0.5), meta={"filename_or_obj": str(tmp_path / f"img{i}.jpg")})
        items.append({"image": img, "boxes": np.array([gt], np.float32), "labels": np.array([1])})
    return items


DETECTIONS = [
    {"boxes": torch.tensor([[5.0, 6.0, 25.0, 30.0], [40.0, 2.0, 55.0, 12.0]]), "scores": torch.tensor([0.9, 0.2]),
     "labels": torch.tensor([1, 1])},
    {"boxes": torch.tensor([[30.0, 10.0, 50.0, 16.0]]), "scores": torch.tensor([0.7]), "labels": torch.tensor([1])},
]


def test_evaluator_metrics_and_writer(tmp_path):
    items = _items(tmp_path)
    writer = DetectionWriter(output_dir=str(tmp_path / "pred"), score_threshold=0.5)
    metrics = {name: DetectionMAP(score=name, output_transform=lambda o: (o["pred"], o["label"]))
               for name in ("map50", "map75")}
    evaluator = DetectionEvaluator(device=torch.device("cpu"), val_data_loader=[[items[0]], [items[1]]],
                                   network=FixedDetector(DETECTIONS), key_val_metric={"val_map": DetectionMAP()},
                                   additional_metrics=metrics, val_handlers=[writer])
    evaluator.run()
    expected = detection_scores([d["boxes"] for d in DETECTIONS], [d["scores"] for d in DETECTIONS],
                                [it["boxes"] for it in items])
    for name in ("map", "map50", "map75"):
        key = "val_map" if name == "map" else name
        assert evaluator.state.metrics[key] == pytest.approx(expected[name])
    # image 2's detection has IoU 0.6 (< 0.75): AP50 counts both polyps found, AP75 only the first
    assert expected["map50"] == pytest.approx(1.0) and expected["map75"] < 0.6

    records = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert set(records) == {"img0", "img1"}
    assert records["img0"]["height"] == 40 and records["img0"]["width"] == 60
    assert records["img0"]["bbox"][0] == {"label": "polyp", "xmin": 5.0, "ymin": 6.0, "xmax": 25.0, "ymax": 30.0,
                                          "score": 0.9}
    assert len(records["img0"]["bbox"]) == 2  # every detection in the JSON, the low-scoring one too

    png = np.asarray(Image.open(tmp_path / "pred" / "images" / "img0_boxes.png").convert("RGB")).astype(int)
    assert png.shape == (40, 60, 3)
    grey = np.array([128, 128, 128])
    # the 0.9 detection coincides with the ground truth: its outline (drawn last) is red on the left edge
    assert tuple(png[18, 5]) == (255, 0, 0)
    # the 0.2 detection (below the threshold) is not drawn: its left edge stays grey
    assert np.abs(png[8, 40] - grey).max() <= 1
    png1 = np.asarray(Image.open(tmp_path / "pred" / "images" / "img1_boxes.png").convert("RGB")).astype(int)
    assert tuple(png1[19, 40]) == (0, 255, 0)  # ground truth bottom edge (PIL: rows 19 and 20), below the prediction
    assert tuple(png1[12, 30]) == (255, 0, 0)  # prediction's left edge


def test_inference_without_ground_truth(tmp_path):
    items = _items(tmp_path)
    for it in items:
        del it["boxes"], it["labels"]
    writer = DetectionWriter(output_dir=str(tmp_path / "pred"))
    evaluator = DetectionEvaluator(device=torch.device("cpu"), val_data_loader=[[items[0]], [items[1]]],
                                   network=FixedDetector(DETECTIONS), val_handlers=[writer])
    evaluator.run()
    assert evaluator.state.output["label"] is None
    assert sorted(p.name for p in (tmp_path / "pred" / "images").iterdir()) == ["img0_boxes.png", "img1_boxes.png"]


def _kvasir_layout(root: Path, bad_box: bool) -> None:
    from monai_ssl_ext.gie import prepare_kvasir_seg

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    boxes = {}
    for i in range(10):
        name = f"cj{i:023d}"
        Image.fromarray(np.full((30, 40, 3), 100, np.uint8)).save(root / "images" / f"{name}.jpg")
        Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "masks" / f"{name}.jpg")
        boxes[name] = {"height": 30, "width": 40, "bbox": [{"label": "polyp", "xmin": 2, "ymin": 3, "xmax": 20, "ymax": 25}]}
    if bad_box:  # one box reaching past the right edge
        boxes[f"cj{7:023d}"]["bbox"][0]["xmax"] = 45
    (root / "bounding-boxes.json").write_text(json.dumps(boxes))
    prepare_kvasir_seg(str(root))


@pytest.mark.parametrize("bad", [False, True])
def test_bundle_datalists_check_boxes(tmp_path, bad):
    from monai.bundle import ConfigParser

    import monai_ssl_ext  # noqa: F401

    _kvasir_layout(tmp_path / "data", bad_box=bad)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser["dataset_dir"] = str(tmp_path / "data")
    lists = ("train#datalist", "validate#datalist")
    if not bad:
        sizes = [len(parser.get_parsed_content(k)) for k in lists]
        assert sizes == [8, 1]
        item = parser.get_parsed_content("train#datalist")[0]
        np.testing.assert_array_equal(item["boxes"], [[2, 3, 20, 25]])
        return
    with pytest.raises(Exception) as err:
        for k in lists:
            parser.get_parsed_content(k)
    text = "".join(str(e) for e in (err.value, err.value.__cause__) if e is not None)
    assert f"cj{7:023d}" in text and "bounding-boxes.json" in text and "outside the image" in text
