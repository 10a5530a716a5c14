"""Bad input, each an error naming the file or the config key: a missing image, a corrupt image,
an empty CSV, a 1-channel image where 3 are expected, an unknown backbone name, a NaN loss (the
run stops with a message and the last checkpoint is kept), a missing or truncated encoder file,
a missing CSV. Runs the real simclr_cholec bundle in-process on a small copy of the demo data."""

from __future__ import annotations

import hashlib
import shutil
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
