"""Multi-view dictionary transform: the one way every SSL bundle makes its views."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.transforms.traits import RandomizableTrait

__all__ = ["MultiViewd", "view_keys"]


def view_keys(key: str, n_views: int) -> list[str]:
    """Names of the views made from ``key``: ``image``, ``image_2``, ``image_3``, … (the MONAI
    tutorial's naming)."""
    return [key] + [f"{key}_{i}" for i in range(2, n_views + 1)]


class MultiViewd(MapTransform, RandomizableTrait):
    """Make ``n_views`` independently augmented views of each key.

    Each view is ``transform(copy of data[key])``, drawn independently; the views are stored as
    ``key``, ``key_2``, … and, if ``original_key`` is given, the un-augmented input is kept under
    that name (the reconstruction target of autoencoder recipes).

    Args:
        keys: keys of the images to expand.
        transform: an array transform (MONAI or torchvision) applied to each view, or a sequence
            of ``n_views`` transforms for asymmetric views (BYOL-style).
        n_views: number of views (ignored when ``transform`` is a sequence).
        original_key: where to keep the un-augmented input (e.g. ``"gt_image"``); None to drop it.

    The views are drawn anew at every read: the class carries MONAI's ``RandomizableTrait``, so
    ``CacheDataset`` / ``PersistentDataset`` cache only the transforms before it (without the
    mark they cached the views themselves, and every epoch saw the same two views).
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: Callable | Sequence[Callable],
        n_views: int = 2,
        original_key: str | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.transforms = list(transform) if isinstance(transform, Sequence) else [transform] * n_views
        if len(self.transforms) < 1:
            raise ValueError("MultiViewd needs at least one view transform")
        self.original_key = original_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if self.original_key is not None:
                d[self.original_key] = image.clone() if isinstance(image, torch.Tensor) else image
            for name, t in zip(view_keys(str(key), len(self.transforms)), self.transforms):
                d[name] = t(_view_input(image, t))
        return d


def _view_input(image, transform):
    """The copy of the input a view transform gets: a clone, or, for a transform that makes plain-tensor views
    (``plain_views``, e.g. :class:`~monai_ssl_ext.transforms.ViewAugment`), a plain-tensor clone, since cloning a
    MetaTensor deep-copies its metadata, which such a view drops anyway."""
    if not isinstance(image, torch.Tensor):
        return image.copy()
    if getattr(transform, "plain_views", False) and isinstance(image, MetaTensor):
        return image.as_tensor().clone()
    return image.clone()
