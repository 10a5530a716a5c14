"""Bad input, each an error naming the file or the config key: a missing image, a corrupt image,
an empty CSV, a 1-channel image where 3 are expected, an unknown backbone name, a NaN loss (the
run stops with a message and the last checkpoint is kept), a missing or truncated encoder file,
a missing CSV. Runs the real simclr_cholec bundle in-process on a small copy of the demo data.
Then the input checks (``CheckInputd``): one case per bad input of issue 9 through the bundle that
met it (mask/image shape, label values, label/image shape, 2-D and 4-D NIfTI, NaN in CT and MR),
and unit tests of the transform."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest
import torch

from bundle_runner import run_config
from conftest import ROOT

BUNDLE = ROOT / "bundles" / "simclr_cholec"
N_TRAIN = 8  # two batches of 4 (smoke.json): every image is read in the first epoch


@pytest.fixture(scope="module")
def frames(demo_data) -> list[Path]:
    """A few demo training frames, spread over the videos."""
    demo = Path(demo_data("cholec"))
    rows = (demo / "train.csv").read_text().splitlines()[1:]
    rows = rows[:: max(1, len(rows) // N_TRAIN)][:N_TRAIN]
    return [demo / r.split(",")[0] for r in rows]


@pytest.fixture
def data(frames, tmp_path) -> Path:
    """A private dataset folder (``frames/`` + ``train.csv`` + ``val.csv``, relative paths) that a
    test may corrupt."""
    out = tmp_path / "data"
    (out / "frames").mkdir(parents=True)
    lines = ["path,label"]
    for i, src in enumerate(frames):
        shutil.copy(src, out / "frames" / f"{i:03d}.jpg")
        lines.append(f"frames/{i:03d}.jpg,{i % 7}")
    (out / "train.csv").write_text("\n".join(lines) + "\n")
    (out / "val.csv").write_text("\n".join(lines[:5]) + "\n")
    return out


def messages(exc: BaseException) -> str:
    """Every message in the exception chain (MONAI wraps errors in "Failed to evaluate ..." and
    "applying transform ..." RuntimeErrors)."""
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(out)


def chain_types(exc: BaseException) -> list[type]:
    out = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return [type(e) for e in out]


def run_bad(data: Path, tmp_path: Path, **override) -> BaseException:
    with pytest.raises(Exception) as info:
        run_config(BUNDLE, ["train.json"], str(tmp_path / "root"), str(data), **override)
    return info.value


def frame(data: Path, i: int = 3) -> Path:
    return data / "frames" / f"{i:03d}.jpg"


# ---- through the bundle -------------------------------------------------------------------------


def test_missing_image(data, tmp_path):
    missing = frame(data)
    missing.unlink()
    text = messages(run_bad(data, tmp_path))
    assert str(data / "train.csv") in text and "line 5" in text, text
    assert str(missing) in text, text


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image(data, tmp_path, damage):
    bad = frame(data)
    if damage == "garbage":
        bad.write_bytes(b"this is not a jpeg" * 20)
    else:  # a partly written file: a valid header, then nothing
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    exc = run_bad(data, tmp_path)
    text = messages(exc)
    assert f"cannot read image {bad}" in text, text
    from monai_ssl_ext.transforms import ImageReadError

    assert ImageReadError in chain_types(exc)


@pytest.mark.parametrize("content", ["path,label\n", ""], ids=["header-only", "zero-bytes"])
def test_empty_csv(data, tmp_path, content):
    (data / "train.csv").write_text(content)
    text = messages(run_bad(data, tmp_path))
    assert f"frame CSV {str(data / 'train.csv')!r} has no data rows" in text, text


def test_missing_csv(data, tmp_path):
    (data / "train.csv").unlink()
    text = messages(run_bad(data, tmp_path))
    assert f"frame CSV {str(data / 'train.csv')!r} does not exist" in text, text


def test_grayscale_image_where_rgb_expected(data, tmp_path):
    from PIL import Image

    gray = frame(data)
    Image.open(gray).convert("L").save(gray)
    text = messages(run_bad(data, tmp_path))
    assert f"{gray}: 'image' has 1 channel(s), expected 3 (config `in_channels`)" in text, text


def test_unknown_backbone(data, tmp_path):
    text = messages(run_bad(data, tmp_path, backbone="resnet_does_not_exist"))
    assert "unknown backbone 'resnet_does_not_exist'" in text and "efficientnet-b0" in text, text


def test_missing_init_weights(data, tmp_path):
    path = tmp_path / "nowhere" / "encoder.pt"
    text = messages(run_bad(data, tmp_path, init_weights=str(path)))
    assert f"encoder file not found: {path}" in text, text


class NaNAfter:
    """The bundle's NT-Xent loss, NaN from the ``after + 1``-th training call on (validation calls,
    without gradients, are not counted). Records the checkpoint's digest when it turns NaN."""

    def __init__(self, after: int, ckpt: Path):
        from monai_ssl_ext.losses import NTXentLoss

        self.loss = NTXentLoss(temperature=0.07)
        self.after, self.ckpt, self.calls, self.digest_at_nan = after, ckpt, 0, None

    def __call__(self, *z):
        loss = self.loss(*z)
        if not torch.is_grad_enabled():
            return loss
        self.calls += 1
        if self.calls <= self.after:
            return loss
        if self.digest_at_nan is None:
            # the epoch-1 checkpoint is written in the background while epoch 2 trains; it appears whole (atomic
            # rename): the state of a run that diverges once it is on disk
            deadline = time.monotonic() + 120
            while not self.ckpt.exists():
                assert time.monotonic() < deadline, f"the epoch-1 checkpoint {self.ckpt} never landed"
                time.sleep(0.05)
            self.digest_at_nan = hashlib.sha256(self.ckpt.read_bytes()).hexdigest()
        return loss * float("nan")


