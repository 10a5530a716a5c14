"""Datalist readers and label-budget samplers.

Every bundle reads its file lists through this module, so the error messages are the same
everywhere and always name the offending file (and line / path where relevant):

* :func:`read_frame_csv` -- the ``path,label`` frame CSVs written by ``scripts/extract_frames.py``
  (and the published SimCLR ``sample_csv.csv``, which has no header);
* :func:`read_image_list` -- a flat folder of pictures (e.g. Hyperkvasir ``unlabeled-images/images``)
  or a ``path,label`` CSV whose labels may be class names;
* :func:`load_datalist` -- MONAI decathlon-style JSON datalists;
* :func:`percent_subset` -- "N% of the training items", seeded (tool-segmentation ``--perc``);
* :func:`split_80_10_10` -- SSL4GIE's image-level train / val / test split (``split_ids``);
* :func:`class_balanced_subset` / :func:`budget_subset` -- class-balanced label budgets of the
  SimCLR linear-probe protocol (1% = 200 frames per class, 10% = 2000 per class, 100% = all);
* :func:`probe_datalist` -- a labelled frame list for a linear probe (from a ``path,label`` CSV),
  optionally cut to a class-balanced label budget;
* :func:`subset_with_oversampling` -- the SSL-MedSeg data-efficiency protocol (a random fraction
  of the ACDC training slices, repeated to keep the epoch length).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ACDC_SUBSET_SIZES",
    "acdc_group_items",
    "BUDGETS",
    "budget_subset",
    "class_balanced_subset",
    "load_datalist",
    "percent_subset",
    "probe_datalist",
    "read_frame_csv",
    "read_image_list",
    "read_slice_folders",
    "read_volume_folders",
    "split_80_10_10",
    "with_index",
    "subset_size",
    "subset_with_oversampling",
]

logger = logging.getLogger("monai_ssl_ext.data")

#: Linear-probe label budgets of the SimCLR surgical-video recipe (frames per class).
#: ``None`` means "every labelled item".
BUDGETS: dict[str, int | None] = {"1%": 200, "10%": 2000, "100%": None}


def read_frame_csv(
    csv_path: str | os.PathLike, base_dir: str | os.PathLike | None = None, check_files: bool = True
) -> list[dict[str, Any]]:
    """Read a ``path,label`` frame CSV into a MONAI-style list of dicts.

    The format is the one written by ``scripts/extract_frames.py`` and the published
    ``sample_csv.csv``: one frame per row, ``<image path>,<integer label>``. A first line
    ``path,label`` is a header and is skipped (the published file has none). Blank lines are
    ignored. The label is ``-1`` for unlabelled frames; SSL pretraining ignores it.

    Args:
        csv_path: the CSV file.
        base_dir: folder that relative image paths are resolved against; by default the
            folder holding the CSV. Absolute paths are kept as they are.
        check_files: check that every listed image exists (one ``stat`` per row).

    Returns:
        ``[{"image": <absolute path>, "label": <int>}, ...]`` in file order.

    Raises:
        FileNotFoundError: the CSV does not exist, or (with ``check_files``) a listed image does
            not exist -- the message names the CSV, the line and the image path.
        ValueError: the CSV has no data rows, or a row is not ``path,label`` with an integer
            label -- the message names the CSV and the line.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"frame CSV {str(csv_path)!r} does not exist.")
    root = Path(base_dir) if base_dir is not None else csv_path.resolve().parent
    items: list[dict[str, Any]] = []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if lineno == 1 and [c.strip().lower() for c in row] == ["path", "label"]:
                continue
            if len(row) != 2:
                raise ValueError(
                    f"{csv_path}, line {lineno}: expected 2 fields 'path,label', got {len(row)}: {row!r}."
                )
            path_s, label_s = row[0].strip(), row[1].strip()
            if not path_s:
                raise ValueError(f"{csv_path}, line {lineno}: empty image path.")
            try:
                label = int(label_s)
            except ValueError:
                raise ValueError(
                    f"{csv_path}, line {lineno}: label {label_s!r} of {path_s!r} is not an integer."
                ) from None
            path = Path(os.path.expanduser(path_s))
            if not path.is_absolute():
                path = root / path
            path_abs = os.path.normpath(os.path.abspath(path))
            if check_files and not os.path.isfile(path_abs):
                raise FileNotFoundError(f"{csv_path}, line {lineno}: image {path_abs!r} does not exist.")
            items.append({"image": path_abs, "label": label})
    if not items:
        raise ValueError(f"frame CSV {str(csv_path)!r} has no data rows.")
    return items


