"""Paired image/label spatial augmentation that MONAI lacks: torchvision's RandomResizedCrop."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.transforms.traits import RandomizableTrait
from monai.utils import convert_to_tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = ["RandResizedCropd"]


class RandResizedCropd(MapTransform, RandomizableTrait):
    """``torchvision.transforms.v2.RandomResizedCrop`` applied with one draw to an image and its
    label: the image is resampled with ``interpolation`` (bilinear by default), labels with
    nearest neighbour, so label values stay integral (Albumentations' ``RandomResizedCrop`` in
    SSL-MedSeg's finetuning).

    Args:
        keys: image keys (channel-first 2D tensors).
        size: output size (int or (h, w)).
        scale, ratio: as torchvision (defaults (0.08, 1.0) and (3/4, 4/3)).
        label_keys: keys resampled as masks (nearest).

    Random to MONAI (``RandomizableTrait``): caching datasets stop before it. The draw comes from
    torch's global generator, which ``RNGState`` checkpoints.
    """

    def __init__(
        self,
        keys: KeysCollection,
        size: int | Sequence[int],
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        label_keys: KeysCollection = (),
        allow_missing_keys: bool = False,
    ):
        label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)
        super().__init__(list(self._as_list(keys)) + label_keys, allow_missing_keys)
        self.label_keys = set(label_keys)
        self.crop = v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), antialias=True)

    @staticmethod
    def _as_list(keys):
        return [keys] if isinstance(keys, str) else list(keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        wrapped = [
            tv_tensors.Mask(convert_to_tensor(d[k], track_meta=False))
            if k in self.label_keys
            else tv_tensors.Image(convert_to_tensor(d[k], track_meta=False).float())
            for k in keys
        ]
        out = self.crop(*wrapped) if len(wrapped) > 1 else (self.crop(wrapped[0]),)
        for k, v in zip(keys, out):
            d[k] = v.as_subclass(torch.Tensor)
        return d
