"""Augmentation presets for SSL views (array transforms applied by :class:`MultiViewd`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms.traits import RandomizableTrait
from monai.utils import convert_to_tensor
from torchvision.transforms import v2

__all__ = ["SimCLRAugment", "BYOLAugment"]


class SimCLRAugment(RandomizableTrait):
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


class BYOLAugment(RandomizableTrait):
    """BYOL view augmentation of SSL-MedSeg's ACDC recipe (source D, solo-learn ``acdc.yaml``) for single-channel
    images in RAW intensities (e.g. ACDC MR slices, uint16 values well above 255):
    ``RandomResizedCrop(size, scale, bicubic)`` → ``RandomApply(brightness/contrast jitter, p)`` →
    ``RandomHorizontalFlip`` → ``Normalize(mean, std)`` (solo-learn's order).

    Differences from the source, all deliberate:

    * The jitter is implemented here rather than with torchvision's ``ColorJitter``, whose float path clamps to
      [0, 1] and would destroy raw intensities. Like ``ColorJitter`` it applies brightness and contrast in a
      random order, with factors drawn uniformly: brightness ``x * f``, ``f ~ U[1 - b, 1 + b]``; contrast
      ``f * x + (1 - f) * mean(x)``, ``f ~ U[1 - c, 1 + c]`` (``mean`` over the whole image, which for one channel
      is torchvision's grey mean). Nothing is clamped.
    * The source's saturation (0.2), hue (0.1) and ``RandomGrayscale(0.2)`` are no-ops on grey ('L') images and
      are left out.
    * The source converted each slice with ``Image.fromarray(x.astype(np.uint8))`` (intensities wrapped modulo
      256) and applied the raw-intensity statistics 67.27 / 84.66 to ``ToTensor``'s [0, 1] output, which gives a
      near-constant input. Here the statistics are applied to the raw float intensities they were computed on.
    * The bicubic crop may overshoot slightly below 0 or above the maximum near edges; it is not clamped either.

    Takes a channel-first ``(C, H, W)`` array or tensor (MetaTensor metadata is dropped); returns a float32
    ``(C, size, size)`` tensor. Randomness comes from torch's global generator (seeded, and saved in
    checkpoints), as in :class:`SimCLRAugment`.

    Args:
        size: output size of the crop (224).
        scale: area range of the crop (0.08, 1).
        hflip_prob: probability of a horizontal flip (0.5).
        brightness: ``b`` of the brightness factor range ``[1 - b, 1 + b]`` (0.2).
        contrast: ``c`` of the contrast factor range ``[1 - c, 1 + c]`` (0.2).
        jitter_prob: probability of applying the jitter (0.8).
        mean, std: dataset intensity statistics (SSL-MedSeg's ACDC values 67.27 / 84.66 by default).
    """

    def __init__(
        self,
        size: int | Sequence[int] = 224,
        scale: Sequence[float] = (0.08, 1.0),
        hflip_prob: float = 0.5,
        brightness: float = 0.2,
        contrast: float = 0.2,
        jitter_prob: float = 0.8,
        mean: Sequence[float] | float = (67.27,),
        std: Sequence[float] | float = (84.66,),
    ):
        for name, value in (("brightness", brightness), ("contrast", contrast)):
            if not 0 <= value <= 1:
                raise ValueError(f"BYOLAugment: {name} must be in [0, 1], got {value}")
        for name, value in (("hflip_prob", hflip_prob), ("jitter_prob", jitter_prob)):
            if not 0 <= value <= 1:
                raise ValueError(f"BYOLAugment: {name} must be a probability, got {value}")
        self.mean = [float(m) for m in (mean if isinstance(mean, Sequence) else [mean])]
        self.std = [float(s) for s in (std if isinstance(std, Sequence) else [std])]
        if any(s <= 0 for s in self.std):
            raise ValueError(f"BYOLAugment: std must be > 0, got {self.std}")
        self.brightness, self.contrast, self.jitter_prob = float(brightness), float(contrast), float(jitter_prob)
        self.crop = v2.RandomResizedCrop(
            size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC, antialias=True
        )
        self.flip = v2.RandomHorizontalFlip(hflip_prob)
        self.normalize = v2.Normalize(self.mean, self.std)

    @staticmethod
    def _factor(amount: float) -> float:
        return float(torch.empty(1).uniform_(1 - amount, 1 + amount))

    def _jitter(self, image: torch.Tensor) -> torch.Tensor:
        for i in torch.randperm(2).tolist():  # random order, as ColorJitter
            if i == 0 and self.brightness > 0:
                image = image * self._factor(self.brightness)
            elif i == 1 and self.contrast > 0:
                f = self._factor(self.contrast)
                image = f * image + (1 - f) * image.mean()
        return image

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = convert_to_tensor(image, track_meta=False).float()  # views are plain tensors
        if image.dim() != 3:
            raise ValueError(f"BYOLAugment expects a channel-first (C, H, W) image, got shape {tuple(image.shape)}")
        image = self.crop(image)
        if float(torch.rand(1)) < self.jitter_prob:
            image = self._jitter(image)
        return self.normalize(self.flip(image))
