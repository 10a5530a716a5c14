"""Tests of the MMWHS preprocessing (monai_ssl_ext.mmwhs), the mixed 2D / 3D SSL layouts and
their reader (monai_ssl_ext.data.read_slice_folders)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from monai_ssl_ext.data import read_slice_folders


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


# ------------------------------------------------------------------------------ read_slice_folders


def test_read_slice_folders_lists_split_by_dataset(tmp_path):
    for rel in ("train/LUNA2016/b.png", "train/LUNA2016/a.PNG", "train/BraTS2018/z.jpg", "train/BraTS2018/y.jpeg",
                "train/BraTS2018/notes.txt", "train/BraTS2018/.hidden.png", "train/BraTS2018/deep/x.png",
                "train/stray.png", "valid/LUNA2016/v.png"):
        _touch(tmp_path / rel)
    items = read_slice_folders(tmp_path)
    got = [(d["dataset"], os.path.basename(d["image"])) for d in items]
    assert got == [("BraTS2018", "y.jpeg"), ("BraTS2018", "z.jpg"), ("LUNA2016", "a.PNG"), ("LUNA2016", "b.png")]
    assert all(set(d) == {"image", "dataset"} and os.path.isabs(d["image"]) for d in items)
    assert all(Path(d["image"]).parent.name == d["dataset"] for d in items)
    assert [os.path.basename(d["image"]) for d in read_slice_folders(str(tmp_path), "valid")] == ["v.png"]


def test_read_slice_folders_errors_name_the_folder(tmp_path):
    _touch(tmp_path / "train" / "LUNA2016" / "a.png")
    with pytest.raises(ValueError, match=r"test'.*does not exist"):
        read_slice_folders(tmp_path, "test")
    _touch(tmp_path / "valid" / "LUNA2016" / "notes.txt")
    _touch(tmp_path / "valid" / "flat.png")  # not in a dataset folder
    with pytest.raises(ValueError, match=r"valid' holds no pictures"):
        read_slice_folders(tmp_path, "valid")


# ------------------------------------------------------------------------------ MMWHS preprocessing

import json  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from monai_ssl_ext import mmwhs  # noqa: E402
from monai_ssl_ext.demo import GENERATORS  # noqa: E402

#: SPEC E.5: labels {205, 420, 500, 550, 600, 820, 850} -> classes 1..7 (class 2 = left atrium, label 420)
SPEC_MAP = {205: 1, 420: 2, 500: 3, 550: 4, 600: 5, 820: 6, 850: 7}
#: SPEC E.5 fixed split
SPEC_TRAIN = [1001, 1003, 1005, 1006, 1008, 1009, 1011, 1014, 1015, 1016, 1017, 1018, 1020]
SPEC_VAL = [1004, 1007, 1013]
SPEC_TEST = [1002, 1010, 1012, 1019]


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return path


def _reference_uint8(vol: np.ndarray) -> np.ndarray:
    """SPEC E.5 written out: clip to the [0.5, 99.5] percentiles, z-score, /10, clip to [0, 1], x255, uint8."""
    v = vol.astype(np.float64)
    lo, hi = np.percentile(v, 0.5), np.percentile(v, 99.5)
    v = np.minimum(np.maximum(v, lo), hi)
    v = (v - v.mean()) / v.std()
    v = np.minimum(np.maximum(v / 10.0, 0.0), 1.0)
    return (v * 255.0).astype(np.uint8)


def _structures_label(shape=(24, 30, 6)) -> np.ndarray:
    """A label volume with each of the seven MMWHS values in its own box, plus background."""
    lab = np.zeros(shape, np.int16)
    for k, value in enumerate(SPEC_MAP):
        lab[2 + 3 * (k % 7): 4 + 3 * (k % 7), 2 + 3 * k: 5 + 3 * k, 1:5] = value
    return lab


def test_label_mapping_keeps_eight_classes():
    lab = _structures_label()
    got = mmwhs.map_labels(lab, "x.nii.gz")
    assert got.dtype == np.uint8 and got.shape == lab.shape
    assert sorted(np.unique(got).tolist()) == list(range(8))  # never collapsed to binary
    for value, cls in SPEC_MAP.items():
        np.testing.assert_array_equal(got == cls, lab == value)
    np.testing.assert_array_equal(got == 0, lab == 0)
    assert (got == 2).sum() == (lab == 420).sum() > 0  # class 2 is the left atrium


def test_unknown_label_value_is_refused_naming_the_file(tmp_path):
    lab = _structures_label()
    lab[0, 0, 0] = 421
    with pytest.raises(ValueError, match=r"bad_label\.nii\.gz.*421"):
        mmwhs.map_labels(lab, "bad_label.nii.gz")
    raw = tmp_path / "ct_train"
    _save(raw / "ct_train_1001_image.nii.gz", np.random.default_rng(0).normal(0, 100, lab.shape).astype(np.float32))
    _save(raw / "ct_train_1001_label.nii.gz", lab)
    with pytest.raises(ValueError, match=r"ct_train_1001_label\.nii\.gz.*421 \(1 voxels\)"):
        mmwhs.prepare_mmwhs(tmp_path)
    aliased = mmwhs.map_labels(lab, "x", label_aliases={421: 420})  # only when asked for
    assert aliased[0, 0, 0] == 2 and (aliased == 2).sum() == (lab == 420).sum() + 1


def test_intensity_matches_spec_reference():
    rng = np.random.default_rng(3)
    vol = rng.normal(50, 300, (20, 24, 5))
    vol[0, 0, 0], vol[1, 1, 1] = -3000, 5000  # outliers the percentile clip removes
    got = mmwhs.to_uint8(mmwhs.normalize_intensity(vol))
    ref = _reference_uint8(vol)
    assert got.dtype == np.uint8 and got.shape == vol.shape
    diff = np.abs(got.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float32 vs float64 at truncation edges only
    assert ref.min() == 0 and ref.max() > 30  # not degenerate (z / 10: only ~2.6 sigma / 10 here)
    with pytest.raises(ValueError, match="flat.nii.*constant"):
        mmwhs.normalize_intensity(np.full((4, 4, 2), 7.0), "flat.nii")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Raw MMWHS folder with ids 1001, 1003 (train), 1004 (val), 1002 (test), 1099 (no split), prepared."""
    root = tmp_path_factory.mktemp("mmwhs")
    shape = (20, 28, 8)  # non-square: a transpose would show
    rng = np.random.default_rng(0)
    volumes = {}
    for pid in (1001, 1003, 1004, 1002, 1099):
        img = rng.normal(0, 50, shape).astype(np.float32)
        lab = np.zeros(shape, np.int16)
        lab[3:9, 4:12, 2:6] = 420 if pid != 1003 else 205  # 1001: slices 2..5 show the left atrium; 1003 never
        lab[10:14, 14:20, 3:5] = 850
        img[lab > 0] += 400
        img[0, shape[1] - 1, :] = 4000  # marker: top-right corner of every slice
        _save(root / "raw" / "ct_train" / f"ct_train_{pid}_image.nii.gz", img)
        _save(root / "raw" / "ct_train" / f"ct_train_{pid}_label.nii.gz", lab)
        volumes[pid] = (img, lab)
    summary = mmwhs.prepare_mmwhs(root / "raw", root / "out", seed=5)
    index = json.loads((root / "out" / "mmwhs_ct.json").read_text())
    return root / "out", index, volumes, summary


