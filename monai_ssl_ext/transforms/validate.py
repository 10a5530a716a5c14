"""The one input check of every bundle: right after loading, before any resampling, resizing,
cropping or intensity transform, so a bad file stops the run with its name and the config key it
contradicts instead of failing later (or training silently) somewhere deep in the pipeline."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

from .checks import source_name

__all__ = ["CheckInputd", "InputCheckError"]

#: What each check is called in ``config_keys``, and the bundle config key named by default.
DEFAULT_CONFIG_KEYS = {
    "channels": "in_channels",
    "spatial_dims": "spatial_dims",
    "num_classes": "num_classes",
    "datalist": None,
}
_MAX_VALUES = 10  # offending label values listed in a message


class InputCheckError(ValueError):
    """An input item contradicts what the bundle config assumes. The message names the file (and,
    for a label, its image) and the config key; the same are kept as attributes.

    Attributes:
        path: the file (``filename_or_obj`` of the item's metadata; ``<key>`` when unknown).
        key: the item key (``"image"``, ``"label"``, ...).
        config_key: the bundle config key that states the assumption, or None.
    """

    def __init__(self, message: str, path: str, key: Hashable, config_key: str | None = None):
        super().__init__(message)
        self.path, self.key, self.config_key = path, key, config_key


def _plain(value) -> torch.Tensor:
    """The data of ``value`` as a plain tensor (no metadata tracking, no copy)."""
    if hasattr(value, "as_tensor"):
        return value.as_tensor()
    return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class CheckInputd(MapTransform):
    """Check loaded channel-first items against the assumptions of the bundle config, and raise
    :class:`InputCheckError` naming the file and the config key. Nothing is changed: the item is
    returned as it came. The check is deterministic (not random to MONAI), so ``CacheDataset``
    caches past it and it runs once per cached item.

    Place it directly after the loader (and ``EnsureChannelFirstd`` for NIfTI volumes), before any
    resampling, resizing, cropping, thresholding or intensity transform. Checks, in order:

    1. every image key: ``spatial_dims`` spatial axes (e.g. a 2-D NIfTI where 3-D volumes are
       expected), ``channels`` channels (e.g. a 4-D NIfTI whose last axis becomes channels, a
       grey picture where RGB is expected), finite values (NaN / Inf counted);
    2. every label key: the spatial shape of the first image key (both files named: a label is
       never resized to fit its image), ``label_channels`` channels, finite values and, with
       ``num_classes``, integer class indices in ``[0, num_classes)`` (the offending values are
       listed with their voxel counts).

    Args:
        keys: image keys (channel-first tensors, ideally ``MetaTensor`` with ``filename_or_obj``).
        label_keys: label keys (index maps or masks), checked against the first image key.
        channels: expected image channels (None: not checked).
        spatial_dims: expected number of spatial axes, 1 to 3 (None: not checked).
        num_classes: labels must be integers in ``[0, num_classes)`` (None: values not checked,
            e.g. a picture mask that is thresholded later).
        label_channels: expected label channels (None: not checked).
        finite: check that images and labels hold no NaN / Inf.
        config_keys: the config key named for each check, over :data:`DEFAULT_CONFIG_KEYS`:
            ``channels`` (default ``in_channels``), ``spatial_dims`` (``spatial_dims``),
            ``num_classes`` (``num_classes``) and ``datalist`` (None), the key of the list the
            item comes from, named for shape mismatches and non-finite values.
        allow_missing_keys: skip keys absent from the item.

    Raises:
        InputCheckError: (a ``ValueError``) the first failed check.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection | None = None,
        channels: int | None = None,
        spatial_dims: int | None = None,
        num_classes: int | None = None,
        label_channels: int | None = 1,
        finite: bool = True,
        config_keys: Mapping[str, str | None] | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.label_keys = ensure_tuple(label_keys) if label_keys is not None else ()
        self.channels = self._count("channels", channels, 1)
        self.spatial_dims = self._count("spatial_dims", spatial_dims, 1)
        if self.spatial_dims is not None and self.spatial_dims > 3:
            raise ValueError(f"CheckInputd: spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
        self.num_classes = self._count("num_classes", num_classes, 1)
        if self.num_classes is not None and not self.label_keys:
            raise ValueError("CheckInputd: num_classes is checked on labels, but no label_keys are given.")
        self.label_channels = self._count("label_channels", label_channels, 1)
        self.finite = bool(finite)
        unknown = set(config_keys or {}) - set(DEFAULT_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"CheckInputd: unknown config_keys {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG_KEYS)}.")
        self.config_keys = {**DEFAULT_CONFIG_KEYS, **dict(config_keys or {})}

    @staticmethod
    def _count(name: str, value, minimum: int) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"CheckInputd: {name} must be an integer >= {minimum} or None, got {value!r}.")
        return int(value)

    # ------------------------------------------------------------------------------ messages
    def _config(self, check: str, suffix: str = "") -> str:
        """`` (config `<key>`<suffix>)`` for ``check``, or nothing if no key is named."""
        return f" (config `{self.config_keys[check]}`{suffix})" if self.config_keys.get(check) else ""

    def _listed(self) -> str:
        return f" (listed in config `{self.config_keys['datalist']}`)" if self.config_keys.get("datalist") else ""

    def _fail(self, message: str, data: Mapping, key: Hashable, check: str | None = None) -> InputCheckError:
        return InputCheckError(message, source_name(data, key), key, self.config_keys.get(check) if check else None)

    # ------------------------------------------------------------------------------ checks
    def _check_rank(self, d: Mapping, key: Hashable, x: torch.Tensor) -> None:
        if x.ndim < 2:
            raise self._fail(
                f"{source_name(d, key)}: '{key}' has shape {tuple(x.shape)}, expected channel-first "
                f"(C, spatial...) data{self._listed()}", d, key)

    def _check_spatial_dims(self, d: Mapping, key: Hashable, x: torch.Tensor) -> None:
        if self.spatial_dims is None or x.ndim - 1 == self.spatial_dims:
            return
        got = x.ndim - 1
        raise self._fail(
            f"{source_name(d, key)}: '{key}' has {got} spatial dimension(s) (channel-first shape "
            f"{tuple(x.shape)}), expected {self.spatial_dims}{self._config('spatial_dims')}: "
            f"a {got}-D file where the bundle takes {self.spatial_dims}-D data", d, key, "spatial_dims")

    def _check_channels(self, d: Mapping, key: Hashable, x: torch.Tensor, expected: int | None, label: bool) -> None:
        if expected is None or x.shape[0] == expected:
            return
        got = int(x.shape[0])
        src = source_name(d, key)
        hint = ""
        meta = getattr(d[key], "meta", None) or {}
        ocd = meta.get("original_channel_dim")
        if isinstance(ocd, (int, np.integer)) and not isinstance(ocd, bool):
            stored = list(x.shape[1:])
            stored.insert(len(stored) + 1 + int(ocd) if ocd < 0 else int(ocd), got)
            hint = (f" (the file stores shape {tuple(stored)}: its axis {int(ocd)} is read as channels"
                    + (", a 4-D series where a 3-D volume is expected?)" if len(stored) == 4 else ")"))
        if label:
            raise self._fail(
                f"{src}: '{key}' has {got} channel(s), expected {expected}: a label is one map of class "
                f"indices{hint}", d, key)
        ck = self.config_keys["channels"]
        raise self._fail(
            f"{src}: '{key}' has {got} channel(s), expected {expected}{self._config('channels')}{hint}; "
            f"convert the image" + (f" or change `{ck}`" if ck else ""), d, key, "channels")

    def _check_finite(self, d: Mapping, key: Hashable, x: torch.Tensor) -> None:
        if not self.finite or not x.is_floating_point():
            return
        finite = torch.isfinite(x)
        if bool(finite.all()):
            return
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(x.numel() - int(finite.sum()) - n_nan)
        raise self._fail(
            f"{source_name(d, key)}: '{key}' has {n_nan} NaN and {n_inf} infinite value(s) among "
            f"{x.numel()}: the file is damaged or was written with a NaN fill; repair it or remove it from "
            f"the data{self._listed()}", d, key, "datalist")

    def _check_same_shape(self, d: Mapping, key: Hashable, x: torch.Tensor, ref: Hashable | None) -> None:
        if ref is None:
            return
        ref_shape, shape = tuple(_plain(d[ref]).shape[1:]), tuple(x.shape[1:])
        if shape == ref_shape:
            return
        raise self._fail(
            f"{source_name(d, key)}: '{key}' has spatial shape {shape}, but its '{ref}' "
            f"{source_name(d, ref)} has {ref_shape}: a label must match its image voxel for voxel "
            f"(it is never resized to fit); fix the pair{self._listed()}", d, key, "datalist")

    def _check_values(self, d: Mapping, key: Hashable, x: torch.Tensor) -> None:
        n = self.num_classes
        if n is None:
            return
        if x.dtype == torch.bool:
            x = x.to(torch.uint8)
        integral = x.is_floating_point() is False
        if integral:
            in_range = bool((x.min() >= 0) & (x.max() < n)) if x.numel() else True
        else:
            in_range = bool(((x >= 0) & (x < n) & (x == torch.round(x))).all())
        if in_range:
            return
        values, counts = torch.unique(x, return_counts=True)
        vf = values.double()
        bad = (vf < 0) | (vf >= n) | (vf != torch.round(vf))
        values, counts = vf[bad].tolist(), counts[bad].tolist()
        listed = ", ".join(f"{_fmt(v)} ({c} voxel{'s' if c != 1 else ''})" for v, c in zip(values[:_MAX_VALUES], counts))
        more = f" and {len(values) - _MAX_VALUES} more" if len(values) > _MAX_VALUES else ""
        ck = self.config_keys["num_classes"]
        raise self._fail(
            f"{source_name(d, key)}: '{key}' has value(s) {listed}{more} that are not class indices "
            f"0..{n - 1}{self._config('num_classes', f' = {n}')}; fix the label"
            + (f" or change `{ck}`" if ck else ""), d, key, "num_classes")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        ref = None
        for key in self.key_iterator(d):
            x = _plain(d[key])
            self._check_rank(d, key, x)
            self._check_spatial_dims(d, key, x)
            self._check_channels(d, key, x, self.channels, label=False)
            self._check_finite(d, key, x)
            ref = key if ref is None else ref
        for key in self.label_keys:
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"CheckInputd: label key '{key}' is not in the item (keys: {sorted(map(str, d))}).")
            x = _plain(d[key])
            self._check_rank(d, key, x)
            self._check_same_shape(d, key, x, ref)
            self._check_spatial_dims(d, key, x)
            self._check_channels(d, key, x, self.label_channels, label=True)
            self._check_finite(d, key, x)
            self._check_values(d, key, x)
        return d
