"""ACDC-style demo data (short-axis cardiac cine MRI in the raw release layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._draw import _smooth_noise
from ._nifti import save_nifti
from ._scripts import script

__all__ = ["ACDC_GROUPS", "acdc", "demo_group"]

#: ACDC pathology groups: patients 1-20, 21-40, 41-60, 61-80, 81-100 in the real release.
ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")


def demo_group(pid: int) -> str:
    """The demo's group of patient ``pid``: consecutive pairs of patients share a group (1-2 DCM,
    3-4 HCM, 5-6 MINF, 7-8 NOR, 9-10 RV, 11-12 DCM, ...), so that a few demo patients span several
    groups with two patients each (the labelled list of byol_acdc's kNN monitor, left out one
    patient at a time). The images do not depend on the group."""
    return ACDC_GROUPS[((pid - 1) // 2) % len(ACDC_GROUPS)]


def _acdc_cine(
    rng: np.random.Generator, size: int, n_slices: int, n_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic short-axis cine: ``(image uint16, label uint8)``, both (size, size, S, T).

    A blurred background (0..~170) with a bright blob (LV blood pool, label 3), a ring around it
    (MYO, label 2) and a crescent beside it (RV, label 1). The cavities shrink from ED (frame 0)
    to ES (frame T // 2) and back, and from the base (slice 0) to the apex (last slice). Every
    labelled pixel has the structure's intensity (plus noise), so the labels match the drawing.
    """
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (np.array([h, w], np.float32) - 1) / 2 + rng.uniform(-0.06, 0.06, 2) * size
    r_lv0 = rng.uniform(0.13, 0.17) * size
    thick0 = rng.uniform(0.06, 0.08) * size
    rv_angle = np.pi + rng.uniform(-0.3, 0.3)  # RV on the (image) left of the LV
    r_rv0 = rng.uniform(0.17, 0.21) * size
    levels = {0: None, 1: rng.uniform(360, 430), 2: rng.uniform(200, 250), 3: rng.uniform(450, 530)}
    bg = 20 + 150 * (0.7 * _smooth_noise(rng, h, w, 4) + 0.3 * _smooth_noise(rng, h, w, max(4, size // 6)))
    image = np.empty((h, w, n_slices, n_frames), np.uint16)
    label = np.empty((h, w, n_slices, n_frames), np.uint8)
    for t in range(n_frames):
        squeeze = 1.0 - 0.3 * (1 - np.cos(2 * np.pi * t / n_frames)) / 2  # 1 at ED, 0.7 at ES
        for s in range(n_slices):
            apex = s / max(n_slices - 1, 1)  # 0 at the base, 1 at the apex
            r_lv = max(1.5, r_lv0 * squeeze * (1 - 0.45 * apex))
            r_out = r_lv + max(1.5, thick0 * (1 + 0.25 * (1 - squeeze)))
            r_rv = max(2.0, r_rv0 * (0.8 + 0.2 * squeeze) * (1 - 0.6 * apex))
            d_rv = r_out + 0.35 * r_rv
            ry, rx = cy + d_rv * np.sin(rv_angle), cx + d_rv * np.cos(rv_angle)
            d_lv = np.hypot(yy - cy, xx - cx)
            lab = np.zeros((h, w), np.uint8)
            lab[np.hypot(yy - ry, xx - rx) <= r_rv] = 1
            lab[d_lv <= r_out + 1.0] = 0  # a 1-pixel gap between RV and MYO
            lab[d_lv <= r_out] = 2
            lab[d_lv <= r_lv] = 3
            img = bg + rng.normal(0, 6, (h, w)).astype(np.float32)
            for k in (1, 2, 3):
                m = lab == k
                img[m] = levels[k] + rng.normal(0, 10, int(m.sum()))
            image[..., s, t] = np.clip(np.rint(img), 0, 650).astype(np.uint16)
            label[..., s, t] = lab
    return image, label




def acdc(
    out_dir: str, n_patients: int = 6, size: int = 48, n_slices: int = 4, n_frames: int = 6, seed: int = 0
) -> dict:
    """ACDC-style demo data (raw release layout), then ``prepare_acdc`` -> ``acdc_slices.json``.

    Writes, for patient ids 1..n_patients (so with ``n_patients >= 3`` every split of the
    published rule gets a patient: 1 -> test, 2 -> validation, 3.. -> train; 11 / 12 go to
    test / validation again)::

        O/training/patientXXX/Info.cfg                       ED: 1, ES: n_frames // 2 + 1, Group (demo_group), NbFrame, ...
        O/training/patientXXX/patientXXX_4d.nii.gz           uint16, size x size x n_slices x n_frames
        O/training/patientXXX/patientXXX_frameEE.nii.gz      the ED / ES frames of the cine volume
        O/training/patientXXX/patientXXX_frameEE_gt.nii.gz   uint8 labels 0 bg, 1 RV, 2 MYO, 3 LV
        O/acdc_slices.json                                   scripts/prepare_acdc.py output

    Pixel spacing 1.5 x 1.5 mm, 10 mm slices. Raw intensities reach ~600 (blood pools > 255).

    Returns:
        ``{"patient_ids": [...], "index": <json path>, "slices": {list: count}}``.
    """
    prepare_acdc = script("prepare_acdc").prepare_acdc

    if not 1 <= n_patients <= 100:
        raise ValueError(f"n_patients must be in 1..100 (ACDC training ids), got {n_patients}.")
    if size < 16 or n_slices < 1 or n_frames < 2:
        raise ValueError(f"need size >= 16, n_slices >= 1, n_frames >= 2; got {size}, {n_slices}, {n_frames}.")
    out = Path(out_dir)
    ids = list(range(1, n_patients + 1))
    ed, es = 1, n_frames // 2 + 1
    for pid in ids:
        rng = np.random.default_rng([seed, pid])
        name = f"patient{pid:03d}"
        pdir = out / "training" / name
        pdir.mkdir(parents=True, exist_ok=True)
        image, label = _acdc_cine(rng, size, n_slices, n_frames)
        height, weight = rng.uniform(150, 195), rng.uniform(50, 110)
        with open(pdir / "Info.cfg", "w", encoding="utf-8") as f:
            f.write(
                f"ED: {ed}\nES: {es}\nGroup: {demo_group(pid)}\nHeight: {height:.1f}\n"
                f"NbFrame: {n_frames}\nWeight: {weight:.1f}\n"
            )
        save_nifti(pdir / f"{name}_4d.nii.gz", image, (1.5, 1.5, 10.0, 1.0))
        for num in (ed, es):
            stem = pdir / f"{name}_frame{num:02d}"
            save_nifti(Path(f"{stem}.nii.gz"), np.ascontiguousarray(image[..., num - 1]), (1.5, 1.5, 10.0))
            save_nifti(Path(f"{stem}_gt.nii.gz"), np.ascontiguousarray(label[..., num - 1]), (1.5, 1.5, 10.0))
    index = out / "acdc_slices.json"
    content = prepare_acdc(out, index)
    counts = {k: len(content[k]) for k in ("pretrain", "training", "validation", "test")}
    return {"patient_ids": ids, "index": str(index), "slices": counts}