def test_split_lists(prepared):
    out, index, _, _ = prepared
    assert mmwhs.MMWHS_SPLIT == {"train": tuple(SPEC_TRAIN), "validation": tuple(SPEC_VAL), "test": tuple(SPEC_TEST)}
    assert index["split"] == {"train": [1001, 1003], "validation": [1004], "test": [1002]}  # 1099 in no split
    assert {it["patient"] for it in index["training_la"] + index["training_no_la"]} == {1001, 1003}
    assert {it["patient"] for it in index["validation"]} == {1004}
    assert {it["patient"] for it in index["test"]} == {1002}
    assert len(index["validation"]) == len(index["test"]) == 8  # every slice of val / test volumes
    assert [v["patient"] for v in index["test_volumes"]] == [1002]
    assert index["test_volumes"][0]["image"].endswith("ct_train_1002_image.nii.gz")
    assert not any("1099" in p.name for p in (out / "ct" / "images").iterdir())


def test_training_sample_left_atrium_slices_plus_as_many_without(prepared):
    """The source's have_label / non_label lists split the training slices by the left atrium (class 2), not by
    any foreground: 1003's slices hold myocardium (205) and the pulmonary artery (850) but no left atrium."""
    out, index, volumes, _ = prepared
    with_la, without_la = index["training_la"], index["training_no_la"]
    expected_la = [(1001, d) for d in range(8) if (volumes[1001][1][:, :, d] == 420).any()]
    assert sorted((it["patient"], it["slice"]) for it in with_la) == expected_la == [(1001, d) for d in range(2, 6)]
    assert len(without_la) == 16 - 4
    assert any(np.asarray(Image.open(out / it["label"])).any() for it in without_la)  # other structures: no LA
    for it in with_la:
        assert (np.asarray(Image.open(out / it["label"])) == 2).any()
    for it in without_la:
        assert not (np.asarray(Image.open(out / it["label"])) == 2).any()
    train = index["training"]
    key = lambda it: it["image"]  # noqa: E731
    assert sorted(map(key, train[:4])) == sorted(map(key, with_la)) and len(train) == 8
    assert {key(it) for it in train[4:]} <= {key(it) for it in without_la} and len({key(it) for it in train[4:]}) == 4
    # fewer with than without: all with + a seeded draw of as many without, no repeats
    lab_items, bg_items = [{"image": f"l{i}"} for i in range(3)], [{"image": f"b{i}"} for i in range(10)]
    a = mmwhs.balanced_training_slices(lab_items, bg_items, seed=1)
    assert a[:3] == lab_items and len(a) == 6 and len({x["image"] for x in a[3:]}) == 3
    assert all(x in bg_items for x in a[3:])
    assert a == mmwhs.balanced_training_slices(lab_items, bg_items, seed=1)
    draws = {tuple(x["image"] for x in mmwhs.balanced_training_slices(lab_items, bg_items, seed=s)[3:])
             for s in range(6)}
    assert len(draws) > 1  # the seed matters


