"""AsymmetricAugment: the BYOL-style asymmetric two-view augmentation of MoCo v3 / Barlow Twins (SSL4GIE, SPEC C.1;
BYOL appendix B): per-view blur / solarize probabilities (1.0 / 0.0 for view 1, 0.1 / 0.2 for view 2), the blur
kernel and sigma, normalisation, orientation of the flip, uint8 and float inputs, the MultiViewd contract."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from monai.data import Dataset
from monai.transforms import Compose, RandomizableTrait
from torchvision.transforms import v2

from monai_ssl_ext.transforms import AsymmetricAugment, MultiViewd, SimCLRAugment, ViewAugment, blur_kernel_size

# ImageNet statistics as published with torchvision's models (written out here, not imported from the code under test)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread start-up would dominate
    yield
    torch.set_num_threads(before)


def _checkerboard(size: int, lo: float, hi: float) -> torch.Tensor:
    """(3, size, size) 1-pixel checkerboard with values lo / hi: all energy at the highest frequency."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    board = torch.where((yy + xx) % 2 == 0, hi, lo).float()
    return board.expand(3, size, size).clone()


def _tv(x: torch.Tensor) -> float:
    """Mean absolute difference of horizontal neighbours (high-frequency energy)."""
    return float((x[..., 1:] - x[..., :-1]).abs().mean())


def _binomial_ok(k: int, n: int, p: float, z: float = 4.5) -> bool:
    return abs(k / n - p) <= z * math.sqrt(p * (1 - p) / n)


# ------------------------------------------------------------------------------ per-view blur and solarize rates


def test_view_blur_and_solarize_rates():
    """View 1: always blurred, never solarized. View 2: blurred with p 0.1, solarized with p 0.2, independently.

    Colour jitter and grayscale are off and sigma is at least 1 so that every applied blur is detectable on a
    1-pixel checkerboard in [0.7, 0.9] (its energy falls below half); solarization maps every value >= 0.5 to
    1 - value, so a solarized view has mean < 0.5 and an unsolarized one stays in [0.7, 0.9].
    """
    torch.manual_seed(0)
    aug = AsymmetricAugment(size=32, scale=(1.0, 1.0), jitter_prob=0.0, grayscale_prob=0.0, blur_sigma=(1.0, 2.0),
                            mean=(0.0,), std=(1.0,))
    board = _checkerboard(32, 0.7, 0.9)
    tv0 = _tv(board)
    n = 1500
    stats = []
    for view in aug:
        blurred = solarized = both = 0
        for _ in range(n):
            out = view(board)
            b, s = _tv(out) < 0.5 * tv0, float(out.mean()) < 0.5
            if not s:
                assert 0.7 - 1e-5 <= float(out.min()) and float(out.max()) <= 0.9 + 1e-5  # untouched intensities
            blurred, solarized, both = blurred + b, solarized + s, both + (b and s)
        stats.append((blurred, solarized, both))
    assert stats[0] == (n, 0, 0)  # view 1: every draw blurred, none solarized
    blurred, solarized, both = stats[1]
    assert _binomial_ok(blurred, n, 0.1), blurred / n
    assert _binomial_ok(solarized, n, 0.2), solarized / n
    assert _binomial_ok(both, n, 0.1 * 0.2), both / n  # drawn independently


def test_jitter_and_grayscale_rates_view1():
    """ColorJitter with p 0.8 and grayscale with p 0.2 (default settings, view 1: blur always, no solarize).

    On a constant colour picture the blur changes nothing; grayscale makes the three channels equal (p 0.2), and a
    picture is left exactly as it was only when neither jitter nor grayscale was drawn (p 0.2 * 0.8).
    """
    torch.manual_seed(1)
    view1 = AsymmetricAugment(size=16, mean=(0.0,), std=(1.0,))[0]
    picture = torch.tensor([0.45, 0.3, 0.15]).view(3, 1, 1).expand(3, 24, 24).clone()
    n, grey, unchanged = 1000, 0, 0
    for _ in range(n):
        out = view1(picture)
        grey += bool(torch.allclose(out[0], out[1], atol=1e-6) and torch.allclose(out[1], out[2], atol=1e-6))
        unchanged += bool(torch.allclose(out, picture[:, :16, :16], atol=1e-5))
    assert _binomial_ok(grey, n, 0.2), grey / n
    assert _binomial_ok(unchanged, n, 0.2 * 0.8), unchanged / n


# ------------------------------------------------------------------------------ blur kernel and sigma