#: Picture file types that :func:`read_image_list` lists from a folder (lower-case suffixes).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def read_image_list(
    source: str | os.PathLike,
    base_dir: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """The pictures of a flat folder or of a ``path,label`` CSV, as a MONAI-style list of dicts.

    * A **folder**: every file directly in it whose suffix is one of :data:`IMAGE_SUFFIXES` (any case), sorted by
      name, not recursive, hidden files skipped -- e.g. Hyperkvasir's ``unlabeled-images/images``. Gives
      ``[{"image": <absolute path>}, ...]``.
    * A **CSV** (``*.csv``): one picture per row, ``path[,label]``; a first row ``path,label`` (or ``path``) is a
      header. Relative paths are resolved against ``base_dir``, by default the CSV's folder. Labels:

      - empty or ``-1`` -- unlabelled; when every row is unlabelled the items are ``{"image"}`` only (the same as
        for a folder, so either input feeds the same pretraining pipeline), otherwise such rows get label ``-1``;
      - integers -- kept: ``{"image", "label": int}``;
      - class names (e.g. ``cecum``) -- encoded as their index in ``class_names``, by default the sorted distinct
        names of the file (torchvision ``ImageFolder``'s and SSL4GIE's ``sorted(folders)`` order), and kept as
        ``"class_name"``: ``{"image", "label": int, "class_name": str}``.

    Args:
        source: the folder or the CSV file.
        base_dir: folder that relative paths in a CSV are resolved against (default: the CSV's folder); not used
            for a folder source.
        class_names: the class order for class-name labels (default: sorted names found in the CSV).
        check_files: check that every picture listed in a CSV exists (one ``stat`` per row).

    Raises:
        FileNotFoundError: ``source`` does not exist; a listed picture does not exist (names the CSV and line).
        ValueError: the folder holds no pictures (also when it only holds sub-folders -- the message lists a few,
            e.g. point at ``unlabeled-images/images``, not ``unlabeled-images``); the CSV has no rows, a row with
            more than two fields or an empty path, mixes integer and class-name labels, or names a class not in
            ``class_names`` (each names the CSV and line).
    """
    src = Path(os.path.expanduser(str(source)))
    if src.is_dir():
        return _read_image_folder(src)
    if not src.exists():
        raise FileNotFoundError(f"image list {str(src)!r} does not exist (expected a folder of pictures or a CSV).")
    if src.suffix.lower() != ".csv":
        raise ValueError(f"image list {str(src)!r} is neither a folder of pictures nor a '.csv' file.")
    return _read_image_csv(src, base_dir, class_names, check_files)


def _read_image_folder(folder: Path) -> list[dict[str, Any]]:
    with os.scandir(folder) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    files = [e for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES]
    if not files:
        subdirs = [e.name for e in entries if e.is_dir()]
        hint = (
            f"; it has sub-folders ({', '.join(subdirs[:5])}{', ...' if len(subdirs) > 5 else ''}): point to the"
            " folder that holds the pictures (e.g. Hyperkvasir's 'unlabeled-images/images')"
            if subdirs
            else ""
        )
        raise ValueError(f"image folder {str(folder)!r} holds no pictures ({'/'.join(IMAGE_SUFFIXES)}){hint}.")
    root = os.path.abspath(folder)
    return [{"image": os.path.join(root, e.name)} for e in files]


