"""Albumentations' ``RandomBrightnessContrast`` as MONAI random transforms (SSL-MedSeg finetuning, SPEC D.2).

Albumentations 1.1.0 (``augmentations/transforms.py::RandomBrightnessContrast`` and
``augmentations/functional.py::brightness_contrast_adjust``), with probability ``p``:

    alpha = 1 + U(contrast_limit)          (drawn first)
    beta  = U(brightness_limit)            (drawn second; a float limit l means the range (-l, l))
    out   = alpha * x + beta * max_value   (brightness_by_max=True)
    out   = alpha * x + beta * mean(alpha * x)   (brightness_by_max=False; float path, the mean of the scaled image)
    out   = clip(out, 0, max_value)

where ``max_value`` is the *dtype's* maximum: 255 for uint8 (via a lookup table, cast back to uint8), 65535 for
uint16, 1.0 for float32 (float images are clipped to [0, 1]). The uint8 lookup-table path takes the mean of the
unscaled image for ``brightness_by_max=False``.

What ``max_value`` means for raw-intensity MR: SSL-MedSeg's finetuning fed the ACDC slices as **uint16** arrays (its
``load_acdc_img`` casts to uint16; unlike pretraining there is no PIL/uint8 step), so its brightness shift was
``beta * 65535`` raw units and the clip range [0, 65535], on images with mean 67 and a maximum of a few hundred to a
few thousand: a negative draw blacks out almost the whole slice (labels unchanged), a positive one adds a constant
of up to ~13000. Here ``max_value=None`` (default) uses each image's own maximum instead, the analogue of the dtype
maximum for a uint8 image that spans its range (brightness +-20 % of the image's range, output kept in
[0, max(x)]). ``max_value=65535`` with ``clip=True`` reproduces the source exactly; ``max_value=255`` / ``1.0`` match
Albumentations on uint8 / [0, 1] float images. Use ``clip=False`` for signed data (e.g. CT, or already normalised
images). The output is float (no uint8 rounding).

Randomness comes from ``self.R`` (MONAI ``RandomizableTransform``), so ``CacheDataset`` stops caching before this
transform, MONAI's DataLoader reseeds it per worker and ``RNGState`` checkpoints it. Draw order per call:
``R.rand() < prob``; then, only if applied, ``R.uniform(*contrast_limit)``, ``R.uniform(*brightness_limit)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor

__all__ = ["adjust_brightness_contrast", "RandBrightnessContrast", "RandBrightnessContrastd"]


def _limits(limit: float | Sequence[float]) -> tuple[float, float]:
    """Albumentations' ``to_tuple``: a number ``l`` is the range ``(-l, l)``; a pair is used as given."""
    if isinstance(limit, (int, float)):
        return (-abs(float(limit)), abs(float(limit)))
    lo, hi = (float(v) for v in limit)
    return (lo, hi)


def adjust_brightness_contrast(
    img,
    alpha: float,
    beta: float,
    brightness_by_max: bool = True,
    max_value: float | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """``alpha * x + beta * m`` with ``m = max_value`` (``brightness_by_max``, None: ``max(x)``) or
    ``m = mean(alpha * x)``, then clipped to ``[0, max_value or max(x)]`` if ``clip``. Float output (integer input
    becomes float32); MetaTensor metadata is kept."""
    x = convert_to_tensor(img, track_meta=get_track_meta())
    if not torch.is_floating_point(x):
        x = x.float()
    top = float(x.max()) if max_value is None else float(max_value)
    out = x * float(alpha)
    if beta != 0:
        out = out + float(beta) * (top if brightness_by_max else float(out.mean()))
    if clip:
        out = out.clamp(0.0, top)
    return out


class _BrightnessContrastDraw(RandomizableTransform):
    """The draw shared by the array and dictionary versions: apply with ``prob``, then
    ``alpha = 1 + U(contrast_limit)``, then ``beta = U(brightness_limit)`` from ``self.R``."""

    def _init_draw(self, brightness_limit, contrast_limit, brightness_by_max, prob, max_value, clip) -> None:
        RandomizableTransform.__init__(self, prob)
        self.brightness_limit = _limits(brightness_limit)
        self.contrast_limit = _limits(contrast_limit)
        self.brightness_by_max = bool(brightness_by_max)
        self.max_value = None if max_value is None else float(max_value)
        self.clip = bool(clip)
        self.alpha = 1.0
        self.beta = 0.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if not self._do_transform:
            self.alpha, self.beta = 1.0, 0.0
            return
        self.alpha = 1.0 + float(self.R.uniform(*self.contrast_limit))
        self.beta = float(self.R.uniform(*self.brightness_limit))

    def _apply(self, img):
        if not self._do_transform:
            return convert_to_tensor(img, track_meta=get_track_meta())
        return adjust_brightness_contrast(img, self.alpha, self.beta, self.brightness_by_max, self.max_value, self.clip)


class RandBrightnessContrast(_BrightnessContrastDraw):
    """Array version of :class:`RandBrightnessContrastd` (one channel-first image)."""

    def __init__(
        self,
        brightness_limit: float | Sequence[float] = 0.2,
        contrast_limit: float | Sequence[float] = 0.2,
        brightness_by_max: bool = True,
        prob: float = 0.5,
        max_value: float | None = None,
        clip: bool = True,
    ) -> None:
        self._init_draw(brightness_limit, contrast_limit, brightness_by_max, prob, max_value, clip)

    def __call__(self, img, randomize: bool = True):
        if randomize:
            self.randomize()
        return self._apply(img)


class RandBrightnessContrastd(_BrightnessContrastDraw, MapTransform):
    """Albumentations ``RandomBrightnessContrast`` as one joint MONAI dictionary transform: one draw
    (apply?, alpha, beta) per call, shared by all ``keys`` (image keys only, never labels). See the module
    docstring for the formula and for ``max_value`` on raw-intensity MR.

    Args:
        keys: image keys.
        brightness_limit: beta range; a number ``l`` means ``(-l, l)`` (0.2).
        contrast_limit: alpha - 1 range; a number ``l`` means ``(-l, l)`` (0.2).
        brightness_by_max: shift by ``beta * max_value`` (True) or by ``beta * mean(alpha * x)``.
        prob: probability of applying (Albumentations' ``p``; its default is 0.5, SSL-MedSeg used 0.2).
        max_value: the "maximum" of the brightness shift and the upper clip bound; None (default): each image's own
            maximum; 65535: SSL-MedSeg's uint16 behaviour; 255 / 1.0: Albumentations on uint8 / float32.
        clip: clip to ``[0, max_value]`` as Albumentations does (True); False for signed intensities.
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        brightness_limit: float | Sequence[float] = 0.2,
        contrast_limit: float | Sequence[float] = 0.2,
        brightness_by_max: bool = True,
        prob: float = 0.5,
        max_value: float | None = None,
        clip: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self._init_draw(brightness_limit, contrast_limit, brightness_by_max, prob, max_value, clip)

    def __call__(self, data: Mapping[Hashable, torch.Tensor], randomize: bool = True) -> dict:
        d = dict(data)
        if randomize:
            self.randomize()
        for key in self.key_iterator(d):
            d[key] = self._apply(d[key])
        return d
