"""gie_polyp_segmentation's transforms: paired geometric augmentation keeps image and mask aligned (asymmetric test
pattern), the source's fills (image -1 in normalised units, mask 0), mask binarisation, photometric jitter on the
image only, resizing a prediction to the ground truth, and the bad-input error for a mask of another size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose
from monai.utils import set_determinism
from PIL import Image

from monai_ssl_ext.transforms import BinaryMaskd, ColorJitterBlurd, RandPairedAffined, ResizeToMatchd

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "gie_polyp_segmentation" / "configs"


def _parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    for k, v in overrides.items():
        parser[k] = v
    return parser


def _pattern(size: int = 32):
    """An asymmetric 'L' (no flip or rotation maps it onto itself) in channel 0 of the image and in the mask;
    channel 1 is a constant 0.5 (never -1, so the image fill is recognisable), channel 2 a horizontal ramp."""
    mask = torch.zeros(1, size, size)
    mask[0, 6:26, 8:13] = 1  # long vertical bar
    mask[0, 21:26, 13:22] = 1  # short foot to the right
    image = torch.stack([mask[0], torch.full((size, size), 0.5), torch.linspace(0, 1, size).expand(size, size)])
    return image, mask


def test_paired_augmentation_keeps_image_and_mask_aligned():
    parser = _parser(image_size=32)
    geometric = Compose([parser.get_parsed_content(f"train#{k}") for k in ("hflip", "vflip", "affine")])
    geometric.set_random_state(7)
    image, mask = _pattern()
    changed = filled = 0
    for _ in range(25):
        out = geometric({"image": image.clone(), "label": mask.clone()})
        img, lab = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
        assert img.shape == (3, 32, 32) and lab.shape == (1, 32, 32)
        outside = img[1] == -1.0  # the image fill, in every channel
        assert torch.all(img[:, outside] == -1.0)
        assert torch.all(lab[0][outside] == 0.0)  # mask fill 0 at the same pixels
        inside = ~outside
        assert torch.equal(lab[0][inside], img[0][inside])  # the L moved with the image, pixel for pixel
        assert set(lab.unique().tolist()) <= {0.0, 1.0}
        changed += not torch.equal(lab, mask)
        filled += bool(outside.any())
    assert changed >= 20 and filled >= 12  # the augmentation did something


def test_misaligned_augmentation_would_be_caught():
    """Two independent draws for image and mask break the check above (the test can fail)."""
    image, mask = _pattern()
    a = RandPairedAffined(["image"], fill={"image": -1.0}, translate=4.0)
    b = RandPairedAffined(["label"], fill={"label": 0.0}, translate=4.0)
    a.set_random_state(1)
    b.set_random_state(2)
    img = a({"image": image})["image"]
    lab = b({"label": mask})["label"]
    inside = img[1] != -1.0
    assert not torch.equal(lab[0][inside], img[0][inside])


def test_affine_parameters_are_the_sources():
    """The bundle's affine: rotation +-180, translation +-image_size/8 px (28 at 224), scale 0.5-1.5, shear +-22.5,
    fills -1 / 0, applied after the ImageNet normalisation (so -1 is in normalised units, as the source)."""
    parser = _parser()
    affine = parser.get_parsed_content("train#affine")
    assert (affine.degrees, affine.translate, affine.scale, affine.shear) == (180.0, 28.0, (0.5, 1.5), 22.5)
    assert affine.fill == {"image": -1.0, "label": 0.0} and affine.interpolation == "nearest" and affine.prob == 1.0
    order = parser.get_parsed_content("train#augmentation")
    names = [type(t).__name__ for t in order]
    assert names.index("NormalizeIntensityd") < names.index("RandPairedAffined")
    assert names.index("ColorJitterBlurd") < names.index("NormalizeIntensityd")
    affine.set_random_state(0)
    draws = []
    for _ in range(400):
        affine.randomize()
        draws.append((affine.params[0], *affine.params[1], affine.params[2], affine.params[3][0]))
    d = np.array(draws)
    assert d[:, 0].min() < -150 and d[:, 0].max() > 150 and np.abs(d[:, 0]).max() <= 180
    assert np.abs(d[:, 1:3]).max() <= 28 and np.abs(d[:, 1:3]).max() > 25
    assert d[:, 3].min() >= 0.5 and d[:, 3].max() <= 1.5
    assert np.abs(d[:, 4]).max() <= 22.5


def test_binary_mask_luma_threshold():
    rgb = torch.zeros(3, 1, 4)
    rgb[:, 0, 0] = torch.tensor([255.0, 255.0, 255.0])  # white: 255
    rgb[:, 0, 1] = torch.tensor([128.0, 128.0, 128.0])  # grey 128: foreground (luma / 255 > 0.5)
    rgb[:, 0, 2] = torch.tensor([127.5, 127.5, 127.5])  # luma / 255 = 0.5 exactly: background
    rgb[:, 0, 3] = torch.tensor([255.0, 0.0, 0.0])  # pure red: luma 76.2 -> background
    out = BinaryMaskd("label")({"label": rgb})["label"]
    assert out.shape == (1, 1, 4) and out.flatten().tolist() == [1.0, 1.0, 0.0, 0.0]
    grey = torch.tensor([[[0.0, 130.0, 250.0, 100.0]]])
    assert BinaryMaskd("label")({"label": grey})["label"].flatten().tolist() == [0.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="channel-first"):
        BinaryMaskd("label")({"label": torch.zeros(2, 4, 4)})


def test_photometric_jitter_touches_the_image_only():
    torch.manual_seed(0)
    image, mask = _pattern()
    out = ColorJitterBlurd("image")({"image": image.clone(), "label": mask.clone()})
    assert torch.equal(out["label"], mask)
    assert not torch.equal(out["image"], image)
    assert out["image"].min() >= 0 and out["image"].max() <= 1


def test_resize_to_match():
    pred = torch.tensor([[[1.0, -1.0]]])
    out = ResizeToMatchd("pred", like="label")({"pred": pred, "label": torch.zeros(1, 3, 4)})
    assert out["pred"].shape == (1, 3, 4)
    assert out["pred"][0, 0].tolist() == pytest.approx([1.0, 0.5, -0.5, -1.0])  # bilinear, align_corners=False
    with pytest.raises(KeyError, match="label"):
        ResizeToMatchd("pred", like="label")({"pred": pred})


def test_mask_of_another_size_is_refused_naming_both_files(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(np.zeros((20, 31), np.uint8)).save(tmp_path / "masks" / "a.jpg")
    load = Compose(_parser().get_parsed_content("load_transforms"))
    with pytest.raises(Exception) as err:  # MONAI's Compose wraps it: look along the chain
        load({"image": str(tmp_path / "images" / "a.jpg"), "label": str(tmp_path / "masks" / "a.jpg")})
    chain, e = [], err.value
    while e is not None:
        chain.append(e)
        e = e.__cause__
    checks = [e for e in chain if isinstance(e, ValueError) and "spatial shape" in str(e)]
    assert checks, chain
    assert "images/a.jpg" in str(checks[0]) and "masks/a.jpg" in str(checks[0]) and "(20, 31)" in str(checks[0])


def test_load_transforms_give_a_binary_mask_at_original_size(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((20, 30, 3), 100, np.uint8)).save(tmp_path / "images" / "a.jpg")
    m = np.zeros((20, 30), np.uint8)
    m[5:15, 3:9] = 255
    Image.fromarray(m).save(tmp_path / "masks" / "a.jpg", quality=90)
    out = Compose(_parser(image_size=32).get_parsed_content("load_transforms"))(
        {"image": str(tmp_path / "images" / "a.jpg"), "label": str(tmp_path / "masks" / "a.jpg")})
    assert out["image"].shape == (3, 32, 32) and out["label"].shape == (1, 20, 30)
    assert torch.equal(torch.as_tensor(out["label"])[0], torch.as_tensor(m >= 128, dtype=torch.float32))


@pytest.fixture(autouse=True)
def _reset_determinism():
    yield
    set_determinism(None)
