"""Dictionary transforms of the SSL4GIE polyp-segmentation bundle (gie_polyp_segmentation).

* :class:`BinaryMaskd` -- a picture mask (grey or RGB, e.g. Kvasir-SEG's JPEG masks) to one ``{0, 1}`` channel:
  grey value (ITU-R 601-2 luma for RGB, as ``transforms.Grayscale`` in the source) ``> threshold`` (127.5: the
  source's ``luma / 255 > 0.5``);
* :class:`ColorJitterBlurd` -- the source's photometric training augmentation of the image only,
  ``ColorJitter(0.4, 0.5, 0.25, 0.01)`` then ``GaussianBlur(25, sigma ~ U[0.001, 2])``, both always applied, on
  intensities in [0, 1] (before the ImageNet normalisation, as the source applies them to the PIL picture);
* :class:`RandPairedAffined` -- the source's paired random affine (``torchvision.transforms.functional.affine`` with
  one draw of angle, translation, scale and shear for image and mask, nearest interpolation, fill -1 for the image
  -- applied after the ImageNet normalisation, so the fill is -1 in normalised units -- and 0 for the mask);
* :class:`ResizeToMatchd` -- resize a prediction to the spatial size of another key (the ground-truth mask at its
  original size), so metrics and written masks are at the original resolution.

The paired flips are MONAI's ``RandFlipd`` on image and mask together; see the bundle's train.json.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from monai.transforms.traits import RandomizableTrait

from .photometric import FastColorJitter, FastGaussianBlur

__all__ = ["BinaryMaskd", "ColorJitterBlurd", "RandPairedAffined", "ResizeToMatchd"]

_LUMA = (0.299, 0.587, 0.114)


def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x)


class BinaryMaskd(MapTransform):
    """Channel-first picture mask ``(1 or 3 or 4, H, W)`` in 0-255 -> ``(1, H, W)`` float ``{0, 1}``.

    An RGB(A) mask is reduced to its luma ``0.299 R + 0.587 G + 0.114 B`` (alpha dropped); a pixel is foreground
    when that grey value is ``> threshold`` (127.5: the source's ``luma / 255 > 0.5``). MetaTensor metadata is kept.
    """

    def __init__(self, keys: KeysCollection, threshold: float = 127.5, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.threshold = float(threshold)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            m = _tensor(d[key])
            if m.ndim != 3 or m.shape[0] not in (1, 3, 4):
                raise ValueError(f"BinaryMaskd: {key!r} must be a channel-first mask (1, 3 or 4, H, W), got shape "
                                 f"{tuple(m.shape)}")
            grey = m[:1].float() if m.shape[0] == 1 else sum(w * m[c : c + 1].float() for c, w in enumerate(_LUMA))
            d[key] = (grey > self.threshold).to(torch.float32)
        return d


class ColorJitterBlurd(MapTransform, RandomizableTrait):
    """``ColorJitter(brightness, contrast, saturation, hue)`` then ``GaussianBlur(kernel, sigma)`` (torchvision v2;
    computed by :mod:`~monai_ssl_ext.transforms.photometric`: a closed-form hue step, a separable blur; random numbers
    from torch's global generator), both always applied, to float images in [0, 1]."""

    def __init__(self, keys: KeysCollection, jitter: Sequence[float] = (0.4, 0.5, 0.25, 0.01),
                 blur_kernel: int = 25, blur_sigma: Sequence[float] = (0.001, 2.0), allow_missing_keys: bool = False):
        from torchvision.transforms import v2

        super().__init__(keys, allow_missing_keys)
        b, c, s, h = (float(v) for v in jitter)
        self.transform = v2.Compose([
            FastColorJitter(brightness=b, contrast=c, saturation=s, hue=h),
            FastGaussianBlur(int(blur_kernel), sigma=tuple(float(v) for v in blur_sigma)),
        ])

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = _tensor(d[key])
            plain = x.as_tensor() if hasattr(x, "as_tensor") else x
            out = self.transform(plain.float())
            d[key] = x.clone().copy_(out) if hasattr(x, "as_tensor") else out
        return d


class RandPairedAffined(MapTransform, Randomizable):
    """One random affine for all ``keys`` (image and mask), drawn as the source's ``Dataset.__getitem__``:
    ``angle ~ U(-degrees, degrees)``, translation ``(tx, ty) ~ U(-translate, translate)`` pixels each, ``scale ~
    U(*scale)``, ``shear ~ U(-shear, shear)`` degrees (x shear, torchvision's single-value form), applied with
    ``torchvision.transforms.v2.functional.affine`` about the image centre, ``interpolation`` (source: nearest)
    and a constant ``fill`` per key outside the picture.

    Args:
        keys: keys to transform together (channel-first ``(C, H, W)``, same spatial size).
        fill: fill value per key (a mapping) or one value for all; the bundle uses ``{"image": -1, "label": 0}``.
        degrees, translate, scale, shear: ranges as above (source at 224 px: 180, 28, (0.5, 1.5), 22.5).
        prob: probability of applying the transform (source: 1.0).
        interpolation: ``nearest`` or ``bilinear``.
    """

    def __init__(self, keys: KeysCollection, fill: Mapping | float = 0.0, degrees: float = 180.0,
                 translate: float = 28.0, scale: Sequence[float] = (0.5, 1.5), shear: float = 22.5,
                 prob: float = 1.0, interpolation: str = "nearest", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"RandPairedAffined: interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"RandPairedAffined: prob must be in [0, 1], got {prob!r}")
        self.fill = dict(fill) if isinstance(fill, Mapping) else {k: float(fill) for k in self.keys}
        missing = [k for k in self.keys if k not in self.fill]
        if missing:
            raise ValueError(f"RandPairedAffined: no fill value for keys {missing}")
        self.degrees, self.translate, self.shear = float(degrees), float(translate), float(shear)
        self.scale = (float(scale[0]), float(scale[1]))
        self.prob, self.interpolation = float(prob), interpolation
        self.params: tuple | None = None

    def randomize(self, data=None) -> None:
        if self.R.rand() >= self.prob:
            self.params = None
            return
        angle = self.R.uniform(-self.degrees, self.degrees)
        tx = self.R.uniform(-self.translate, self.translate)
        ty = self.R.uniform(-self.translate, self.translate)
        scale = self.R.uniform(*self.scale)
        shear = self.R.uniform(-self.shear, self.shear)
        self.params = (float(angle), [float(tx), float(ty)], float(scale), [float(shear), 0.0])

    def __call__(self, data: Mapping) -> dict:
        from torchvision.transforms import v2
        from torchvision.transforms.v2 import functional as TF

        d = dict(data)
        self.randomize()
        if self.params is None:
            return d
        keys = list(self.key_iterator(d))
        sizes = {k: tuple(_tensor(d[k]).shape[1:]) for k in keys}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"RandPairedAffined: keys must share one spatial size, got {sizes}")
        angle, translate, scale, shear = self.params
        mode = v2.InterpolationMode.NEAREST if self.interpolation == "nearest" else v2.InterpolationMode.BILINEAR
        for key in keys:
            x = _tensor(d[key])
            plain = x.as_tensor() if hasattr(x, "as_tensor") else x
            out = TF.affine(plain.float(), angle=angle, translate=translate, scale=scale, shear=shear,
                            interpolation=mode, fill=float(self.fill[key]))
            d[key] = x.clone().float().copy_(out) if hasattr(x, "as_tensor") else out
        return d


class ResizeToMatchd(MapTransform):
    """Resize ``keys`` (channel-first ``(C, H, W)``) to the spatial size of ``data[like]`` with ``mode``
    (``bilinear``: ``align_corners=False``, no antialiasing, as torchvision's tensor resize when enlarging).

    Used on network logits before thresholding, so a prediction made at the network's input size is scored and
    written at the ground truth's (original) size."""

    def __init__(self, keys: KeysCollection, like: Hashable, mode: str = "bilinear", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.like, self.mode = like, mode

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if self.like not in d:
            raise KeyError(f"ResizeToMatchd: no {self.like!r} in the item to take the size from")
        size = tuple(_tensor(d[self.like]).shape[1:])
        for key in self.key_iterator(d):
            x = _tensor(d[key])
            if tuple(x.shape[1:]) == size:
                continue
            kwargs = {"align_corners": False} if self.mode in ("bilinear", "bicubic") else {}
            y = F.interpolate(x.float()[None], size=size, mode=self.mode, **kwargs)[0]
            d[key] = y.as_tensor() if hasattr(y, "as_tensor") else y
        return d
