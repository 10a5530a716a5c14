"""ACDC data layer: prepare_acdc slice index, demo generator, LoadSliced, subset_with_oversampling."""

from __future__ import annotations

import json
import pickle
import shutil
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import load_script
from monai_ssl_ext.data import ACDC_SUBSET_SIZES, load_datalist, subset_size, subset_with_oversampling
from monai_ssl_ext.transforms import ImageReadError, LoadSliced, SliceIndexError

N_SLICES, N_FRAMES = 4, 6  # make_demo_data.acdc defaults


@pytest.fixture(scope="module")
def acdc(demo_data):
    root = Path(demo_data("acdc"))
    return root, json.loads((root / "acdc_slices.json").read_text())


def _copy_demo(root: Path, dst: Path, patients=(1, 2, 3)) -> Path:
    for pid in patients:
        shutil.copytree(root / "training" / f"patient{pid:03d}", dst / "training" / f"patient{pid:03d}")
    return dst


# ------------------------------------------------------------------------------- prepare_acdc


def test_split_rule():
    pa = load_script("prepare_acdc")
    split = {s: [p for p in range(1, 101) if pa.split_of(p) == s] for s in ("train", "validation", "test")}
    assert split["test"] == list(range(1, 101, 10)) == list(pa.TEST_PATIENTS)
    assert split["validation"] == list(range(2, 101, 10)) == list(pa.VAL_PATIENTS)
    assert len(split["train"]) == 80


def test_index_split_and_counts(acdc):
    root, index = acdc
    assert index["split"] == {"train": [3, 4, 5, 6], "validation": [2], "test": [1]}
    per_frame = N_SLICES  # slices per labelled frame; 2 labelled frames (ED, ES) per patient
    assert len(index["training"]) == 4 * 2 * per_frame
    assert len(index["validation"]) == 1 * 2 * per_frame
    assert len(index["test"]) == 1 * 2 * per_frame
    for key, pids in (("training", {3, 4, 5, 6}), ("validation", {2}), ("test", {1})):
        assert {it["patient"] for it in index[key]} == pids
        for it in index[key]:
            assert set(it) == {"image", "label", "slice", "patient"}
            assert it["label"] == it["image"].replace(".nii.gz", "_gt.nii.gz")
            assert it["image"].startswith(f"training/patient{it['patient']:03d}/")
            assert (root / it["image"]).is_file() and (root / it["label"]).is_file()
    # ED = frame01, ES = frame04 (n_frames // 2 + 1), slices 0..3 of each, ordered
    first = [(Path(it["image"]).name, it["slice"]) for it in index["training"][:8]]
    assert first == [(f"patient003_frame{f:02d}.nii.gz", s) for f in (1, 4) for s in range(4)]
    it = index["intensity"]
    assert it["patients"] == "train" and it["n_voxels"] == 4 * 2 * 48 * 48 * N_SLICES
    files = sorted({i["image"] for i in index["training"]})
    vox = np.concatenate([np.asarray(nib.load(str(root / f)).dataobj, np.float64).ravel() for f in files])
    assert it["mean"] == pytest.approx(vox.mean(), rel=1e-12) and it["std"] == pytest.approx(vox.std(), rel=1e-12)


def test_pretrain_is_cine_plus_labelled_frames_of_train_patients(acdc):
    _, index = acdc
    pre = index["pretrain"]
    assert {it["patient"] for it in pre} == {3, 4, 5, 6}
    cine = [it for it in pre if it["image"].endswith("_4d.nii.gz")]
    flat = [it for it in pre if not it["image"].endswith("_4d.nii.gz")]
    assert len(cine) == 4 * N_SLICES * N_FRAMES and len(flat) == 4 * 2 * N_SLICES
    assert len(pre) == len(cine) + len(flat)
    for p in (3, 4, 5, 6):
        pairs = {(it["slice"], it["frame"]) for it in cine if it["patient"] == p}
        assert pairs == {(s, t) for s in range(N_SLICES) for t in range(N_FRAMES)}
    assert all("frame" not in it and "label" not in it for it in flat)
    assert {(it["image"], it["slice"]) for it in flat} == {(it["image"], it["slice"]) for it in index["training"]}


def test_load_datalist_resolves_paths(acdc):
    root, _ = acdc
    items = load_datalist(root / "acdc_slices.json", "pretrain", base_dir=root)
    assert Path(items[0]["image"]).is_absolute() and Path(items[0]["image"]).is_file()
    items = load_datalist(root / "acdc_slices.json", "test", base_dir=root)
    assert Path(items[0]["label"]).is_file()