def test_nan_loss_stops_run_and_keeps_checkpoint(data, tmp_path):
    from monai_ssl_ext.handlers import NonFiniteLossError

    ckpt = tmp_path / "root" / "runs" / "simclr_cholec" / "models" / "checkpoint_last.pt"
    loss = NaNAfter(after=2, ckpt=ckpt)  # epoch 1 (2 iterations) is fine, epoch 2 diverges
    exc = run_bad(data, tmp_path, loss=loss, epochs=3)
    text = messages(exc)
    assert NonFiniteLossError in chain_types(exc), text
    assert "loss is nan at epoch 2, iteration 3: training stopped; the last checkpoint is kept" in text, text
    assert loss.calls == 3, "the run went on after the NaN loss"
    # the checkpoint of epoch 1 is still there, unchanged and finite
    assert loss.digest_at_nan is not None
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == loss.digest_at_nan
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert payload["engine"]["epoch"] == 1 and payload["engine"]["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in payload["network"].values() if v.is_floating_point())


# ---- the package functions ----------------------------------------------------------------------


def test_checked_load_image_names_missing_file(tmp_path):
    from monai_ssl_ext.transforms import CheckedLoadImaged, ImageReadError

    path = tmp_path / "gone.jpg"
    with pytest.raises(ImageReadError, match=f"cannot read image {path}"):
        CheckedLoadImaged(keys="image", image_only=True)({"image": str(path)})


def test_read_frame_csv_missing_file(tmp_path):
    from monai_ssl_ext.data import read_frame_csv

    path = tmp_path / "no" / "train.csv"
    with pytest.raises(FileNotFoundError) as info:
        read_frame_csv(path)
    assert str(path) in str(info.value)


@pytest.fixture(scope="module")
def small_encoder(tmp_path_factory) -> tuple[Path, object]:
    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks.backbones import build_backbone

    backbone = build_backbone("resnet10", in_channels=3)
    path = tmp_path_factory.mktemp("encoder") / "encoder.pt"
    export_encoder(backbone, str(path), method="simclr", normalization={"mean": [0.5] * 3, "std": [0.5] * 3})
    return path, backbone


def test_load_encoder_missing_file(small_encoder, tmp_path):
    from monai_ssl_ext.encoders import load_encoder

    path = tmp_path / "encoder.pt"
    with pytest.raises(FileNotFoundError) as info:
        load_encoder(small_encoder[1], str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "empty", "not-an-encoder"])