def _read_image_csv(
    csv_path: Path, base_dir: str | os.PathLike | None, class_names: Sequence[str] | None, check_files: bool
) -> list[dict[str, Any]]:
    root = Path(base_dir) if base_dir is not None else csv_path.resolve().parent
    rows: list[tuple[int, str, str]] = []  # (line, absolute path, raw label)
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            row = [c.strip() for c in row]
            if not any(row):
                continue
            if lineno == 1 and row[0].lower() == "path" and [c.lower() for c in row[1:]] in ([], ["label"]):
                continue
            if len(row) > 2:
                raise ValueError(f"{csv_path}, line {lineno}: expected 'path,label', got {len(row)} fields: {row!r}.")
            if not row[0]:
                raise ValueError(f"{csv_path}, line {lineno}: empty image path.")
            path = Path(os.path.expanduser(row[0]))
            path_abs = os.path.normpath(os.path.abspath(path if path.is_absolute() else root / path))
            if check_files and not os.path.isfile(path_abs):
                raise FileNotFoundError(f"{csv_path}, line {lineno}: image {path_abs!r} does not exist.")
            rows.append((lineno, path_abs, row[1] if len(row) > 1 else ""))
    if not rows:
        raise ValueError(f"image list {str(csv_path)!r} has no data rows.")

    def as_int(label: str) -> int | None:
        try:
            return int(label)
        except ValueError:
            return None

    labelled = [(n, lab) for n, _, lab in rows if lab not in ("", "-1")]
    if not labelled:
        return [{"image": p} for _, p, _ in rows]
    named = [(n, lab) for n, lab in labelled if as_int(lab) is None]
    if not named:
        return [{"image": p, "label": -1 if lab == "" else int(lab)} for _, p, lab in rows]
    if len(named) != len(labelled):
        line = next(n for n, lab in labelled if as_int(lab) is not None)
        raise ValueError(
            f"{csv_path}, line {line}: integer label among class-name labels (e.g. line {named[0][0]}: "
            f"{named[0][1]!r}); use one kind of label per file."
        )
    names = list(class_names) if class_names is not None else sorted({lab for _, lab in named})
    index = {c: i for i, c in enumerate(names)}
    for n, lab in named:
        if lab not in index:
            raise ValueError(f"{csv_path}, line {n}: class {lab!r} is not one of class_names {names}.")
    unlabelled = ("", "-1")
    return [
        {"image": p, "label": -1 if lab in unlabelled else index[lab], "class_name": "" if lab in unlabelled else lab}
        for _, p, lab in rows
    ]


def split_80_10_10(items: Sequence, seed: int = 42) -> dict[str, list]:
    """SSL4GIE's split of ``items`` (e.g. the sorted image file names of Kvasir-SEG, CVC-ClinicDB or
    Hyperkvasir labelled-images) into ``{"training", "validation", "test"}`` lists, 80 / 10 / 10 at
    image level (``Data/dataloaders.py::split_ids``): ``n_test = round(0.1 N)``; scikit-learn's
    ``train_test_split(range(N), test_size=n_test, random_state=seed)`` gives (train, test), and the
    same call on that train part with the same ``n_test`` gives (train, val). Kvasir-SEG's 1000 images
    give 800 / 100 / 100, CVC-ClinicDB's 612 give 490 / 61 / 61.

    Computed here without scikit-learn, as its ``ShuffleSplit`` does it: ``perm =
    RandomState(seed).permutation(n)``, test ``perm[:n_test]``, train ``perm[n_test:]`` (the test
    suite checks the result against scikit-learn). Each list keeps the split's order, as the
    source's ``Subset`` does. ``items`` must already be in the source's order (``sorted(glob)``).

    Raises:
        ValueError: fewer than 6 items (empty validation and test parts).
    """
    import numpy as np

    items = list(items)
    n = len(items)
    n_test = int(round(0.1 * n))
    if n_test < 1:
        raise ValueError(f"split_80_10_10: {n} items give an empty validation and test part (need at least 6).")

    def shuffle_split(idx: list[int]) -> tuple[list[int], list[int]]:
        perm = np.random.RandomState(seed).permutation(len(idx))
        return [idx[i] for i in perm[n_test:]], [idx[i] for i in perm[:n_test]]

    train, test = shuffle_split(list(range(n)))
    train, val = shuffle_split(train)
    return {"training": [items[i] for i in train], "validation": [items[i] for i in val],
            "test": [items[i] for i in test]}


def percent_subset(items: Sequence, perc: float, seed: int = 42) -> list:
    """A seeded random ``perc`` percent of ``items`` (the tool-segmentation ``--perc`` option).

    ``k = floor(len(items) * perc / 100)``, at least 1 when ``items`` is not empty. The chosen
    indices are those of ``random.Random(seed).sample(range(len(items)), k)`` -- the same set as
    the source's ``random.seed(42); random.sample(items, k)`` -- and they are returned in their
    original order. ``perc=100`` returns every item in the original order.

    Raises:
        ValueError: ``perc`` is not a number in (0, 100].
    """
    if isinstance(perc, bool) or not isinstance(perc, (int, float)) or not (0 < perc <= 100):
        raise ValueError(f"perc must be a number in (0, 100], got {perc!r}.")
    items = list(items)
    n = len(items)
    if perc == 100 or n == 0:
        return items
    k = min(n, max(1, math.floor(n * perc / 100 + 1e-9)))
    idx = sorted(random.Random(seed).sample(range(n), k))
    return [items[i] for i in idx]