def test_prepared_slices_labels_and_orientation(prepared):
    out, index, volumes, _ = prepared
    img, lab = volumes[1001]
    ref = _reference_uint8(img)
    for d in range(img.shape[2]):
        png = np.asarray(Image.open(out / "ct" / "images" / f"ct_train_1001_frame_{d}.png"))
        seg = np.asarray(Image.open(out / "ct" / "labels" / f"ct_train_1001_frame_{d}.png"))
        assert png.shape == seg.shape == img.shape[:2]  # rows = first axis, no transpose
        assert png[0, -1] == png.max() > png[-1, 0] and png[0, -1] > png[0, 0]  # the marker stays top-right
        assert np.abs(png.astype(int) - ref[:, :, d].astype(int)).max() <= 1
        np.testing.assert_array_equal(seg == 2, lab[:, :, d] == 420)
        np.testing.assert_array_equal(seg == 7, lab[:, :, d] == 850)
    item = next(it for it in index["training_la"] if it["patient"] == 1001)
    assert mmwhs.volume_of(item["image"]) == item["volume"] == "ct_train_1001"


def test_slice_folders_written_and_read_back(tmp_path):
    rng = np.random.default_rng(1)
    datasets = {}
    for name in ("LUNA2016", "MSD_Heart"):
        paths = []
        for i in range(5):
            vol = rng.normal(0, 1, (16, 20, 3)).astype(np.float32)
            vol[0, 19, :] = 50  # top-right marker
            paths.append(_save(tmp_path / "raw" / name / f"{name.lower()}_{i}.nii.gz", vol))
        _save(tmp_path / "raw" / name / "labelsTr" / "x.nii.gz", np.zeros((16, 20, 3), np.uint8))
        datasets[name] = mmwhs.find_volumes(tmp_path / "raw" / name)
        assert [p.name for p in datasets[name]] == [f"{name.lower()}_{i}.nii.gz" for i in range(5)]  # no labels
    counts = mmwhs.write_slice_folders(datasets, tmp_path / "2d", fractions=(0.6, 0.2, 0.2), seed=0)
    assert counts == {"train": {"LUNA2016": 9, "MSD_Heart": 9}, "valid": {"LUNA2016": 3, "MSD_Heart": 3},
                      "test": {"LUNA2016": 3, "MSD_Heart": 3}}
    stems = {}
    for split in ("train", "valid", "test"):
        items = read_slice_folders(tmp_path / "2d", split)
        assert len(items) == sum(counts[split].values())
        assert {d["dataset"] for d in items} == {"LUNA2016", "MSD_Heart"}
        stems[split] = {mmwhs.volume_of(d["image"]) for d in items}
        png = np.asarray(Image.open(items[0]["image"]))
        assert png.shape == (16, 20) and png[0, 19] == png.max() > max(png[0, 0], png[15, 19])
    assert not (stems["train"] & stems["valid"]) and not (stems["train"] & stems["test"])  # volume-level split
    arrays = mmwhs.write_volume_arrays(datasets, tmp_path / "3d")
    assert arrays == {"LUNA2016": 5, "MSD_Heart": 5}
    arr = np.load(tmp_path / "3d" / "LUNA2016" / "luna2016_0.npy")
    assert arr.shape == (16, 20, 3) and arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1
    ref = _reference_uint8(nib.load(str(datasets["LUNA2016"][0])).get_fdata())
    assert np.abs((arr * 255).astype(np.uint8).astype(int) - ref.astype(int)).max() <= 1


