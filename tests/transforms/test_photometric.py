"""The cheaper photometric steps compute what their definitions say and what torchvision computes: the hue step is
the textbook HSV rotation (Python's ``colorsys``) and torchvision's ``adjust_hue``; the separable blur is scipy's
Gaussian filter (mirror edges) and torchvision's ``gaussian_blur``; the transforms draw the same random numbers as
torchvision's ``ColorJitter`` / ``GaussianBlur`` and apply the same steps."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from monai_ssl_ext.transforms import FastColorJitter, FastGaussianBlur, gaussian_blur, shift_hue

HUES = [-0.5, -0.31, -0.02, 0.07, 0.25, 0.5]


def _picture(generator_seed: int = 0, shape=(3, 12, 16)) -> torch.Tensor:
    """8-bit-valued RGB with grey pixels (no hue), ties of the two largest channels, black and white."""
    g = torch.Generator().manual_seed(generator_seed)
    x = torch.randint(0, 256, shape, generator=g).float() / 255
    x[..., :, 0, :] = x[..., :1, 0, :]  # grey row
    x[..., 1, 1, :] = x[..., 0, 1, :]  # red == green
    x[..., 2, 2, :] = x[..., 1, 2, :]  # green == blue
    x[..., :, 3, :4] = 0.0
    x[..., :, 3, 4:8] = 1.0
    return x


@pytest.mark.parametrize("hue", HUES)
def test_shift_hue_is_the_hsv_rotation(hue):
    """Per pixel: colorsys's RGB -> HSV, hue + factor (mod 1), HSV -> RGB (float64, the stdlib's definition)."""
    x = _picture()
    out = shift_hue(x, hue)
    c, h, w = x.shape
    for i in range(h):
        for j in range(w):
            hh, s, v = colorsys.rgb_to_hsv(*(float(x[k, i, j]) for k in range(c)))
            expected = colorsys.hsv_to_rgb((hh + hue) % 1.0, s, v)
            assert torch.allclose(out[:, i, j].double(), torch.tensor(expected, dtype=torch.float64), atol=2e-6), (i, j)


@pytest.mark.parametrize("hue", HUES)
def test_shift_hue_matches_torchvision_on_batches(hue):
    x = _picture(1, shape=(2, 3, 20, 24))
    assert torch.allclose(shift_hue(x, hue), TF.adjust_hue(x, hue), atol=2e-6)


def test_shift_hue_zero_and_bad_input():
    x = _picture()
    assert shift_hue(x, 0.0) is x
    with pytest.raises(ValueError, match="float RGB"):
        shift_hue(x[:1], 0.1)
    with pytest.raises(ValueError, match="float RGB"):
        shift_hue((x * 255).to(torch.uint8), 0.1)


@pytest.mark.parametrize("seed", range(12))  # 12 seeds: every step first and last in some draw
def test_fast_jitter_is_torchvision_jitter(seed):
    """Same seed: the same factors and order (the same random numbers drawn: the generator ends in the same state)
    and the same picture (torchvision's float kernels for brightness / contrast / saturation, shift_hue for hue)."""
    x = _picture(seed)
    torch.manual_seed(seed)
    expected = v2.ColorJitter(0.5, 0.5, 0.5, 0.1)(x)
    after_expected = torch.rand(3)
    torch.manual_seed(seed)
    out = FastColorJitter(0.5, 0.5, 0.5, 0.1)(x)
    assert torch.equal(torch.rand(3), after_expected)
    assert torch.allclose(out, expected, atol=3e-6)
    assert not torch.allclose(out, x, atol=1e-3)  # it did jitter


def test_fast_jitter_other_inputs_are_torchvision():
    """uint8 and one-channel pictures take torchvision's own kernels: the very same numbers."""
    rgb8 = (_picture(2) * 255).round().to(torch.uint8)
    grey = _picture(3)[:1]
    for x in (rgb8, grey):
        torch.manual_seed(5)
        expected = v2.ColorJitter(0.4, 0.4, 0.2, 0.1)(x)
        torch.manual_seed(5)
        assert torch.equal(FastColorJitter(0.4, 0.4, 0.2, 0.1)(x), expected)


@pytest.mark.parametrize("kernel, sigma", [(3, 0.5), (9, 1.3), (23, 2.0), (23, 0.1)])
def test_gaussian_blur_is_the_truncated_gaussian_filter(kernel, sigma):
    """scipy's ``gaussian_filter`` per channel, truncated at the kernel's radius, edges mirrored (``d c b | a b c d``,
    torch's "reflect"): the normalised sampled Gaussian of the definition."""
    x = torch.rand(3, 30, 26, generator=torch.Generator().manual_seed(kernel))
    out = gaussian_blur(x, kernel, sigma)
    radius = kernel // 2
    for c in range(3):
        expected = ndimage.gaussian_filter(x[c].double().numpy(), sigma, mode="mirror", truncate=radius / sigma)
        np.testing.assert_allclose(out[c].double().numpy(), expected, atol=2e-6)


def test_gaussian_blur_matches_torchvision():
    """Square and non-square kernels ([width, height]) and sigmas, single pictures and batches."""
    g = torch.Generator().manual_seed(0)
    for shape, kernel, sigma in [((3, 40, 36), [23, 23], [1.7, 1.7]), ((2, 3, 32, 48), [7, 11], [0.8, 2.0]),
                                 ((1, 20, 20), [5, 5], [1.0, 1.0])]:
        x = torch.rand(shape, generator=g)
        assert torch.allclose(gaussian_blur(x, kernel, sigma), TF.gaussian_blur(x, kernel, sigma), atol=2e-6), shape
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(torch.rand(3, 8, 8), 4, 1.0)
    with pytest.raises(ValueError, match="float pictures"):
        gaussian_blur(torch.zeros(3, 8, 8, dtype=torch.uint8), 3, 1.0)
    with pytest.raises(ValueError, match="at least 5 pixels"):  # the reflection needs the kernel's radius inside
        gaussian_blur(torch.rand(3, 4, 4), 9, 1.0)


@pytest.mark.parametrize("seed", range(4))
def test_fast_blur_is_torchvision_blur(seed):
    """Same seed: the same sigma drawn (the generator ends in the same state) and the same picture; uint8 pictures
    take torchvision's own kernel (the very same numbers)."""
    x = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    expected = v2.GaussianBlur(9, sigma=(1.0, 2.0))(x)
    after_expected = torch.rand(2)
    torch.manual_seed(seed)
    out = FastGaussianBlur(9, sigma=(1.0, 2.0))(x)
    assert torch.equal(torch.rand(2), after_expected)
    assert torch.allclose(out, expected, atol=2e-6)
    assert not torch.allclose(out, x, atol=1e-3)
    x8 = (x * 255).round().to(torch.uint8)
    torch.manual_seed(seed)
    expected8 = v2.GaussianBlur(9, sigma=(1.0, 2.0))(x8)
    torch.manual_seed(seed)
    assert torch.equal(FastGaussianBlur(9, sigma=(1.0, 2.0))(x8), expected8)