def test_load_encoder_damaged_file(small_encoder, tmp_path, damage):
    from monai_ssl_ext.encoders import EncoderLoadError, load_encoder

    good, backbone = small_encoder
    path = tmp_path / "encoder.pt"
    if damage == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(EncoderLoadError) as info:
        load_encoder(backbone, str(path))
    assert str(path) in str(info.value)
    # and the good file still loads
    report = load_encoder(backbone, str(good))
    assert report.ok and report.loaded


# ---- input checks (CheckInputd): the bad inputs of issue 9, one per row, through the bundles ----
#
# Each case copies the demo data, damages one file the way a user's data was found damaged, and
# requires an InputCheckError whose message names the file and the config key of the assumption.
# Rows where the run itself went wrong (trained silently, aborted, blamed the learning rate) run
# the bundle in-process; the others build the bundle's dataset and read it.


def demo_copy(demo_data, kind: str, tmp_path: Path) -> Path:
    out = tmp_path / kind
    shutil.copytree(demo_data(kind), out)
    return out


def bundle_error(name: str, data: Path, tmp_path: Path, **override) -> BaseException:
    """The error of ``train.json`` (+ smoke.json) of bundle ``name`` run on ``data``."""
    with pytest.raises(Exception) as info:
        run_config(ROOT / "bundles" / name, ["train.json"], str(tmp_path / "root"), str(data), **override)
    return info.value


def dataset_error(name: str, data: Path, tmp_path: Path, dataset: str = "train#dataset") -> BaseException:
    """The error of building ``dataset`` from bundle ``name``'s train.json (+ smoke.json) on
    ``data`` and reading every item (a ``CacheDataset`` reads them when it is built)."""
    from conftest import read_bundle_config

    parser = read_bundle_config(ROOT / "bundles" / name / "configs", ["train.json", "smoke.json"],
                                {"bundle_root": str(tmp_path / "root"), "dataset_dir": str(data)})
    with pytest.raises(Exception) as info:
        ds = parser.get_parsed_content(dataset)
        for i in range(len(ds)):
            ds[i]
    return info.value


def input_check_text(exc: BaseException) -> str:
    """The messages of ``exc``'s chain, which must hold an InputCheckError (a ValueError)."""
    from monai_ssl_ext.transforms import InputCheckError

    text = messages(exc)
    assert InputCheckError in chain_types(exc), text
    assert issubclass(InputCheckError, ValueError)
    return text


def rewrite_nifti(path: Path, edit) -> None:
    """Replace ``path`` by ``edit(voxels)`` with the same affine."""
    import nibabel as nib
    import numpy as np

    img = nib.load(str(path))
    arr = edit(np.asanyarray(img.dataobj).copy())
    nib.save(nib.Nifti1Image(arr, img.affine), str(path))


def test_tools_mask_shape_differs_from_image(demo_data, tmp_path):
    """Row 1: a 48x40 mask beside its 64x64 image trained silently (both resized)."""
    from PIL import Image

    data = demo_copy(demo_data, "tools", tmp_path)
    mask, image = data / "masks" / "train_000.png", data / "images" / "train_000.png"
    Image.open(mask).resize((40, 48), Image.NEAREST).save(mask)  # PIL size is (width, height)
    text = input_check_text(bundle_error("flexibleunet_tools", data, tmp_path))
    assert f"{mask}: 'label' has spatial shape (48, 40), but its 'image' {image} has (64, 64)" in text, text
    assert "never resized" in text and "config `datalist_file`" in text, text
    assert not (tmp_path / "root" / "runs" / "flexibleunet_tools" / "models" / "checkpoint_last.pt").exists()


