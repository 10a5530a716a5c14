"""Views of the joint 2D-3D SSL method (SPEC E.3): volumes read as ``1 x D x H x W`` slice stacks, and two views per
volume, each made by ONE randomly chosen transform, the two chosen transforms distinct.

* :class:`LoadSliceStackd` reads a volume from ``.npy`` (``H x W x D``, the source's ``training_data_3D`` layout,
  pre-normalised to [0, 1]) or NIfTI (``.nii`` / ``.nii.gz``, stored voxel axes ``H x W x D``, mapped to [0, 1] by the
  source's per-volume preparation :func:`monai_ssl_ext.mmwhs.normalize_intensity`) and returns it channel-first with
  the slices first: ``(1, D, H, W)``, i.e. voxel ``(h, w, d)`` of the file is ``out[0, d, h, w]`` (the source's
  ``permute((2, 0, 1))``).
* :class:`OneOfDistinctViewsd` makes ``n_views`` views, drawing ``n_views`` *distinct* transforms without replacement
  for every item (the source's ``random.sample(range(len(augment)), 2)``).
* :func:`torchio_default_views` is the source's list, TorchIO 0.19's seven random transforms at their default
  parameters, made of MONAI transforms (TorchIO's axes are the tensor's spatial axes, here ``(D, H, W)``):

  ==========  ===============================================  ==================================================
  name        TorchIO default                                   here
  ==========  ===============================================  ==================================================
  flip        ``RandomFlip(axes=0, flip_probability=0.5)``:    ``RandFlip(prob=0.5, spatial_axis=0)``
              the slice axis D
  affine      ``RandomAffine(scales=0.1, degrees=10)``:         ``RandAffine(prob=1, scale_range=0.1 per axis,
              s_i ~ U(0.9, 1.1), angles ~ U(-10, 10) deg,      rotate_range=10 deg per axis, bilinear, zeros)``:
              about the centre, linear, pad = image minimum    pad 0, the minimum of a [0, 1] volume that has 0
  anisotropy  ``RandomAnisotropy(axes=(0, 1, 2),                :class:`RandAnisotropy` (MONAI ``Resize``: nearest
              downsampling=(1.5, 5))``: one axis, nearest      down along one axis by m ~ U(1.5, 5), trilinear
              down, linear back up                             back up)
  noise       ``RandomNoise(mean=0, std=(0, 0.25))``           ``RandGaussianNoise(prob=1, std=0.25,
                                                                sample_std=True)``: sigma ~ U(0, 0.25)
  blur        ``RandomBlur(std=(0, 2))`` mm, per axis           ``RandGaussianSmooth(sigma_{x,y,z}=(0, 2))`` voxels
                                                                (the npy grid has unit spacing for TorchIO too)
  bias        ``RandomBiasField(coefficients=0.5, order=3)``:   ``RandBiasField(degree=3, coeff_range=(-0.5, 0.5))``:
              exp of a degree-3 monomial polynomial            exp of a degree-3 Legendre polynomial
  gamma       ``RandomGamma(log_gamma=(-0.3, 0.3))``:           ``RandAdjustContrast(gamma=(e^-0.3, e^0.3))``:
              x^gamma, gamma = e^U(-0.3, 0.3)                   gamma ~ U(0.741, 1.350), applied to the min-max
                                                                rescaled volume (the same on a [0, 1] volume)
  ==========  ===============================================  ==================================================

Randomness: every random draw derives from torch's global generator (as the other view presets of this package):
the choice of transforms, and a fresh seed for each chosen MONAI transform's own generator at every call. So
``set_determinism`` seeds it, :class:`~monai_ssl_ext.handlers.RNGState` saves it, and every DataLoader worker draws
different views (torch reseeds it per worker; a MONAI generator nested here would not be reached by the worker
seeding). :class:`OneOfDistinctViewsd` carries MONAI's ``RandomizableTrait``: a ``CacheDataset`` caches only what
comes before it, so the views are drawn anew at every read (the source cached each item's first views in its
dataset, which froze them with ``num_workers=0``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (MapTransform, RandAdjustContrast, RandAffine, RandBiasField, RandFlip, RandGaussianNoise,
                              RandGaussianSmooth, Randomizable, Resize, Transform)
from monai.transforms.traits import RandomizableTrait

from .multiview import view_keys

__all__ = ["LoadSliceStackd", "OneOfDistinctViewsd", "RandAnisotropy", "read_slice_stack", "torchio_default_views",
           "VOLUME_SUFFIXES"]

VOLUME_SUFFIXES = (".npy", ".nii", ".nii.gz")


def _suffix(path: str) -> str | None:
    low = path.lower()
    return next((s for s in VOLUME_SUFFIXES if low.endswith(s)), None)


def read_slice_stack(path: str | os.PathLike, nifti_intensity: bool = True) -> torch.Tensor:
    """The volume of ``path`` as float32 ``(1, D, H, W)`` (see the module docstring): a ``.npy`` array ``H x W x D``
    as stored, a NIfTI volume ``H x W x D`` (stored voxel axes) mapped to [0, 1] by the source's preparation when
    ``nifti_intensity``.

    Raises:
        FileNotFoundError: the file does not exist (named).
        ValueError: another file type, or not a 3D array (file and shape named).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"volume file not found: {path}")
    kind = _suffix(path)
    if kind is None:
        raise ValueError(f"{path}: expected a volume file {'/'.join(VOLUME_SUFFIXES)}")
    if kind == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:
            raise ValueError(f"cannot read volume {path}: {type(e).__name__}: {e}") from e
    else:
        from .volumes import LoadVolumed

        arr = np.asarray(LoadVolumed("image").load_volume(path)[0])
        if nifti_intensity:
            from ..mmwhs import normalize_intensity

            arr = normalize_intensity(arr, path)
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume H x W x D, got shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{path}: expected a real-valued volume, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(np.asarray(arr, dtype=np.float32).transpose(2, 0, 1)))[None]


