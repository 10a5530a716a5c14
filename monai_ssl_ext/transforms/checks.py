"""Input checks that fail with the file name instead of a shape error deep in the network."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import LoadImage, LoadImaged

__all__ = ["CheckedLoadImage", "CheckedLoadImaged", "ImageReadError", "LoadPictured", "source_name"]


class ImageReadError(RuntimeError):
    """An image file could not be read (missing, not an image, truncated, ...)."""


class CheckedLoadImage(LoadImage):
    """MONAI's ``LoadImage`` whose read errors name the file: some reader errors do not (PIL's
    "image file is truncated" for a partly written JPEG), and MONAI's wrapping
    ("applying transform <LoadImaged ...>") does not either."""

    def __call__(self, filename, reader=None):
        try:
            return super().__call__(filename, reader)
        except Exception as e:
            raise ImageReadError(f"cannot read image {filename!s}: {type(e).__name__}: {e}") from e


class CheckedLoadImaged(LoadImaged):
    """``LoadImaged`` (same arguments) whose read errors name the file, see :class:`CheckedLoadImage`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loader.__class__ = CheckedLoadImage  # same state, only __call__ differs


class _RowFirstPILReader(PILReader):
    """``PILReader(reverse_indexing=False)`` whose ``spatial_shape`` metadata is ``(H, W)`` like
    the array (MONAI's is ``(W, H)`` whatever ``reverse_indexing`` says)."""

    def __init__(self):
        super().__init__(reverse_indexing=False)

    def get_data(self, img):
        data, meta = super().get_data(img)
        meta["spatial_shape"] = np.asarray(data.shape[:2])
        return data, meta


class LoadPictured(CheckedLoadImaged):
    """The one loader of 2D pictures (PNG, JPEG, BMP, ...): channel-first ``(C, H, W)``, row
    index first, as PIL, torchvision and every picture viewer see them; read errors name the file.

    MONAI's ``LoadImaged`` reads pictures with ``PILReader(reverse_indexing=True)``, which gives
    spatial ``(W, H)``: a torchvision "horizontal" flip then swaps top and bottom, random-resized
    crop aspect ratios are transposed, and a ``spatial_size`` of ``[736, 480]`` means 736 wide.
    Here the reader keeps PIL's order, so ``spatial_size`` is ``[height, width]`` and the last
    axis is the horizontal one. Grey pictures get one channel, RGB three.

    Args:
        keys: keys of the picture paths.
        allow_missing_keys: skip keys absent from the item.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, reader=_RowFirstPILReader(), image_only=True,
                         ensure_channel_first=True, allow_missing_keys=allow_missing_keys)


def source_name(data: Mapping, key: Hashable) -> str:
    """The file an item came from (MetaTensor metadata), or the key if unknown."""
    value = data.get(key)
    meta = getattr(value, "meta", None) or data.get(f"{key}_meta_dict") or {}
    return str(meta.get("filename_or_obj", f"<{key}>"))
