"""gie_polyp_segmentation: the Kvasir-SEG / CVC-ClinicDB demo layouts and their frozen splits, the encoder hand-off
through the bundle's own config, the CVC layout through the bundle's pipeline, bad input, and the contour overlays.
(The harness in test_bundles.py runs every config of the bundle on the Kvasir-SEG demo data.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose
from PIL import Image
from scipy import ndimage

from monai_ssl_ext import gie
from monai_ssl_ext.data import split_80_10_10
from monai_ssl_ext.demo import cvc_clinicdb, kvasir_seg

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "gie_polyp_segmentation"
CONFIGS = BUNDLE / "configs"


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as m:
        return np.asarray(m.convert("L")) >= 128


def test_kvasir_demo_layout_boxes_and_split(demo_data):
    root = Path(demo_data("kvasir_seg"))
    images = sorted(p.name for p in (root / "images").iterdir())
    assert len(images) == 20 and images == sorted(p.name for p in (root / "masks").iterdir())
    assert all(len(n) == len("cju0qkwl35piu0993l0dewei2.jpg") and n.endswith(".jpg") for n in images)
    sizes = set()
    for n in images:
        with Image.open(root / "images" / n) as im, Image.open(root / "masks" / n) as m:
            assert im.format == "JPEG" and m.format == "JPEG" and im.mode == "RGB" and im.size == m.size
            sizes.add(im.size)
            assert im.size[0] != im.size[1]
    assert len(sizes) > 5  # sizes vary per image

    boxes = json.loads((root / "bounding-boxes.json").read_text())
    assert sorted(boxes) == [n[:-4] for n in images]
    empty = []
    for name, entry in boxes.items():
        assert set(entry) == {"height", "width", "bbox"}
        mask = _mask(root / "masks" / f"{name}.jpg")
        assert mask.shape == (entry["height"], entry["width"])
        labels, n_comp = ndimage.label(mask, structure=np.ones((3, 3)))
        assert len(entry["bbox"]) == n_comp  # one box per connected component of the thresholded mask
        for box in entry["bbox"]:
            assert list(box) == ["label", "xmin", "ymin", "xmax", "ymax"] and box["label"] == "polyp"
            assert all(isinstance(box[k], int) for k in ("xmin", "ymin", "xmax", "ymax"))
            crop = mask[box["ymin"]:box["ymax"], box["xmin"]:box["xmax"]]
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()  # tight corners
        if not entry["bbox"]:
            assert not mask.any()
            empty.append(name)
    assert 2 <= len(empty) <= 8

    split = json.loads((root / "split_80_10_10.json").read_text())
    assert split["layout"] == "kvasir_seg"
    assert [len(split[k]) for k in ("training", "validation", "test")] == [16, 2, 2]
    expected = split_80_10_10([{"image": f"images/{n}", "label": f"masks/{n}"} for n in images])
    assert {k: split[k] for k in expected} == expected
    for key in ("validation", "test"):  # false positives are counted in every split
        assert any(Path(i["image"]).stem in empty for i in split[key])


def test_cvc_demo_layout_and_split(tmp_path):
    out = cvc_clinicdb(str(tmp_path), n=12, size=64)
    names = sorted(p.name for p in (tmp_path / "Original").iterdir())
    assert names == sorted(f"{k}.tif" for k in range(1, 13))
    assert names[:4] == ["1.tif", "10.tif", "11.tif", "12.tif"]  # string order, as sorted(glob)
    for n in names:
        with Image.open(tmp_path / "Original" / n) as im, Image.open(tmp_path / "Ground Truth" / n) as m:
            assert im.format == "TIFF" and im.mode == "RGB" and im.size == (64, 48) and m.size == (64, 48)
            assert set(np.unique(np.asarray(m)).tolist()) <= {0, 255}
    split = json.loads(Path(out["split"]).read_text())
    assert split["layout"] == "cvc_clinicdb"
    expected = split_80_10_10([{"image": f"Original/{n}", "label": f"Ground Truth/{n}"} for n in names])
    assert {k: split[k] for k in expected} == expected
    assert out["empty"] >= 2


def test_demo_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    kvasir_seg(str(a), n=8, seed=3)
    kvasir_seg(str(b), n=8, seed=3)
    assert (a / "bounding-boxes.json").read_text() == (b / "bounding-boxes.json").read_text()
    for p in (a / "images").iterdir():
        assert p.read_bytes() == (b / "images" / p.name).read_bytes()


def test_prepare_refuses_unpaired_files(tmp_path):
    kvasir_seg(str(tmp_path), n=8)
    victim = sorted((tmp_path / "masks").iterdir())[3]
    victim.unlink()
    with pytest.raises(ValueError, match=victim.name):
        gie.prepare_kvasir_seg(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Original"):
        gie.prepare_cvc_clinicdb(str(tmp_path))


def test_layout_mismatch_names_the_file_and_key(tmp_path):
    kvasir_seg(str(tmp_path), n=8)
    split = tmp_path / "split_80_10_10.json"
    assert gie.check_split_layout(split, "kvasir_seg") == str(split)
    with pytest.raises(ValueError, match="dataset_layout") as err:
        gie.check_split_layout(split, "cvc_clinicdb")
    assert str(split) in str(err.value)
    with pytest.raises(FileNotFoundError, match="prepare_ssl4gie.py cvc_clinicdb"):
        gie.check_split_layout(tmp_path / "nope.json", "cvc_clinicdb")


def _parser(files, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files] + [str(CONFIGS / "smoke.json")])
    for k, v in overrides.items():
        parser[k] = v
    return parser


def test_encoder_handoff_through_the_bundle_config(tmp_path, demo_data):
    """An encoder.pt exported from a small ResNet trunk loads through the bundle's encoder_report (nothing missing or
    unused); the network built afterwards holds those tensors and its dilated encoder reproduces the exported trunk's
    features up to the last stage (which is dilated: same tensors, stride 16)."""
    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks import build_backbone

    torch.manual_seed(0)
    source = build_backbone("timm/resnet10t")
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="test",
                   normalization={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    parser = _parser(["train.json"], bundle_root=str(tmp_path), dataset_dir=demo_data("kvasir_seg"),
                     pretrained_encoder=str(path))
    report = parser.get_parsed_content("encoder_report")
    assert report.ok and not report.missing and not report.unused
    net = parser.get_parsed_content("network_def").eval()
    want = source.trunk.state_dict()
    got = net.encoder.trunk.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps, ref = net.encoder.feature_maps(x), source.eval().feature_maps(x)
    for g, w in zip(maps[:4], ref[:4]):
        assert ((g - w).abs().max() / w.abs().max()) <= 1e-5
    assert maps[-1].shape[-1] == 4 and ref[-1].shape[-1] == 2  # output stride 16 vs the trunk's 32
    assert net(x).shape == (1, 1, 64, 64)


def test_vit_variant_handoff_through_the_bundle_config(tmp_path, demo_data):
    """train_vit.json: a ViT encoder.pt loads into ViTDPT's encoder through encoder_report (nothing missing or
    unused) and the network reproduces the exported trunk's token maps."""
    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks import ViTDPT, build_backbone, vit_token_maps

    torch.manual_seed(0)
    source = build_backbone("timm/test_vit")
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="test",
                   normalization={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in ("train.json", "train_vit.json", "smoke.json", "smoke_train_vit.json")])
    parser["bundle_root"], parser["dataset_dir"] = str(tmp_path), demo_data("kvasir_seg")
    parser["pretrained_encoder"] = str(path)
    report = parser.get_parsed_content("encoder_report")
    assert report.ok and not report.missing and not report.unused
    net = parser.get_parsed_content("network_def").eval()
    assert isinstance(net, ViTDPT) and net.blocks == (0, 2, 3, 5)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        got, want = vit_token_maps(net.encoder, x, net.blocks), vit_token_maps(source.eval(), x, net.blocks)
        assert net(x).shape == (1, 1, 160, 160)
    assert all((g - w).abs().max() / w.abs().max() <= 1e-5 for g, w in zip(got, want))
    assert parser.get_parsed_content("output_dir").endswith("runs/gie_polyp_segmentation_vit_kvasir_seg")