def test_demo_is_deterministic(acdc, tmp_path):
    root, index = acdc
    mdd = load_script("make_demo_data")
    out = mdd.acdc(out_dir=str(tmp_path), n_patients=3)
    assert out["patient_ids"] == [1, 2, 3]
    for name in ("patient003_4d.nii.gz", "patient003_frame04_gt.nii.gz"):
        a = np.asarray(nib.load(str(tmp_path / "training/patient003" / name)).dataobj)
        b = np.asarray(nib.load(str(root / "training/patient003" / name)).dataobj)
        np.testing.assert_array_equal(a, b)
    img = nib.load(str(root / "training/patient003/patient003_4d.nii.gz"))
    assert img.shape == (48, 48, N_SLICES, N_FRAMES) and img.get_data_dtype() == np.uint16
    assert np.allclose(img.header.get_zooms()[:3], (1.5, 1.5, 10.0))


def test_errors_name_the_file(acdc, tmp_path):
    root, _ = acdc
    pa = load_script("prepare_acdc")
    with pytest.raises(FileNotFoundError, match="training"):
        pa.prepare_acdc(tmp_path / "nowhere")

    d = _copy_demo(root, tmp_path / "a")
    (d / "training/patient002/patient002_frame04_gt.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="patient002_frame04_gt.nii.gz"):
        pa.prepare_acdc(d)

    d = _copy_demo(root, tmp_path / "b")
    (d / "training/patient003/patient003_4d.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="patient003_4d.nii.gz"):
        pa.prepare_acdc(d)

    d = _copy_demo(root, tmp_path / "c")
    lab = d / "training/patient001/patient001_frame01_gt.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((48, 40, N_SLICES), np.uint8), np.eye(4)), str(lab))
    with pytest.raises(ValueError, match=r"patient001_frame01_gt.nii.gz.*shape"):
        pa.prepare_acdc(d)

    d = _copy_demo(root, tmp_path / "e")
    (d / "training/patient003/Info.cfg").write_text("Group: NOR\nNbFrame: 6\n")
    with pytest.raises(ValueError, match=r"patient003.Info.cfg"):
        pa.prepare_acdc(d)


# --------------------------------------------------------------------------------- LoadSliced


def _abs(root, item):
    return {k: (str(root / v) if k in ("image", "label") else v) for k, v in item.items()}


def test_load_sliced_shapes_and_raw_intensity(acdc):
    root, index = acdc
    t = LoadSliced(["image", "label"])
    item = _abs(root, index["training"][5])
    out = t(item)
    img, lab = out["image"], out["label"]
    assert img.shape == lab.shape == (1, 48, 48) and img.dtype == lab.dtype == torch.float32
    vol = np.asarray(nib.load(item["image"]).dataobj)
    np.testing.assert_array_equal(img[0].numpy(), vol[..., item["slice"]].astype(np.float32))
    assert img.max() > 255  # no uint8 wrap-around
    assert set(torch.unique(lab).tolist()) == {0.0, 1.0, 2.0, 3.0}
    assert img.meta["filename_or_obj"] == item["image"] and img.meta["slice"] == item["slice"]
    assert img.meta["frame"] == -1 and lab.meta["filename_or_obj"] == item["label"]
    assert out["slice"] == item["slice"] and out["patient"] == item["patient"]  # index entries kept
    # labels aligned with the image: the LV (3) is bright, MYO (2) darker, background darkest
    x, y = img[0], lab[0]
    assert x[y == 3].min() > 255 and x[y == 3].mean() > x[y == 2].mean() > x[y == 0].mean()


def test_load_sliced_4d_frame_indexing(acdc):
    root, index = acdc
    cine = [it for it in index["pretrain"] if "frame" in it and it["patient"] == 4]
    item = next(it for it in cine if it["frame"] == 3 and it["slice"] == 2)
    t = LoadSliced("image")
    out = t(_abs(root, item))["image"]
    vol = np.asarray(nib.load(str(root / item["image"])).dataobj)
    np.testing.assert_array_equal(out[0].numpy(), vol[:, :, 2, 3].astype(np.float32))
    assert not np.array_equal(vol[:, :, 2, 3], vol[:, :, 2, 0])
    assert out.meta["frame"] == 3 and out.meta["slice"] == 2
    # the ES frame file (frame04) is frame index 3 of the cine volume
    es = t({"image": str(root / "training/patient004/patient004_frame04.nii.gz"), "slice": 2})["image"]
    torch.testing.assert_close(es.as_tensor(), out.as_tensor())
    # slice affine: the volume affine shifted to the slice
    assert float(out.affine[2, 3]) == pytest.approx(2 * 10.0)


def test_load_sliced_cache_and_pickle(acdc):
    root, index = acdc
    t = LoadSliced(["image", "label"], cache_size=2)
    items = [_abs(root, it) for it in index["training"][:8]]  # 2 files x 4 slices (+ labels)
    for it in items:
        t(it)
    assert t.cache_misses == 4 and t.cache_hits == 12
    t2 = pickle.loads(pickle.dumps(t))
    assert t2.cache_misses == 0 and len(t2._cache) == 0 and t2.keys == t.keys
    torch.testing.assert_close(t2(items[3])["image"].as_tensor(), t(items[3])["image"].as_tensor())
    t0 = LoadSliced("image", cache_size=0)
    t0(items[0]), t0(items[1])
    assert t0.cache_misses == 2 and len(t0._cache) == 0


def test_load_sliced_dataloader_mixed_batch(acdc):
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, DeleteItemsd

    root, index = acdc
    pre = [_abs(root, it) for it in index["pretrain"]]
    items = pre[:2] + pre[-2:]  # two cine slices and two 3D frame slices
    ds = Dataset(items, Compose([LoadSliced("image"), DeleteItemsd(["frame", "slice", "patient"])]))
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=1)))
    assert batch["image"].shape == (4, 1, 48, 48)
    assert batch["image"].meta["frame"].tolist() == [0, 1, -1, -1]


