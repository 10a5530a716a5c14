"""MMWHS preparation and the slice layouts of the joint 2D-3D SSL recipe (SPEC E), in one place.

One intensity normalisation (:func:`normalize_intensity`, the source's ``preprocessing/mmwhs_ct.py``)
and one slicer (:func:`volume_slices`) serve three layouts:

* **MMWHS downstream** (:func:`prepare_mmwhs`, ``scripts/prepare_mmwhs.py``; bundle ``unet_mmwhs``)::

      <data_dir>/**/<mod>_train_<id>_image.nii.gz, <mod>_train_<id>_label.nii.gz   raw MMWHS (mod: ct, mr)
      <out_dir>/<mod>/images/<mod>_train_<id>_frame_<d>.png   uint8 slice d (last axis) of the image
      <out_dir>/<mod>/labels/<mod>_train_<id>_frame_<d>.png   uint8 class map 0..7 of the same slice
      <out_dir>/mmwhs_<mod>.json                             split, slice lists, volume lists

  Labels {205, 420, 500, 550, 600, 820, 850} become classes 1..7 (:data:`MMWHS_LABELS`; class 2 =
  left atrium blood cavity, the recipe's reported class). Every label volume keeps its 8 classes;
  an unknown value is an error (the source collapsed them to binary unless its ``--dataset`` name started
  with "las", so for ``mmwhs_ct`` / ``mmwhs_mri`` its class-2 Dice was trivially 1).

* **Mixed 2D SSL** (:func:`write_slice_folders`, ``scripts/prepare_ssl_slices.py``): the source's
  ``training_data_2D/{train,valid,test}/<Dataset>/*.png`` (SPEC E.1), read back by
  :func:`monai_ssl_ext.data.read_slice_folders`.
* **3D SSL** (:func:`write_volume_arrays`): ``training_data_3D/<Dataset>/<stem>.npy``, H×W×D float32
  in [0, 1] (SPEC E.3; pre-normalised, the same map as the PNG slices before quantisation).

Orientation: the stored voxel axes, no reorientation; slice ``d`` is ``volume[:, :, d]`` and its PNG
row ``i`` / column ``j`` are the volume's first / second axis (no transpose, no flip), as the
source's ``skimage.io.imsave`` of ``volume[:, :, d]``.

Also here: the recipe's metrics (:class:`SliceScore`, :class:`VolumeScore`: one class's 2D Dice /
IoU per slice and its 3D IoU per volume, slices grouped by the name before ``_frame_``) and the
transforms of the bundle's volume inference (:class:`MMWHSIntensityd`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .metrics import scores_from_confusion_matrix, segmentation_confusion_matrix
from .transforms.slices import read_volume

__all__ = [
    "EVAL_CLASS",
    "MMWHS_CLASS_NAMES",
    "MMWHS_LABELS",
    "MMWHS_SPLIT",
    "SSL_SPLITS",
    "MMWHSIntensityd",
    "SliceScore",
    "VolumeScore",
    "balanced_training_slices",
    "find_volumes",
    "map_labels",
    "mmwhs_split_of",
    "normalize_intensity",
    "prepare_mmwhs",
    "prepare_ssl_slices",
    "slice_name",
    "slice_volume_output",
    "to_uint8",
    "volume_of",
    "volume_slices",
    "volume_stem",
    "write_png",
    "write_slice_folders",
    "write_volume_arrays",
]

logger = logging.getLogger("monai_ssl_ext.mmwhs")

#: MMWHS label value -> class index (SPEC E.5); 0 stays background.
MMWHS_LABELS: dict[int, int] = {205: 1, 420: 2, 500: 3, 550: 4, 600: 5, 820: 6, 850: 7}
#: class index -> structure (the MMWHS challenge's label definitions).
MMWHS_CLASS_NAMES: dict[int, str] = {
    0: "background", 1: "left ventricle myocardium", 2: "left atrium blood cavity", 3: "left ventricle blood cavity",
    4: "right atrium blood cavity", 5: "right ventricle blood cavity", 6: "ascending aorta", 7: "pulmonary artery",
}
#: the class the source evaluates and reports (``eval_class=2``: left atrium blood cavity, label 420).
EVAL_CLASS = 2
#: the source's fixed patient split, the same for CT and MR.
MMWHS_SPLIT: dict[str, tuple[int, ...]] = {
    "train": (1001, 1003, 1005, 1006, 1008, 1009, 1011, 1014, 1015, 1016, 1017, 1018, 1020),
    "validation": (1004, 1007, 1013),
    "test": (1002, 1010, 1012, 1019),
}
#: split folders of the mixed 2D SSL layout (the source's VISSL ``ssl_2d`` names).
SSL_SPLITS = ("train", "valid", "test")

_NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_FRAME = "_frame_"


# ---- intensity and labels ----------------------------------------------------------------------

def normalize_intensity(volume: np.ndarray, source: str = "<volume>") -> np.ndarray:
    """The source's per-volume map to [0, 1] (float32): clip to the volume's [0.5, 99.5]
    percentiles, z-score (mean and std of the clipped volume), divide by 10, clip to [0, 1].

    Raises:
        ValueError: the clipped volume is constant (no z-score; names ``source``).
    """
    x = np.asarray(volume, dtype=np.float64)
    lo, hi = np.percentile(x, [0.5, 99.5])
    x = np.clip(x, lo, hi)
    std = float(x.std())
    if not np.isfinite(std) or std == 0.0:
        raise ValueError(f"{source}: the volume is constant after percentile clipping (std {std}); cannot z-score it.")
    x = (x - x.mean()) / std / 10.0
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] → uint8 by ``x × 255`` truncated (the source's ``(x * 255).astype(np.uint8)``)."""
    return (np.asarray(x, dtype=np.float64) * 255.0).astype(np.uint8)


