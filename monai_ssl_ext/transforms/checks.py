"""Input checks that fail with the file name instead of a shape error deep in the network."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from PIL import Image
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, LoadImaged, MapTransform

__all__ = ["CheckedLoadImage", "CheckedLoadImaged", "ImageReadError", "LoadPictured", "PictureChannelsd", "read_picture", "source_name"]


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


def read_picture(path, uint8_only: bool = False) -> MetaTensor:
    """One picture file as PIL decodes it, channel-first ``(C, H, W)`` (a view of PIL's ``(H, W, C)`` array; grey
    and palette pictures get one channel), with the metadata MONAI's ``PILReader`` records: ``filename_or_obj``,
    ``format``, ``mode``, ``width``, ``height``, ``spatial_shape`` ``(H, W)`` and ``original_channel_dim`` (-1, or
    NaN for one channel). Values are PIL's (no palette or mode conversion). Any read error, and with
    ``uint8_only`` a picture of more than 8 bits, raises :class:`ImageReadError` naming the file."""
    if not isinstance(path, (str, os.PathLike)):
        raise ImageReadError(f"cannot read image {path!r}: one file path per key, not a {type(path).__name__}")
    name = os.path.expanduser(os.fspath(path))
    try:
        with Image.open(name) as picture:
            array = np.array(picture)  # decodes, and copies into a writable array
            meta = {"format": picture.format, "mode": picture.mode, "width": picture.width, "height": picture.height}
        if uint8_only and array.dtype != np.uint8:
            raise ValueError(f"it holds {array.dtype} values (a 16-bit picture?), not 8-bit ones: convert it to "
                             "8 bits or load it as float32")
    except Exception as e:
        raise ImageReadError(f"cannot read image {name}: {type(e).__name__}: {e}") from e
    meta.update(filename_or_obj=name, spatial_shape=np.asarray(array.shape[:2]),
                original_channel_dim=-1 if array.ndim == 3 else float("nan"))
    tensor = torch.from_numpy(array if uint8_only else array.astype(np.float32, copy=False))
    return MetaTensor(tensor.movedim(-1, 0) if array.ndim == 3 else tensor[None], meta=meta)


class LoadPictured(MapTransform):
    """The one loader of 2D pictures (PNG, JPEG, BMP, TIFF, ...): channel-first ``(C, H, W)``, row
    index first, as PIL, torchvision and every picture viewer see them; read errors name the file.

    MONAI's ``LoadImaged`` reads pictures with ``PILReader(reverse_indexing=True)``, which gives
    spatial ``(W, H)``: a torchvision "horizontal" flip then swaps top and bottom, random-resized
    crop aspect ratios are transposed, and a ``spatial_size`` of ``[736, 480]`` means 736 wide.
    Here the picture keeps PIL's order, so ``spatial_size`` is ``[height, width]`` and the last
    axis is the horizontal one. Grey pictures get one channel, RGB three. The pixels and metadata
    are those of MONAI's ``LoadImaged`` with a row-first ``PILReader`` (tested), read by
    :func:`read_picture` without ``LoadImage``'s reader dispatch (0.22 against 0.34 ms per 64-px JPEG).

    ``dtype="uint8"`` keeps 8-bit pictures as stored, for view augmentations that crop in uint8
    before converting the (smaller) crop to float (:class:`~monai_ssl_ext.transforms.ViewAugment`);
    a picture with more bits (a 16-bit PNG) is then refused, naming the file, never wrapped.

    Args:
        keys: keys of the picture paths.
        dtype: ``"float32"`` (MONAI's default: 0-255 values as float) or ``"uint8"``.
        allow_missing_keys: skip keys absent from the item.
    """

    def __init__(self, keys: KeysCollection, dtype: str = "float32", allow_missing_keys: bool = False):
        if dtype not in ("float32", "uint8"):
            raise ValueError(f"LoadPictured: dtype must be 'float32' or 'uint8', got {dtype!r}")
        super().__init__(keys, allow_missing_keys)
        self.uint8_only = dtype == "uint8"

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = read_picture(d[key], self.uint8_only)
        return d


def source_name(data: Mapping, key: Hashable) -> str:
    """The file an item came from (MetaTensor metadata), or the key if unknown."""
    value = data.get(key)
    meta = getattr(value, "meta", None) or data.get(f"{key}_meta_dict") or {}
    return str(meta.get("filename_or_obj", f"<{key}>"))


class PictureChannelsd(MapTransform):
    """Grey pictures as ``channels`` identical channels, the others checked: what PIL's ``convert("RGB")`` gives the
    sources that read every picture as RGB (VISSL, torchvision ``ImageFolder``), for mixed folders of grey and
    colour slices. A picture with ``channels`` channels passes unchanged; any other count is an error naming the
    file.

    Args:
        keys: keys of channel-first pictures (after :class:`LoadPictured`).
        channels: channels wanted (3).
    """

    def __init__(self, keys: KeysCollection, channels: int = 3, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.channels = int(channels)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] == 1 and self.channels != 1:
                d[key] = image.repeat(self.channels, *([1] * (image.ndim - 1)))
            elif image.shape[0] != self.channels:
                raise ValueError(f"{source_name(d, key)}: {image.shape[0]} channels, expected 1 (grey) or "
                                 f"{self.channels}")
        return d
