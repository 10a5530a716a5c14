"""Demo data of the joint 2D-3D SSL recipe's pretraining layouts (SPEC E.1, E.3): a few synthetic
volumes of four datasets, sliced by :func:`monai_ssl_ext.mmwhs.write_slice_folders`::

    O/raw/<Dataset>/<dataset>_<k>.nii.gz          the synthetic volumes (size x size x depth)
    O/{train,valid,test}/<Dataset>/<stem>_frame_<d>.png   mixed 2D SSL slices (read_slice_folders(O, split))
    O/training_data_3D/<Dataset>/<stem>.npy       H x W x D float32 in [0, 1] (write_volume_arrays)

Datasets: BraTS2018, LUNA2016, LiTS2017 and MSD_Heart (the source's sample data), each volume a
dataset-specific scene (a few bright or dark ellipsoids over a smooth background whose texture and
intensity range differ per dataset), so that slices of different datasets look different. Each
dataset's volumes are split at volume level (default 4 volumes: 2 train, 1 valid, 1 test).
Deterministic by seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..mmwhs import write_slice_folders, write_volume_arrays
from ._draw import _smooth_noise
from ._nifti import save_nifti

__all__ = ["SSL_DEMO_DATASETS", "ssl_slices"]

#: dataset -> (background level, blob level, number of blobs), in the dataset's own intensity units
SSL_DEMO_DATASETS = {
    "BraTS2018": (200.0, 900.0, 3),
    "LUNA2016": (-800.0, 40.0, 5),
    "LiTS2017": (60.0, 160.0, 2),
    "MSD_Heart": (300.0, 1200.0, 4),
}


def _volume(rng: np.random.Generator, size: int, depth: int, background: float, blob: float, n: int) -> np.ndarray:
    shape = (size, size, depth)
    vol = background + 0.15 * abs(blob - background) * np.stack(
        [_smooth_noise(rng, size, size, 4) for _ in range(depth)], axis=-1)
    grid = np.ogrid[0:size, 0:size, 0:depth]
    for _ in range(n):
        c = rng.uniform([0.2 * size, 0.2 * size, 0], [0.8 * size, 0.8 * size, depth - 1])
        r = rng.uniform([0.06 * size, 0.06 * size, 1.5], [0.18 * size, 0.18 * size, depth / 2])
        inside = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1.0
        vol[inside] = blob * rng.uniform(0.8, 1.2)
    vol += rng.normal(0.0, 0.03 * abs(blob - background), shape)
    return vol.astype(np.float32)


def ssl_slices(out_dir: str, n_volumes: int = 4, size: int = 64, depth: int = 8,
               fractions=(0.5, 0.25, 0.25), seed: int = 0) -> dict:
    """The mixed 2D SSL layout and the 3D ``.npy`` layout of ``n_volumes`` synthetic volumes per
    dataset (module docstring).

    Returns:
        ``{"slices": {split: {dataset: n}}, "volumes": {dataset: n}, "training_data_3D": <folder>}``.
    """
    if n_volumes < 3 or size < 16 or depth < 2:
        raise ValueError(f"ssl_slices demo: need n_volumes >= 3 (one per split), size >= 16, depth >= 2; "
                         f"got {n_volumes}, {size}, {depth}.")
    out = Path(out_dir)
    volumes = {}
    for k, (name, (bg, blob, n)) in enumerate(SSL_DEMO_DATASETS.items()):
        folder = out / "raw" / name
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(n_volumes):
            vol = _volume(np.random.default_rng([seed, k, i]), size, depth, bg, blob, n)
            path = folder / f"{name.lower()}_{i:03d}.nii.gz"
            save_nifti(path, vol, (1.0, 1.0, 2.0))
            paths.append(path)
        volumes[name] = paths
    slices = write_slice_folders(volumes, out, fractions=fractions, seed=seed)
    arrays = write_volume_arrays(volumes, out / "training_data_3D")
    return {"slices": slices, "volumes": arrays, "training_data_3D": str(out / "training_data_3D")}