def map_labels(label: np.ndarray, source: str = "<label>", label_aliases: Mapping | None = None) -> np.ndarray:
    """MMWHS label values → class indices (uint8): 0 → 0, :data:`MMWHS_LABELS` → 1..7.

    ``label_aliases`` maps further values onto MMWHS ones (e.g. ``{421: 420}`` for a label file with
    a stray value, decided by the user); nothing is aliased by default.

    Raises:
        ValueError: a value that is neither 0 nor an MMWHS label nor aliased (names ``source`` and the
            values with their voxel counts); the map never collapses classes.
    """
    arr = np.asarray(label)
    aliases = {int(k): int(v) for k, v in (label_aliases or {}).items()}
    bad_alias = {k: v for k, v in aliases.items() if v not in MMWHS_LABELS and v != 0}
    if bad_alias:
        raise ValueError(f"label_aliases {bad_alias}: targets must be 0 or MMWHS labels {sorted(MMWHS_LABELS)}.")
    if aliases:
        arr = arr.copy()
        for k, v in aliases.items():
            arr[arr == k] = v
    values, counts = np.unique(arr, return_counts=True)
    known = {0, *MMWHS_LABELS}
    bad = [(v, c) for v, c in zip(values.tolist(), counts.tolist()) if not (float(v).is_integer() and int(v) in known)]
    if bad:
        listed = ", ".join(f"{v:g} ({c} voxels)" for v, c in bad[:10])
        raise ValueError(
            f"{source}: unknown MMWHS label values {listed}; expected 0 or {sorted(MMWHS_LABELS)} "
            "(205 LV myocardium, 420 LA, 500 LV, 550 RA, 600 RV, 820 aorta, 850 pulmonary artery); "
            "map a stray value explicitly with label_aliases, e.g. {421: 420}, if that is what it means."
        )
    out = np.zeros(arr.shape, dtype=np.uint8)
    for value, cls in MMWHS_LABELS.items():
        out[arr == value] = cls
    return out


# ---- names, slicing, writing ---------------------------------------------------------------------

def volume_stem(path: str | os.PathLike) -> str:
    """File name without ``.nii`` / ``.nii.gz`` (``ct_train_1001_image.nii.gz`` → ``ct_train_1001_image``)."""
    return _NIFTI_RE.sub("", os.path.basename(os.fspath(path)))


def slice_name(stem: str, d: int, suffix: str = ".png") -> str:
    """``<stem>_frame_<d>.png``, the source's slice file name."""
    return f"{stem}{_FRAME}{int(d)}{suffix}"


def volume_of(path: str | os.PathLike) -> str:
    """The volume a slice file belongs to: its name before the last ``_frame_`` (the source's grouping)."""
    name = os.path.basename(os.fspath(path))
    head, sep, _ = name.rpartition(_FRAME)
    if not sep:
        raise ValueError(f"slice file {os.fspath(path)!r} has no '{_FRAME}<d>' in its name, so it names no volume.")
    return head


