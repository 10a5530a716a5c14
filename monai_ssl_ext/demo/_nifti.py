"""Writing demo NIfTI volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_nifti(path: Path, arr: np.ndarray, pixdim: tuple) -> None:
    import nibabel as nib

    affine = np.diag([float(pixdim[0]), float(pixdim[1]), float(pixdim[2]), 1.0])
    img = nib.Nifti1Image(arr, affine)
    img.header.set_zooms(tuple(float(z) for z in pixdim[: arr.ndim]))
    img.header.set_xyzt_units("mm", "msec")
    nib.save(img, str(path))
