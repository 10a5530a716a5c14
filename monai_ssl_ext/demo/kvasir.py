"""Polyp demo data in the Kvasir-SEG and CVC-ClinicDB layouts (SSL4GIE polyp segmentation / detection).

``kvasir_seg`` writes the Kvasir-SEG release layout (Jha et al., MMM 2020)::

    O/images/<id>.jpg            RGB JPEG, non-square, the size varies per image
    O/masks/<id>.jpg             greyscale JPEG of the same size, polyp ~255, background ~0
                                 (JPEG like the release: threshold at 128 when reading)
    O/bounding-boxes.json        {"<id>": {"height": H, "width": W,
                                           "bbox": [{"label": "polyp", "xmin": .., "ymin": .., "xmax": .., "ymax": ..}]}}
    O/split_80_10_10.json        the frozen 80/10/10 split (monai_ssl_ext.gie.prepare_kvasir_seg)

``<id>`` is a 25-character lowercase alphanumeric name like the release's (``cju0qkwl35piu0993l0dewei2``).
``bounding-boxes.json`` holds one box per 8-connected component of the mask *as read back* (the decoded JPEG
thresholded at 128), with integer pixel-corner coordinates: the component covers columns ``xmin .. xmax - 1`` and
rows ``ymin .. ymax - 1`` (``xmax - xmin`` is the box width in pixels). An image without a polyp has ``"bbox": []``.

``cvc_clinicdb`` writes the CVC-ClinicDB release layout (Bernal et al., CMIG 2015)::

    O/Original/<k>.tif           RGB TIFF, k = 1..n (the release numbers its 612 frames 1..612)
    O/Ground Truth/<k>.tif       greyscale TIFF, 0 background / 255 polyp (lossless)
    O/split_80_10_10.json        monai_ssl_ext.gie.prepare_cvc_clinicdb

CVC frames all share one non-square size (the release: 384 x 288); here ``(3 * size // 4, size)``.

Each picture is endoscopy-like tissue with 1-2 elliptic "polyps" (brighter, pinkish, shaded domes with a rim);
a few pictures have no polyp (about 1 in 7 at random, plus the first validation and the first test item of the frozen
split), so false positives are counted in every split.
The output is a function of the arguments (seeded, no global state).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._draw import _smooth_noise, _tissue, _vignette

__all__ = ["cvc_clinicdb", "kvasir_seg", "mask_boxes"]

_ID_CHARS = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))


def _release_id(rng: np.random.Generator) -> str:
    return "cj" + "".join(rng.choice(_ID_CHARS, 23))


def _n_polyps(rng: np.random.Generator, empty: bool) -> int:
    """0 when ``empty``, else 0 for about 1 in 7 pictures and 1 or 2 otherwise."""
    if empty or rng.random() < 1 / 7:
        return 0
    return int(rng.integers(1, 3))


def _forced_empty(names: list[str]) -> set[str]:
    """The first validation and the first test item of the frozen split: pictures without a polyp, so every split
    of the demo data has one (false positives are counted in validation and test)."""
    from ..data import split_80_10_10

    split = split_80_10_10(sorted(names))
    return {split["validation"][0], split["test"][0]}


def _polyp_picture(rng: np.random.Generator, h: int, w: int, n_polyps: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB picture (h, w, 3) uint8 and its polyp mask (h, w) bool with ``n_polyps`` separated ellipses."""
    img = _tissue(rng, h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    s = min(h, w)
    mask = np.zeros((h, w), bool)
    centres: list[tuple[float, float, float]] = []
    for _ in range(n_polyps):
        for _attempt in range(20):  # keep polyps apart so each is its own connected component
            a, b = rng.uniform(0.1, 0.2, 2) * s
            cy, cx = rng.uniform(0.22, 0.78) * h, rng.uniform(0.22, 0.78) * w
            if all(np.hypot(cy - y, cx - x) > max(a, b) + r + 3 for y, x, r in centres):
                break
        else:
            continue
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
        r2 = u**2 + v**2
        inside = r2 <= 1.0
        dome = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))[..., None]  # shading, brightest at the top
        colour = np.array([235, 150, 140], np.float32) * (0.75 + 0.25 * dome)
        img = np.where(inside[..., None], 0.25 * img + 0.75 * colour, img)
        rim = (r2 > 1.0) & (r2 <= 1.25)
        img[rim] *= 0.7
        mask |= inside
        centres.append((cy, cx, max(a, b)))
    img = img * (0.9 + 0.2 * _smooth_noise(rng, h, w, 3)[..., None]) * _vignette(h, w)
    img = img + rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def mask_boxes(mask: np.ndarray) -> list[dict]:
    """One ``{"label": "polyp", "xmin", "ymin", "xmax", "ymax"}`` box per 8-connected component of the boolean
    ``mask``, integer pixel corners (``xmax``/``ymax`` exclusive), in the order of scipy's component labels."""
    from scipy import ndimage

    labels, _ = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3), int))
    boxes = []
    for sl in ndimage.find_objects(labels):
        if sl is None:
            continue
        boxes.append({"label": "polyp", "xmin": int(sl[1].start), "ymin": int(sl[0].start),
                      "xmax": int(sl[1].stop), "ymax": int(sl[0].stop)})
    return boxes


