"""3D view augmentations for SSL on volumes (CT, MR): the counterparts of the 2D presets in
:mod:`.augment` (SimCLR / BYOL / MoCo v3 / Barlow Twins views), built from MONAI pieces.

:class:`VolumeViewAugment` makes one view of a channel-first ``(C, D, H, W)`` float volume, in
this order (each step as the 2D recipes apply it to pictures):

1. **random resized crop**: a box of volume fraction ``s ~ U(scale)`` of the input, with bounded
   aspect ratios, at a uniformly random position, resized to ``roi_size`` (trilinear, MONAI
   ``Resize``, anti-aliased when shrinking as torchvision's ``RandomResizedCrop(antialias=True)``);
2. **flips**: each axis of ``flip_axes`` flipped with probability ``flip_prob`` (MONAI ``Flip``);
3. **intensity jitter** with probability ``jitter_prob``: brightness ``x * f`` and contrast
   ``f * x + (1 - f) * mean_c(x)`` (``f ~ U[1 - b, 1 + b]``), in random order, as torchvision's
   ``ColorJitter`` on grey images (saturation and hue do nothing on one channel), clipped to
   ``value_range`` after each (torchvision clips float images to [0, 1]; ``None`` for raw
   intensities such as MR, which are not clipped);
4. **Gaussian blur** with probability ``blur_prob``: isotropic ``sigma ~ U(blur_sigma)`` voxels
   (MONAI ``gaussian_1d`` kernels truncated at 4 sigma and renormalised, ``separable_filtering``
   with replicated edges; torchvision reflects them);
5. **solarize** with probability ``solarize_prob``: voxels ``>= threshold`` become
   ``lo + hi - x`` within ``value_range = (lo, hi)`` (torchvision's ``RandomSolarize`` on [0, 1]:
   ``1 - x`` above 0.5);
6. **normalisation** ``(x - mean_c) / std_c`` with ``normalization = {"mean": [...], "std": [...]}``
   (the bundle's ``normalization`` id, recorded in the encoder header).

The crop, in 3D: with ``f = s ** (1/3)`` the box's side along axis ``i`` is ``f * a_i * size_i``,
where ``a_i = exp(u_i - mean(u))``, ``u_i ~ U(-log(r) / 2, log(r) / 2)`` and ``r = max_aspect``:
the box has volume fraction ``s`` and the ratio of any two of its *relative* sides
(``side_i / size_i``) lies in ``[1 / r, r]``. On a cube these are torchvision's aspect-ratio bounds
(3/4 .. 4/3); relative sides keep the meaning on anisotropic grids (an ACDC stack of 10 slices
of 200 x 200 voxels), where voxel-count ratios would reject every box. A draw whose box does not
fit is redrawn (10 tries, as torchvision); after that the box keeps the input's proportions
(``a_i = 1``), which always fits and still has fraction ``s``. Sides are rounded to whole voxels.

Randomness comes from torch's global generator, as in the 2D presets (:class:`.augment.SimCLRAugment`):
it is seeded by ``set_determinism``, saved in checkpoints by
:class:`~monai_ssl_ext.handlers.RNGState` (so a resumed run draws the same views), and torch
reseeds it in every DataLoader worker. MONAI's per-transform ``R`` generators are not used: one
nested in :class:`~monai_ssl_ext.transforms.MultiViewd` is not reached by ``Compose`` or MONAI's
worker seeding, so every worker would draw the same views. The classes carry MONAI's
``RandomizableTrait``, so ``CacheDataset`` caches only what comes before them.

:class:`AsymmetricVolumeAugment` is the pair of per-view transforms of BYOL, MoCo v3 and Barlow
Twins (Grill et al. 2020, Table 6; the 3D counterpart of :class:`.augment.AsymmetricAugment`): the
same crop / flip / jitter, blur with probability 1.0 and 0.1 and solarize with probability 0.0
and 0.2; it is a sequence of per-view transforms, which
:class:`~monai_ssl_ext.transforms.MultiViewd` applies one per view.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from monai.networks.layers import gaussian_1d, separable_filtering
from monai.transforms import Flip, Resize
from monai.transforms.traits import RandomizableTrait
from monai.utils import convert_to_tensor, ensure_tuple_rep

__all__ = ["VolumeViewAugment", "AsymmetricVolumeAugment"]

SPATIAL_DIMS = 3
CROP_TRIES = 10  # as torchvision's RandomResizedCrop


def _pair(value, name: str, low: float = 0.0, high: float = math.inf) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not low <= lo <= hi <= high:
        raise ValueError(f"{name} must be an increasing pair within [{low}, {high}], got {list(value)}")
    return lo, hi


def _probability(value, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    return value


def _uniform(lo: float, hi: float) -> float:
    return float(torch.empty(1).uniform_(lo, hi)) if hi > lo else lo


class VolumeViewAugment(RandomizableTrait):
    """One SSL view of a channel-first ``(C, D, H, W)`` float volume: random resized crop to
    ``roi_size``, flips, brightness / contrast jitter, Gaussian blur, solarize, normalisation (see
    the module docstring for each step and the 3D crop).

    Args:
        roi_size: output spatial size (int or ``[D, H, W]``).
        scale: range of the crop's volume fraction ``(0.08, 1.0)``.
        max_aspect: largest ratio of two relative sides of the crop (``4/3``; 1 keeps the input's
            proportions).
        flip_prob: probability of flipping each axis of ``flip_axes`` (0.5).
        flip_axes: spatial axes that may flip (all three).
        brightness, contrast: ``b`` of the factor range ``[1 - b, 1 + b]`` (0.4, 0.4: BYOL / MoCo v3).
        jitter_prob: probability of applying the jitter (0.8).
        blur_prob: probability of the Gaussian blur (0).
        blur_sigma: range of its sigma in voxels ((0.1, 2.0), BYOL's).
        solarize_prob: probability of solarizing (0).
        solarize_threshold: intensity from which voxels are inverted (None: the middle of
            ``value_range``).
        value_range: ``(lo, hi)`` of the input intensities (after windowing / scaling: (0, 1)):
            the jitter clips to it and solarize inverts within it; None for unbounded raw
            intensities (no clipping, no solarize).
        normalization: ``{"mean": [...], "std": [...]}`` applied last, per channel (one value for
            all channels is repeated); None: no normalisation.
        anti_aliasing: smooth before shrinking the crop (MONAI ``Resize(anti_aliasing=True)``).

    Takes a channel-first array or tensor (MetaTensor metadata is dropped); returns a float32
    ``(C, *roi_size)`` tensor. The draws of the last call are kept in :attr:`last_draw` (crop
    start and size, flipped axes, applied steps), for inspection.
    """

    def __init__(
        self,
        roi_size: int | Sequence[int],
        scale: Sequence[float] = (0.08, 1.0),
        max_aspect: float = 4 / 3,
        flip_prob: float = 0.5,
        flip_axes: Sequence[int] = (0, 1, 2),
        brightness: float = 0.4,
        contrast: float = 0.4,
        jitter_prob: float = 0.8,
        blur_prob: float = 0.0,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        solarize_prob: float = 0.0,
        solarize_threshold: float | None = None,
        value_range: Sequence[float] | None = (0.0, 1.0),
        normalization: Mapping | None = None,
        anti_aliasing: bool = True,
    ):
        self.roi_size = tuple(int(s) for s in ensure_tuple_rep(roi_size, SPATIAL_DIMS))
        if any(s < 1 for s in self.roi_size):
            raise ValueError(f"VolumeViewAugment: roi_size must be positive, got {list(self.roi_size)}")
        self.scale = _pair(scale, "VolumeViewAugment: scale", 0.0, 1.0)
        if self.scale[0] <= 0:
            raise ValueError(f"VolumeViewAugment: scale must be > 0, got {list(scale)}")
        if float(max_aspect) < 1:
            raise ValueError(f"VolumeViewAugment: max_aspect must be >= 1, got {max_aspect}")
        self.max_aspect = float(max_aspect)
        self.flip_prob = _probability(flip_prob, "VolumeViewAugment: flip_prob")
        self.flip_axes = tuple(int(a) for a in flip_axes)
        if any(not 0 <= a < SPATIAL_DIMS for a in self.flip_axes):
            raise ValueError(f"VolumeViewAugment: flip_axes must be spatial axes 0..2, got {list(flip_axes)}")
        for name, value in (("brightness", brightness), ("contrast", contrast)):
            if not 0 <= float(value) <= 1:
                raise ValueError(f"VolumeViewAugment: {name} must be in [0, 1], got {value}")
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.jitter_prob = _probability(jitter_prob, "VolumeViewAugment: jitter_prob")
        self.blur_prob = _probability(blur_prob, "VolumeViewAugment: blur_prob")
        self.blur_sigma = _pair(blur_sigma, "VolumeViewAugment: blur_sigma")
        self.solarize_prob = _probability(solarize_prob, "VolumeViewAugment: solarize_prob")
        self.value_range = None if value_range is None else _pair(
            value_range, "VolumeViewAugment: value_range", -math.inf)
        if self.value_range is None and self.solarize_prob > 0:
            raise ValueError("VolumeViewAugment: solarize needs the intensity range: set value_range (e.g. [0, 1])")
        if solarize_threshold is None and self.value_range is not None:
            solarize_threshold = sum(self.value_range) / 2
        self.solarize_threshold = None if solarize_threshold is None else float(solarize_threshold)
        self.mean, self.std = self._normalization(normalization)
        self.anti_aliasing = bool(anti_aliasing)
        self.last_draw: dict = {}

    @staticmethod
    def _normalization(normalization: Mapping | None) -> tuple[list[float] | None, list[float] | None]:
        if normalization is None:
            return None, None
        if not isinstance(normalization, Mapping) or set(normalization) != {"mean", "std"}:
            raise ValueError(
                f"VolumeViewAugment: normalization must be {{'mean': [...], 'std': [...]}}, got {normalization!r}")
        mean, std = (normalization[k] for k in ("mean", "std"))
        mean, std = ([float(v) for v in (x if isinstance(x, Sequence) else [x])] for x in (mean, std))
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(
                f"VolumeViewAugment: normalization needs as many means as stds and stds > 0, got {normalization!r}")
        return mean, std

    # ---- draws ----------------------------------------------------------------------------------
    def crop_box(self, shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Draw a crop box of a volume of spatial ``shape``: ``(start, size)`` per axis."""
        shape = tuple(int(s) for s in shape)
        s = _uniform(*self.scale)
        f = s ** (1.0 / len(shape))
        half = math.log(self.max_aspect) / 2
        rel = None
        for _ in range(CROP_TRIES):
            u = torch.empty(len(shape)).uniform_(-half, half) if half > 0 else torch.zeros(len(shape))
            cand = [f * float(a) for a in torch.exp(u - u.mean())]
            if all(c <= 1.0 for c in cand):
                rel = cand
                break
        if rel is None:  # keep the input's proportions: always fits, same fraction
            rel = [f] * len(shape)
        size = tuple(min(n, max(1, round(r * n))) for r, n in zip(rel, shape))
        start = tuple(int(torch.randint(0, n - k + 1, (1,))) for n, k in zip(shape, size))
        return start, size

    def _jitter(self, x: torch.Tensor) -> tuple[torch.Tensor, list]:
        steps = []
        for i in torch.randperm(2).tolist():  # random order, as ColorJitter
            if i == 0 and self.brightness > 0:
                f = _uniform(1 - self.brightness, 1 + self.brightness)
                x = self._clip(x * f)
                steps.append(("brightness", f))
            elif i == 1 and self.contrast > 0:
                f = _uniform(1 - self.contrast, 1 + self.contrast)
                mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
                x = self._clip(f * x + (1 - f) * mean)
                steps.append(("contrast", f))
        return x, steps

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.value_range is None else x.clamp(*self.value_range)

    @staticmethod
    def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Isotropic Gaussian blur of a channel-first volume (MONAI kernels truncated at 4 sigma and
        renormalised to sum 1, as torchvision's; replicated edges)."""
        kernel = gaussian_1d(torch.tensor(float(sigma)), truncated=4.0).to(x)
        kernel = kernel / kernel.sum()
        return separable_filtering(x[None], [kernel] * (x.dim() - 1), mode="replicate")[0]

    # ---- the view ---------------------------------------------------------------------------------
    def __call__(self, volume) -> torch.Tensor:
        x = convert_to_tensor(volume, track_meta=False, dtype=torch.float32)
        if x.dim() != SPATIAL_DIMS + 1:
            raise ValueError(f"VolumeViewAugment expects a channel-first (C, D, H, W) volume, got shape {tuple(x.shape)}")
        draw: dict = {}
        start, size = self.crop_box(x.shape[1:])
        draw["crop_start"], draw["crop_size"] = start, size
        x = x[(slice(None), *(slice(b, b + k) for b, k in zip(start, size)))]
        if tuple(x.shape[1:]) != self.roi_size:
            resize = Resize(self.roi_size, mode="trilinear", align_corners=False,
                            anti_aliasing=self.anti_aliasing and any(k > r for k, r in zip(size, self.roi_size)))
            x = convert_to_tensor(resize(x), track_meta=False)
        flips = [a for a, p in zip(self.flip_axes, torch.rand(len(self.flip_axes)).tolist()) if p < self.flip_prob]
        draw["flipped"] = tuple(flips)
        if flips:
            x = convert_to_tensor(Flip(spatial_axis=flips)(x), track_meta=False)
        draw["jitter"] = []
        if float(torch.rand(1)) < self.jitter_prob:
            x, draw["jitter"] = self._jitter(x)
        draw["blur_sigma"] = None
        if float(torch.rand(1)) < self.blur_prob:
            draw["blur_sigma"] = _uniform(*self.blur_sigma)
            x = self.blur(x, draw["blur_sigma"])
        draw["solarized"] = float(torch.rand(1)) < self.solarize_prob
        if draw["solarized"]:
            lo, hi = self.value_range
            x = torch.where(x >= self.solarize_threshold, lo + hi - x, x)
        if self.mean is not None:
            n = x.shape[0]
            if len(self.mean) not in (1, n):
                raise ValueError(f"VolumeViewAugment: normalization has {len(self.mean)} channels, the volume {n}")
            shape = (-1,) + (1,) * SPATIAL_DIMS
            x = (x - x.new_tensor(self.mean).view(shape)) / x.new_tensor(self.std).view(shape)
        self.last_draw = draw
        return x.contiguous()


class AsymmetricVolumeAugment(Sequence):
    """The per-view transforms of BYOL / MoCo v3 / Barlow Twins in 3D, the counterpart of the 2D
    :class:`~monai_ssl_ext.transforms.AsymmetricAugment`: one :class:`VolumeViewAugment` per view,
    equal but for the blur and solarize probabilities (``blur_probs = (1.0, 0.1)``,
    ``solarize_probs = (0.0, 0.2)``: Grill et al. 2020, Table 6, and the MoCo v3 / Barlow Twins
    code). Give it to ``MultiViewd(transform=...)``, which applies ``self[0]`` to the first view,
    ``self[1]`` to the second, and so on.

    Args:
        roi_size: output spatial size of every view.
        blur_probs: blur probability of each view (one entry per view).
        solarize_probs: solarize probability of each view (as many entries as ``blur_probs``).
        kwargs: every other :class:`VolumeViewAugment` argument, shared by the views.
    """

    def __init__(
        self,
        roi_size: int | Sequence[int],
        blur_probs: Sequence[float] = (1.0, 0.1),
        solarize_probs: Sequence[float] = (0.0, 0.2),
        **kwargs,
    ):
        blur_probs, solarize_probs = list(blur_probs), list(solarize_probs)
        if not blur_probs or len(blur_probs) != len(solarize_probs):
            raise ValueError(
                f"AsymmetricVolumeAugment: blur_probs and solarize_probs need one entry per view (the same number, "
                f"at least 1), got {blur_probs} and {solarize_probs}"
            )
        self.views = tuple(
            VolumeViewAugment(roi_size, blur_prob=b, solarize_prob=s, **kwargs) for b, s in zip(blur_probs, solarize_probs)
        )

    def __getitem__(self, index):
        return self.views[index]

    def __len__(self) -> int:
        return len(self.views)

    def __repr__(self) -> str:
        blur, solarize = [v.blur_prob for v in self], [v.solarize_prob for v in self]
        return f"AsymmetricVolumeAugment(blur_probs={blur}, solarize_probs={solarize})"