def test_blur_kernel_size_is_about_ten_percent():
    for size in (32, 64, 96, 100, 160, 224, 225, 256):
        k = size // 10  # SimCLR (TF): kernel_size = 10% of the side, radius = k // 2, kernel 2 * radius + 1
        assert blur_kernel_size(size) == max(3, 2 * (k // 2) + 1)
    assert blur_kernel_size(224) == 23 and blur_kernel_size((224, 160)) == 17
    assert AsymmetricAugment(size=224)[1].blur_kernel == 23 and SimCLRAugment(size=32).blur_kernel == 23


def test_blur_is_a_gaussian_of_the_given_sigma():
    """A fixed sigma blur equals a separable Gaussian convolution (odd kernel of 10% of the crop, reflect padding)
    computed here from exp(-x^2 / (2 sigma^2))."""
    size, sigma = 64, 1.5
    k = 7  # 10% of 64, odd
    view = ViewAugment(size=size, scale=(1.0, 1.0), interpolation="bicubic", hflip_prob=0.0, jitter_prob=0.0,
                       blur_prob=1.0, blur_sigma=(sigma, sigma), mean=(0.0,), std=(1.0,))
    torch.manual_seed(2)
    x = torch.rand(3, size, size)
    out = view(x).numpy()
    r = k // 2
    g = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma**2))
    g /= g.sum()
    pad = np.pad(x.numpy().astype(np.float64), ((0, 0), (r, r), (r, r)), mode="reflect")
    rows = sum(g[i] * pad[:, i : i + size, :] for i in range(k))
    expected = sum(g[j] * rows[:, :, j : j + size] for j in range(k))
    np.testing.assert_allclose(out, expected, atol=1e-5)


# ------------------------------------------------------------------------------ output, normalisation, inputs


def test_shape_dtype_and_imagenet_normalisation():
    aug = AsymmetricAugment(size=24, jitter_prob=0.0, grayscale_prob=0.0, solarize_probs=(0.0, 0.0))
    for picture in (torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8), torch.rand(3, 30, 20),
                    np.random.default_rng(0).random((3, 33, 33), dtype=np.float32)):
        for view in aug:
            out = view(picture)
            assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and tuple(out.shape) == (3, 24, 24)
    c = (0.8, 0.4, 0.2)
    constant = torch.tensor(c).view(3, 1, 1).expand(3, 32, 32).clone()
    for view in aug:  # blur of a constant is the constant: the output is the normalised colour
        out = view(constant)
        for ch in range(3):
            assert torch.allclose(out[ch], torch.full((24, 24), (c[ch] - MEAN[ch]) / STD[ch]), atol=1e-5)


def test_uint8_input_is_read_as_0_255():
    """The same crop of a uint8 picture and of its float copy / 255 agree to about one grey level. (A smooth picture:
    on saturated noise the uint8 bicubic resampling clips between its two passes, as PIL does, and differs more.)"""
    torch.manual_seed(7)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6), size=(48, 48), mode="bilinear")[0]
    picture = (25 + 200 * smooth).round().to(torch.uint8)
    kwargs = dict(size=32, jitter_prob=0.0, grayscale_prob=0.0, solarize_probs=(0.0, 0.0), mean=(0.0,), std=(1.0,))
    torch.manual_seed(3)
    from_uint8 = [v(picture) for v in AsymmetricAugment(**kwargs)]
    torch.manual_seed(3)
    from_float = [v(picture.float() / 255) for v in AsymmetricAugment(**kwargs)]
    for a, b in zip(from_uint8, from_float):  # same crop, same blur; uint8 resampling rounds to 1/255
        assert float(a.min()) >= 0 and float(a.max()) <= 1
        assert (a - b).abs().max() < 1.5 / 255


def test_bad_inputs_and_arguments_are_named():
    view = AsymmetricAugment(size=16)[0]
    with pytest.raises(ValueError, match=r"float intensities in \[0, 1\].*ScaleIntensityRanged"):
        view(torch.rand(3, 20, 20) * 255)
    with pytest.raises(ValueError, match=r"channel-first \(C, H, W\)"):
        view(torch.rand(20, 20))
    with pytest.raises(ValueError, match="uint8 or float"):
        view(torch.zeros(3, 20, 20, dtype=torch.int64))
    with pytest.raises(ValueError, match="one entry per view"):
        AsymmetricAugment(blur_probs=(1.0, 0.1), solarize_probs=(0.0,))
    with pytest.raises(ValueError, match="solarize_prob must be a probability"):
        AsymmetricAugment(solarize_probs=(0.0, 1.2))
    with pytest.raises(ValueError, match="interpolation"):
        AsymmetricAugment(interpolation="lanczos")


# ------------------------------------------------------------------------------ orientation of the flip