def volume_slices(volume: np.ndarray, source: str = "<volume>") -> list[np.ndarray]:
    """The 2D slices ``volume[:, :, d]`` along the last axis of a 3D array (no transpose, no flip).

    Raises:
        ValueError: the array is not 3D (names ``source`` and the shape).
    """
    if volume.ndim != 3:
        raise ValueError(f"{source}: expected a 3D volume (H x W x D), got shape {tuple(volume.shape)}.")
    return [volume[:, :, d] for d in range(volume.shape[2])]


def write_png(path: str | os.PathLike, arr: np.ndarray) -> None:
    """A 2D uint8 array as a grey PNG (row ``i`` of the array is row ``i`` of the picture)."""
    from PIL import Image

    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(f"write_png {os.fspath(path)!r}: expected a 2D uint8 array, got {arr.dtype} {arr.shape}.")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr), mode="L").save(os.fspath(path))


def _read_3d(path: str | os.PathLike) -> np.ndarray:
    arr, _ = read_volume(path)
    arr = np.asarray(arr)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{os.fspath(path)}: expected a 3D volume (H x W x D), got shape {tuple(arr.shape)}.")
    return arr


# ---- MMWHS -----------------------------------------------------------------------------------

def mmwhs_split_of(patient: int) -> str | None:
    """``"train"``, ``"validation"`` or ``"test"`` for the ids of :data:`MMWHS_SPLIT`; None otherwise."""
    for split, ids in MMWHS_SPLIT.items():
        if int(patient) in ids:
            return split
    return None


def balanced_training_slices(with_class: Sequence, without_class: Sequence, seed: int = 0) -> list:
    """The source's training sample (``mydataset.py``: its ``have_label*.txt`` lists every slice that shows the
    left atrium, ``non_label*.txt`` every other slice): every slice with the evaluated class plus as many slices
    without it, drawn at random without replacement (seeded; all of them when there are fewer; the source draws
    with replacement)."""
    n = min(len(with_class), len(without_class))
    if n < len(with_class):
        logger.warning(f"only {len(without_class)} slices without the left atrium for {len(with_class)} with it: "
                       "using all")
    return list(with_class) + random.Random(seed).sample(list(without_class), n)


def _mmwhs_pairs(data_dir: Path, modality: str) -> dict[int, tuple[Path, Path]]:
    pattern = re.compile(rf"^{re.escape(modality)}_train_(\d+)_image\.nii(\.gz)?$")
    pairs: dict[int, tuple[Path, Path]] = {}
    for img in sorted(data_dir.rglob(f"{modality}_train_*_image.nii*")):
        m = pattern.match(img.name)
        if not m:
            continue
        pid = int(m.group(1))
        label = img.with_name(img.name.replace("_image.nii", "_label.nii"))
        if not label.is_file():
            raise FileNotFoundError(f"MMWHS image {str(img)!r} has no label file {label.name!r} beside it.")
        if pid in pairs:
            raise ValueError(f"MMWHS patient {pid} ({modality}) found twice: {str(pairs[pid][0])!r} and {str(img)!r}.")
        pairs[pid] = (img, label)
    return pairs