def _sort_key(label: Hashable) -> tuple:
    return (type(label).__name__, label) if not isinstance(label, (int, float)) else ("", label)


def class_balanced_subset(
    items: Sequence[dict],
    per_class: int | None,
    seed: int = 0,
    label_key: str = "label",
    exclude_labels: Sequence = (),
) -> list[dict]:
    """Up to ``per_class`` random items of every class (class-balanced label budget).

    Items are grouped by ``item[label_key]``; a class with at most ``per_class`` items is kept
    whole, a larger one is sampled without replacement. Each class has its own random stream
    (seeded from ``seed`` and the label), so the draw of one class does not depend on which
    other classes are present; the result is deterministic for a seed and keeps the original
    order of ``items``. ``per_class=None`` keeps every item (the 100% budget).

    Args:
        items: dicts with a ``label_key`` entry (e.g. from :func:`read_frame_csv`).
        per_class: items per class (the source used 200 for "1%" and 2000 for "10%"), or None.
        seed: random seed.
        label_key: the key holding the class label.
        exclude_labels: labels to drop first (e.g. ``(-1,)`` for unlabelled frames).

    Raises:
        ValueError: ``per_class`` is not a positive int or None; an item lacks ``label_key``.
    """
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1):
        raise ValueError(f"per_class must be a positive int or None, got {per_class!r}.")
    excluded = set(exclude_labels)
    groups: dict[Any, list[int]] = {}
    for i, item in enumerate(items):
        try:
            label = item[label_key]
        except (KeyError, TypeError, IndexError):
            raise ValueError(f"item {i} has no {label_key!r} entry: {item!r}.") from None
        if label in excluded:
            continue
        groups.setdefault(label, []).append(i)
    keep: list[int] = []
    for label in sorted(groups, key=_sort_key):
        idx = groups[label]
        if per_class is not None and len(idx) > per_class:
            idx = random.Random(f"{seed}/{label!r}").sample(idx, per_class)
        keep.extend(idx)
    return [items[i] for i in sorted(keep)]


def budget_subset(
    items: Sequence[dict],
    budget: str | int | None,
    seed: int = 0,
    label_key: str = "label",
    exclude_labels: Sequence = (),
) -> list[dict]:
    """Apply a linear-probe label budget by name.

    ``"1%"`` -> 200 items per class, ``"10%"`` -> 2000 per class, ``"100%"`` (or ``"all"`` /
    None) -> every item; an int (or a digit string) -> that many per class. The sampling is
    :func:`class_balanced_subset` with ``seed``.

    Raises:
        ValueError: an unknown budget name or a non-positive count.
    """
    per_class: int | None
    if budget is None:
        per_class = None
    elif isinstance(budget, str):
        b = budget.strip().lower()
        if b in BUDGETS:
            per_class = BUDGETS[b]
        elif b == "all":
            per_class = None
        elif b.isdigit():
            per_class = int(b)
        else:
            raise ValueError(
                f"unknown label budget {budget!r}: use one of {sorted(BUDGETS)}, 'all' or a count per class."
            )
    elif isinstance(budget, int) and not isinstance(budget, bool):
        per_class = budget
    else:
        raise ValueError(f"label budget must be one of {sorted(BUDGETS)} or an int, got {budget!r}.")
    if per_class is not None and per_class < 1:
        raise ValueError(f"label budget must be at least 1 item per class, got {budget!r}.")
    return class_balanced_subset(items, per_class, seed=seed, label_key=label_key, exclude_labels=exclude_labels)


def image_items(items) -> list[dict]:
    """``[{"image": path}, ...]`` from a datalist (dicts with an ``image`` key) or a list of paths:
    the items of an inference run, which reads images only."""
    return [{"image": item["image"] if isinstance(item, dict) else item} for item in items]