def test_cvc_layout_through_the_bundle_pipeline(tmp_path):
    cvc_clinicdb(str(tmp_path), n=8, size=64)
    parser = _parser(["train.json"], bundle_root=str(tmp_path), dataset_dir=str(tmp_path),
                     dataset_layout="cvc_clinicdb")
    items = parser.get_parsed_content("validate#datalist")
    assert all("/Ground Truth/" in i["label"] for i in items)
    out = parser.get_parsed_content("validate#preprocessing")(items[0])
    assert out["image"].shape == (3, 64, 64) and out["label"].shape == (1, 48, 64)
    train = parser.get_parsed_content("train#preprocessing")(parser.get_parsed_content("train#datalist")[0])
    assert train["image"].shape == (3, 64, 64) and train["label"].shape == (1, 64, 64)
    wrong = _parser(["train.json"], bundle_root=str(tmp_path), dataset_dir=str(tmp_path))  # kvasir_seg default
    with pytest.raises(Exception) as err:
        wrong.get_parsed_content("train#datalist")
    chain, e = [], err.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any("dataset_layout" in m and "cvc_clinicdb" in m for m in chain), chain


def test_contour_overlay_writer(tmp_path):
    from monai_ssl_ext.handlers.contours import ContourOverlayWriter, mask_contour

    square = np.zeros((7, 7), bool)
    square[1:6, 1:6] = True
    ring = mask_contour(square, 1)
    assert ring.sum() == 16 and not ring[3, 3] and ring[1, 1] and ring[1, 3]
    assert mask_contour(square, 2).sum() == 24

    img = np.full((10, 12, 3), 100, np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    pred = torch.zeros(1, 10, 12)
    pred[0, 2:8, 2:6] = 1
    label = torch.zeros(1, 10, 12)
    label[0, 3:9, 6:11] = 1
    writer = ContourOverlayWriter(str(tmp_path / "out"), color=(0, 255, 0), label_color=(0, 0, 255), width=1,
                                  alpha=1.0)
    mask_path, overlay_path = writer.write(pred, str(tmp_path / "x.png"), label)
    m = np.asarray(Image.open(mask_path))
    assert m.shape == (10, 12) and np.array_equal(m > 0, pred[0].numpy() > 0)
    o = np.asarray(Image.open(overlay_path))
    assert tuple(o[2, 2]) == (0, 255, 0) and tuple(o[4, 4]) == (100, 100, 100)  # contour, inside untouched
    assert tuple(o[3, 8]) == (0, 0, 255) and tuple(o[5, 8]) == (100, 100, 100)
    with pytest.raises(ValueError, match="x.png"):
        writer.write(torch.zeros(1, 5, 5), str(tmp_path / "x.png"))