def prepare_mmwhs(data_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                  modalities: Sequence[str] | str = ("ct",), seed: int = 0,
                  label_aliases: Mapping | None = None) -> dict[str, Any]:
    """Slice the MMWHS training volumes into the ``unet_mmwhs`` layout (module docstring) and write
    ``<out_dir>/mmwhs_<mod>.json`` per modality (paths relative to ``out_dir``)::

        {"split": {"train": [1001, ...], "validation": [...], "test": [...]},
         "classes": {"0": "background", ...}, "label_values": {"205": 1, ...}, "seed": 0,
         "training":          the source's sample: every train slice showing the left atrium + as many without,
         "training_la":       train slices showing the left atrium (class 2, the source's have_label list),
         "training_no_la":    the other train slices (the source's non_label list: background or other structures),
         "validation", "test":  every slice of the split's volumes,
         "training_volumes", "validation_volumes", "test_volumes": the raw {"image", "label"} NIfTI pairs}

    Slice items: ``{"image", "label", "volume": "<mod>_train_<id>", "slice": d, "patient": id}``.
    Only the patients of :data:`MMWHS_SPLIT` present under ``data_dir`` are used (others are skipped
    with a log line). ``seed`` draws the slices without left atrium of ``training``; ``label_aliases``
    as in :func:`map_labels` (none by default: an unknown value stops the preparation).

    Raises:
        FileNotFoundError: ``data_dir`` does not exist, holds no ``<mod>_train_<id>_image.nii.gz``, or
            an image has no label beside it (named).
        ValueError: an unknown label value (file and values named), image / label shapes differ, a
            constant volume, a non-3D volume.
    """
    data_dir = Path(os.path.expanduser(str(data_dir)))
    out = Path(os.path.expanduser(str(out_dir))) if out_dir is not None else data_dir
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MMWHS folder {str(data_dir)!r} does not exist.")
    mods = [modalities] if isinstance(modalities, str) else list(modalities)
    summary: dict[str, Any] = {}
    for mod in mods:
        pairs = _mmwhs_pairs(data_dir, mod)
        if not pairs:
            raise FileNotFoundError(
                f"no MMWHS volumes '{mod}_train_<id>_image.nii.gz' under {str(data_dir)!r} (modality {mod!r}).")
        lists: dict[str, list] = {k: [] for k in ("training_la", "training_no_la", "validation", "test")}
        volumes: dict[str, list] = {"training_volumes": [], "validation_volumes": [], "test_volumes": []}
        for pid, (img_path, lab_path) in sorted(pairs.items()):
            split = mmwhs_split_of(pid)
            if split is None:
                logger.info(f"MMWHS patient {pid} ({img_path.name}) is in no split: skipped")
                continue
            image = _read_3d(img_path)
            label = map_labels(_read_3d(lab_path), str(lab_path), label_aliases)
            if image.shape != label.shape:
                raise ValueError(f"MMWHS image {str(img_path)!r} {image.shape} and label {str(lab_path)!r} "
                                 f"{label.shape} differ in shape.")
            pixels = to_uint8(normalize_intensity(image, str(img_path)))
            stem = f"{mod}_train_{pid}"

            def rel(p: Path) -> str:
                return os.path.relpath(p, out)

            volumes[f"{split if split != 'train' else 'training'}_volumes"].append(
                {"image": rel(img_path), "label": rel(lab_path), "volume": stem, "patient": pid})
            for d, (img2d, lab2d) in enumerate(zip(volume_slices(pixels), volume_slices(label))):
                img_file = out / mod / "images" / slice_name(stem, d)
                lab_file = out / mod / "labels" / slice_name(stem, d)
                write_png(img_file, img2d)
                write_png(lab_file, lab2d)
                item = {"image": rel(img_file), "label": rel(lab_file), "volume": stem, "slice": d, "patient": pid}
                if split == "train":
                    lists["training_la" if (lab2d == EVAL_CLASS).any() else "training_no_la"].append(item)
                else:
                    lists[split].append(item)
        index = {
            "split": {k: [p for p in v if p in pairs] for k, v in MMWHS_SPLIT.items()},
            "classes": {str(k): v for k, v in MMWHS_CLASS_NAMES.items()},
            "label_values": {str(k): v for k, v in MMWHS_LABELS.items()},
            "seed": int(seed),
            "training": balanced_training_slices(lists["training_la"], lists["training_no_la"], seed),
            **lists,
            **volumes,
        }
        path = out / f"mmwhs_{mod}.json"
        path.write_text(json.dumps(index, indent=1))
        counts = {k: len(v) for k, v in index.items() if isinstance(v, list)}
        logger.info(f"MMWHS {mod}: {counts} -> {path}")
        summary[mod] = {"datalist": str(path), **counts}
    return summary


# ---- mixed 2D / 3D SSL layouts ---------------------------------------------------------------------

_LABEL_NAME_RE = re.compile(r"(_label|_labels|_seg|_gt|_mask)$", re.IGNORECASE)
#: label volumes named by a prefix (LiTS2017: ``segmentation-<n>.nii`` beside ``volume-<n>.nii``)
_LABEL_PREFIX_RE = re.compile(r"^(segmentation|label|labels|seg|mask)[-_]", re.IGNORECASE)


