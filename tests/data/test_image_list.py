"""Tests of monai_ssl_ext.data.read_image_list and of the Hyperkvasir demo data (monai_ssl_ext.demo.hyperkvasir)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_ssl_ext.data import read_image_list
from monai_ssl_ext.demo import GENERATORS, HYPERKVASIR_CLASSES, hyperkvasir

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


# ------------------------------------------------------------------------------ read_image_list: folders


def test_folder_lists_pictures_sorted_flat(tmp_path):
    for name in ("b.png", "a.JPG", "c.jpeg", "d.bmp", "e.tif", "f.TIFF", "notes.txt", ".hidden.jpg", "sub/g.jpg"):
        _touch(tmp_path / name)
    items = read_image_list(tmp_path)
    names = [os.path.basename(d["image"]) for d in items]
    assert names == ["a.JPG", "b.png", "c.jpeg", "d.bmp", "e.tif", "f.TIFF"]  # by name, no txt/hidden/sub-folder
    assert all(set(d) == {"image"} and os.path.isabs(d["image"]) for d in items)
    assert read_image_list(str(tmp_path)) == items  # str or Path


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        read_image_list(tmp_path / "nope")
    empty = tmp_path / "empty"
    _touch(empty / "readme.txt")
    with pytest.raises(ValueError, match=r"'.*empty' holds no pictures") as e:
        read_image_list(empty)
    assert "sub-folders" not in str(e.value)
    parent = tmp_path / "unlabeled-images"
    _touch(parent / "images" / "x.jpg")
    with pytest.raises(ValueError, match=r"unlabeled-images' holds no pictures.*sub-folders \(images\)"):
        read_image_list(parent)
    not_csv = _touch(tmp_path / "list.txt")
    with pytest.raises(ValueError, match="list.txt.*neither a folder"):
        read_image_list(not_csv)


# ------------------------------------------------------------------------------ read_image_list: CSVs


@pytest.fixture
def pics(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        _touch(tmp_path / "pics" / name)
    return tmp_path


def test_csv_unlabelled_gives_image_only_items(pics):
    (pics / "u.csv").write_text("path,label\npics/b.jpg,-1\npics/a.jpg,\n\npics/c.jpg\n")
    items = read_image_list(pics / "u.csv")
    assert items == [{"image": str(pics / "pics" / n)} for n in ("b.jpg", "a.jpg", "c.jpg")]  # file order kept


def test_csv_integer_labels(pics):
    (pics / "l.csv").write_text("pics/a.jpg,3\npics/b.jpg,-1\npics/c.jpg,0\n")  # no header
    assert read_image_list(pics / "l.csv") == [
        {"image": str(pics / "pics" / "a.jpg"), "label": 3},
        {"image": str(pics / "pics" / "b.jpg"), "label": -1},
        {"image": str(pics / "pics" / "c.jpg"), "label": 0},
    ]


def test_csv_class_names_are_encoded_in_sorted_order(pics):
    (pics / "k.csv").write_text(
        "path,label\npics/a.jpg,z-line\npics/b.jpg,cecum\npics/c.jpg,pylorus\npics/d.jpg,cecum\n")
    items = read_image_list(pics / "k.csv")
    assert [(d["label"], d["class_name"]) for d in items] == [(2, "z-line"), (0, "cecum"), (1, "pylorus"), (0, "cecum")]
    given = read_image_list(pics / "k.csv", class_names=["z-line", "pylorus", "cecum", "ileum"])
    assert [d["label"] for d in given] == [0, 2, 1, 2]
    with pytest.raises(ValueError, match=r"k.csv, line 3: class 'cecum' is not one of"):
        read_image_list(pics / "k.csv", class_names=["z-line", "pylorus"])


def test_csv_paths_relative_to_csv_or_base_dir(pics, tmp_path):
    sub = tmp_path / "lists"
    sub.mkdir()
    (sub / "rel.csv").write_text(f"path,label\n../pics/a.jpg,\n{pics / 'pics' / 'b.jpg'},\n")
    assert [d["image"] for d in read_image_list(sub / "rel.csv")] == [
        str(pics / "pics" / "a.jpg"),
        str(pics / "pics" / "b.jpg"),  # absolute kept
    ]
    (sub / "base.csv").write_text("path\na.jpg\nc.jpg\n")  # a one-column list with a "path" header
    assert read_image_list(sub / "base.csv", base_dir=pics / "pics") == [
        {"image": str(pics / "pics" / "a.jpg")},
        {"image": str(pics / "pics" / "c.jpg")},
    ]


@pytest.mark.parametrize(
    "text, error, match",
    [
        ("path,label\npics/a.jpg,0\npics/missing.jpg,1\n", FileNotFoundError, r"bad.csv, line 3: image .*missing.jpg"),
        ("path,label\n", ValueError, r"bad.csv' has no data rows"),
        ("path,label\npics/a.jpg,0,extra\n", ValueError, r"bad.csv, line 2: expected 'path,label', got 3 fields"),
        ("path,label\n,0\n", ValueError, r"bad.csv, line 2: empty image path"),
        ("path,label\npics/a.jpg,cecum\npics/b.jpg,2\n", ValueError, r"bad.csv, line 3: integer label among class"),
    ],
)
def test_csv_errors_name_file_and_line(pics, text, error, match):
    (pics / "bad.csv").write_text(text)
    with pytest.raises(error, match=match):
        read_image_list(pics / "bad.csv")


def test_csv_missing_file_check_can_be_skipped(pics):
    (pics / "m.csv").write_text("pics/missing.jpg,1\n")
    expected = [{"image": str(pics / "pics" / "missing.jpg"), "label": 1}]
    assert read_image_list(pics / "m.csv", check_files=False) == expected
    with pytest.raises(FileNotFoundError, match="m.csv' does not exist"):
        read_image_list(pics / "lists" / "m.csv")


# ------------------------------------------------------------------------------ Hyperkvasir demo data


@pytest.fixture(scope="module")
def hk(tmp_path_factory):
    out = tmp_path_factory.mktemp("hk")
    summary = hyperkvasir(str(out))
    return out, summary


def test_demo_is_registered_for_the_cli():
    assert GENERATORS["hyperkvasir"] is hyperkvasir


def test_demo_unlabelled_folder(hk):
    out, summary = hk
    folder = out / "unlabeled-images" / "images"
    assert sorted(p.name for p in (out / "unlabeled-images").iterdir()) == ["images"]
    files = sorted(folder.iterdir())
    assert len(files) == summary["unlabeled"] == 48 and all(p.suffix == ".jpg" and p.is_file() for p in files)
    shapes = set()
    for p in files:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            shapes.add(im.size)
            arr = np.asarray(im, np.float32)
        assert all(64 <= s <= 96 for s in im.size)
        h, w = arr.shape[:2]
        inner = arr[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
        assert inner.mean() > 50 and arr[:3, -3:].mean() < 25  # lit inside, dark scope corner (upper right)
    assert len(shapes) >= 3 and any(w != h for w, h in shapes)  # mixed, non-square sizes
    # the unlabelled CSV lists exactly the folder, with label -1, and reads to the same items
    with open(out / "unlabeled.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "label"] and {r[1] for r in rows[1:]} == {"-1"}
    assert read_image_list(out / "unlabeled.csv") == read_image_list(folder)


def test_demo_labelled_tree_and_knn_list(hk):
    out, summary = hk
    root = out / "labeled-images"
    # SSL4GIE's class discovery: sorted sub-sub-folders under */anatomical-landmarks/ and */pathological-findings/
    anatomical = sorted(p.name for p in root.glob("*/anatomical-landmarks/*") if p.is_dir())
    pathological = sorted(p.name for p in root.glob("*/pathological-findings/*") if p.is_dir())
    assert anatomical == ["cecum", "ileum", "pylorus", "retroflex-rectum", "retroflex-stomach", "z-line"]
    assert len(pathological) == 12 and {"polyps", "esophagitis-a", "barretts", "ulcerative-colitis-grade-1"} <= set(
        pathological
    )
    assert sorted(p.name for p in root.iterdir()) == ["lower-gi-tract", "upper-gi-tract"]
    for (tract, category), classes in HYPERKVASIR_CLASSES.items():
        for name in classes:
            n = len(list((root / tract / category / name).glob("*.jpg")))
            assert 4 <= n <= 6 and summary["labeled"][f"{tract}/{category}/{name}"] == n
    items = read_image_list(out / "knn.csv")
    expected = sorted(str(p) for p in root.glob("*/anatomical-landmarks/*/*.jpg"))
    assert sorted(d["image"] for d in items) == expected
    for d in items:
        assert Path(d["image"]).parent.name == d["class_name"] == anatomical[d["label"]]
    assert (out / "knn.csv").read_text().splitlines()[0] == "path,label"


def _loo_1nn_accuracy(feats: np.ndarray, labels: np.ndarray) -> float:
    d = ((feats[:, None] - feats[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float((labels[d.argmin(1)] == labels).mean())


def _features(path: str) -> np.ndarray:
    with Image.open(path) as im:
        small = np.asarray(im.convert("RGB").resize((8, 8), Image.BILINEAR), np.float32) / 255
    return np.concatenate([small.mean((0, 1)), small.std((0, 1)), small[2:6, 2:6].mean((0, 1))])


def test_demo_classes_are_separable_by_simple_features(hk):
    out, _ = hk
    items = read_image_list(out / "knn.csv")  # 6 anatomical classes: chance 1/6
    feats = np.stack([_features(d["image"]) for d in items])
    labels = np.array([d["label"] for d in items])
    assert _loo_1nn_accuracy(feats, labels) > 0.8
    paths = sorted((out / "labeled-images").glob("*/pathological-findings/*/*.jpg"))  # 12 classes: chance 1/12
    feats = np.stack([_features(str(p)) for p in paths])
    labels = np.array([p.parent.name for p in paths])
    assert _loo_1nn_accuracy(feats, labels) > 0.5


def test_demo_is_deterministic_by_seed(hk, tmp_path):
    out, _ = hk
    again, other = tmp_path / "again", tmp_path / "other"
    hyperkvasir(str(again))
    hyperkvasir(str(other), seed=1)
    listing = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert sorted(str(p.relative_to(again)) for p in again.rglob("*") if p.is_file()) == listing
    for rel in listing:
        assert (again / rel).read_bytes() == (out / rel).read_bytes()
    assert not set(listing) & {str(p.relative_to(other)) for p in other.rglob("*.jpg")}  # other seed, other pictures


def test_demo_arguments_and_cli(tmp_path):
    small = hyperkvasir(str(tmp_path / "s"), n_unlabeled=2, n_per_class=1, sizes=[32, (24, 40)])
    assert small["unlabeled"] == 2 and set(small["labeled"].values()) == {1}
    sizes = {Image.open(p).size for p in (tmp_path / "s").rglob("*.jpg")}
    assert sizes <= {(32, 32), (40, 24)}
    with pytest.raises(ValueError, match="n_per_class"):
        hyperkvasir(str(tmp_path / "x"), n_per_class=(3, 2))
    with pytest.raises(ValueError, match="sizes"):
        hyperkvasir(str(tmp_path / "x"), sizes=8)
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "make_demo_data.py"), "hyperkvasir", "--out_dir", str(tmp_path / "cli"),
         "--n_unlabeled", "3", "--n_per_class", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert len(read_image_list(tmp_path / "cli" / "unlabeled-images" / "images")) == 3
    assert len(read_image_list(tmp_path / "cli" / "knn.csv")) == 6


def test_demo_feeds_the_asymmetric_views_pipeline(hk):
    """The pretraining input path of the SSL4GIE bundles: folder -> LoadPictured -> [0, 1] -> two asymmetric views,
    batched although the pictures differ in size."""
    import torch
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, ScaleIntensityRanged

    from monai_ssl_ext.transforms import AsymmetricAugment, LoadPictured, MultiViewd

    out, _ = hk
    items = read_image_list(out / "unlabeled-images" / "images")
    transform = Compose([
        LoadPictured("image"),
        ScaleIntensityRanged("image", a_min=0, a_max=255, b_min=0.0, b_max=1.0),
        MultiViewd("image", AsymmetricAugment(size=32)),
    ])
    torch.manual_seed(0)
    batch = next(iter(DataLoader(Dataset(items, transform), batch_size=4, num_workers=0)))
    assert batch["image"].shape == batch["image_2"].shape == (4, 3, 32, 32)
    assert batch["image"].dtype == torch.float32 and not torch.equal(batch["image"], batch["image_2"])