def test_demo_generators(tmp_path):
    summary = GENERATORS["mmwhs"](str(tmp_path / "m"))
    index = json.loads(Path(summary["index"]).read_text())
    assert index["split"] == {"train": [1001, 1003], "validation": [1004], "test": [1002]}
    raw = nib.load(str(tmp_path / "m" / "ct_train" / "ct_train_1001_label.nii.gz")).get_fdata()
    assert sorted(np.unique(raw).astype(int).tolist()) == [0, *SPEC_MAP]  # all seven real label values
    assert len(index["training_no_la"]) > 0 and len(index["training"]) == 2 * len(index["training_la"])
    out = GENERATORS["ssl_slices"](str(tmp_path / "s"))
    items = read_slice_folders(tmp_path / "s", "train")
    assert {d["dataset"] for d in items} == {"BraTS2018", "LUNA2016", "LiTS2017", "MSD_Heart"}
    assert len(items) == sum(out["slices"]["train"].values())
    assert len(read_slice_folders(tmp_path / "s", "valid")) and len(read_slice_folders(tmp_path / "s", "test"))
    assert sorted(p.name for p in (tmp_path / "s" / "training_data_3D").iterdir()) == sorted(out["volumes"])


def test_find_volumes_leaves_out_label_volumes_of_every_naming(tmp_path):
    """LiTS2017 names its label maps by prefix (segmentation-<n>.nii beside volume-<n>.nii), MSD by folder
    (labelsTr), others by suffix (_seg, _label): none of them may be sliced into the SSL images."""
    blank = np.zeros((4, 5, 2), np.float32)
    for rel in ("LiTS2017/volume-0.nii", "LiTS2017/segmentation-0.nii", "LiTS2017/volume-1.nii.gz",
                "LiTS2017/segmentation-1.nii.gz", "BraTS/p1_flair.nii.gz", "BraTS/p1_seg.nii.gz",
                "MSD/imagesTr/heart_1.nii.gz", "MSD/labelsTr/heart_1.nii.gz", "X/case_label.nii.gz", "X/case.nii.gz"):
        _save(tmp_path / rel, blank)
    names = {ds: [p.name for p in mmwhs.find_volumes(tmp_path / ds)] for ds in ("LiTS2017", "BraTS", "MSD", "X")}
    assert names == {"LiTS2017": ["volume-0.nii", "volume-1.nii.gz"], "BraTS": ["p1_flair.nii.gz"],
                     "MSD": ["heart_1.nii.gz"], "X": ["case.nii.gz"]}
