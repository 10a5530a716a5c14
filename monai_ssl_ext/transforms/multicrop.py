"""Multi-crop views (Caron et al., SwAV, NeurIPS 2020; DINO): ``n_global`` large crops and ``n_local`` small ones,
each drawn with its own augmentation, beside :class:`~monai_ssl_ext.transforms.MultiViewd`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.config import KeysCollection

from .multiview import MultiViewd, view_keys

__all__ = ["MultiCropd"]


def _transforms(name: str, transform: Callable | Sequence[Callable] | None, n: int) -> list[Callable]:
    if n < 0:
        raise ValueError(f"MultiCropd: {name} count must be >= 0, got {n}")
    if transform is None:
        if n:
            raise ValueError(f"MultiCropd: {n} {name} crops need a {name}_transform")
        return []
    if isinstance(transform, Sequence) and not isinstance(transform, str):
        transforms = list(transform)
        if len(transforms) != n:
            raise ValueError(f"MultiCropd: {len(transforms)} {name} transforms given for n_{name}={n} crops "
                             f"(give one transform for all, or one per crop)")
        return transforms
    return [transform] * n


class MultiCropd(MultiViewd):
    """Make ``n_global`` global and ``n_local`` local views of each key, every one drawn independently.

    The views are stored as :func:`~monai_ssl_ext.transforms.view_keys` names: ``image``, ``image_2``, …,
    ``image_{n_global}`` are the global crops, the ``n_local`` after them the local ones (globals first, so a
    wrapper's :func:`~monai_ssl_ext.networks.ssl.forward_by_size` runs each size as one batch). The crop size and
    scale belong to the transforms, e.g. SwAV's 2×224 (scale 0.14–1) + 6×96 (0.05–0.14)::

        {"_target_": "MultiCropd", "keys": "image", "n_global": 2, "n_local": 6,
         "global_transform": {"_target_": "SimCLRAugment", "size": 224, "scale": [0.14, 1.0]},
         "local_transform": {"_target_": "SimCLRAugment", "size": 96, "scale": [0.05, 0.14]}}

    and the trainer's ``view_keys`` are ``"$monai_ssl_ext.transforms.view_keys('image', 8)"``.

    Like :class:`MultiViewd` it is random to MONAI (``RandomizableTrait``): ``CacheDataset`` caches only the
    transforms before it, and every read draws new crops.

    Args:
        keys: keys of the images to expand.
        global_transform: array transform of the global crops, or a sequence of ``n_global`` (asymmetric views, e.g.
            BYOL / DINO's two global augmentations).
        local_transform: array transform of the local crops, or a sequence of ``n_local``; None when ``n_local`` is 0.
        n_global: number of global crops (>= 1).
        n_local: number of local crops (>= 0).
        original_key: where to keep the un-augmented input; None to drop it.
    """

    def __init__(
        self,
        keys: KeysCollection,
        global_transform: Callable | Sequence[Callable],
        local_transform: Callable | Sequence[Callable] | None = None,
        n_global: int = 2,
        n_local: int = 6,
        original_key: str | None = None,
        allow_missing_keys: bool = False,
    ):
        n_global, n_local = int(n_global), int(n_local)
        if n_global < 1:
            raise ValueError(f"MultiCropd: n_global must be >= 1, got {n_global}")
        crops = _transforms("global", global_transform, n_global) + _transforms("local", local_transform, n_local)
        super().__init__(keys, crops, original_key=original_key, allow_missing_keys=allow_missing_keys)
        self.n_global, self.n_local = n_global, n_local

    def global_keys(self, key: str = "image") -> list[str]:
        """Keys of the global crops of ``key``: ``[key, key_2, …]``."""
        return view_keys(key, self.n_global + self.n_local)[: self.n_global]

    def local_keys(self, key: str = "image") -> list[str]:
        """Keys of the local crops of ``key`` (after the global ones)."""
        return view_keys(key, self.n_global + self.n_local)[self.n_global:]