def load_datalist(
    path: str | os.PathLike, key: str, base_dir: str | os.PathLike | None = None, is_segmentation: bool = True
) -> list[dict]:
    """Load one list of a MONAI decathlon-style JSON datalist, with paths made absolute.

    A thin wrapper on :func:`monai.data.load_decathlon_datalist` (relative paths are resolved
    against ``base_dir`` or else the JSON's folder) with errors that name the file and key.

    Raises:
        FileNotFoundError: the JSON file does not exist.
        ValueError: the file is not valid JSON, ``key`` is absent, or the list is empty.
    """
    from monai.data import load_decathlon_datalist

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist {str(path)!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"datalist {str(path)!r} is not valid JSON: {e}.") from None
    if not isinstance(content, dict) or key not in content:
        keys = sorted(content) if isinstance(content, dict) else []
        raise ValueError(f"datalist {str(path)!r} has no key {key!r} (keys: {keys}).")
    if not isinstance(content[key], list) or not content[key]:
        raise ValueError(f"datalist {str(path)!r}: list {key!r} is empty or not a list.")
    return load_decathlon_datalist(path, is_segmentation=is_segmentation, data_list_key=key, base_dir=base_dir)


#: SSL-MedSeg data-efficiency sweep: ``subset_ratio`` -> number of ACDC training slices (of 1498)
#: as published; :func:`subset_size` reproduces every entry.
ACDC_SUBSET_SIZES: dict[float, int] = {
    0.001: 1,
    0.002: 3,
    0.005: 7,
    0.01: 15,
    0.02: 30,
    0.05: 75,
    0.1: 150,
    0.2: 300,
    0.5: 749,
    1.0: 1498,
}


def _check_ratio(ratio: float) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (0 < ratio <= 1):
        raise ValueError(f"subset ratio must be a number in (0, 1], got {ratio!r}.")
    return float(ratio)


def subset_size(n: int, ratio: float, min_items: int = 1) -> int:
    """Number of items a ``ratio`` subset of ``n`` items keeps.

    ``k = round(ratio * n)`` with Python's ``round`` (half to even, the same as the source's
    ``int(np.around(len(samples) * subset_ratio))``), then at least ``min_items`` and at most
    ``n``. For ``n = 1498`` this gives the published sizes :data:`ACDC_SUBSET_SIZES` (flooring
    would give 1, 2, 7, 14, 29, 74, 149, 299, 749, 1498 instead).

    Raises:
        ValueError: ``ratio`` is not in (0, 1], ``n`` or ``min_items`` is negative.
    """
    ratio = _check_ratio(ratio)
    if n < 0 or min_items < 0:
        raise ValueError(f"n and min_items must be >= 0, got n={n!r}, min_items={min_items!r}.")
    return min(int(n), max(int(min_items), round(ratio * n)))


def subset_with_oversampling(items: Sequence, ratio: float, seed: int, min_items: int = 1) -> list:
    """SSL-MedSeg data-efficiency subset: a random ``ratio`` of the slices, oversampled.

    Exactly:

    * ``ratio == 1.0``: every item once, in the original order;
    * otherwise ``k = subset_size(len(items), ratio, min_items)`` (``round(ratio * n)``, at least
      ``min_items``), ``idx = np.random.default_rng(seed).choice(len(items), size=k,
      replace=False)``, the subset is ``[items[i] for i in idx]`` in the order drawn, and it is
      repeated ``floor(1 / ratio)`` times (``subset * reps``) so that the epoch length stays about
      ``len(items)``: for the published ratios on the 1498 ACDC training slices, 1000 to 1500
      items per epoch (:data:`ACDC_SUBSET_SIZES` gives the distinct slices).

    Dict items are shallow-copied, so a transform that edits one repetition in place does not
    change the others. The sampling is slice-level (not patient-level), as published; the source
    drew with the global ``np.random.choice`` state, here the draw depends on ``seed`` only, and
    a larger ratio with the same seed does not necessarily contain a smaller one.

    Args:
        items: the training items (e.g. the ``"training"`` list of ``acdc_slices.json``).
        ratio: fraction in (0, 1] (the source's ``subset_ratio``).
        seed: random seed (the published sweep used 0, 13, 42, 123, 1111, 77, 62, 91, 7, 5).
        min_items: lower bound on the number of distinct items.

    Raises:
        ValueError: ``ratio`` outside (0, 1]; ``items`` is empty.
    """
    import numpy as np

    ratio = _check_ratio(ratio)
    items = list(items)
    if not items:
        raise ValueError("subset_with_oversampling: no items to sample from.")
    if ratio == 1.0:
        return items
    k = subset_size(len(items), ratio, min_items)
    idx = np.random.default_rng(seed).choice(len(items), size=k, replace=False)
    subset = [items[int(i)] for i in idx]
    reps = max(1, math.floor(1.0 / ratio + 1e-9))
    return [dict(it) if isinstance(it, dict) else it for _ in range(reps) for it in subset]


