"""Depth maps of the SSL4GIE depth bundle (gie_depth): 16-bit depth files read and checked
(:class:`LoadDepthd`, :func:`read_depth16`) and the source's pad-to-square + resize geometry
(:class:`SquareResized`), shared by the picture and its depth map."""

from __future__ import annotations

import os

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["DepthFormatError", "LoadDepthd", "MODES", "SquareResized", "read_depth16"]

#: resize modes of :class:`SquareResized`
MODES = ("bicubic", "bilinear", "nearest", "nearest-exact")


class DepthFormatError(ValueError):
    """A depth file is not a single-channel 16-bit image."""


def read_depth16(path: str | os.PathLike):
    """The 16-bit depth image at ``path`` as a ``uint16`` array ``(H, W)``.

    Raises:
        DepthFormatError: the file is not a single-channel 16-bit image (message names the file and its mode).
        ImageReadError: the file cannot be read.
    """
    from PIL import Image

    from .checks import ImageReadError

    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
    except Exception as e:  # noqa: BLE001 (any reader error: name the file)
        raise ImageReadError(f"cannot read depth file {str(path)!s}: {type(e).__name__}: {e}") from e
    if arr.ndim != 2 or arr.dtype.kind != "u" or arr.dtype.itemsize != 2:
        raise DepthFormatError(f"depth file {str(path)!s} is not a single-channel 16-bit image (PIL mode {mode!r}, "
                               f"array {arr.dtype} {arr.shape}); C3VD depth maps are 16-bit TIFFs (0 .. 65535).")
    return arr.astype(np.uint16)


class LoadDepthd(MapTransform):
    """Load 16-bit depth maps as float ``(1, H, W)`` MetaTensors ``raw / scale`` (SSL4GIE: ``/ 65535``, 0 = no
    ground truth), with ``filename_or_obj`` and ``spatial_shape`` ``(H, W)`` in the metadata; a file that is not a
    single-channel 16-bit image raises :class:`DepthFormatError` naming it.

    Args:
        keys: keys of the depth paths.
        scale: divisor of the raw values (65535: 1.0 is the largest 16-bit value).
        allow_missing_keys: skip keys absent from the item (inference lists without ground truth).
    """

    def __init__(self, keys: KeysCollection, scale: float = 65535.0, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.scale = float(scale)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            arr = read_depth16(path).astype(np.float32) / self.scale
            meta = {"filename_or_obj": path, "spatial_shape": np.asarray(arr.shape)}
            d[key] = MetaTensor(torch.from_numpy(arr)[None], meta=meta)
        return d


class SquareResized(MapTransform):
    """SSL4GIE's input geometry (``Data/dataset.py::make_square`` + ``resize((224, 224))``): pad a ``(C, H, W)``
    picture to a ``max(H, W)`` square with zeros, centred (``floor((max - H) / 2)`` rows above, as PIL's paste),
    then resize to ``spatial_size`` square (PIL's default bicubic, antialiased when shrinking, as torch's
    ``antialias=True``). The result is clamped to the input's range (PIL clips its 8/16-bit resampling), so a
    depth map stays >= 0 and its padding stays 0 (= no ground truth). Metadata is kept (``spatial_shape`` stays
    the original ``(H, W)``, which :func:`monai_ssl_ext.metrics.align_depth_to_original` inverts).

    Args:
        keys: keys to pad and resize (same geometry for each).
        spatial_size: output side (224).
        mode: one of :data:`MODES`, one for all keys or one per key: ``"bicubic"`` for pictures (PIL's default),
            ``"nearest-exact"`` for depth maps (what PIL NEAREST computes, the source's resize of its 16-bit
            depth files under its pinned Pillow 9: no depth is blended across holes, edges or the padding).
        allow_missing_keys: skip keys absent from the item.
    """

    def __init__(self, keys: KeysCollection, spatial_size: int = 224, mode="bicubic", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = int(spatial_size)
        modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        if len(modes) != len(self.keys) or any(m not in MODES for m in modes):
            raise ValueError(f"SquareResized: mode must be one of {MODES} (one, or one per key), got {mode!r}")
        self.modes = dict(zip(self.keys, modes))

    def square(self, x, mode: str = "bicubic"):
        t = torch.as_tensor(x).as_subclass(torch.Tensor).float()
        if t.dim() != 3:
            raise ValueError(f"SquareResized expects a channel-first (C, H, W) picture, got shape {tuple(t.shape)}")
        c, h, w = t.shape
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        padded = t.new_zeros((c, side, side))
        padded[:, top:top + h, left:left + w] = t
        lo, hi = float(padded.min()), float(padded.max())
        kwargs = {} if mode.startswith("nearest") else {"align_corners": False, "antialias": True}
        out = torch.nn.functional.interpolate(padded[None], size=(self.spatial_size,) * 2, mode=mode, **kwargs)[0]
        return out.clamp_(lo, hi)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            out = self.square(d[key], self.modes[key])
            meta = dict(getattr(d[key], "meta", {}) or {})
            d[key] = MetaTensor(out, meta=meta) if meta else out
        return d