def test_acdc_label_value_out_of_range(demo_data, tmp_path):
    """Row 2: label value 5 in the 4-class unet_acdc gave an index error naming no file."""
    data = demo_copy(demo_data, "acdc", tmp_path)
    gt = data / "training" / "patient003" / "patient003_frame01_gt.nii.gz"

    def five(a):
        a[:3, :2, 1] = 5  # 6 voxels of slice 1
        return a

    rewrite_nifti(gt, five)
    text = input_check_text(dataset_error("unet_acdc", data, tmp_path))
    assert f"{gt}: 'label' has value(s) 5 (6 voxels) that are not class indices 0..3 (config `num_classes` = 4)" in text, text


def test_acdc_label_shape_differs_from_image(demo_data, tmp_path):
    """Row 3: a label volume of another in-plane shape gave "Found multiple HxW dimensions"."""
    data = demo_copy(demo_data, "acdc", tmp_path)
    pdir = data / "training" / "patient002"  # the validation patient: read when the run starts
    gt, image = pdir / "patient002_frame01_gt.nii.gz", pdir / "patient002_frame01.nii.gz"
    rewrite_nifti(gt, lambda a: a[:40].copy())
    text = input_check_text(dataset_error("unet_acdc", data, tmp_path, "validate#dataset"))
    assert f"{gt}: 'label' has spatial shape (40, 48), but its 'image' {image} has (48, 48)" in text, text
    assert "config `slice_index`" in text, text


def test_ct_2d_nifti_in_3d_bundle(demo_data, tmp_path):
    """Row 4: a 2-D NIfTI in vitautoenc_ct aborted the process (exit 134) on a sequence length."""
    data = demo_copy(demo_data, "tcia", tmp_path)
    vol = data / "data" / "volume-covid19-A-0002.nii.gz"
    rewrite_nifti(vol, lambda a: a[:, :, 24].copy())
    text = input_check_text(bundle_error("vitautoenc_ct", data, tmp_path))
    assert f"{vol}: 'image' has 2 spatial dimension(s) (channel-first shape (1, 48, 48)), expected 3 (config `roi_size`)" in text, text


def test_ct_4d_nifti(demo_data, tmp_path):
    """Row 5: a 4-D NIfTI in vitautoenc_ct crashed in epoch 2 on a channel count, naming no file."""
    import numpy as np

    data = demo_copy(demo_data, "tcia", tmp_path)
    vol = data / "data" / "volume-covid19-A-0003.nii.gz"
    rewrite_nifti(vol, lambda a: np.stack([a, a], axis=-1))
    text = input_check_text(dataset_error("vitautoenc_ct", data, tmp_path))
    assert f"{vol}: 'image' has 2 channel(s), expected 1 (config `in_channels`)" in text, text
    assert "(48, 48, 48, 2)" in text and "4-D" in text, text


def test_ct_nan_voxels(demo_data, tmp_path):
    """Row 6: NaN voxels in CT failed in a dropout transform ("Range exceeds valid bounds")."""
    import numpy as np

    data = demo_copy(demo_data, "tcia", tmp_path)
    vol = data / "data" / "volume-covid19-A-0004.nii.gz"

    def nan(a):
        a = a.astype(np.float32)
        a[10:12, 10:12, 10:12] = np.nan  # 8 voxels
        a[0, 0, 0] = np.inf
        return a

    rewrite_nifti(vol, nan)
    text = input_check_text(dataset_error("vitautoenc_ct", data, tmp_path))
    assert f"{vol}: 'image' has 8 NaN and 1 infinite value(s) among {48 ** 3}" in text, text
    assert "config `datalist`" in text, text


def test_mr_nan_voxels_named_before_nan_guard(demo_data, tmp_path):
    """Row 7: NaN voxels in the MR training slices stopped unet_acdc through the NaN guard, whose
    hint blamed `learning_rate` / `amp`. Every training image is damaged, so the first batch
    stops the run, naming the file, before any loss is computed."""
    import re

    import numpy as np

    data = demo_copy(demo_data, "acdc", tmp_path)
    damaged = sorted(p for n in (3, 4, 5, 6) for p in (data / "training" / f"patient{n:03d}").glob("*_frame??.nii.gz"))
    assert len(damaged) == 8

    def nan(a):
        a = a.astype(np.float32)
        a[20:23, 20:23, :] = np.nan  # 9 voxels per slice
        return a

    for path in damaged:
        rewrite_nifti(path, nan)
    exc = bundle_error("unet_acdc", data, tmp_path)
    text = input_check_text(exc)
    from monai_ssl_ext.handlers import NonFiniteLossError

    assert NonFiniteLossError not in chain_types(exc), text
    found = re.search(r"(\S+\.nii\.gz): 'image' has 9 NaN and 0 infinite value\(s\) among 2304", text)
    assert found and Path(found.group(1)) in damaged, text
    assert "config `slice_index`" in text and "learning_rate" not in text, text


