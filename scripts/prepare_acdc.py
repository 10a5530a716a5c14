"""Index the 2D slices of the ACDC training set (raw release layout) into one JSON file.

Usage::

    python scripts/prepare_acdc.py --data_dir /data/acdc [--out_file /data/acdc/acdc_slices.json]

Input (the original ACDC release)::

    <data_dir>/training/patientXXX/Info.cfg                 "ED: 1", "ES: 12", "Group: DCM", "NbFrame: 30", ...
    <data_dir>/training/patientXXX/patientXXX_4d.nii.gz     H x W x S x T cine volume
    <data_dir>/training/patientXXX/patientXXX_frameEE.nii.gz      ED and ES frames (EE = 2 digits, 1-based)
    <data_dir>/training/patientXXX/patientXXX_frameEE_gt.nii.gz   labels 0 bg, 1 RV, 2 MYO, 3 LV

Output (``<data_dir>/acdc_slices.json`` by default; paths relative to ``data_dir``)::

    {"split": {"train": [3, 4, ...], "validation": [2, 12, ...], "test": [1, 11, ...]},
     "pretrain":   [{"image": "training/patient003/patient003_4d.nii.gz", "frame": 0, "slice": 0, "patient": 3},
                    ...,
                    {"image": "training/patient003/patient003_frame01.nii.gz", "slice": 0, "patient": 3}, ...],
     "training":   [{"image": "training/patient003/patient003_frame01.nii.gz",
                     "label": "training/patient003/patient003_frame01_gt.nii.gz", "slice": 0, "patient": 3}, ...],
     "validation": [...], "test": [...],
     "intensity":  {"mean": 67.3, "std": 84.7, "n_voxels": ..., "patients": "train"}}

The split is SSL-MedSeg's patient-level split of the 100 ACDC training patients: test = patients
1, 11, ..., 91 (id % 10 == 1), validation = 2, 12, ..., 92 (id % 10 == 2), train = the other 80.
Only the patients present under ``training/`` are listed.

* ``pretrain`` (BYOL) = every slice of every frame of the 4D cine volume plus every slice of the
  labelled ED/ES frames, of the **train** patients only (as the published
  ``ACDCDatasetUnlabeleld(split="train")``; the ED/ES frames are thus listed twice, once inside
  the cine volume and once as their own file, as in the source). 3D items have no ``frame``.
  Order per patient: the cine volume slice-major (slice 0 frames 0..T-1, slice 1 ...; the
  source's ``reshape(H, W, -1)`` order), then the labelled frames.
* ``training`` / ``validation`` / ``test`` = every slice of the ED and ES labelled frames of the
  split's patients, ordered by patient, frame number, slice (the source's sorted-file order;
  1498 training slices on the real data).
* ``intensity`` = mean and (population) standard deviation of the raw intensities of every voxel
  of the train patients' labelled ED/ES frames (float64). The published values 67.27 / 84.66 were
  computed by the source over the labelled frames of every patient under its root (validation
  and test patients included); here only train patients are used, so there is no leakage, and
  the numbers differ slightly.

Shapes are read from the NIfTI headers only (no voxel data) except for the intensity statistics,
which read the train patients' labelled frames. Errors name the offending file or folder.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

#: Published SSL-MedSeg split rule (``data/acdc_dataset.py``) on ACDC patient ids 1..100.
NUM_PATIENTS = 100
TEST_PATIENTS = tuple(range(1, NUM_PATIENTS + 1, 10))  # 1, 11, ..., 91
VAL_PATIENTS = tuple(range(2, NUM_PATIENTS + 1, 10))  # 2, 12, ..., 92

#: Intensity statistics published by the source (labelled frames of all 100 patients).
PUBLISHED_MEAN = 67.27297657740893
PUBLISHED_STD = 84.6606962344396

DEFAULT_OUT_NAME = "acdc_slices.json"
_PATIENT_RE = re.compile(r"^patient(\d{3})$")


def split_of(patient: int) -> str:
    """``"test"`` for ids 1, 11, ..., ``"validation"`` for 2, 12, ..., ``"train"`` otherwise."""
    r = int(patient) % 10
    return "test" if r == 1 else "validation" if r == 2 else "train"


def read_info(cfg: str | os.PathLike) -> dict[str, Any]:
    """Parse ``Info.cfg`` (``key: value`` lines) -- ``ED``, ``ES``, ``NbFrame`` as ints."""
    cfg = Path(cfg)
    if not cfg.is_file():
        raise FileNotFoundError(f"ACDC patient info {str(cfg)!r} does not exist.")
    info: dict[str, Any] = {}
    for lineno, line in enumerate(cfg.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        if ":" not in line:
            raise ValueError(f"{cfg}, line {lineno}: expected 'key: value', got {line!r}.")
        key, value = (s.strip() for s in line.split(":", 1))
        info[key] = value
    for key in ("ED", "ES", "NbFrame"):
        if key in info:
            try:
                info[key] = int(float(info[key]))
            except ValueError:
                raise ValueError(f"{cfg}: {key} = {info[key]!r} is not an integer.") from None
    for key in ("ED", "ES"):
        if key not in info:
            raise ValueError(f"{cfg}: no '{key}:' line (keys: {sorted(info)}).")
        if info[key] < 1:
            raise ValueError(f"{cfg}: {key} = {info[key]} (frame numbers start at 1).")
    return info


def _header_shape(path: Path) -> tuple[int, ...]:
    """Shape from the NIfTI header (reads no voxel data); errors name the file."""
    import nibabel as nib

    if not path.is_file():
        raise FileNotFoundError(f"ACDC file {str(path)!r} does not exist.")
    try:
        return tuple(int(n) for n in nib.load(str(path)).header.get_data_shape())
    except Exception as e:
        raise ValueError(f"cannot read NIfTI header of {str(path)!r}: {type(e).__name__}: {e}") from e


def _voxels(path: Path):
    import nibabel as nib

    try:
        return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)
    except Exception as e:
        raise ValueError(f"cannot read NIfTI voxels of {str(path)!r}: {type(e).__name__}: {e}") from e


def scan_patient(patient_dir: str | os.PathLike) -> dict[str, Any]:
    """Check one ``patientXXX`` folder; returns ids, file names (relative to the folder) and shapes."""
    pdir = Path(patient_dir)
    m = _PATIENT_RE.match(pdir.name)
    if not m:
        raise ValueError(f"{str(pdir)!r} is not an ACDC patient folder (expected 'patientXXX').")
    pid = int(m.group(1))
    name = pdir.name
    info = read_info(pdir / "Info.cfg")
    cine = pdir / f"{name}_4d.nii.gz"
    cine_shape = _header_shape(cine)
    if len(cine_shape) != 4:
        raise ValueError(f"{str(cine)!r}: expected a 4D H x W x slices x frames volume, got shape {cine_shape}.")
    frames = []
    for phase in ("ED", "ES"):
        num = info[phase]
        if num > cine_shape[3]:
            raise ValueError(
                f"{str(pdir / 'Info.cfg')!r}: {phase} = {num} but {str(cine)!r} has {cine_shape[3]} frames."
            )
        if any(f["number"] == num for f in frames):
            continue  # ED == ES: list the frame once
        img = pdir / f"{name}_frame{num:02d}.nii.gz"
        lab = pdir / f"{name}_frame{num:02d}_gt.nii.gz"
        img_shape, lab_shape = _header_shape(img), _header_shape(lab)
        if len(img_shape) != 3:
            raise ValueError(f"{str(img)!r}: expected a 3D H x W x slices frame, got shape {img_shape}.")
        if lab_shape != img_shape:
            raise ValueError(
                f"{str(lab)!r}: label shape {lab_shape} does not match image {str(img)!r} shape {img_shape}."
            )
        frames.append({"phase": phase, "number": num, "image": img.name, "label": lab.name, "shape": img_shape})
    frames.sort(key=lambda f: f["number"])
    return {"patient": pid, "info": info, "cine": cine.name, "cine_shape": cine_shape, "frames": frames}


def _dumps(content: dict) -> str:
    """JSON with one list item per line (the real pretrain list has ~25k items)."""
    parts = []
    for key, value in content.items():
        if isinstance(value, list):
            body = ",\n".join("  " + json.dumps(v) for v in value)
            parts.append(f" {json.dumps(key)}: [\n{body}\n ]" if value else f" {json.dumps(key)}: []")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def prepare_acdc(data_dir: str | os.PathLike, out_file: str | os.PathLike | None = None) -> dict:
    """Scan ``<data_dir>/training/patientXXX/`` and write the slice index JSON.

    Args:
        data_dir: ACDC root holding ``training/`` (see the module docstring).
        out_file: output JSON; default ``<data_dir>/acdc_slices.json``. Paths in it are relative
            to ``data_dir`` (load with ``monai_ssl_ext.data.load_datalist(out_file, key,
            base_dir=data_dir)``).

    Returns:
        the JSON content (the dict written to ``out_file``).

    Raises:
        FileNotFoundError: ``data_dir/training`` is missing or has no patient folder, or a
            patient's ``Info.cfg`` / cine / frame / label file is missing (named).
        ValueError: a NIfTI file cannot be read, has the wrong number of dimensions, or an
            image / label shape mismatch (named).
    """
    root = Path(data_dir)
    train_dir = root / "training"
    if not train_dir.is_dir():
        raise FileNotFoundError(
            f"ACDC folder {str(train_dir)!r} does not exist (expected <data_dir>/training/patientXXX/)."
        )
    pdirs = sorted(p for p in train_dir.iterdir() if p.is_dir() and _PATIENT_RE.match(p.name))
    if not pdirs:
        raise FileNotFoundError(f"ACDC folder {str(train_dir)!r} has no patientXXX folders.")

    def rel(pdir: Path, name: str) -> str:
        return (pdir / name).relative_to(root).as_posix()

    split: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    lists: dict[str, list[dict]] = {"pretrain": [], "training": [], "validation": [], "test": []}
    list_of = {"train": "training", "validation": "validation", "test": "test"}
    count, mean, m2 = 0, 0.0, 0.0  # running intensity statistics (float64)
    for pdir in pdirs:
        p = scan_patient(pdir)
        pid = p["patient"]
        sp = split_of(pid)
        split[sp].append(pid)
        labelled = lists[list_of[sp]]
        for f in p["frames"]:
            img, lab = rel(pdir, f["image"]), rel(pdir, f["label"])
            labelled.extend(
                {"image": img, "label": lab, "slice": s, "patient": pid} for s in range(f["shape"][2])
            )
        if sp != "train":
            continue
        cine = rel(pdir, p["cine"])
        n_slices, n_frames = p["cine_shape"][2], p["cine_shape"][3]
        lists["pretrain"].extend(
            {"image": cine, "frame": t, "slice": s, "patient": pid} for s in range(n_slices) for t in range(n_frames)
        )
        for f in p["frames"]:
            img = rel(pdir, f["image"])
            lists["pretrain"].extend({"image": img, "slice": s, "patient": pid} for s in range(f["shape"][2]))
            # merge this volume's mean / sum of squared deviations (Chan et al.), float64
            vox = _voxels(pdir / f["image"]).ravel()
            if vox.size == 0:
                continue
            n_b, mean_b = vox.size, float(vox.mean())
            m2_b = float(np.square(vox - mean_b).sum())
            delta = mean_b - mean
            n_ab = count + n_b
            mean += delta * n_b / n_ab
            m2 += m2_b + delta * delta * count * n_b / n_ab
            count = n_ab
    intensity: dict[str, Any]
    if count:
        std = math.sqrt(m2 / count)  # population std (numpy's default, as the source)
        intensity = {"mean": float(mean), "std": float(std), "n_voxels": int(count), "patients": "train"}
    else:
        intensity = {"mean": None, "std": None, "n_voxels": 0, "patients": "train"}
    content = {"split": split, **lists, "intensity": intensity}
    out = Path(out_file) if out_file is not None else root / DEFAULT_OUT_NAME
    from monai_ssl_ext.io import atomic_write_text

    atomic_write_text(out, _dumps(content))
    return content


def main(data_dir: str, out_file: str | None = None) -> None:
    """CLI: write the index and print the counts."""
    content = prepare_acdc(data_dir, out_file)
    out = out_file or os.path.join(data_dir, DEFAULT_OUT_NAME)
    print(f"wrote {out}")
    for key in ("train", "validation", "test"):
        print(f"  {key}: {len(content['split'][key])} patients")
    for key in ("pretrain", "training", "validation", "test"):
        print(f"  {key}: {len(content[key])} slices")
    it = content["intensity"]
    if it["mean"] is not None:
        print(
            f"  intensity (train labelled frames): mean {it['mean']:.2f}, std {it['std']:.2f} "
            f"(published, all patients: {PUBLISHED_MEAN:.2f} / {PUBLISHED_STD:.2f})"
        )


if __name__ == "__main__":
    import fire

    fire.Fire(main)
