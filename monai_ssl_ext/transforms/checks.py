"""Input checks that fail with the file name instead of a shape error deep in the network."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import LoadImage, LoadImaged, MapTransform

__all__ = ["CheckedLoadImage", "CheckedLoadImaged", "EnsureChannelsd", "ImageReadError", "source_name"]


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


def source_name(data: Mapping, key: Hashable) -> str:
    """The file an item came from (MetaTensor metadata), or the key if unknown."""
    value = data.get(key)
    meta = getattr(value, "meta", None) or data.get(f"{key}_meta_dict") or {}
    return str(meta.get("filename_or_obj", f"<{key}>"))


class EnsureChannelsd(MapTransform):
    """Raise ``ValueError`` naming the file when a channel-first image does not have ``channels``
    channels (e.g. a grey-scale frame where the encoder expects RGB)."""

    def __init__(self, keys: KeysCollection, channels: int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.channels = int(channels)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            got = d[key].shape[0]
            if got != self.channels:
                raise ValueError(
                    f"{source_name(d, key)}: '{key}' has {got} channel(s), expected {self.channels} "
                    f"(config `in_channels`); convert the image or change `in_channels`"
                )
        return d
