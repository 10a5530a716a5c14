"""Whole volumes of slice-indexed NIfTI data (ACDC cine frames) for 3D pretraining: volume_items
and LoadVolumed against the arrays written, plus the errors that name the file."""

from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Spacingd

from monai_ssl_ext.transforms import ImageReadError, LoadVolumed, SliceIndexError, volume_items


def _save(path, arr, zooms=(1.5, 1.5, 10.0)):
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = [-3.0, 4.0, 7.0]
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return affine


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    cine = rng.integers(0, 600, (12, 10, 4, 5)).astype(np.uint16)  # H x W x slices x frames
    frame = rng.integers(0, 600, (12, 10, 4)).astype(np.uint16)
    affine = _save(tmp_path / "p_4d.nii.gz", cine)
    _save(tmp_path / "p_frame01.nii.gz", frame)
    return {"cine": str(tmp_path / "p_4d.nii.gz"), "frame": str(tmp_path / "p_frame01.nii.gz"),
            "cine_arr": cine, "frame_arr": frame, "affine": affine}


def test_volume_items_one_per_volume_in_order(files):
    slices = (
        [{"image": files["cine"], "frame": t, "slice": s, "patient": 3} for s in range(4) for t in range(5)]
        + [{"image": files["frame"], "label": "x_gt.nii.gz", "slice": s, "patient": 3} for s in range(4)]
    )
    items = volume_items(slices)
    assert items == [{"image": files["cine"], "frame": t} for t in range(5)] + [{"image": files["frame"]}]
    assert volume_items([{"image": "a", "frame": -1}, {"image": "a"}]) == [{"image": "a"}]
    grouped = [{"image": "a", "slice": s, "patient": 7, "label": "DCM"} for s in range(3)]
    assert volume_items(grouped, keep_keys=["label", "patient"]) == [{"image": "a", "label": "DCM", "patient": 7}]
    with pytest.raises(ValueError, match="item 0 has no 'label'"):
        volume_items([{"image": "a"}], keep_keys=["label"])
    with pytest.raises(ValueError, match="item 1 has no 'image'"):
        volume_items([{"image": "a"}, {"img": "b"}])
    with pytest.raises(ValueError, match="empty"):
        volume_items([])


def test_load_volume_frames_and_3d_files(files):
    load = LoadVolumed("image")
    for t in (0, 3):
        out = load({"image": files["cine"], "frame": t})["image"]
        assert out.shape == (1, 12, 10, 4) and out.dtype == torch.float32
        assert np.array_equal(out[0].numpy(), files["cine_arr"][..., t].astype(np.float32))
        assert np.allclose(out.affine.numpy(), files["affine"]) and out.meta["frame"] == t
        assert out.meta["filename_or_obj"] == files["cine"]
    out = load({"image": files["frame"]})["image"]
    assert np.array_equal(out[0].numpy(), files["frame_arr"].astype(np.float32)) and out.meta["frame"] == -1
    # MONAI's spatial transforms read the affine: 10 mm slices resampled to 5 mm give 7 slices
    resampled = Spacingd("image", pixdim=(1.5, 1.5, 5.0))({"image": out})["image"]
    assert resampled.shape == (1, 12, 10, 7)


def test_4d_file_read_once_for_its_frames_and_pickles(files, monkeypatch):
    import monai_ssl_ext.transforms.slices as slices  # the volume cache LoadVolumed shares with LoadSliced

    reads = []
    real = slices.read_volume
    monkeypatch.setattr(slices, "read_volume", lambda p: reads.append(p) or real(p))
    load = LoadVolumed("image", cache_size=1)
    for t in range(5):
        load({"image": files["cine"], "frame": t})
    assert reads == [files["cine"]]
    copy = pickle.loads(pickle.dumps(load))  # a DataLoader worker's copy starts empty
    copy({"image": files["cine"], "frame": 0})
    assert reads == [files["cine"]] * 2


def test_errors_name_the_file(files, tmp_path):
    load = LoadVolumed("image")
    with pytest.raises(SliceIndexError, match=r"p_4d\.nii\.gz.*4D \(12, 10, 4, 5\).*no 'frame' index"):
        load({"image": files["cine"]})
    with pytest.raises(SliceIndexError, match=r"p_4d\.nii\.gz \(frame 5\): frame 5 out of range"):
        load({"image": files["cine"], "frame": 5})
    with pytest.raises(SliceIndexError, match=r"p_frame01\.nii\.gz \(frame 2\).*file is 3D"):
        load({"image": files["frame"], "frame": 2})
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        load({"image": str(tmp_path / "missing.nii.gz")})
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ImageReadError, match=r"broken\.nii\.gz.*item key 'image'"):
        load({"image": str(tmp_path / "broken.nii.gz")})
    _save(tmp_path / "flat.nii.gz", np.zeros((4, 4), np.float32))
    with pytest.raises(SliceIndexError, match=r"flat\.nii\.gz: expected a 3D or 4D"):
        load({"image": str(tmp_path / "flat.nii.gz")})


def test_orientation_and_spacing_read_the_affine(tmp_path):
    """A volume stored with flipped first axis (negative x step) is reoriented to RAS by MONAI's
    Orientationd as it would be from LoadImaged: the same voxels, reversed along that axis."""
    from monai.transforms import LoadImaged, Orientationd

    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    affine = np.diag([-2.0, 1.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(arr, affine), str(tmp_path / "flip.nii.gz"))
    item = {"image": str(tmp_path / "flip.nii.gz")}
    ours = Orientationd("image", axcodes="RAS", labels=None)(LoadVolumed("image")(item))["image"]
    monai_way = Orientationd("image", axcodes="RAS", labels=None)(LoadImaged("image", ensure_channel_first=True)(item))["image"]
    assert torch.equal(ours.as_tensor(), torch.from_numpy(arr[::-1].copy())[None])
    assert torch.equal(ours.as_tensor(), monai_way.as_tensor().float())
    assert np.allclose(ours.affine.numpy(), monai_way.affine.numpy())
