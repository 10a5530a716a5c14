"""The cheaper hue step: the textbook HSV rotation (Python's ``colorsys``), the same numbers as torchvision's
``adjust_hue``, and ``FastColorJitter`` drawing and applying what torchvision's ``ColorJitter`` does."""

from __future__ import annotations

import colorsys

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from monai_ssl_ext.transforms import FastColorJitter, shift_hue

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
