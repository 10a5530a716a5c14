"""SSL4GIE downstream dataset layouts (Sanderson & Matuszewski 2024): datalists of Hyperkvasir
labelled-images, Kvasir-SEG, CVC-ClinicDB and C3VD, and their frozen splits.

One ``prepare_<layout>(data_dir, ...)`` per layout lists the data in the source's order, splits it
as the source does (:func:`monai_ssl_ext.data.split_80_10_10` over the sorted file names; C3VD:
the source's fixed validation / test videos) and writes the result next to the data as a MONAI
decathlon-style datalist (``{"training": [...], "validation": [...], "test": [...]}``, paths
relative to ``data_dir``) with :func:`write_split`, so every later run reads the same frozen split
(``monai_ssl_ext.data.load_datalist``). ``scripts/prepare_ssl4gie.py <layout> --data_dir D`` is the
command line; the demo generators call the same functions.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .io import atomic_write_text

__all__ = ["write_split"]

SPLIT_KEYS = ("training", "validation", "test")


def write_split(split: Mapping[str, Sequence[Mapping]], path: str | os.PathLike, **info) -> str:
    """Write ``split`` (``{"training", "validation", "test"}`` lists of item dicts whose paths are
    relative to the file's folder) as a datalist JSON at ``path``, atomically; extra keyword
    arguments are stored beside the lists (e.g. ``source="SSL4GIE split_ids"``, counts). Returns
    the path.

    Raises:
        ValueError: a list is missing or empty, or an item path is absolute.
    """
    out: dict = {}
    for key in SPLIT_KEYS:
        items = list(split.get(key, []))
        if not items:
            raise ValueError(f"write_split: the {key!r} list is missing or empty ({path}).")
        for item in items:
            for k, v in item.items():
                if isinstance(v, str) and os.path.isabs(v):
                    raise ValueError(f"write_split: item {k}={v!r} is absolute; paths are relative to {path}'s folder.")
        out[key] = [dict(item) for item in items]
    out.update({k: v for k, v in info.items() if k not in SPLIT_KEYS})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(out, indent=1) + "\n")


__all__ += ["prepare_cvc_clinicdb", "prepare_kvasir_seg"]

#: file name of the frozen 80/10/10 split written next to Kvasir-SEG / CVC-ClinicDB (the detection bundle reads
#: the same Kvasir-SEG file)
SPLIT_FILE = "split_80_10_10.json"


def _paired_split(data_dir: str | os.PathLike, image_dir: str, mask_dir: str, suffixes: tuple[str, ...],
                  layout: str, seed: int) -> str:
    """Pair ``image_dir/<name>`` with ``mask_dir/<name>`` (same file name), split the sorted image names with
    :func:`monai_ssl_ext.data.split_80_10_10` and write ``<data_dir>/split_80_10_10.json``."""
    from .data import split_80_10_10

    root = Path(data_dir)
    img_root, mask_root = root / image_dir, root / mask_dir
    for d in (img_root, mask_root):
        if not d.is_dir():
            raise FileNotFoundError(f"prepare_{layout}: folder {str(d)!r} not found (expected the {layout} layout).")

    def names(d: Path) -> list[str]:
        return sorted(p.name for p in d.iterdir() if p.is_file() and p.suffix.lower() in suffixes)

    images, masks = names(img_root), names(mask_root)
    if not images:
        raise FileNotFoundError(f"prepare_{layout}: no {'/'.join(suffixes)} images in {str(img_root)!r}.")
    missing = sorted(set(images) - set(masks))
    extra = sorted(set(masks) - set(images))
    if missing or extra:
        raise ValueError(f"prepare_{layout}: images and masks do not pair by file name: "
                         f"no mask in {str(mask_root)!r} for {missing[:5]}, no image in {str(img_root)!r} for "
                         f"{extra[:5]} ({len(missing)} + {len(extra)} in all).")
    items = [{"image": f"{image_dir}/{n}", "label": f"{mask_dir}/{n}"} for n in images]
    split = split_80_10_10(items, seed=seed)
    return write_split(split, root / SPLIT_FILE, layout=layout,
                       source="SSL4GIE Data/dataloaders.py::split_ids over sorted(glob) image names",
                       seed=seed, counts={k: len(v) for k, v in split.items()})


def prepare_kvasir_seg(data_dir: str, seed: int = 42) -> str:
    """Kvasir-SEG: ``<data_dir>/images/<id>.jpg`` + ``<data_dir>/masks/<id>.jpg`` (JPEG masks: threshold at 128).

    Pairs each image with the mask of the same file name, splits the sorted image names 80/10/10 as the
    source (``split_80_10_10``, seed 42: 1000 images give 800 / 100 / 100) and writes
    ``<data_dir>/split_80_10_10.json`` with items ``{"image": "images/<id>.jpg", "label": "masks/<id>.jpg"}``.
    ``bounding-boxes.json`` (detection) is not read here. Returns the path written.

    Raises:
        FileNotFoundError: a folder is missing or holds no images.
        ValueError: an image has no mask of the same name or a mask has no image (both named).
    """
    return _paired_split(data_dir, "images", "masks", (".jpg", ".jpeg", ".png"), "kvasir_seg", seed)


def prepare_cvc_clinicdb(data_dir: str, seed: int = 42) -> str:
    """CVC-ClinicDB: ``<data_dir>/Original/<k>.tif`` + ``<data_dir>/Ground Truth/<k>.tif`` (k = 1..612).

    Same as :func:`prepare_kvasir_seg` (the image names sorted as strings, as the source's ``sorted(glob)``:
    ``1.tif, 10.tif, 100.tif, ...``; 612 frames give 490 / 61 / 61); items
    ``{"image": "Original/<k>.tif", "label": "Ground Truth/<k>.tif"}``. Returns the path written.
    """
    return _paired_split(data_dir, "Original", "Ground Truth", (".tif", ".tiff", ".png"), "cvc_clinicdb", seed)


__all__ += ["prepare_hyperkvasir", "hyperkvasir_split_file", "split_class_names"]

#: Hyperkvasir labelled-images class sets of SSL4GIE's classification task (``--dataset Hyperkvasir_<...>``)
HYPERKVASIR_CLASS_SETS = ("anatomical-landmarks", "pathological-findings")


def hyperkvasir_split_file(data_dir: str | os.PathLike, class_set: str = "anatomical-landmarks",
                           must_exist: bool = True) -> str:
    """Path of the frozen Hyperkvasir classification split, ``<data_dir>/<class_set>_split.json``.

    Raises:
        ValueError: ``class_set`` is not one of :data:`HYPERKVASIR_CLASS_SETS`.
        FileNotFoundError: (``must_exist``) the file is not there; the message gives the command that writes it.
    """
    if class_set not in HYPERKVASIR_CLASS_SETS:
        raise ValueError(f"class_set must be one of {list(HYPERKVASIR_CLASS_SETS)}, got {class_set!r}.")
    path = os.path.join(str(data_dir), f"{class_set}_split.json")
    if must_exist and not os.path.isfile(path):
        raise FileNotFoundError(
            f"split file {path!r} does not exist: write it once with "
            f"`python scripts/prepare_ssl4gie.py hyperkvasir --data_dir {data_dir} --class_set {class_set}`."
        )
    return path


def split_class_names(split_file: str | os.PathLike) -> list[str]:
    """The ``class_names`` recorded in a split file written by :func:`prepare_hyperkvasir` (index = label).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not JSON or records no ``class_names``.
    """
    path = Path(split_file)
    if not path.is_file():
        raise FileNotFoundError(f"split file {str(path)!r} does not exist (see scripts/prepare_ssl4gie.py hyperkvasir).")
    try:
        names = json.loads(path.read_text(encoding="utf-8")).get("class_names")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"split file {str(path)!r} is not a JSON object: {e}.") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"split file {str(path)!r} records no `class_names` list (rewrite it with prepare_hyperkvasir).")
    return names


def prepare_hyperkvasir(data_dir: str, class_set: str = "anatomical-landmarks", seed: int = 42,
                        check_classes: bool = True, overwrite: bool = False) -> str:
    """Hyperkvasir labelled images: ``<data_dir>/labeled-images/<tract>/<category>/<class>/<uuid>.jpg``.

    Lists the images as SSL4GIE's ``Classification/train_classification.py::build`` does: the tract folders of
    ``labeled-images`` sorted, in each the sub-folders sorted, of those the ``class_set`` ones
    (``anatomical-landmarks``: 6 classes, ``pathological-findings``: 12), their class folders sorted; class ``k``
    is the k-th class folder in that order (so the lower-GI classes come before the upper-GI ones, each group
    sorted), and the images are the class folders' ``*.jpg`` sorted, class after class. That list is split
    80/10/10 with :func:`monai_ssl_ext.data.split_80_10_10` (the source's ``split_ids``, seed 42) and written to
    ``<data_dir>/<class_set>_split.json`` (:func:`hyperkvasir_split_file`) with items
    ``{"image": "labeled-images/<tract>/<category>/<class>/<uuid>.jpg", "label": k, "class_name": "<class>"}``
    and the fields ``class_set``, ``class_names`` (index = label), ``class_counts`` (all images), ``counts`` (per
    list) and ``seed``.

    The split is frozen: when the file exists it is reused as it is (and its path returned) unless
    ``overwrite``; a file written for another ``class_set`` or ``seed`` is an error.

    Args:
        data_dir: the Hyperkvasir root (the folder holding ``labeled-images``).
        class_set: ``anatomical-landmarks`` or ``pathological-findings``.
        seed: split seed (42 in the source).
        check_classes: require exactly the release's class folders of ``class_set``
            (:data:`monai_ssl_ext.demo.hyperkvasir.HYPERKVASIR_CLASSES`): a missing or an extra class folder would
            silently renumber the classes.
        overwrite: rewrite an existing split file.

    Returns:
        The path of the split file.

    Raises:
        FileNotFoundError: ``labeled-images`` or the ``class_set`` folders are missing, or (``check_classes``) a
            class folder of the release is missing (each named).
        ValueError: a class folder holds no ``*.jpg`` (named), an unexpected class folder (``check_classes``),
            or an existing split file of another class set / seed.
    """
    from .data import split_80_10_10

    out = hyperkvasir_split_file(data_dir, class_set, must_exist=False)
    if os.path.isfile(out) and not overwrite:
        try:
            info = json.loads(Path(out).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"prepare_hyperkvasir: existing split file {out!r} is not valid JSON ({e}); "
                             "remove it or pass --overwrite true.") from None
        if info.get("class_set") != class_set or info.get("seed") != seed:
            raise ValueError(f"prepare_hyperkvasir: existing split file {out!r} was written for class_set "
                             f"{info.get('class_set')!r}, seed {info.get('seed')!r} (asked: {class_set!r}, {seed}); "
                             "pass --overwrite true to replace it.")
        return out
    root = Path(data_dir) / "labeled-images"
    if not root.is_dir():
        raise FileNotFoundError(f"prepare_hyperkvasir: folder {str(root)!r} not found (expected "
                                "<data_dir>/labeled-images/<tract>/<category>/<class>/*.jpg).")

    def subdirs(d: Path) -> list[Path]:
        # the source sorts glob("<d>/*/") paths, which end in "/": "barretts-short-segment/" < "barretts/"
        return sorted((p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name + "/")

    class_dirs = [c for tract in subdirs(root) for sub in subdirs(tract) if sub.name == class_set for c in subdirs(sub)]
    if not class_dirs:
        raise FileNotFoundError(f"prepare_hyperkvasir: no class folders in {str(root)}/*/{class_set}/.")
    rel = [c.relative_to(data_dir).as_posix() for c in class_dirs]
    if check_classes:
        from .demo.hyperkvasir import HYPERKVASIR_CLASSES

        expected = sorted(f"labeled-images/{t}/{cat}/{c}" for (t, cat), cs in HYPERKVASIR_CLASSES.items()
                          if cat == class_set for c in cs)
        missing = sorted(set(expected) - set(rel))
        extra = sorted(set(rel) - set(expected))
        if missing:
            raise FileNotFoundError(f"prepare_hyperkvasir: class folder(s) missing under {data_dir}: {missing} "
                                    f"(the release has {len(expected)} {class_set} classes; pass "
                                    "--check_classes false to split whatever folders exist).")
        if extra:
            raise ValueError(f"prepare_hyperkvasir: unexpected class folder(s) under {data_dir}: {extra} "
                             "(pass --check_classes false to keep them as classes).")
    items, class_counts = [], {}
    for k, c in enumerate(class_dirs):
        files = sorted(p.name for p in c.iterdir() if p.is_file() and p.name.endswith(".jpg") and not p.name.startswith("."))
        if not files:
            raise ValueError(f"prepare_hyperkvasir: class folder {str(c)!r} holds no *.jpg images.")
        class_counts[c.name] = len(files)
        items += [{"image": f"{rel[k]}/{f}", "label": k, "class_name": c.name} for f in files]
    split = split_80_10_10(items, seed=seed)
    return write_split(split, out, layout="hyperkvasir", class_set=class_set,
                       class_names=[c.name for c in class_dirs], class_counts=class_counts,
                       source="SSL4GIE Classification/train_classification.py::build + Data/dataloaders.py::split_ids",
                       seed=seed, counts={k: len(v) for k, v in split.items()})


__all__ += ["BOXES_FILE", "kvasir_detection_items", "read_kvasir_boxes"]

#: Kvasir-SEG's box file, next to ``images/`` (SSL4GIE polyp detection)
BOXES_FILE = "bounding-boxes.json"


def read_kvasir_boxes(json_path: str | os.PathLike, images: Sequence[str | os.PathLike]) -> dict[str, dict]:
    """The boxes of ``images`` from Kvasir-SEG's ``bounding-boxes.json`` (``{"<id>": {"height": H, "width": W,
    "bbox": [{"label": "polyp", "xmin", "ymin", "xmax", "ymax"}, ...]}}``, ``<id>`` = the image's file stem), one
    foreground class (label 1), as the source's ``get_Kvasir_target_vals`` reads them.

    Returns ``{id: {"boxes": float32 (N, 4) [xmin, ymin, xmax, ymax] in pixels (x along the width), "labels":
    int64 (N,) ones, "height": H, "width": W}}`` (``N`` may be 0: an image without a polyp).

    Every box is checked against the image's real size (read from the image file, not from the JSON):
    ``0 <= xmin < xmax <= W`` and ``0 <= ymin < ymax <= H``; the JSON's ``height`` / ``width`` must agree with it.

    Raises:
        FileNotFoundError: the JSON file or an image does not exist.
        ValueError: the JSON is unreadable, an image id is missing from it, an entry or box is malformed, a
            label is not ``polyp``, a box lies outside its image or is empty (each message names the id and the
            JSON file).
    """
    import numpy as np
    from PIL import Image

    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(f"box file {str(json_path)!r} does not exist (Kvasir-SEG's {BOXES_FILE}).")
    try:
        with open(json_path, encoding="utf-8") as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"box file {str(json_path)!r} is not valid JSON: {e}.") from None
    if not isinstance(content, dict):
        raise ValueError(f"box file {str(json_path)!r}: expected an object {{id: {{'bbox': [...]}}}}, "
                         f"got {type(content).__name__}.")
    out: dict[str, dict] = {}
    for image in images:
        image = Path(image)
        key = image.stem
        where = f"image id {key!r} in {str(json_path)!r}"
        if key not in content:
            raise ValueError(f"{where}: no entry for this image ({image}); the box file has {len(content)} ids.")
        entry = content[key]
        if not isinstance(entry, dict) or not isinstance(entry.get("bbox"), list):
            raise ValueError(f"{where}: expected {{'height', 'width', 'bbox': [...]}}, got {entry!r:.200}.")
        if not image.is_file():
            raise FileNotFoundError(f"image {str(image)!r} (boxes: {where}) does not exist.")
        with Image.open(image) as pic:
            width, height = pic.size
        for name, real in (("height", height), ("width", width)):
            if name in entry and int(entry[name]) != real:
                raise ValueError(f"{where}: {name} {entry[name]} but the image {str(image)!r} is "
                                 f"{width} x {height} (width x height).")
        boxes = np.zeros((len(entry["bbox"]), 4), np.float32)
        for i, box in enumerate(entry["bbox"]):
            try:
                xmin, ymin, xmax, ymax = (float(box[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{where}: box {i} {box!r} needs numeric xmin, ymin, xmax, ymax.") from None
            if str(box.get("label", "polyp")) != "polyp":
                raise ValueError(f"{where}: box {i} has label {box['label']!r}; the only class is 'polyp'.")
            if not (0 <= xmin < xmax <= width and 0 <= ymin < ymax <= height):
                raise ValueError(
                    f"{where}: box {i} (xmin {xmin:g}, ymin {ymin:g}, xmax {xmax:g}, ymax {ymax:g}) is empty or "
                    f"outside the image ({width} wide, {height} high: needs 0 <= xmin < xmax <= {width} and "
                    f"0 <= ymin < ymax <= {height})."
                )
            boxes[i] = (xmin, ymin, xmax, ymax)
        out[key] = {"boxes": boxes, "labels": np.ones(len(boxes), np.int64), "height": height, "width": width}
    return out


def kvasir_detection_items(split_file: str | os.PathLike, key: str, boxes_file: str | os.PathLike | None = None,
                           base_dir: str | os.PathLike | None = None) -> list[dict]:
    """Detection items of one list (``training`` / ``validation`` / ``test``) of Kvasir-SEG's frozen split
    (:func:`prepare_kvasir_seg`: the same 80/10/10 split as segmentation, the source's ``split_ids`` over the
    sorted image names): ``{"image": path, "boxes": float32 (N, 4) xyxy, "labels": int64 (N,)}`` with the boxes
    of :func:`read_kvasir_boxes` (``boxes_file``: default ``bounding-boxes.json`` next to the split file)."""
    from .data import load_datalist

    items = load_datalist(split_file, key, base_dir=base_dir, is_segmentation=False)
    boxes_file = Path(split_file).parent / BOXES_FILE if boxes_file is None else boxes_file
    boxes = read_kvasir_boxes(boxes_file, [item["image"] for item in items])
    return [{"image": item["image"], "boxes": boxes[Path(item["image"]).stem]["boxes"],
             "labels": boxes[Path(item["image"]).stem]["labels"]} for item in items]


# --- C3VD (SSL4GIE depth estimation, bundle gie_depth) ---------------------------------------------------------
__all__ += ["C3VD_SPLIT_FILE", "C3VD_TEST_VIDEOS", "C3VD_VAL_VIDEOS", "c3vd_video_frames", "prepare_c3vd"]

#: the frozen C3VD split written next to the data
C3VD_SPLIT_FILE = "c3vd_split.json"
#: SSL4GIE's fixed test and validation videos (``Depth_estimation/train_depth.py``), ``(folder, video)``. The
#: source names the folders ``<folder>_under_review`` (the C3VD release at the time); both spellings are accepted.
C3VD_TEST_VIDEOS = (("trans_t2_b", "t2v2"), ("cecum_t4_b", "c4v3"))
C3VD_VAL_VIDEOS = (("trans_t4_a", "t4v1"), ("cecum_t2_c", "c2v3"))
_C3VD_SUFFIX = "_under_review"


def c3vd_video_frames(video_dir: str | os.PathLike, data_dir: str | os.PathLike) -> list[dict]:
    """The frames of one C3VD video folder: ``<k>_color.png`` paired with ``<k>_depth.tiff``, in frame order
    (``int(k)``, the order of the source's evaluation), as ``{"image", "depth"}`` paths relative to ``data_dir``.

    Raises:
        ValueError: a colour frame without its depth file or the reverse (named), or a frame name whose ``k`` is
            not an integer.
    """
    video = Path(video_dir)
    colors = {p.name[: -len("_color.png")]: p for p in video.glob("*_color.png")}
    depths = {p.name[: -len("_depth.tiff")]: p for p in video.glob("*_depth.tiff")}
    unpaired = sorted(set(colors) ^ set(depths))
    if unpaired:
        k = unpaired[0]
        missing = f"{k}_depth.tiff" if k in colors else f"{k}_color.png"
        raise ValueError(f"prepare_c3vd: {str(video / missing)!r} is missing ({len(unpaired)} unpaired frames in "
                         f"{str(video)!r}; every <k>_color.png needs <k>_depth.tiff)")
    bad = [k for k in colors if not k.isdigit()]
    if bad:
        raise ValueError(f"prepare_c3vd: frame {str(colors[bad[0]])!r} is not named <k>_color.png with an integer k")
    root = Path(data_dir)
    return [{"image": colors[k].relative_to(root).as_posix(), "depth": depths[k].relative_to(root).as_posix()}
            for k in sorted(colors, key=int)]


def _fixed_video(root: Path, folder: str, video: str) -> Path:
    candidates = [root / f"{folder}{_C3VD_SUFFIX}" / video, root / folder / video]
    found = [c for c in candidates if c.is_dir()]
    if not found:
        raise FileNotFoundError(f"prepare_c3vd: SSL4GIE's fixed video {folder}/{video} not found: neither "
                                f"{str(candidates[0])!r} nor {str(candidates[1])!r} exists.")
    if len(found) > 1:
        raise ValueError(f"prepare_c3vd: both {str(found[0])!r} and {str(found[1])!r} exist; keep one.")
    return found[0]


def prepare_c3vd(data_dir: str) -> str:
    """C3VD (Bobrow et al., MedIA 2023): ``<data_dir>/<folder>/<video>/<k>_color.png`` + ``<k>_depth.tiff``
    (16-bit depth, 0 .. 65535 for 0 .. 100 mm).

    The test videos are SSL4GIE's ``trans_t2_b/t2v2`` and ``cecum_t4_b/c4v3``, the validation videos
    ``trans_t4_a/t4v1`` and ``cecum_t2_c/c2v3`` (folder names with or without the source's ``_under_review``
    suffix); every other ``*/*/`` video folder is training, as the source's ``train_depth.py``. Writes
    ``<data_dir>/c3vd_split.json`` with items ``{"image": "<folder>/<video>/<k>_color.png", "depth":
    "<folder>/<video>/<k>_depth.tiff"}`` (videos in sorted order, frames by ``k``). Returns the path written.

    Raises:
        FileNotFoundError: ``data_dir`` or a fixed video is missing.
        ValueError: unpaired frames (named), no training frames, or a fixed video without frames (a training
            folder without frames is skipped with a warning).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"prepare_c3vd: data folder {str(root)!r} not found.")
    test = [_fixed_video(root, f, v) for f, v in C3VD_TEST_VIDEOS]
    val = [_fixed_video(root, f, v) for f, v in C3VD_VAL_VIDEOS]
    fixed = {p.resolve() for p in test + val}
    train = [p for p in sorted(root.glob("*/*/")) if p.is_dir() and p.resolve() not in fixed]
    split: dict[str, list] = {}
    for key, videos in (("training", train), ("validation", val), ("test", test)):
        items = []
        for video in videos:
            frames = c3vd_video_frames(video, root)
            if not frames and key != "training":
                raise ValueError(f"prepare_c3vd: {key} video folder {str(video)!r} holds no <k>_color.png frames.")
            if not frames:  # a stray folder: the source's glob lists nothing from it either
                logging.getLogger("monai_ssl_ext.gie").warning(f"prepare_c3vd: {video} holds no frames, skipped")
            items += frames
        if not items:
            raise ValueError(f"prepare_c3vd: no {key} frames under {str(root)!r} (every */*/ folder besides the "
                             "fixed validation / test videos is training).")
        split[key] = items
    return write_split(split, root / C3VD_SPLIT_FILE, layout="c3vd",
                       source="SSL4GIE Depth_estimation/train_depth.py: fixed validation and test videos",
                       videos={k: sorted({Path(i["image"]).parent.as_posix() for i in v}) for k, v in split.items()},
                       counts={k: len(v) for k, v in split.items()})


__all__ += ["check_split_layout"]


def check_split_layout(path: str | os.PathLike, layout: str, key: str = "dataset_layout") -> str:
    """Return ``path`` after checking that the split file exists and was written for ``layout`` (its ``"layout"``
    field, e.g. ``kvasir_seg`` / ``cvc_clinicdb``); errors name the file and the config ``key`` that chose the
    layout, and say which command writes the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"split file {str(p)!r} not found: write it with `python scripts/prepare_ssl4gie.py "
                                f"{layout} --data_dir {p.parent}` (config key `{key}` = {layout!r}).")
    written = json.loads(p.read_text()).get("layout")
    if written is not None and written != layout:
        raise ValueError(f"split file {str(p)!r} was written for layout {written!r}, but config key `{key}` is "
                         f"{layout!r}: set --{key} {written} or point dataset_dir at {layout} data.")
    return str(p)


__all__ += ["detection_items"]


def detection_items(items) -> list[dict]:
    """The items of a detection inference run: detection items (dicts with ``image`` and, where known, ``boxes``
    and ``labels``: the ground truth is drawn beside the predictions) kept as they are, bare image paths as
    ``{"image": path}``."""
    out = []
    for item in items:
        if isinstance(item, Mapping):
            if "image" not in item:
                raise ValueError(f"detection item {dict(item)!r:.200} has no 'image' key")
            out.append(dict(item))
        else:
            out.append({"image": str(item)})
    return out
