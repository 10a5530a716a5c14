"""Augmentation presets for SSL views (array transforms applied by :class:`MultiViewd`).

* :class:`ViewAugment` -- one torchvision-style view pipeline (crop, flip, colour jitter, grayscale, blur, solarize,
  normalise) that the RGB presets share;
* :class:`SimCLRAugment` -- the SimCLR view of the surgical recipe (source A);
* :class:`AsymmetricAugment` -- the BYOL-style pair of views of MoCo v3 and Barlow Twins (source C, SSL4GIE);
* :class:`BYOLAugment` -- the single-channel raw-intensity view of SSL-MedSeg's ACDC recipe (source D).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms.traits import RandomizableTrait
from monai.utils import convert_to_tensor
from torchvision.transforms import v2

from .photometric import FastColorJitter, FastGaussianBlur

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "AsymmetricAugment", "BYOLAugment", "SimCLRAugment", "ViewAugment",
           "blur_kernel_size"]

#: ImageNet channel statistics (torchvision), the normalisation of the SSL4GIE recipes.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATION = {
    "nearest": v2.InterpolationMode.NEAREST,
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}


def blur_kernel_size(size: int | Sequence[int]) -> int:
    """Odd Gaussian-blur kernel side of about 10% of the crop side, as SimCLR and BYOL: ``2 * (size // 20) + 1``
    (SimCLR's ``kernel_size = size // 10; radius = kernel_size // 2; 2 * radius + 1``), at least 3: 23 for 224,
    9 for 96, 3 for 32. For a non-square crop the shorter side counts."""
    side = min(size) if isinstance(size, Sequence) else size
    return max(3, 2 * (int(side) // 20) + 1)


def _probability(owner: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{owner}: {name} must be a probability in [0, 1], got {value!r}")
    return float(value)


class ViewAugment(RandomizableTrait):
    """One augmented view of a picture, torchvision style:
    ``RandomResizedCrop(size, scale, interpolation)`` → ``RandomHorizontalFlip(hflip_prob)`` →
    ``RandomApply(ColorJitter(*jitter), jitter_prob)`` → ``RandomGrayscale(grayscale_prob)`` →
    ``RandomApply(GaussianBlur(blur_kernel, blur_sigma), blur_prob)`` →
    ``RandomApply(Solarize(solarize_threshold), solarize_prob)`` → ``Normalize(mean, std)``.

    Steps whose probability is 0 are left out (grayscale, blur, solarize), so they draw no random numbers. The
    jitter and blur are :class:`~monai_ssl_ext.transforms.photometric.FastColorJitter` and ``FastGaussianBlur``:
    torchvision's, computed at a lower cost (a closed-form hue step, a separable blur).
    The flip commutes with the colour steps and the (symmetric) blur, so its place matches MoCo v3's pipeline
    (flip last) in distribution.

    Input: a channel-first ``(C, H, W)`` array or tensor (MetaTensor metadata is dropped), either ``uint8`` in
    0-255 or float with intensities in [0, 1]. A uint8 picture is cropped and flipped in uint8 (cheaper, and
    torchvision's uint8 resampling follows PIL's, which the sources used) and then divided by 255; a float picture
    is clamped to [0, 1] after the crop (a bicubic crop overshoots slightly; PIL's 8-bit one clips). A float
    picture that is clearly not in [0, 1] (e.g. 0-255 values from ``LoadPictured``: scale them first) is an error.
    Output: float32 ``(C, size, size)``.
    Randomness comes from torch's global generator (seeded, and saved in checkpoints by ``RNGState``).

    Args:
        size: output size of the crop.
        scale: area range of the crop.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"`` (antialiased when downsampling).
        hflip_prob: probability of a horizontal flip (the last axis, the picture's width).
        jitter: ``(brightness, contrast, saturation, hue)`` of ``ColorJitter``.
        jitter_prob: probability of applying the jitter.
        grayscale_prob: probability of converting to grey (the channel count is kept).
        blur_prob: probability of a Gaussian blur.
        blur_sigma: range of the blur's standard deviation (pixels of the crop), drawn uniformly.
        blur_kernel: odd kernel side; None = :func:`blur_kernel_size` of ``size`` (about 10%).
        solarize_prob: probability of solarizing (``x -> 1 - x`` where ``x >= solarize_threshold``).
        solarize_threshold: solarize threshold on the [0, 1] scale (0.5; PIL's ``ImageOps.solarize`` uses 128/255).
        mean, std: normalisation statistics (per channel, or one value for every channel).
    """

    #: views are plain tensors: :class:`~monai_ssl_ext.transforms.MultiViewd` hands it a plain copy of a MetaTensor
    plain_views = True

    def __init__(
        self,
        size: int | Sequence[int] = 224,
        scale: Sequence[float] = (0.08, 1.0),
        interpolation: str = "bilinear",
        hflip_prob: float = 0.5,
        jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
        jitter_prob: float = 0.8,
        grayscale_prob: float = 0.0,
        blur_prob: float = 0.0,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        blur_kernel: int | None = None,
        solarize_prob: float = 0.0,
        solarize_threshold: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        name = type(self).__name__
        if interpolation not in _INTERPOLATION:
            raise ValueError(f"{name}: interpolation must be one of {sorted(_INTERPOLATION)}, got {interpolation!r}")
        probs = {k: _probability(name, k, v) for k, v in (("hflip_prob", hflip_prob), ("jitter_prob", jitter_prob),
                 ("grayscale_prob", grayscale_prob), ("blur_prob", blur_prob), ("solarize_prob", solarize_prob))}
        kernel = blur_kernel_size(size) if blur_kernel is None else int(blur_kernel)
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"{name}: blur_kernel must be a positive odd int, got {blur_kernel!r}")
        self.blur_kernel = kernel
        #: the steps of a view in order, each with the probability it is applied with (None: always): the crop and the
        #: flip, in the picture's dtype; then the photometric steps, on floats in [0, 1]
        self.spatial: list[tuple[float | None, v2.Transform]] = [
            (None, v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=_INTERPOLATION[interpolation],
                                        antialias=True)),
            (probs["hflip_prob"], v2.RandomHorizontalFlip(probs["hflip_prob"])),
        ]
        self.photometric: list[tuple[float | None, v2.Transform]] = [(probs["jitter_prob"], FastColorJitter(*jitter))]
        if probs["grayscale_prob"] > 0:
            self.photometric.append((probs["grayscale_prob"], v2.RandomGrayscale(probs["grayscale_prob"])))
        if probs["blur_prob"] > 0:
            self.photometric.append((probs["blur_prob"], FastGaussianBlur(kernel, sigma=tuple(blur_sigma))))
        if probs["solarize_prob"] > 0:
            self.photometric.append((probs["solarize_prob"],
                                     v2.RandomSolarize(float(solarize_threshold), p=probs["solarize_prob"])))
        self.photometric.append((None, v2.Normalize([float(m) for m in mean], [float(s) for s in std])))

    def __call__(self, image) -> torch.Tensor:
        image = convert_to_tensor(image, track_meta=False)  # views are plain tensors
        name = type(self).__name__
        if image.dim() != 3:
            raise ValueError(f"{name} expects a channel-first (C, H, W) picture, got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            image = _run(self.spatial, image).float().div_(255.0)
        elif image.is_floating_point():
            image = _run(self.spatial, image.float())
            lo, hi = torch.aminmax(image)
            if hi > 1.5 or lo < -0.5:
                raise ValueError(
                    f"{name} expects float intensities in [0, 1] (or uint8), got values in [{float(lo):.3g}, "
                    f"{float(hi):.3g}]: scale 0-255 pictures first (e.g. ScaleIntensityRanged a_max=255)"
                )
            image = image.clamp_(0.0, 1.0)
        else:
            raise ValueError(f"{name} expects a uint8 or float picture, got dtype {image.dtype}")
        return _run(self.photometric, image)


def _run(steps: list[tuple[float | None, v2.Transform]], picture: torch.Tensor) -> torch.Tensor:
    """torchvision's ``Compose`` of ``RandomApply`` / ``Random*`` steps on one plain tensor, without its per-call
    input flattening and dispatch (8% of a 32 px view): each step with a probability ``p`` is skipped when
    ``torch.rand(1) >= p``, as there; an applied one draws its parameters (``make_params``) and transforms."""
    for p, step in steps:
        if p is None or torch.rand(1) < p:
            picture = step.transform(picture, step.make_params([picture]))
    return picture


class SimCLRAugment(ViewAugment):
    """SimCLR view augmentation as in the surgical recipe (source A, torchvision):
    ``RandomResizedCrop(size, scale)`` → ``RandomHorizontalFlip`` →
    ``RandomApply(ColorJitter(b, c, s, h), p)`` → [``RandomGrayscale``] → [``GaussianBlur(23, σ 0.1-2)``] →
    ``Normalize(mean, std)``: a :class:`ViewAugment` with the recipe's defaults (bilinear crop, a fixed 23-pixel
    blur kernel, no solarization).

    Takes a channel-first float tensor with intensities in [0, 1] (or uint8); the normalisation is the one
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
        super().__init__(size=size, scale=scale, interpolation="bilinear", hflip_prob=hflip_prob, jitter=jitter,
                         jitter_prob=jitter_prob, grayscale_prob=grayscale_prob, blur_prob=blur_prob,
                         blur_sigma=(0.1, 2.0), blur_kernel=23, mean=mean, std=std)


class AsymmetricAugment(Sequence):
    """The BYOL-style asymmetric pair of views of MoCo v3 and Barlow Twins (SSL4GIE pretraining, SPEC C.1; BYOL,
    Grill et al. 2020, appendix B, table 6): per view

    ``RandomResizedCrop(size, scale, bicubic)`` → ``RandomHorizontalFlip(0.5)`` →
    ``RandomApply(ColorJitter(0.4, 0.4, 0.2, 0.1), 0.8)`` → ``RandomGrayscale(0.2)`` →
    ``RandomApply(GaussianBlur(σ ~ U[0.1, 2.0]), p_blur)`` → ``RandomApply(Solarize(0.5), p_solarize)`` →
    ``Normalize(ImageNet mean, std)``

    with ``p_blur = 1.0`` for view 1 and ``0.1`` for view 2, and ``p_solarize = 0.0`` for view 1 and ``0.2`` for
    view 2. It is a sequence of the per-view :class:`ViewAugment` transforms, so
    ``MultiViewd(keys="image", transform=AsymmetricAugment(...))`` makes view ``image`` with the first and
    ``image_2`` with the second (MultiViewd takes a sequence as one transform per view); each carries MONAI's
    ``RandomizableTrait``.

    The blur kernel is torchvision/BYOL style: odd, about 10% of the crop (:func:`blur_kernel_size`, 23 for 224);
    the sources' PIL ``GaussianBlur(radius=σ)`` has no fixed kernel, and at σ ≤ 2 a 23-pixel kernel (±5.5σ) is
    equivalent. The source's crop scale differs per recipe: MoCo v3 ``--crop-min`` (0.08 default, 0.2 in the
    ResNet-50 recipes), Barlow Twins 0.08; pass ``scale``. Input and output as :class:`ViewAugment`: ``(C, H, W)``
    uint8 or float in [0, 1] → float32 ``(C, size, size)``.

    Args:
        size, scale, interpolation, hflip_prob, jitter, jitter_prob, grayscale_prob, blur_sigma, mean, std: as
            :class:`ViewAugment`, the same for every view.
        blur_probs: blur probability of each view (one entry per view).
        solarize_probs: solarize probability of each view (as many entries as ``blur_probs``).
    """

    def __init__(
        self,
        size: int | Sequence[int] = 224,
        scale: Sequence[float] = (0.08, 1.0),
        interpolation: str = "bicubic",
        hflip_prob: float = 0.5,
        jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
        jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        blur_probs: Sequence[float] = (1.0, 0.1),
        solarize_probs: Sequence[float] = (0.0, 0.2),
        blur_sigma: Sequence[float] = (0.1, 2.0),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        blur_probs, solarize_probs = list(blur_probs), list(solarize_probs)
        if not blur_probs or len(blur_probs) != len(solarize_probs):
            raise ValueError(
                f"AsymmetricAugment: blur_probs and solarize_probs need one entry per view (the same number, at least "
                f"1), got {blur_probs} and {solarize_probs}"
            )
        self.views = tuple(
            ViewAugment(size=size, scale=scale, interpolation=interpolation, hflip_prob=hflip_prob, jitter=jitter,
                        jitter_prob=jitter_prob, grayscale_prob=grayscale_prob, blur_prob=b, blur_sigma=blur_sigma,
                        solarize_prob=s, mean=mean, std=std)
            for b, s in zip(blur_probs, solarize_probs)
        )

    def __getitem__(self, index):
        return self.views[index]

    def __len__(self) -> int:
        return len(self.views)

    def __repr__(self) -> str:
        return f"AsymmetricAugment({len(self.views)} views)"


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

    #: views are plain tensors: :class:`~monai_ssl_ext.transforms.MultiViewd` hands it a plain copy of a MetaTensor
    plain_views = True

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