class LoadSliceStackd(MapTransform):
    """Load the volume path under each key as a float32 ``(1, D, H, W)`` tensor with :func:`read_slice_stack`."""

    def __init__(self, keys: KeysCollection, nifti_intensity: bool = True, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.nifti_intensity = bool(nifti_intensity)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], torch.Tensor):
                raise TypeError(f"LoadSliceStackd: '{key}' is already a tensor, expected a volume path")
            d[key] = read_slice_stack(d[key], self.nifti_intensity)
        return d


class RandAnisotropy(Randomizable, Transform):
    """TorchIO's ``RandomAnisotropy`` with MONAI ``Resize``: along one axis drawn from ``axes`` (spatial axes of a
    channel-first volume), downsample by ``m ~ U(downsampling)`` with nearest-neighbour interpolation, then resize
    back to the input size with (tri)linear interpolation: an image acquired with ``m`` times the spacing along that
    axis. Applied with probability ``prob``."""

    def __init__(self, axes: Sequence[int] = (0, 1, 2), downsampling: Sequence[float] = (1.5, 5.0), prob: float = 1.0):
        axes = tuple(int(a) for a in axes)
        lo, hi = (float(v) for v in downsampling)
        if not axes or lo < 1.0 or hi < lo:
            raise ValueError(f"RandAnisotropy: need axes and 1 <= downsampling[0] <= downsampling[1], got {axes}, "
                             f"{downsampling}")
        self.axes, self.downsampling, self.prob = axes, (lo, hi), float(prob)
        self._axis, self._factor, self._do = axes[0], lo, False

    def randomize(self, data=None) -> None:
        self._do = self.R.rand() < self.prob
        self._axis = self.axes[self.R.randint(len(self.axes))]
        self._factor = self.R.uniform(*self.downsampling)

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        if not self._do:
            return img
        shape = tuple(int(s) for s in img.shape[1:])
        if not 0 <= self._axis < len(shape):
            raise ValueError(f"RandAnisotropy: axis {self._axis} of a volume with spatial shape {shape}")
        low = list(shape)
        low[self._axis] = max(1, int(round(shape[self._axis] / self._factor)))
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
        down = Resize(low, mode="nearest")(img)
        return Resize(shape, mode=mode, align_corners=False)(down)