def find_volumes(folder: str | os.PathLike) -> list[Path]:
    """The image NIfTI files under ``folder`` (recursive, sorted), leaving out label files: any in a
    folder whose name starts with ``label`` (MSD ``labelsTr``), named ``*_label`` / ``_seg`` / ``_gt`` /
    ``_mask``, or named ``segmentation-*`` / ``label-*`` / ``seg-*`` / ``mask-*`` (LiTS2017's
    ``segmentation-<n>.nii``). Raises FileNotFoundError when there is none (folder named)."""
    folder = Path(folder)
    found = [
        p for p in sorted(folder.rglob("*.nii*"))
        if _NIFTI_RE.search(p.name) and not p.name.startswith(".")
        and not _LABEL_NAME_RE.search(volume_stem(p)) and not _LABEL_PREFIX_RE.match(p.name)
        and not any(part.lower().startswith("label") for part in p.relative_to(folder).parts[:-1])
    ]
    if not found:
        raise FileNotFoundError(f"no NIfTI image volumes (*.nii / *.nii.gz) under {str(folder)!r}.")
    return found


def _split_volumes(paths: Sequence, fractions: Sequence[float], seed: int) -> dict[str, list]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not sum(fractions) > 0:
        raise ValueError(f"fractions must be three non-negative (train, valid, test) shares, got {list(fractions)}.")
    order = list(paths)
    random.Random(seed).shuffle(order)
    total = float(sum(fractions))
    n_valid = int(round(len(order) * fractions[1] / total))
    n_test = int(round(len(order) * fractions[2] / total))
    n_train = len(order) - n_valid - n_test
    return {"train": sorted(order[:n_train]), "valid": sorted(order[n_train:n_train + n_valid]),
            "test": sorted(order[n_train + n_valid:])}


def write_slice_folders(datasets: Mapping[str, Sequence[str | os.PathLike]], out_dir: str | os.PathLike,
                        fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                        skip_blank: bool = True) -> dict[str, dict[str, int]]:
    """Slice NIfTI volumes of several datasets into the mixed 2D SSL layout
    ``<out_dir>/{train,valid,test}/<Dataset>/<stem>_frame_<d>.png`` (uint8,
    :func:`normalize_intensity` per volume, slices along the last axis).

    Each dataset's volumes are split at volume level (no volume in two splits), shuffled with
    ``seed``, in ``fractions`` (train, valid, test) rounded to whole volumes. ``skip_blank`` leaves
    out slices of one grey value (empty padding slices). Returns ``{split: {dataset: n_slices}}``.

    Raises:
        ValueError: no datasets, a dataset without volumes, a non-3D or constant volume (named).
    """
    if not datasets:
        raise ValueError("write_slice_folders: no datasets given.")
    out = Path(out_dir)
    counts: dict[str, dict[str, int]] = {s: {} for s in SSL_SPLITS}
    for name, paths in datasets.items():
        if not paths:
            raise ValueError(f"write_slice_folders: dataset {name!r} has no volumes.")
        for split, chosen in _split_volumes([os.fspath(p) for p in paths], fractions, seed).items():
            n = 0
            for path in chosen:
                pixels = to_uint8(normalize_intensity(_read_3d(path), path))
                stem = volume_stem(path)
                for d, img in enumerate(volume_slices(pixels, path)):
                    if skip_blank and img.min() == img.max():
                        continue
                    write_png(out / split / name / slice_name(stem, d), img)
                    n += 1
            counts[split][name] = n
    logger.info(f"mixed 2D SSL slices in {out}: {counts}")
    return counts


def write_volume_arrays(datasets: Mapping[str, Sequence[str | os.PathLike]],
                        out_dir: str | os.PathLike) -> dict[str, int]:
    """Write NIfTI volumes as ``<out_dir>/<Dataset>/<stem>.npy``: H×W×D float32 in [0, 1]
    (:func:`normalize_intensity`, stored axes), the source's ``training_data_3D`` layout (SPEC E.3).
    Returns ``{dataset: n_volumes}``."""
    out = Path(out_dir)
    counts = {}
    for name, paths in datasets.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for path in paths:
            np.save(folder / f"{volume_stem(path)}.npy", normalize_intensity(_read_3d(path), os.fspath(path)))
        counts[name] = len(paths)
    return counts