def test_load_sliced_errors_name_file_and_slice(acdc, tmp_path):
    root, index = acdc
    t = LoadSliced(["image", "label"])
    item = _abs(root, index["test"][0])
    with pytest.raises(SliceIndexError, match=r"patient001_frame01.nii.gz.*slice 7.*out of range"):
        t({**item, "slice": 7})
    with pytest.raises(FileNotFoundError, match=r"missing.nii.gz.*slice 0"):
        t({**item, "image": str(tmp_path / "missing.nii.gz")})
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match=r"bad.nii.gz.*slice 0"):
        t({**item, "image": str(bad)})
    cine = str(root / "training/patient003/patient003_4d.nii.gz")
    with pytest.raises(SliceIndexError, match=r"patient003_4d.nii.gz.*frame 6 out of range"):
        LoadSliced("image")({"image": cine, "slice": 0, "frame": 6})
    with pytest.raises(SliceIndexError, match=r"patient003_4d.nii.gz.*4D"):
        LoadSliced("image")({"image": cine, "slice": 0})
    with pytest.raises(SliceIndexError, match=r"patient001_frame01.nii.gz.*no 'slice'"):
        t({"image": item["image"], "label": item["label"]})


# -------------------------------------------------------------------- subset_with_oversampling


def test_subset_size_reproduces_published_counts():
    for ratio, k in ACDC_SUBSET_SIZES.items():
        assert subset_size(1498, ratio) == k
    assert subset_size(10, 0.001) == 1 and subset_size(10, 0.001, min_items=3) == 3
    assert subset_size(2, 0.5, min_items=5) == 2


def test_subset_with_oversampling_counts_and_determinism():
    items = [{"i": i} for i in range(1498)]
    for ratio, k in ACDC_SUBSET_SIZES.items():
        out = subset_with_oversampling(items, ratio, seed=0)
        reps = 1 if ratio == 1.0 else int(round(1 / ratio))
        assert len(out) == k * reps
        counts = Counter(it["i"] for it in out)
        assert len(counts) == k and set(counts.values()) == {reps}
    assert subset_with_oversampling(items, 1.0, seed=3) == items
    a = subset_with_oversampling(items, 0.01, seed=13)
    assert a == subset_with_oversampling(items, 0.01, seed=13)
    assert a != subset_with_oversampling(items, 0.01, seed=42)
    idx = np.random.default_rng(13).choice(1498, size=15, replace=False)
    assert [it["i"] for it in a[:15]] == idx.tolist() and a[15:30] == a[:15]
    a[0]["i"] = -1  # repetitions are copies
    assert a[15]["i"] != -1 and items[idx[0]]["i"] == idx[0]
    for bad in (0, 0.0, -0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="ratio"):
            subset_with_oversampling(items, bad, seed=0)
