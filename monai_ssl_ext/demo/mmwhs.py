"""MMWHS-style demo data (whole-heart CT in the challenge's release naming) for bundle ``unet_mmwhs``.

Writes the raw layout and, through :func:`monai_ssl_ext.mmwhs.prepare_mmwhs`, the prepared one::

    O/ct_train/ct_train_<id>_image.nii.gz    int16 CT-like volume, size x size x depth (HU-like values)
    O/ct_train/ct_train_<id>_label.nii.gz    uint16 MMWHS label values {0, 205, 420, 500, 550, 600, 820, 850}
    O/ct/images/ct_train_<id>_frame_<d>.png  prepared slices (uint8)
    O/ct/labels/ct_train_<id>_frame_<d>.png  prepared class maps 0..7
    O/mmwhs_ct.json                          split, slice lists (scripts/prepare_mmwhs.py output)

Patients: ids of the source's fixed split, by default 1001 and 1003 (train), 1004 (validation) and
1002 (test). Each volume holds all seven structures as ellipsoids at jittered positions, each with
its own mean intensity (plus noise), over a soft-tissue background: myocardium (205) is a shell
around the left-ventricle cavity (500), the left atrium (420) a smaller blob behind it, the right
atrium (550) and ventricle (600) beside them, the aorta (820) and pulmonary artery (850) tubes along
the slice axis. The first and last quarter of the slices hold no structure (background-only slices for the
training sample). Deterministic by seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..mmwhs import MMWHS_SPLIT, prepare_mmwhs
from ._nifti import save_nifti

__all__ = ["DEMO_MMWHS_IDS", "mmwhs", "mmwhs_volume"]

#: default demo patients: two train, one validation, one test id of the fixed split
DEMO_MMWHS_IDS = (1001, 1003, 1004, 1002)

#: label value -> mean intensity (HU-like)
_INTENSITY = {205: 150.0, 420: 600.0, 500: 450.0, 550: 300.0, 600: 380.0, 820: 700.0, 850: 520.0}


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def mmwhs_volume(rng: np.random.Generator, size: int = 64, depth: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic volume: ``(image int16, label uint16)``, both ``(size, size, depth)``, with all
    seven MMWHS structures on the middle slices and none on the first and last quarter (depth // 4 each)."""
    shape = (size, size, depth)
    s, z = size / 64.0, (depth - 1) / 2.0
    j = lambda: rng.uniform(-2, 2) * s  # noqa: E731
    rz = max(depth / 2.0 - 1.5, 1.0)
    label = np.zeros(shape, np.uint16)
    lv_c = (30 * s + j(), 36 * s + j(), z)
    # order matters: later structures overwrite earlier ones
    label[_ellipsoid(shape, lv_c, (12 * s, 11 * s, rz))] = 205            # myocardium shell
    label[_ellipsoid(shape, lv_c, (8 * s, 7 * s, rz))] = 500              # LV cavity inside it
    label[_ellipsoid(shape, (16 * s + j(), 46 * s + j(), z), (6 * s, 7 * s, rz * 0.8))] = 420   # left atrium
    label[_ellipsoid(shape, (44 * s + j(), 20 * s + j(), z), (7 * s, 6 * s, rz * 0.8))] = 550   # right atrium
    label[_ellipsoid(shape, (48 * s + j(), 40 * s + j(), z), (6 * s, 9 * s, rz))] = 600         # right ventricle
    label[_ellipsoid(shape, (16 * s + j(), 22 * s + j(), z), (4 * s, 4 * s, rz * 1.2))] = 820   # aorta
    label[_ellipsoid(shape, (10 * s + j(), 34 * s + j(), z), (3 * s, 4 * s, rz * 1.2))] = 850   # pulmonary artery
    q = depth // 4
    label[:, :, :q] = 0
    label[:, :, depth - q:] = 0
    image = rng.normal(-50.0, 20.0, shape)  # soft tissue
    image[:2] = -900.0  # air band at the top rows (the percentile clip has something to clip)
    for value, mean in _INTENSITY.items():
        m = label == value
        image[m] = rng.normal(mean, 15.0, int(m.sum()))
    return np.round(image).astype(np.int16), label


def mmwhs(out_dir: str, ids=DEMO_MMWHS_IDS, size: int = 64, depth: int = 12, seed: int = 0) -> dict:
    """MMWHS-style demo CT volumes (module docstring) for the split's patient ``ids``, prepared with
    :func:`~monai_ssl_ext.mmwhs.prepare_mmwhs` (``seed`` also draws its background-only slices).

    Returns:
        ``{"patient_ids": [...], "index": <json path>, "slices": {list: count}}``.
    """
    ids = [int(i) for i in ids]
    known = {i for v in MMWHS_SPLIT.values() for i in v}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(f"mmwhs demo: ids {unknown} are in no split of the fixed MMWHS split {MMWHS_SPLIT}.")
    if size < 32 or depth < 4:
        raise ValueError(f"mmwhs demo: need size >= 32 and depth >= 4, got {size}, {depth}.")
    out = Path(out_dir)
    raw = out / "ct_train"
    raw.mkdir(parents=True, exist_ok=True)
    for pid in ids:
        image, label = mmwhs_volume(np.random.default_rng([seed, pid]), size, depth)
        save_nifti(raw / f"ct_train_{pid}_image.nii.gz", image, (0.4, 0.4, 1.0))
        save_nifti(raw / f"ct_train_{pid}_label.nii.gz", label, (0.4, 0.4, 1.0))
    summary = prepare_mmwhs(out, out, modalities="ct", seed=seed)["ct"]
    return {"patient_ids": ids, "index": summary["datalist"],
            "slices": {k: v for k, v in summary.items() if k != "datalist"}}
