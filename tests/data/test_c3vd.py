"""C3VD layout (gie_depth): the frozen split of SSL4GIE's fixed videos (monai_ssl_ext.gie.prepare_c3vd), the demo
generator, the 16-bit depth reader and the pad-to-square geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_ssl_ext.demo.c3vd import c3vd
from monai_ssl_ext.gie import C3VD_TEST_VIDEOS, C3VD_VAL_VIDEOS, prepare_c3vd
from monai_ssl_ext.transforms import DepthFormatError, LoadDepthd, SquareResized


def _video(root: Path, folder: str, video: str, ks=(0, 1, 2), size=(6, 8)):
    d = root / folder / video
    d.mkdir(parents=True)
    for k in ks:
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(d / f"{k}_color.png")
        Image.fromarray(np.full(size, 1000 + k, np.uint16)).save(d / f"{k}_depth.tiff")
    return d


def _layout(root: Path, suffix: str = "_under_review"):
    for folder, video in C3VD_TEST_VIDEOS + C3VD_VAL_VIDEOS:
        _video(root, folder + suffix, video)
    _video(root, "cecum_t1_a" + suffix, "c1v1", ks=(0, 2, 10, 1))
    _video(root, "sigmoid_t3_a" + suffix, "s3v1")


def test_fixed_names_are_the_sources():
    # Depth_estimation/train_depth.py: test trans_t2_b/t2v2, cecum_t4_b/c4v3; val trans_t4_a/t4v1, cecum_t2_c/c2v3
    assert C3VD_TEST_VIDEOS == (("trans_t2_b", "t2v2"), ("cecum_t4_b", "c4v3"))
    assert C3VD_VAL_VIDEOS == (("trans_t4_a", "t4v1"), ("cecum_t2_c", "c2v3"))


@pytest.mark.parametrize("suffix", ["_under_review", ""])
def test_prepare_puts_the_fixed_videos_in_validation_and_test(tmp_path, suffix):
    _layout(tmp_path, suffix)
    split = json.loads(Path(prepare_c3vd(str(tmp_path))).read_text())

    def videos(key):
        return {str(Path(i["image"]).parent) for i in split[key]}

    assert videos("test") == {f"{f}{suffix}/{v}" for f, v in C3VD_TEST_VIDEOS}
    assert videos("validation") == {f"{f}{suffix}/{v}" for f, v in C3VD_VAL_VIDEOS}
    assert videos("training") == {f"cecum_t1_a{suffix}/c1v1", f"sigmoid_t3_a{suffix}/s3v1"}
    train = [i for i in split["training"] if "c1v1" in i["image"]]
    assert [Path(i["image"]).name for i in train] == ["0_color.png", "1_color.png", "2_color.png", "10_color.png"]
    items = split["training"] + split["validation"] + split["test"]
    assert all(i["depth"] == i["image"].replace("_color.png", "_depth.tiff") for i in items)
    assert split["counts"] == {"training": 7, "validation": 6, "test": 6}


def test_prepare_names_what_is_missing(tmp_path):
    _layout(tmp_path)
    (tmp_path / "calibration" / "notes").mkdir(parents=True)  # a stray */*/ folder without frames: skipped
    assert json.loads(Path(prepare_c3vd(str(tmp_path))).read_text())["counts"]["training"] == 7
    (tmp_path / "cecum_t1_a_under_review" / "c1v1" / "2_depth.tiff").unlink()
    with pytest.raises(ValueError, match="2_depth.tiff"):
        prepare_c3vd(str(tmp_path))
    other = tmp_path / "other"
    _video(other, "trans_t2_b", "t2v2")
    with pytest.raises(FileNotFoundError, match="cecum_t4_b/c4v3"):
        prepare_c3vd(str(other))


def test_demo_layout(tmp_path):
    out = c3vd(str(tmp_path), n_train_videos=2, frames_per_video=3, width=48, height=40)
    split = json.loads(Path(out["split"]).read_text())
    assert out["counts"] == {"training": 6, "validation": 6, "test": 6}
    item = split["test"][0]
    assert item["image"].startswith("trans_t2_b_under_review/t2v2/")
    img, dep = Image.open(tmp_path / item["image"]), Image.open(tmp_path / item["depth"])
    assert img.size == dep.size == (48, 40) and img.mode == "RGB" and dep.mode == "I;16"
    # depth varies smoothly and is learnable: brighter pixels are nearer
    rgb = np.asarray(img, np.float32).mean(-1)
    d = np.asarray(dep, np.float32)
    valid = d > 0
    assert np.corrcoef(rgb[valid], d[valid])[0, 1] < -0.5
    again = c3vd(str(tmp_path / "again"), n_train_videos=2, frames_per_video=3, width=48, height=40)
    assert np.array_equal(np.asarray(Image.open(Path(again["split"]).parent / item["depth"])), np.asarray(dep))


def test_load_depth_reads_16_bit_and_refuses_other_files(tmp_path):
    raw = np.array([[0, 65535], [32768, 1]], np.uint16)
    Image.fromarray(raw).save(tmp_path / "ok_depth.tiff")
    out = LoadDepthd("depth")({"depth": str(tmp_path / "ok_depth.tiff")})["depth"]
    assert out.shape == (1, 2, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out.as_tensor()[0], torch.from_numpy(raw.astype(np.float32) / 65535))
    assert out.meta["filename_or_obj"].endswith("ok_depth.tiff")
    Image.fromarray((raw // 257).astype(np.uint8)).save(tmp_path / "eight_bit_depth.tiff")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb_depth.png")
    for name in ("eight_bit_depth.tiff", "rgb_depth.png"):
        with pytest.raises(DepthFormatError, match=name):
            LoadDepthd("depth")({"depth": str(tmp_path / name)})
    with pytest.raises(Exception, match="missing_depth.tiff"):
        LoadDepthd("depth")({"depth": str(tmp_path / "missing_depth.tiff")})
    assert LoadDepthd("depth", allow_missing_keys=True)({"image": "x"}) == {"image": "x"}


def test_square_resize_pads_centred_and_stays_in_range():
    x = torch.arange(1, 13, dtype=torch.float32).reshape(1, 3, 4)  # H 3 < W 4: a zero row below (floor(1/2) = 0 above)
    out = SquareResized("x", spatial_size=4, mode="nearest")({"x": x})["x"]
    torch.testing.assert_close(out, torch.cat([x, torch.zeros(1, 1, 4)], 1))
    tall = torch.ones(2, 5, 2)  # W 2 < H 5: 1 zero column left, 2 right
    out = SquareResized("x", spatial_size=5, mode="bilinear")({"x": tall})["x"]
    assert out.shape == (2, 5, 5) and out[:, :, 1:3].eq(1).all() and out[:, :, [0, 3, 4]].eq(0).all()
    big = SquareResized("x", spatial_size=32, mode="bicubic")({"x": 255 * torch.rand(3, 9, 13)})["x"]
    assert big.shape == (3, 32, 32) and float(big.min()) >= 0 and float(big.max()) <= 255
    with pytest.raises(ValueError, match="mode"):
        SquareResized("x", mode="area")
