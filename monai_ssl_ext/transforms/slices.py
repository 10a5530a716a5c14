"""2D slices of 3D / 4D NIfTI volumes (ACDC cine MRI), loaded by slice index.

The ACDC slice index written by ``scripts/prepare_acdc.py`` lists one item per 2D slice::

    {"image": ".../patient003_4d.nii.gz", "frame": 0, "slice": 0, "patient": 3}          (4D cine)
    {"image": ".../patient003_frame01.nii.gz", "label": ".../patient003_frame01_gt.nii.gz",
     "slice": 0, "patient": 3}                                                           (3D ED/ES)

:class:`LoadSliced` turns such an item into channel-first ``(1, H, W)`` float32 tensors. A volume
is read once and kept in a small per-process LRU cache, so the slices of one volume (listed one
after another) cost one read of the file.

Intensities are the raw stored values (uint16 / int16 in ACDC, after the NIfTI scaling if the
header has any): no scaling and no ``uint8`` cast. The published SSL-MedSeg loader converted each
slice with ``Image.fromarray(sample.astype(np.uint8))``, which wraps intensities above 255
modulo 256; that bug is not reproduced.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .checks import ImageReadError

__all__ = ["LoadSliced", "SliceIndexError", "read_volume"]


class SliceIndexError(IndexError):
    """A slice or frame index is out of range for the file (or missing / not an integer)."""


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file with nibabel: ``(voxels, affine)``.

    The voxels keep their stored integer dtype when the header has no scaling (no float64 copy
    of a 4D cine volume). Errors name the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImageReadError: nibabel cannot read it (not a NIfTI file, truncated gzip, ...).
    """
    import nibabel as nib

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"NIfTI file {path!r} does not exist.")
    try:
        img = nib.load(path)
        arr = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as e:
        raise ImageReadError(f"cannot read NIfTI file {path!r}: {type(e).__name__}: {e}") from e
    return arr, affine


def _index(value, what: str, path: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int):
        raise SliceIndexError(f"{path}: {what} index must be an integer, got {value!r}.")
    return value


