"""BTCV-style demo data (abdominal CT with organ labels, MSD layout)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._draw import _smooth_noise
from ._scripts import REPO

__all__ = ["BTCV_DATALISTS", "BTCV_ORGANS", "btcv"]

#: BTCV labels (the MSD-style ``dataset_0.json``): organ -> (label value, mean HU, noise sd).
BTCV_ORGANS = {
    "spleen": (1, 45.0, 8.0),
    "rkid": (2, 150.0, 10.0),
    "lkid": (3, 150.0, 10.0),
    "liver": (6, 65.0, 8.0),
    "sto": (7, 10.0, 10.0),
    "aorta": (8, 220.0, 12.0),
}
#: The shipped datalists of the unetr_btcv bundle (their ids are the ones the demo writes).
BTCV_DATALISTS = REPO / "bundles" / "unetr_btcv" / "configs" / "datalists"


def _btcv_volume(rng: np.random.Generator, size: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic abdominal CT ``(image int16 HU, label uint8)``, both (size, size, depth), in the
    array order of the stored NIfTI (x runs to patient left, i.e. the ``-x`` RAS axis).

    Air (-1000 HU) around a body ellipse (fat/soft tissue, -100..40 HU) holding ellipsoidal
    organs with distinct HU: liver, spleen, kidneys, stomach, aorta (labels 6, 1, 2, 3, 7, 8).
    """
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in (size, size, depth)), indexing="ij")
    image = np.full(x.shape, -1000.0, np.float32)
    label = np.zeros(x.shape, np.uint8)
    body = (x / rng.uniform(0.82, 0.92)) ** 2 + (y / rng.uniform(0.62, 0.72)) ** 2 <= 1.0
    image[body] = rng.uniform(-110, -80) + 120 * _smooth_noise(rng, size, size, 3)[..., None].repeat(depth, 2)[body]

    def blob(cx, cy, cz, rx, ry, rz):
        c = np.array([cx, cy, cz]) + rng.uniform(-0.05, 0.05, 3)
        r = np.array([rx, ry, rz]) * rng.uniform(0.85, 1.15, 3)
        return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0

    # array x increases to the patient's left (affine -x): liver on the patient's right (low x)
    shapes = {
        "liver": blob(-0.4, 0.0, 0.25, 0.35, 0.4, 0.45),
        "spleen": blob(0.5, 0.25, 0.3, 0.17, 0.2, 0.25),
        "rkid": blob(-0.35, 0.4, -0.25, 0.13, 0.15, 0.3),
        "lkid": blob(0.35, 0.4, -0.25, 0.13, 0.15, 0.3),
        "sto": blob(0.25, -0.2, 0.35, 0.22, 0.18, 0.25),
        "aorta": blob(0.02, 0.25, 0.0, 0.07, 0.07, 0.95),
    }
    for organ, mask in shapes.items():
        value, hu, sd = BTCV_ORGANS[organ]
        mask = mask & body & (label == 0)
        label[mask] = value
        image[mask] = hu + rng.normal(0, sd, int(mask.sum()))
    image += rng.normal(0, 5, image.shape).astype(np.float32)
    return np.clip(np.rint(image), -1000, 1000).astype(np.int16), label


def _btcv_nifti(path: Path, arr: np.ndarray, pixdim: tuple) -> None:
    import nibabel as nib

    # scanner-like orientation (LPS-ish, as the BTCV RawData): -x, -y, +z, centred at the origin
    affine = np.diag([-float(pixdim[0]), -float(pixdim[1]), float(pixdim[2]), 1.0])
    affine[:3, 3] = [(n - 1) / 2 * abs(affine[i, i]) * (1 if i < 2 else -1) for i, n in enumerate(arr.shape)]
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def btcv(out_dir: str, size: int = 32, depth: int = 32, pixdim: tuple = (1.5, 1.5, 2.0), seed: int = 0) -> dict:
    """BTCV-style demo data in the MSD layout of the unetr_btcv bundle's shipped datalists::

        O/imagesTr/img00XX.nii.gz      int16 HU (-1000..1000), size x size x depth
        O/labelsTr/label00XX.nii.gz    uint8 labels (0 background, 1 spleen, 2/3 kidneys, 6 liver, 7 stomach, 8 aorta)
        O/imagesTs/img00YY.nii.gz      test images (no labels, as in BTCV)
        O/dataset_0.json, O/dataset_0_init_6.json, O/dataset_0_init_12.json   copies of the shipped datalists

    Every id the shipped datalists name is written (img0001-0010, 0021-0040 with labels,
    img0061-0080 test), with voxel size ``pixdim`` (mm) and a scanner-like (-x, -y, +z) affine.

    Returns:
        ``{"training": n_labelled, "test": n_test, "datalists": [...]}``.
    """
    import shutil

    if size < 16 or depth < 16:
        raise ValueError(f"need size, depth >= 16; got {size}, {depth}.")
    lists = sorted(BTCV_DATALISTS.glob("dataset_0*.json"))
    if not lists:
        raise FileNotFoundError(f"no BTCV datalists in {BTCV_DATALISTS}")
    labelled, test = {}, set()
    for path in lists:
        content = json.loads(path.read_text())
        for item in content["training"] + content["validation"]:
            labelled[item["image"]] = item["label"]
        test.update(item if isinstance(item, str) else item["image"] for item in content.get("test", []))
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for rel in sorted(labelled) + sorted(test):
        case = int("".join(ch for ch in Path(rel).name if ch.isdigit()))
        image, label = _btcv_volume(np.random.default_rng([seed, case]), size, depth)
        _btcv_nifti(out / rel, image, pixdim)
        if rel in labelled:
            _btcv_nifti(out / labelled[rel], label, pixdim)
    for path in lists:
        shutil.copyfile(path, out / path.name)
    return {"training": len(labelled), "test": len(test), "datalists": [p.name for p in lists]}