def _left_white(dtype) -> torch.Tensor:
    x = torch.zeros(3, 32, 32)
    x[..., :16] = 1.0
    return (x * 255).to(torch.uint8) if dtype == torch.uint8 else x


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_flip_is_on_the_width_axis(dtype):
    kwargs = dict(size=32, scale=(1.0, 1.0), jitter_prob=0.0, grayscale_prob=0.0, solarize_probs=(0.0, 0.0),
                  mean=(0.0,), std=(1.0,))
    torch.manual_seed(4)
    for hflip_prob, white, black in ((0.0, slice(0, 12), slice(20, 32)), (1.0, slice(20, 32), slice(0, 12))):
        for view in AsymmetricAugment(hflip_prob=hflip_prob, **kwargs):
            for _ in range(5):
                out = view(_left_white(dtype))
                assert out[..., white].mean() > 0.95 and out[..., black].mean() < 0.05, hflip_prob
                assert torch.allclose(out[:, :16], out[:, 16:], atol=1e-5)  # rows are untouched: top == bottom


# ------------------------------------------------------------------------------ MultiViewd contract


def test_is_a_sequence_of_randomizable_views_for_multiviewd():
    aug = AsymmetricAugment(size=16, scale=(1.0, 1.0), jitter_prob=0.0, grayscale_prob=0.0, blur_probs=(0.0, 0.0),
                            solarize_probs=(0.0, 1.0), mean=(0.0,), std=(1.0,))
    assert isinstance(aug, Sequence) and len(aug) == 2 and list(aug) == [aug[0], aug[1]]
    assert all(isinstance(v, (ViewAugment, RandomizableTrait)) for v in aug)
    out = MultiViewd("image", aug)({"image": torch.full((3, 16, 16), 0.8)})
    assert set(out) == {"image", "image_2"}
    assert torch.allclose(out["image"], torch.full((3, 16, 16), 0.8))  # first view: never solarized
    assert torch.allclose(out["image_2"], torch.full((3, 16, 16), 0.2))  # second view: solarized 1 - 0.8


def test_two_reads_differ():
    torch.manual_seed(5)
    picture = (torch.rand(3, 48, 48) * 255).to(torch.uint8)
    ds = Dataset([{"image": picture}], transform=Compose([MultiViewd("image", AsymmetricAugment(size=32))]))
    first, second = ds[0], ds[0]
    assert not torch.equal(first["image"], first["image_2"])
    assert not torch.equal(first["image"], second["image"]) and not torch.equal(first["image_2"], second["image_2"])
    torch.manual_seed(6)
    a = ds[0]
    torch.manual_seed(6)
    b = ds[0]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image_2"], b["image_2"])  # torch's global RNG


# ------------------------------------------------------------------------------ agreement with torchvision recipes


def test_view2_matches_the_torchvision_recipe():
    """View 2 = torchvision's BYOL/MoCo v3 second view built from the recipe (SPEC C.1), with the same draws."""
    recipe = v2.Compose([
        v2.RandomResizedCrop(48, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        v2.RandomGrayscale(0.2),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.1),  # 10% of 48, odd
        v2.RandomSolarize(0.5, p=0.2),
        v2.Normalize(list(MEAN), list(STD)),
    ])
    view2 = AsymmetricAugment(size=48, scale=(0.2, 1.0))[1]
    pictures = [torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8) for _ in range(20)]
    for i, p in enumerate(pictures):
        torch.manual_seed(100 + i)
        expected, after = recipe(p), torch.rand(1)
        torch.manual_seed(100 + i)
        assert torch.allclose(view2(p), expected, atol=1e-5), i
        assert torch.equal(torch.rand(1), after), i  # the same random numbers drawn, no more, no fewer


def test_simclr_augment_keeps_its_pipeline():
    """SimCLRAugment (now a ViewAugment) still draws exactly the source-A torchvision pipeline (equal within float
    rounding: its jitter's hue step is FastColorJitter's closed form of torchvision's HSV round trip)."""
    recipe = v2.Compose([
        v2.RandomResizedCrop(32, scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomApply([v2.ColorJitter(0.5, 0.5, 0.5, 0.1)], p=0.8),
        v2.RandomGrayscale(0.2),
        v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5),
        v2.Normalize([0.5], [0.5]),
    ])
    aug = SimCLRAugment(size=32, grayscale_prob=0.2, blur_prob=0.5)
    for i in range(10):
        x = torch.rand(3, 40, 40)
        torch.manual_seed(i)
        expected, after = recipe(x), torch.rand(1)
        torch.manual_seed(i)
        assert torch.allclose(aug(x), expected, atol=1e-5), i
        assert torch.equal(torch.rand(1), after), i
