"""Augmentation presets for SSL views (array transforms applied by :class:`MultiViewd`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.utils import convert_to_tensor
from torchvision.transforms import v2

__all__ = ["SimCLRAugment"]


class SimCLRAugment:
    """SimCLR view augmentation as in the surgical recipe (source A, torchvision):
    ``RandomResizedCrop(size, scale)`` → ``RandomHorizontalFlip`` →
    ``RandomApply(ColorJitter(b, c, s, h), p)`` → [``RandomGrayscale``] → [``GaussianBlur``] →
    ``Normalize(mean, std)``.

    Takes a channel-first float tensor with intensities in [0, 1]; the normalisation is the one
    recorded in the encoder header, so finetuning can apply the same map.
    Randomness comes from torch's global generator (seeded, and saved in checkpoints).
    """

    def __init__(
        self,
        size: int | Sequence[int] = 224,
        scale: Sequence[float] = (0.08, 1.0),
        hflip_prob: float = 0.5,
        jitter: Sequence[float] = (0.5, 0.5, 0.5, 0.1),
        jitter_prob: float = 0.8,
        grayscale_prob: float = 0.0,
        blur_prob: float = 0.0,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
    ):
        steps = [
            v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True),
            v2.RandomHorizontalFlip(hflip_prob),
            v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_prob),
        ]
        if grayscale_prob > 0:
            steps.append(v2.RandomGrayscale(grayscale_prob))
        if blur_prob > 0:
            steps.append(v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=blur_prob))
        steps.append(v2.Normalize(list(mean), list(std)))
        self.transform = v2.Compose(steps)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = convert_to_tensor(image, track_meta=False).float()  # views are plain tensors
        return self.transform(image)