def _check(n: int, size: int, name: str, min_n: int = 6) -> None:
    if int(n) < min_n:
        raise ValueError(f"{name}: n must be at least {min_n} (the 80/10/10 split needs it), got {n}.")
    if int(size) < 32:
        raise ValueError(f"{name}: size must be at least 32 px, got {size}.")


def kvasir_seg(out_dir: str, n: int = 20, size: int = 64, seed: int = 0, quality: int = 90) -> dict:
    """Kvasir-SEG-style demo data (the module docstring gives the layout) and its frozen split.

    Args:
        out_dir: output root.
        n: number of images (at least 6).
        size: base size; each image is ``round(f_h * size) x round(f_w * size)`` with f in [0.8, 1.3]
            drawn per image (non-square, varying like the release's 332x487 .. 1920x1072).
        seed: random seed.
        quality: JPEG quality of images and masks.

    Returns:
        ``{"images": n, "empty": number of images without a polyp, "boxes": path, "split": path}``.
    """
    from PIL import Image

    from ..gie import prepare_kvasir_seg

    _check(n, size, "kvasir_seg")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    boxes: dict[str, dict] = {}
    empty = 0
    names = [_release_id(np.random.default_rng([seed, 13, i])) for i in range(int(n))]
    if len(set(names)) != len(names):
        raise RuntimeError("kvasir_seg: image ids collide; use another seed")
    forced = _forced_empty([f"{name}.jpg" for name in names])
    for i, name in enumerate(names):
        rng = np.random.default_rng([seed, 11, i])
        h, w = (int(round(f * size)) for f in rng.uniform(0.8, 1.3, 2))
        if h == w:
            w += 4
        img, mask = _polyp_picture(rng, h, w, _n_polyps(rng, f"{name}.jpg" in forced))
        Image.fromarray(img).save(out / "images" / f"{name}.jpg", quality=quality)
        Image.fromarray((mask * 255).astype(np.uint8)).save(out / "masks" / f"{name}.jpg", quality=quality)
        with Image.open(out / "masks" / f"{name}.jpg") as m:  # boxes of the mask as a reader sees it
            decoded = np.asarray(m.convert("L")) >= 128
        bb = mask_boxes(decoded)
        empty += not bb
        boxes[name] = {"height": h, "width": w, "bbox": bb}
    with open(out / "bounding-boxes.json", "w", encoding="utf-8") as f:
        json.dump(boxes, f, indent=1)
        f.write("\n")
    split = prepare_kvasir_seg(str(out))
    return {"images": int(n), "empty": empty, "boxes": str(out / "bounding-boxes.json"), "split": split}


def cvc_clinicdb(out_dir: str, n: int = 16, size: int = 64, seed: int = 0) -> dict:
    """CVC-ClinicDB-style demo data (the module docstring gives the layout) and its frozen split.

    Args:
        out_dir: output root.
        n: number of frames (at least 6), written as ``1.tif`` .. ``<n>.tif``.
        size: frame width; every frame is ``(3 * size // 4) x size`` (height x width).
        seed: random seed.

    Returns:
        ``{"images": n, "empty": number of frames without a polyp, "split": path}``.
    """
    from PIL import Image

    from ..gie import prepare_cvc_clinicdb

    _check(n, size, "cvc_clinicdb")
    out = Path(out_dir)
    (out / "Original").mkdir(parents=True, exist_ok=True)
    (out / "Ground Truth").mkdir(parents=True, exist_ok=True)
    h, w = 3 * int(size) // 4, int(size)
    empty = 0
    forced = _forced_empty([f"{k}.tif" for k in range(1, int(n) + 1)])
    for k in range(1, int(n) + 1):
        rng = np.random.default_rng([seed, 12, k])
        img, mask = _polyp_picture(rng, h, w, _n_polyps(rng, f"{k}.tif" in forced))
        empty += not mask.any()
        Image.fromarray(img).save(out / "Original" / f"{k}.tif")
        Image.fromarray((mask * 255).astype(np.uint8)).save(out / "Ground Truth" / f"{k}.tif")
    split = prepare_cvc_clinicdb(str(out))
    return {"images": int(n), "empty": empty, "split": split}