def prepare_ssl_slices(data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                       datasets: Sequence[str] | str | None = None, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                       seed: int = 0, volumes_dir: str | os.PathLike | None = None,
                       skip_blank: bool = True) -> dict[str, Any]:
    """Folders of NIfTI volumes, one per dataset (``<data_dir>/<Dataset>/**/*.nii.gz``, label files
    left out as :func:`find_volumes` says), to the mixed 2D layout in ``out_dir``
    (:func:`write_slice_folders`) and, with ``volumes_dir``, to the 3D ``.npy`` layout there
    (:func:`write_volume_arrays`). ``datasets``: the dataset folder names to use (default: every
    sub-folder of ``data_dir``)."""
    root = Path(os.path.expanduser(str(data_dir)))
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {str(root)!r} does not exist.")
    names = [datasets] if isinstance(datasets, str) else list(datasets) if datasets else sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise FileNotFoundError(f"{str(root)!r} has no dataset sub-folders (<Dataset>/*.nii.gz).")
    found = {}
    for n in names:
        if not (root / n).is_dir():
            raise FileNotFoundError(f"dataset folder {str(root / n)!r} does not exist.")
        found[n] = find_volumes(root / n)
    result: dict[str, Any] = {"slices": write_slice_folders(found, out_dir, fractions, seed, skip_blank)}
    if volumes_dir is not None:
        result["volumes"] = write_volume_arrays(found, volumes_dir)
    return result


# ---- bundle pieces: inference transform, metrics ---------------------------------------------------

class MMWHSIntensityd(MapTransform):
    """The preparation's intensity map on a loaded volume: :func:`normalize_intensity`, quantised as
    the PNG slices are (:func:`to_uint8`), returned as float32 in 0..255 (what the slices load as).
    Volume inference thus sees the very values training saw."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            name = str(getattr(img, "meta", {}).get("filename_or_obj", key))
            arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            values = to_uint8(normalize_intensity(arr, name)).astype(np.float32)
            if isinstance(img, torch.Tensor):  # keeps a MetaTensor's metadata and affine
                d[key] = img.clone().to(torch.float32).copy_(torch.from_numpy(values))
            else:
                d[key] = values
        return d


def slice_volume_output(output) -> tuple[list, list, list[str]]:
    """``(preds, labels, volumes)`` of an evaluator's decollated output (one-hot ``pred`` / ``label``
    per slice); a slice's volume is :func:`volume_of` its label file (``filename_or_obj``)."""
    items = output if isinstance(output, (list, tuple)) else [output]
    preds, labels, volumes = [], [], []
    for it in items:
        label = it["label"]
        meta = getattr(label, "meta", None) or {}
        if "filename_or_obj" not in meta:
            raise ValueError("slice_volume_output: the label has no 'filename_or_obj' metadata to name its volume.")
        preds.append(it["pred"])
        labels.append(label)
        volumes.append(volume_of(meta["filename_or_obj"]))
    return preds, labels, volumes


def _reduce(scores: torch.Tensor, class_index: int | None) -> torch.Tensor:
    """``(N, C)`` scores → ``(N,)``: one class, or the nan-mean over the foreground classes 1..C-1."""
    if class_index is not None:
        return scores[:, int(class_index)]
    return torch.nanmean(scores[:, 1:], dim=1)


def _nanmean(x: torch.Tensor, what: str) -> float:
    kept = x[~torch.isnan(x)]
    if kept.numel() == 0:
        raise NotComputableError(f"{what}: the class is absent from every label and prediction.")
    return float(kept.mean())


