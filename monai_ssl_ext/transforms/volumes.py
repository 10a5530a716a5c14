"""Whole 3D volumes of NIfTI files, including single frames of 4D cine files (ACDC), for 3D
pretraining on data indexed slice by slice.

The ACDC slice index (``scripts/prepare_acdc.py``) lists one item per 2D slice
(``{"image": ".../patient003_4d.nii.gz", "frame": 0, "slice": 0}``, ...). :func:`volume_items`
turns such a list into one item per 3D volume (``{"image": ..., "frame": 0}`` for a cine frame,
``{"image": ...}`` for a 3D file), and :class:`LoadVolumed` loads each as a channel-first
``(1, H, W, S)`` float32 :class:`~monai.data.MetaTensor` with the file's affine, so MONAI's spatial
transforms (``Spacingd``, ``Orientationd``, crops) apply as to any loaded volume.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .checks import ImageReadError
from .slices import SliceIndexError, VolumeCache, _index

__all__ = ["LoadVolumed", "volume_items"]


def volume_items(items: Iterable[Mapping], image_key: str = "image", frame_key: str = "frame",
                 keep_keys: Sequence[str] = ()) -> list[dict]:
    """One item per 3D volume of a slice-indexed list, in first-seen order: ``{image_key: path,
    frame_key: t}`` for a frame of a 4D file, ``{image_key: path}`` for a 3D file (items without a
    frame, or with frame None / -1), plus the ``keep_keys`` of the volume's first item (e.g. a
    per-patient class ``label`` and the ``patient``); other keys (``slice``, a segmentation
    ``label`` path) are dropped.

    Raises:
        ValueError: an item has no ``image_key`` or misses a ``keep_keys`` entry, or the list is empty.
    """
    seen: dict[tuple, dict] = {}
    for i, item in enumerate(items):
        missing = [k for k in (image_key, *keep_keys) if k not in item]
        if missing:
            raise ValueError(f"volume_items: item {i} has no {missing[0]!r} key (keys: {sorted(map(str, item))})")
        frame = item.get(frame_key)
        if isinstance(frame, (int, np.integer)) and not isinstance(frame, bool) and frame == -1:
            frame = None
        key = (str(item[image_key]), None if frame is None else int(frame))
        if key not in seen:
            out = {image_key: item[image_key]} if frame is None else {image_key: item[image_key], frame_key: int(frame)}
            seen[key] = {**out, **{k: item[k] for k in keep_keys}}
    if not seen:
        raise ValueError("volume_items: the list is empty")
    return list(seen.values())


class LoadVolumed(MapTransform):
    """Load a 3D NIfTI volume, or frame ``data[frame_key]`` of a 4D ``H x W x S x T`` file, per key,
    as a channel-first float32 ``MetaTensor`` ``(1, H, W, S)``: raw stored intensities (after the
    NIfTI scaling, if any), the file's affine (nibabel's RAS world coordinates, metadata ``space``
    ``"RAS"``, as MONAI's NibabelReader), metadata ``filename_or_obj``, ``frame`` (-1 for a 3D file)
    and ``spatial_shape``. Axes are the stored voxel axes (``Orientationd`` reorients them).

    A 4D file is read once for all its frames while it stays in the small per-process cache (frames
    of one file are listed one after the other by :func:`volume_items`).

    Args:
        keys: keys holding NIfTI paths.
        frame_key: key of the cine frame index (0-based, fourth axis) for 4D files.
        cache_size: files kept per process (least recently used dropped first); 0 disables it. The
            cache is not pickled: a DataLoader worker starts with an empty one.
        allow_missing_keys: skip keys absent from the item.

    Raises:
        FileNotFoundError: the file does not exist (named).
        ImageReadError: nibabel cannot read it (named).
        SliceIndexError: a 4D file without a frame index, a 3D file with one, a frame out of range,
            or a file that is neither 3D nor 4D (file, index and shape named).
    """

    def __init__(self, keys: KeysCollection, frame_key: str = "frame", cache_size: int = 2,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.frame_key, self.cache_size = frame_key, cache_size
        self._cache = VolumeCache(cache_size, owner="LoadVolumed: cache_size")

    def load_volume(self, path: str | os.PathLike, frame=None) -> MetaTensor:
        """The ``(1, H, W, S)`` float32 volume of ``path`` (frame ``frame`` of a 4D file)."""
        path = os.fspath(path)
        arr, affine = self._cache.get(path)
        where = f"{path}" + (f" (frame {frame!r})" if frame is not None else "")
        if arr.ndim == 4 and arr.shape[3] == 1 and frame is None:
            frame = 0  # a single-frame "4D" file
        if arr.ndim == 4:
            if frame is None:
                raise SliceIndexError(
                    f"{where}: the file is 4D {tuple(arr.shape)} (H x W x slices x frames) but the item has no "
                    f"'{self.frame_key}' index.")
            t = _index(frame, "frame", path)
            if not 0 <= t < arr.shape[3]:
                raise SliceIndexError(
                    f"{where}: frame {t} out of range, the file has {arr.shape[3]} frames {tuple(arr.shape)}.")
            vol = arr[..., t]
        elif arr.ndim == 3:
            if frame is not None:
                raise SliceIndexError(f"{where}: the item has frame index {frame!r} but the file is 3D {tuple(arr.shape)}.")
            t, vol = -1, arr
        else:
            raise SliceIndexError(
                f"{where}: expected a 3D or 4D (H x W x slices x frames) file, got shape {tuple(arr.shape)}.")
        out = torch.from_numpy(np.asarray(vol, dtype=np.float32).copy())[None]
        meta = {"filename_or_obj": path, "frame": t, "spatial_shape": np.asarray(vol.shape),
                "original_channel_dim": "no_channel", "space": "RAS"}  # nibabel's world coordinates
        return MetaTensor(out, affine=torch.as_tensor(affine, dtype=torch.float64), meta=meta)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        frame = d.get(self.frame_key)
        if isinstance(frame, torch.Tensor) and frame.numel() == 1:
            frame = frame.item()
        if isinstance(frame, (int, np.integer)) and not isinstance(frame, bool) and frame == -1:
            frame = None
        for key in self.key_iterator(d):
            path = d[key]
            if isinstance(path, torch.Tensor):
                source = getattr(path, "meta", {}).get("filename_or_obj", "?")
                raise TypeError(f"LoadVolumed: '{key}' is already a tensor (from {source}), expected a NIfTI path.")
            try:
                d[key] = self.load_volume(path, frame)
            except ImageReadError as e:
                raise ImageReadError(f"{e} (item key '{key}')") from e.__cause__
        return d
