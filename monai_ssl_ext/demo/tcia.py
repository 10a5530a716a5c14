"""TCIA-COVID19-style demo data (chest CT volumes) for the ViTAutoEnc SSL recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._nifti import save_nifti

__all__ = ["tcia"]


def _tcia_volume(rng: np.random.Generator, size: int) -> np.ndarray:
    """A chest-CT-like volume in HU (int16), axes (x, y, z): air outside, a soft-tissue body ellipse
    with a fat rim and a bright spine, two low-density lungs with a few denser nodules, noise."""
    n = size
    g = (np.arange(n, dtype=np.float32) - (n - 1) / 2) / (n / 2)
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    ax, ay = rng.uniform(0.75, 0.9), rng.uniform(0.55, 0.7)
    vol = np.full((n, n, n), -1000.0, dtype=np.float32)
    ell = (x / ax) ** 2 + ((y - 0.05) / ay) ** 2
    body = ell <= 1.0
    vol[body] = rng.uniform(20, 60)
    vol[body & (ell >= 0.85)] = -100.0  # subcutaneous fat
    for side in (-1, 1):
        cx = side * ax * rng.uniform(0.4, 0.5)
        lung = ((x - cx) / (ax * 0.33)) ** 2 + ((y - 0.05) / (ay * 0.65)) ** 2 + (z / 0.85) ** 2 <= 1.0
        vol[lung & body] = rng.uniform(-880, -780)
        for _ in range(int(rng.integers(1, 4))):  # nodules / ground-glass opacities
            c = (cx + rng.uniform(-0.15, 0.15), rng.uniform(-0.2, 0.3), rng.uniform(-0.5, 0.5))
            r = rng.uniform(0.05, 0.12)
            blob = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= r * r
            vol[blob & lung] = rng.uniform(-500, 40)
    spine = (x / 0.12) ** 2 + ((y + ay * 0.6) / 0.12) ** 2 <= 1.0
    vol[spine & body] = rng.uniform(400, 900)
    vol += rng.normal(0, 15, vol.shape).astype(np.float32)
    return np.clip(np.rint(vol), -1024, 3071).astype(np.int16)


def tcia(out_dir: str, n_train: int = 4, n_val: int = 2, size: int = 48, spacing: float = 1.5, seed: int = 0) -> dict:
    """TCIA-COVID19-style demo data for the ViTAutoEnc SSL recipe (``vitautoenc_ct``)::

        O/data/volume-covid19-A-XXXX.nii.gz   int16 HU, size^3 voxels, spacing^3 mm, axes (x, y, z)
        O/dataset_split.json                  {"training": [{"image": "data/volume-covid19-A-0001.nii.gz"}, ...],
                                               "validation": [...]}  (the tutorial's format)

    Volumes 1..n_train are training, the next n_val validation.

    Returns:
        ``{"datalist": <json path>, "training": n_train, "validation": n_val}``.
    """
    if n_train < 1 or n_val < 1 or size < 16 or spacing <= 0:
        raise ValueError(f"need n_train, n_val >= 1, size >= 16, spacing > 0; got {n_train}, {n_val}, {size}, {spacing}.")
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    split: dict[str, list] = {"training": [], "validation": []}
    for i in range(1, n_train + n_val + 1):
        rel = f"data/volume-covid19-A-{i:04d}.nii.gz"
        save_nifti(out / rel, _tcia_volume(np.random.default_rng([seed, i]), size), (spacing, spacing, spacing))
        split["training" if i <= n_train else "validation"].append({"image": rel})
    index = out / "dataset_split.json"
    index.write_text(json.dumps(split, indent=2), encoding="utf-8")
    return {"datalist": str(index), "training": n_train, "validation": n_val}