class SliceScore(Metric):
    """2D Dice or IoU of one class per slice, averaged over slices (the source's slice-wise metric).

    Per slice and class ``TP``, ``FP``, ``FN`` (:func:`~monai_ssl_ext.metrics.segmentation_confusion_matrix`);
    IoU ``TP / (TP + FP + FN)``, Dice ``2TP / (2TP + FP + FN)``. A slice where the class is absent
    from both label and prediction has no score and leaves the mean (it is not a perfect 1; a class
    absent everywhere makes the metric not computable); a slice where it is predicted but absent
    from the label scores 0. ``class_index`` None: per slice the mean over the foreground classes
    present in label or prediction. ``per_class`` holds every class's mean after ``compute``.

    Args:
        kind: ``"dice"`` or ``"iou"``.
        class_index: the class (default :data:`EVAL_CLASS`, the left atrium).
        output_transform: maps the evaluator output to ``(preds, labels)`` or ``(preds, labels, volumes)``.
    """

    def __init__(self, kind: str = "dice", class_index: int | None = EVAL_CLASS,
                 output_transform: Callable = slice_volume_output, device: str | torch.device = "cpu"):
        if kind not in ("dice", "iou"):
            raise ValueError(f"kind must be 'dice' or 'iou', got {kind!r}.")
        self.kind, self.class_index = kind, class_index
        self.per_class: torch.Tensor | None = None
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._scores: list[torch.Tensor] = []

    @reinit__is_reduced
    def update(self, output: Sequence) -> None:
        preds, labels = output[0], output[1]
        for p, y in zip(preds, labels):
            cm = segmentation_confusion_matrix(torch.as_tensor(p)[None], torch.as_tensor(y)[None]).cpu()
            self._scores.append(scores_from_confusion_matrix(cm, self.kind, absent_score=None))

    def compute(self) -> float:
        import ignite.distributed as idist

        local = torch.stack(self._scores) if self._scores else torch.zeros((0, 0), dtype=torch.float64)
        scores = local
        if idist.get_world_size() > 1:
            gathered = idist.all_gather(json.dumps(local.tolist()))
            scores = torch.tensor([row for s in gathered for row in json.loads(s)], dtype=torch.float64)
        if scores.numel() == 0:
            raise NotComputableError("SliceScore must have at least one slice before it can be computed.")
        self.per_class = torch.nanmean(scores, dim=0)
        return _nanmean(_reduce(scores, self.class_index), f"SliceScore({self.kind}, class {self.class_index})")


class VolumeScore(Metric):
    """3D IoU (or Dice) of one class per volume, averaged over volumes: the slices of a volume (grouped
    by :func:`volume_of` their file name, as the source groups by the name before ``_frame_``) pool
    their ``TP``, ``FP``, ``FN`` into one count per volume. A volume where the class is absent from
    label and prediction leaves the mean; one where it is only predicted scores 0. Over DDP ranks the
    per-volume counts are gathered and summed. ``per_volume`` (``{volume: (C,) scores}``) and
    ``per_class`` are set by ``compute``.

    Args:
        kind: ``"iou"`` (default, the source's 3D IoU) or ``"dice"``.
        class_index: the class (default :data:`EVAL_CLASS`); None: the mean over foreground classes.
        output_transform: maps the evaluator output to ``(preds, labels, volumes)``
            (default :func:`slice_volume_output`).
    """

    def __init__(self, kind: str = "iou", class_index: int | None = EVAL_CLASS,
                 output_transform: Callable = slice_volume_output, device: str | torch.device = "cpu"):
        if kind not in ("dice", "iou"):
            raise ValueError(f"kind must be 'dice' or 'iou', got {kind!r}.")
        self.kind, self.class_index = kind, class_index
        self.per_volume: dict[str, torch.Tensor] = {}
        self.per_class: torch.Tensor | None = None
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._confmats: dict[str, torch.Tensor] = {}

    @reinit__is_reduced
    def update(self, output: Sequence) -> None:
        if len(output) != 3:
            raise ValueError("VolumeScore: output must be (preds, labels, volumes); use slice_volume_output.")
        for p, y, v in zip(*output):
            cm = segmentation_confusion_matrix(torch.as_tensor(p)[None], torch.as_tensor(y)[None]).cpu()
            self._confmats[v] = self._confmats[v] + cm if v in self._confmats else cm

    def compute(self) -> float:
        import ignite.distributed as idist

        merged = dict(self._confmats)
        if idist.get_world_size() > 1:
            merged = {}
            for s in idist.all_gather(json.dumps({k: v.tolist() for k, v in self._confmats.items()})):
                for k, v in json.loads(s).items():
                    t = torch.tensor(v, dtype=torch.float64)
                    merged[k] = merged[k] + t if k in merged else t
        if not merged:
            raise NotComputableError("VolumeScore must have at least one slice before it can be computed.")
        self.per_volume = {k: scores_from_confusion_matrix(cm, self.kind, absent_score=None)
                           for k, cm in sorted(merged.items())}
        scores = torch.stack(list(self.per_volume.values()))
        self.per_class = torch.nanmean(scores, dim=0)
        return _nanmean(_reduce(scores, self.class_index), f"VolumeScore({self.kind}, class {self.class_index})")
