"""Views of the joint 2D-3D method (SPEC E.3): one transform per view, distinct between the two views, drawn anew at
every read; TorchIO-default transforms built from MONAI; volumes read from .npy (H x W x D) or NIfTI with the slice
axis first; the training_data_3D reader."""

from __future__ import annotations

import collections

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_ssl_ext.data import read_volume_folders
from monai_ssl_ext.transforms import (LoadSliceStackd, OneOfDistinctViewsd, RandAnisotropy, read_slice_stack,
                                      torchio_default_views)


class Mark:
    """A transform that replaces the volume by its own number (which transform made a view)."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, x):
        return torch.full_like(x, float(self.k))


def test_two_views_use_two_distinct_transforms_uniformly():
    t = OneOfDistinctViewsd("image", [Mark(k) for k in range(7)], n_views=2)
    torch.manual_seed(0)
    pairs = collections.Counter()
    for _ in range(2100):
        out = t({"image": torch.zeros(1, 2, 3, 3)})
        a, b = int(out["image"].flatten()[0]), int(out["image_2"].flatten()[0])
        assert a != b, "the two views used the same transform"
        pairs[(a, b)] += 1
    # every ordered pair of distinct transforms, each about 1/42 of the draws (50 expected)
    assert len(pairs) == 42 and min(pairs.values()) > 20 and max(pairs.values()) < 85


def test_choice_follows_torch_global_generator():
    t = OneOfDistinctViewsd("image", torchio_default_views(), n_views=2)
    vol = torch.rand(1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    first = t({"image": vol})
    torch.manual_seed(5)
    again = t({"image": vol})
    assert all(torch.equal(torch.as_tensor(first[k]), torch.as_tensor(again[k])) for k in ("image", "image_2"))


def test_each_view_differs_between_two_reads_and_keeps_the_shape():
    t = OneOfDistinctViewsd("image", torchio_default_views(), n_views=2)
    torch.manual_seed(1)
    vol = torch.rand(1, 8, 16, 16)
    first, second = t({"image": vol}), t({"image": vol})
    for key in ("image", "image_2"):
        a, b = torch.as_tensor(first[key]), torch.as_tensor(second[key])
        assert a.shape == vol.shape and a.dtype == torch.float32
        assert not torch.equal(a, b), key
    assert not torch.equal(torch.as_tensor(first["image"]), torch.as_tensor(first["image_2"]))


def test_every_default_transform_changes_a_volume():
    vol = torch.rand(1, 8, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.8 + 0.1
    torch.manual_seed(3)
    for name, transform in torchio_default_views().items():
        changed = False
        for seed in range(6):  # the flip acts with probability 0.5
            transform.set_random_state(seed=seed)
            out = torch.as_tensor(transform(vol.clone()))
            assert out.shape == vol.shape, name
            changed |= not torch.allclose(out, vol, atol=1e-6)
        assert changed, f"{name} never changed the volume"


def test_default_flip_reverses_the_slice_axis():
    flip = torchio_default_views()["flip"]
    vol = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    outs = []
    for seed in range(20):
        flip.set_random_state(seed=seed)
        outs.append(torch.as_tensor(flip(vol.clone())))
    flipped = [o for o in outs if not torch.equal(o, vol)]
    assert flipped and all(torch.equal(o, vol.flip(1)) for o in flipped)  # TorchIO's axes=0: D, the first spatial axis


def test_anisotropy_acts_along_one_axis():
    t = RandAnisotropy(axes=(0,), downsampling=(2.0, 2.0))
    along_hw = torch.rand(1, 1, 12, 12).expand(1, 8, 12, 12).contiguous()  # constant along D
    out = torch.as_tensor(t(along_hw))
    assert out.shape == along_hw.shape and torch.allclose(out, along_hw, atol=1e-5)
    along_d = torch.arange(8, dtype=torch.float32)[None, :, None, None].expand(1, 8, 4, 4).contiguous()
    out = torch.as_tensor(t(along_d))
    assert not torch.allclose(out, along_d, atol=1e-3)
    with pytest.raises(ValueError, match="downsampling"):
        RandAnisotropy(downsampling=(0.5, 2.0))


def test_too_few_transforms_refused():
    with pytest.raises(ValueError, match="distinct"):
        OneOfDistinctViewsd("image", [Mark(0)], n_views=2)


def test_npy_axis_order(tmp_path):
    arr = np.zeros((6, 7, 4), dtype=np.float32)  # H x W x D
    arr[2, 5, 3] = 1.0
    path = tmp_path / "vol.npy"
    np.save(path, arr)
    out = LoadSliceStackd("image")({"image": str(path)})["image"]
    assert out.shape == (1, 4, 6, 7) and out.dtype == torch.float32  # (1, D, H, W)
    assert out[0, 3, 2, 5] == 1.0 and float(out.sum()) == 1.0  # slice d, row h, column w


def test_nifti_axis_order_and_intensity(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.uniform(0, 100, (6, 7, 4)).astype(np.float32)
    arr[2, 5, 3] = 5000.0
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    raw = read_slice_stack(path, nifti_intensity=False)
    assert raw.shape == (1, 4, 6, 7) and raw[0, 3, 2, 5] == 5000.0
    assert torch.allclose(raw[0].permute(1, 2, 0), torch.from_numpy(arr))
    scaled = read_slice_stack(path)
    assert 0.0 <= float(scaled.min()) and float(scaled.max()) <= 1.0
    assert int(scaled[0].argmax()) == int(raw[0].argmax())  # the bright voxel stays where it was


def test_bad_volume_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        read_slice_stack(tmp_path / "missing.npy")
    np.save(tmp_path / "flat.npy", np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"flat\.npy.*3D"):
        read_slice_stack(tmp_path / "flat.npy")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match=r"x\.txt"):
        read_slice_stack(tmp_path / "x.txt")


def test_read_volume_folders(tmp_path):
    for ds, names in {"LiTS2017": ["b.npy", "a.nii.gz"], "BraTS2018": ["c.nii"], ".hidden": ["d.npy"]}.items():
        (tmp_path / ds).mkdir()
        for n in names:
            (tmp_path / ds / n).write_bytes(b"")
    (tmp_path / "LiTS2017" / "notes.txt").write_text("no")
    (tmp_path / "loose.npy").write_bytes(b"")
    items = read_volume_folders(tmp_path)
    assert [(i["dataset"], i["image"].rsplit("/", 1)[1]) for i in items] == [
        ("BraTS2018", "c.nii"), ("LiTS2017", "a.nii.gz"), ("LiTS2017", "b.npy")]
    assert all(i["image"].startswith(str(tmp_path)) for i in items)
    with pytest.raises(ValueError, match="does not exist"):
        read_volume_folders(tmp_path / "nope")
    (tmp_path / "empty" / "E").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no volumes"):
        read_volume_folders(tmp_path / "empty")