def probe_datalist(
    source: str | os.PathLike | Sequence[dict],
    num_classes: int | None = None,
    budget: str | int | None = None,
    seed: int = 42,
    check_files: bool = True,
) -> list[dict]:
    """Labelled items ``{"image", "label"}`` of one split, for training or evaluating a probe.

    Args:
        source: a ``path,label`` frame CSV (read with
            :func:`~monai_ssl_ext.data.read_frame_csv`: the labels are that file's own) or a list
            of such items.
        num_classes: labels must lie in ``[0, num_classes)``; unlabelled frames (``-1``) are dropped.
        budget: a label budget for :func:`~monai_ssl_ext.data.budget_subset` (``"1%"`` = 200,
            ``"10%"`` = 2000 per class, ``"100%"``/None = all), class-balanced with ``seed``.
        check_files: check that every listed image exists.
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<items>"
    items = read_frame_csv(source, check_files=check_files) if isinstance(source, (str, os.PathLike)) else list(source)
    items = [d for d in items if d["label"] != -1]
    if not items:
        raise ValueError(f"{name}: no labelled items (every label is -1)")
    if num_classes is not None:
        bad = [d for d in items if not (0 <= int(d["label"]) < num_classes)]
        if bad:
            raise ValueError(
                f"{name}: {len(bad)} item(s) have labels outside 0..{num_classes - 1}, e.g. "
                f"{bad[0]['image']!r} with label {bad[0]['label']} (config `num_classes`)"
            )
    if budget is not None:
        items = budget_subset(items, budget, seed=seed)
    counts: dict[int, int] = {}
    for d in items:
        counts[d["label"]] = counts.get(d["label"], 0) + 1
    logger.info(f"{name}: {len(items)} items, per class {dict(sorted(counts.items()))}")
    return items


def _acdc_group(info_cfg: Path) -> str | None:
    """The ``Group:`` value of an ACDC ``Info.cfg`` (None when the file has no such line)."""
    if not info_cfg.is_file():
        raise FileNotFoundError(f"ACDC patient info {str(info_cfg)!r} does not exist (its Group labels the slices).")
    for line in info_cfg.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Group":
            return value.strip() or None
    return None



def with_index(datalist: Sequence[dict], key: str = "index") -> list[dict]:
    """Copies of the items with their position in ``datalist`` under ``key`` (0, 1, ...), the dataset index that
    per-item SSL state is written by (DeepCluster-v2's memory bank: ``SSLTrainer(extra_keys=["index"])``).
    An item that already has ``key`` is an error (naming the item), not silently renumbered."""
    out = []
    for i, item in enumerate(datalist):
        if key in item:
            raise ValueError(f"with_index: item {i} ({item.get('image', item)!r}) already has a {key!r} entry")
        out.append({**item, key: i})
    return out

def acdc_group_items(slice_index: str | os.PathLike, list_key: str = "training",
                     base_dir: str | os.PathLike | None = None) -> list[dict]:
    """The slices of one list of an ACDC slice index (``scripts/prepare_acdc.py``'s
    ``acdc_slices.json``) labelled with their patient's pathology group, the ``Group:`` line of
    the ``Info.cfg`` beside the image (DCM, HCM, MINF, NOR, RV): ``[{"image", "slice", "patient",
    "label": group}, ...]`` (``frame`` kept where the item has one; the segmentation label path is
    not). A patient whose ``Info.cfg`` has no ``Group:`` line gets the label None (unlabelled).
    The labelled list of byol_acdc's online kNN monitor (one read of each patient's ``Info.cfg``).

    Raises:
        FileNotFoundError: the index or a patient's ``Info.cfg`` does not exist (named).
        ValueError: the index has no such list (:func:`load_datalist`).
    """
    groups: dict[str, str | None] = {}
    out = []
    for item in load_datalist(slice_index, list_key, base_dir=base_dir, is_segmentation=False):
        folder = os.path.dirname(item["image"])
        if folder not in groups:
            groups[folder] = _acdc_group(Path(folder) / "Info.cfg")
        kept = {k: item[k] for k in ("image", "slice", "frame", "patient") if k in item}
        out.append({**kept, "label": groups[folder]})
    return out


#: Picture file types of the mixed 2D SSL slice layout (:func:`read_slice_folders`).
SLICE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_slice_folders(root: str | os.PathLike, split: str = "train") -> list[dict[str, Any]]:
    """The slices of one split of the mixed 2D SSL layout ``<root>/<split>/<Dataset>/*.png|jpg|jpeg``
    (the joint 2D-3D SSL source's ``training_data_2D``, written by
    :func:`monai_ssl_ext.mmwhs.write_slice_folders` / ``scripts/prepare_ssl_slices.py``):
    ``[{"image": <absolute path>, "dataset": <Dataset folder name>}, ...]`` sorted by dataset, then
    file name. Only the dataset folders directly under the split are read (not recursive); hidden
    files and other file types are skipped.

    Raises:
        ValueError: ``<root>/<split>`` is not a folder, or it holds no pictures in dataset folders
            (each names the folder).
    """
    split_dir = Path(os.path.expanduser(str(root))) / str(split)
    if not split_dir.is_dir():
        raise ValueError(
            f"slice folder {str(split_dir)!r} does not exist (expected <root>/{split}/<Dataset>/*.png, "
            "e.g. written by scripts/prepare_ssl_slices.py)."
        )
    out: list[dict[str, Any]] = []
    with os.scandir(split_dir) as it:
        datasets = sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)
    for ds in datasets:
        with os.scandir(ds.path) as it:
            names = sorted(
                e.name for e in it
                if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in SLICE_SUFFIXES
            )
        folder = os.path.abspath(ds.path)
        out.extend({"image": os.path.join(folder, n), "dataset": ds.name} for n in names)
    if not out:
        raise ValueError(
            f"slice folder {str(split_dir)!r} holds no pictures ({'/'.join(SLICE_SUFFIXES)}) in dataset "
            f"sub-folders (expected {str(split_dir)}/<Dataset>/*.png)."
        )
    return out


#: Volume file types of the joint 2D-3D SSL volume layout (:func:`read_volume_folders`).
VOLUME_SUFFIXES = (".npy", ".nii", ".nii.gz")


def read_volume_folders(root: str | os.PathLike) -> list[dict[str, Any]]:
    """The volumes of the joint 2D-3D SSL layout ``<root>/<Dataset>/*.npy|*.nii|*.nii.gz`` (the source's
    ``training_data_3D``: ``.npy`` arrays H x W x D; written by :func:`monai_ssl_ext.mmwhs.write_volume_arrays`):
    ``[{"image": <absolute path>, "dataset": <Dataset folder name>}, ...]`` sorted by dataset, then file name. Only
    the dataset folders directly under ``root`` are read (not recursive); hidden files and other file types are
    skipped.

    Raises:
        ValueError: ``root`` is not a folder, or it holds no volumes in dataset folders (each names the folder).
    """
    base = Path(os.path.expanduser(str(root)))
    if not base.is_dir():
        raise ValueError(f"volume folder {str(base)!r} does not exist (expected <root>/<Dataset>/*.npy, the source's "
                         "training_data_3D layout, e.g. written by scripts/prepare_ssl_slices.py --volumes_dir).")
    out: list[dict[str, Any]] = []
    with os.scandir(base) as it:
        datasets = sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)
    for ds in datasets:
        with os.scandir(ds.path) as it:
            names = sorted(e.name for e in it if e.is_file() and not e.name.startswith(".")
                           and e.name.lower().endswith(VOLUME_SUFFIXES))
        folder = os.path.abspath(ds.path)
        out.extend({"image": os.path.join(folder, n), "dataset": ds.name} for n in names)
    if not out:
        raise ValueError(f"volume folder {str(base)!r} holds no volumes ({'/'.join(VOLUME_SUFFIXES)}) in dataset "
                         f"sub-folders (expected {str(base)}/<Dataset>/*.npy).")
    return out