def torchio_default_views() -> dict[str, Callable]:
    """The source's seven TorchIO transforms at their defaults, as MONAI transforms on ``(C, D, H, W)`` volumes
    (the table in the module docstring), by name, in the source's order."""
    deg = math.radians(10.0)
    return {
        "flip": RandFlip(prob=0.5, spatial_axis=0),
        "affine": RandAffine(prob=1.0, rotate_range=(deg, deg, deg), scale_range=(0.1, 0.1, 0.1), mode="bilinear",
                             padding_mode="zeros"),
        "anisotropy": RandAnisotropy(axes=(0, 1, 2), downsampling=(1.5, 5.0)),
        "noise": RandGaussianNoise(prob=1.0, mean=0.0, std=0.25, sample_std=True),
        "blur": RandGaussianSmooth(sigma_x=(0.0, 2.0), sigma_y=(0.0, 2.0), sigma_z=(0.0, 2.0), prob=1.0),
        "bias_field": RandBiasField(degree=3, coeff_range=(-0.5, 0.5), prob=1.0),
        "gamma": RandAdjustContrast(prob=1.0, gamma=(math.exp(-0.3), math.exp(0.3))),
    }


class OneOfDistinctViewsd(MapTransform, RandomizableTrait):
    """``n_views`` views of each key, each made by ONE transform of ``transforms``, the ``n_views`` transforms drawn
    without replacement for every item (so two views never use the same transform). The views are stored as
    ``key``, ``key_2``, ... (:func:`~monai_ssl_ext.transforms.view_keys`).

    All randomness comes from torch's global generator (module docstring): the choice, and a seed given to each
    chosen MONAI ``Randomizable`` transform before it runs.

    Args:
        keys: keys of the volumes.
        transforms: the candidate transforms, a ``{name: transform}`` mapping or a sequence (at least ``n_views``).
        n_views: number of views (2).
    """

    def __init__(self, keys: KeysCollection, transforms: Mapping[str, Callable] | Sequence[Callable],
                 n_views: int = 2, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        items = list(transforms.items()) if isinstance(transforms, Mapping) else \
            [(f"transform_{i}", t) for i, t in enumerate(transforms)]
        self.names = [str(n) for n, _ in items]
        self.transforms = [t for _, t in items]
        self.n_views = int(n_views)
        if self.n_views < 1 or len(self.transforms) < self.n_views:
            raise ValueError(f"OneOfDistinctViewsd: {len(self.transforms)} transforms cannot make {self.n_views} "
                             "views with distinct transforms")
        bad = [n for n, t in items if not callable(t)]
        if bad:
            raise TypeError(f"OneOfDistinctViewsd: transforms {bad} are not callable")
        for i, t in enumerate(self.transforms):  # own generators from the start (reseeded before every use), so a
            if isinstance(t, Randomizable):       # checkpoint's RNGState finds as many before and after a resume
                t.set_random_state(seed=i)

    def choose(self) -> list[int]:
        """Indices of the ``n_views`` distinct transforms of one item (torch's global generator)."""
        return torch.randperm(len(self.transforms))[: self.n_views].tolist()

    def _apply(self, index: int, image):
        t = self.transforms[index]
        if isinstance(t, Randomizable):
            t.set_random_state(seed=int(torch.randint(0, 2**31 - 1, ()).item()))
        return t(image)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            for name, index in zip(view_keys(str(key), self.n_views), self.choose()):
                view = image.clone() if isinstance(image, torch.Tensor) else np.array(image, copy=True)
                d[name] = self._apply(index, view)
        return d