def test_btcv_label_value_out_of_range(demo_data, tmp_path):
    """unetr_btcv (14 classes): a label value 14 is named with the file and `num_classes`."""
    data = demo_copy(demo_data, "btcv", tmp_path)
    gt = data / "labelsTr" / "label0001.nii.gz"

    def fourteen(a):
        a[0, 0, :4] = 14
        return a

    rewrite_nifti(gt, fourteen)
    text = input_check_text(dataset_error("unetr_btcv", data, tmp_path))
    assert f"{gt}: 'label' has value(s) 14 (4 voxels) that are not class indices 0..13 (config `num_classes` = 14)" in text, text


# ---- CheckInputd itself -------------------------------------------------------------------------


def _item(image, label=None, image_file="img.nii.gz", label_file="seg.nii.gz") -> dict:
    from monai.data import MetaTensor

    out = {"image": MetaTensor(torch.as_tensor(image), meta={"filename_or_obj": image_file})}
    if label is not None:
        out["label"] = MetaTensor(torch.as_tensor(label), meta={"filename_or_obj": label_file})
    return out


def _check(**kwargs):
    from monai_ssl_ext.transforms import CheckInputd

    args = {"keys": "image", "label_keys": "label", "channels": 1, "spatial_dims": 2, "num_classes": 4}
    return CheckInputd(**{**args, **kwargs})


def _error(check, item):
    from monai_ssl_ext.transforms import InputCheckError

    with pytest.raises(InputCheckError) as info:
        check(item)
    return info.value


def test_check_input_passes_a_good_item():
    label = torch.randint(0, 4, (1, 8, 6)).float()
    item = _item(torch.rand(1, 8, 6), label)
    out = _check()(item)
    assert out is not item and out.keys() == item.keys()
    assert out["image"] is item["image"] and out["label"] is item["label"]  # nothing changed
    # integer labels, and a 3-D item with 3 channels
    _check(spatial_dims=3, channels=3)(_item(torch.rand(3, 4, 4, 4), torch.ones(1, 4, 4, 4, dtype=torch.uint8)))


def test_check_input_spatial_dims():
    err = _error(_check(spatial_dims=3, config_keys={"spatial_dims": "roi_size"}), _item(torch.rand(1, 8, 8), torch.zeros(1, 8, 8)))
    assert str(err).startswith("img.nii.gz: 'image' has 2 spatial dimension(s) (channel-first shape (1, 8, 8)), expected 3 (config `roi_size`)")
    assert (err.path, err.key, err.config_key) == ("img.nii.gz", "image", "roi_size")


def test_check_input_channels():
    err = _error(_check(), _item(torch.rand(3, 8, 8), torch.zeros(1, 8, 8)))
    assert str(err).startswith("img.nii.gz: 'image' has 3 channel(s), expected 1 (config `in_channels`)")
    assert err.config_key == "in_channels"
    # a 4-D file whose last axis the loader made channels: the stored shape is shown
    item = _item(torch.rand(2, 4, 4, 4), torch.zeros(1, 4, 4, 4))
    item["image"].meta["original_channel_dim"] = -1
    assert "the file stores shape (4, 4, 4, 2)" in str(_error(_check(spatial_dims=3), item))
    err = _error(_check(), _item(torch.rand(1, 8, 8), torch.zeros(3, 8, 8)))
    assert str(err).startswith("seg.nii.gz: 'label' has 3 channel(s), expected 1: a label is one map of class indices")