class VolumeCache:
    """The volumes a loading transform read last, per process: ``get(path)`` returns
    :func:`read_volume`'s ``(array, affine)``, from the cache while the file is unchanged (path,
    modification time and size; a rewritten file is read again), the least recently used dropped
    beyond ``size`` (0: no caching). A pickled copy (a DataLoader worker's) starts empty.
    ``hits`` / ``misses`` count the reads served from the cache / from the file."""

    def __init__(self, size: int, owner: str = "cache_size"):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{owner} must be a non-negative int, got {size!r}.")
        self.size = size
        self._reset()

    def _reset(self) -> None:
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __getstate__(self) -> dict:
        return {"size": self.size}

    def __setstate__(self, state: dict) -> None:
        self.size = state["size"]
        self._reset()

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0

    def get(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"NIfTI file {path!r} does not exist.") from None
        token = (path, st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._items.get(token)
            if hit is not None:
                self._items.move_to_end(token)
                self.hits += 1
                return hit
        vol = read_volume(path)
        with self._lock:
            self.misses += 1
            if self.size > 0:
                self._items[token] = vol
                self._items.move_to_end(token)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return vol


class LoadSliced(MapTransform):
    """Load one 2D slice (of one cine frame) of a NIfTI volume per key, channel first.

    For each key, ``data[key]`` is a NIfTI path; ``data[slice_key]`` selects the slice along the
    third axis, and for a 4D ``H x W x S x T`` file ``data[frame_key]`` selects the frame along the
    fourth. The result replaces ``data[key]``: a float32 :class:`~monai.data.MetaTensor` of shape
    ``(1, H, W)`` holding the raw intensities (labels keep their integer values, as floats), with
    metadata ``filename_or_obj`` (the path), ``slice``, ``frame`` (-1 for a 3D file, so batches
    mixing 3D and 4D items collate), ``spatial_shape`` and the slice's ``affine`` (the volume's
    affine shifted to the slice; 4x4). The ``slice`` / ``frame`` entries of ``data`` are left as
    they are (drop them with ``DeleteItemsd`` before batching a list whose items do not all have
    a ``frame``).

    A 3D item may carry ``frame`` = None (or no ``frame``); a 4D file without a frame index, or a
    3D file with one, is an error, as is an out-of-range index.

    Args:
        keys: keys holding NIfTI paths (e.g. ``["image", "label"]``).
        slice_key: key of the slice index (0-based, third axis).
        frame_key: key of the cine frame index (0-based, fourth axis) for 4D files.
        cache_size: number of volumes kept per process (least recently used dropped first);
            0 disables the cache. The cache is not pickled: a copy sent to a DataLoader worker
            starts empty and fills in that worker.
        allow_missing_keys: skip keys absent from the item.

    Raises:
        FileNotFoundError: the file does not exist (message names the file and slice).
        ImageReadError: the file cannot be read as NIfTI (names the file and slice).
        SliceIndexError: slice / frame index missing, not an integer or out of range, or a file of
            the wrong dimensionality (names the file, the index and the shape).
    """

    def __init__(
        self,
        keys: KeysCollection,
        slice_key: str = "slice",
        frame_key: str = "frame",
        cache_size: int = 8,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.slice_key = slice_key
        self.frame_key = frame_key
        self._cache = VolumeCache(cache_size)
        self.cache_size = cache_size

    @property
    def cache_hits(self) -> int:
        return self._cache.hits

    @property
    def cache_misses(self) -> int:
        return self._cache.misses

    def clear_cache(self) -> None:
        """Drop every cached volume (and reset the hit / miss counters)."""
        self._cache.clear()

    def _volume(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        return self._cache.get(path)

    # ------------------------------------------------------------------------------ slicing
    def load_slice(self, path: str | os.PathLike, slice_idx, frame_idx=None) -> MetaTensor:
        """The ``(1, H, W)`` float32 slice ``slice_idx`` (of frame ``frame_idx`` for 4D) of ``path``."""
        path = os.fspath(path)
        where = f"{path} (slice {slice_idx!r}" + (f", frame {frame_idx!r})" if frame_idx is not None else ")")
        s = _index(slice_idx, "slice", path)
        try:
            arr, affine = self._volume(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"NIfTI file {path!r} does not exist (requested slice {slice_idx!r}).") from None
        except ImageReadError as e:
            raise ImageReadError(f"{e} (requested slice {slice_idx!r})") from e.__cause__
        if arr.ndim == 4 and arr.shape[3] == 1 and frame_idx is None:
            frame_idx = 0  # a single-frame "4D" file
        if arr.ndim == 4:
            if frame_idx is None:
                raise SliceIndexError(
                    f"{where}: the file is 4D {tuple(arr.shape)} (H x W x slices x frames) but the item has no "
                    f"'{self.frame_key}' index."
                )
            t = _index(frame_idx, "frame", path)
            if not 0 <= t < arr.shape[3]:
                raise SliceIndexError(
                    f"{where}: frame {t} out of range, the file has {arr.shape[3]} frames {tuple(arr.shape)}."
                )
        elif arr.ndim == 3:
            if frame_idx is not None:
                raise SliceIndexError(
                    f"{where}: the item has frame index {frame_idx!r} but the file is 3D {tuple(arr.shape)}."
                )
            t = -1
        else:
            raise SliceIndexError(f"{where}: expected a 3D (H x W x slices) or 4D file, got shape {tuple(arr.shape)}.")
        if not 0 <= s < arr.shape[2]:
            raise SliceIndexError(
                f"{where}: slice {s} out of range, the file has {arr.shape[2]} slices {tuple(arr.shape)}."
            )
        sl = arr[:, :, s, t] if arr.ndim == 4 else arr[:, :, s]
        out = torch.from_numpy(np.asarray(sl, dtype=np.float32).copy())[None]
        slice_affine = affine.copy()
        slice_affine[:3, 3] += affine[:3, 2] * s
        meta = {
            "filename_or_obj": path,
            "slice": s,
            "frame": t,
            "spatial_shape": np.asarray(sl.shape),
            "original_channel_dim": "no_channel",
        }
        return MetaTensor(out, affine=torch.as_tensor(slice_affine, dtype=torch.float64), meta=meta)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        if self.slice_key not in d:
            raise SliceIndexError(f"{d[keys[0]]}: item has no '{self.slice_key}' index (keys: {sorted(map(str, d))}).")
        slice_idx = d[self.slice_key]
        frame_idx = d.get(self.frame_key)
        if isinstance(frame_idx, torch.Tensor) and frame_idx.numel() == 1:
            frame_idx = frame_idx.item()
        if isinstance(frame_idx, (int, np.integer)) and not isinstance(frame_idx, bool) and frame_idx == -1:
            frame_idx = None  # -1 = "no frame" (the value the metadata uses for 3D files)
        for key in keys:
            path = d[key]
            if isinstance(path, torch.Tensor):
                source = getattr(path, "meta", {}).get("filename_or_obj", "?")
                raise TypeError(f"LoadSliced: '{key}' is already a tensor (from {source}), expected a NIfTI path.")
            d[key] = self.load_slice(path, slice_idx, frame_idx)
        return d