def test_check_input_finite():
    image = torch.rand(1, 8, 8)
    image[0, :2, :3] = float("nan")
    image[0, 7, 7] = -float("inf")
    err = _error(_check(config_keys={"datalist": "datalist_file"}), _item(image, torch.zeros(1, 8, 8)))
    assert str(err).startswith("img.nii.gz: 'image' has 6 NaN and 1 infinite value(s) among 64")
    assert "config `datalist_file`" in str(err) and "learning_rate" not in str(err)
    label = torch.zeros(1, 8, 8)
    label[0, 0, 0] = float("nan")
    assert str(_error(_check(), _item(torch.rand(1, 8, 8), label))).startswith("seg.nii.gz: 'label' has 1 NaN")
    _check(finite=False, num_classes=None)(_item(image, label))  # the check can be switched off


def test_check_input_label_shape():
    err = _error(_check(), _item(torch.rand(1, 8, 8), torch.zeros(1, 8, 6)))
    assert str(err).startswith("seg.nii.gz: 'label' has spatial shape (8, 6), but its 'image' img.nii.gz has (8, 8)")
    err = _error(_check(spatial_dims=None), _item(torch.rand(1, 8, 8), torch.zeros(1, 8, 8, 2)))
    assert "spatial shape (8, 8, 2)" in str(err)


def test_check_input_label_values():
    label = torch.zeros(1, 4, 4)
    label[0, 0, :3] = torch.tensor([4.0, 4.0, 0.5])
    label[0, 1, 0] = -1
    err = _error(_check(), _item(torch.rand(1, 4, 4), label))
    assert str(err).startswith(
        "seg.nii.gz: 'label' has value(s) -1 (1 voxel), 0.5 (1 voxel), 4 (2 voxels) that are not class indices 0..3 "
        "(config `num_classes` = 4)")
    assert err.config_key == "num_classes"
    many = torch.arange(64, dtype=torch.uint8).reshape(1, 8, 8)  # integer dtype, 60 bad values
    assert "and 50 more" in str(_error(_check(), _item(torch.rand(1, 8, 8), many)))
    # no num_classes: values not checked (a picture mask thresholded later)
    _check(num_classes=None)(_item(torch.rand(1, 4, 4), label.abs() * 255))


def test_check_input_arguments():
    from monai_ssl_ext.transforms import CheckInputd

    with pytest.raises(ValueError, match="no label_keys"):
        CheckInputd("image", num_classes=4)
    with pytest.raises(ValueError, match="unknown config_keys"):
        CheckInputd("image", config_keys={"classes": "num_classes"})
    with pytest.raises(ValueError, match="spatial_dims"):
        CheckInputd("image", spatial_dims=4)
    with pytest.raises(KeyError, match="label"):
        _check()(_item(torch.rand(1, 4, 4)))
    _check(allow_missing_keys=True)(_item(torch.rand(1, 4, 4)))


def test_check_input_is_cached_once_per_item():
    """Deterministic to MONAI, so CacheDataset caches past it; the only name of its kind."""
    from monai.bundle import ComponentLocator
    from monai.data import CacheDataset
    from monai.transforms import Compose, RandFlipd, Randomizable, RandomizableTrait

    from monai_ssl_ext.transforms import CheckInputd

    calls = []

    class Counting(CheckInputd):
        def __call__(self, data):
            calls.append(data["image"].meta["filename_or_obj"])
            return super().__call__(data)

    assert not isinstance(CheckInputd("image"), (Randomizable, RandomizableTrait))
    items = [_item(torch.rand(1, 4, 4), image_file=f"{i}.png") for i in range(3)]
    ds = CacheDataset(items, Compose([Counting("image", channels=1), RandFlipd("image", prob=0.5)]), progress=False)
    for _ in range(2):
        [ds[i] for i in range(len(ds))]
    assert calls == ["0.png", "1.png", "2.png"]
    assert ComponentLocator().get_component_module_name("CheckInputd") == "monai_ssl_ext.transforms.validate"
    assert ComponentLocator().get_component_module_name("InputCheckError") == "monai_ssl_ext.transforms.validate"
