"""Hyperkvasir-style demo data (GI endoscopy pictures) for the SSL4GIE recipes.

The real Hyperkvasir release (Borgli et al., Sci. Data 2020) comes as two archives, and ``hyperkvasir``
writes both layouts, with JPEG file names that are random UUIDs like the real ones::

    O/unlabeled-images/images/<uuid>.jpg          the unlabelled set: ONE flat folder of JPEGs
                                                  (about 100k in the release; the SSL pretraining data)
    O/labeled-images/<tract>/<category>/<class>/<uuid>.jpg
                                                  tract    lower-gi-tract | upper-gi-tract
                                                  category anatomical-landmarks | pathological-findings
    O/knn.csv                                     header "path,label": the anatomical-landmarks
                                                  images, label = class name (kNN monitor list)
    O/unlabeled.csv                               header "path,label": the unlabelled images, label -1
    O/<class_set>_split.json                      the frozen 80/10/10 classification splits of both class sets
                                                  (monai_ssl_ext.gie.prepare_hyperkvasir)

Paths in the CSVs are relative to ``O``. The classes are the release's own (:data:`HYPERKVASIR_CLASSES`): 6
anatomical landmarks (cecum, ileum, retroflex-rectum; pylorus, retroflex-stomach, z-line) and 12 pathological
findings, which is what SSL4GIE's classification task globs (``*/anatomical-landmarks/*`` and
``*/pathological-findings/*``, classes = sorted folder names). The release's other two categories
(therapeutic interventions, quality of mucosal views) are not written.

Pictures look vaguely endoscopic: reddish textured tissue, a circular vignette fading to black corners, some with a
green "ScopeGuide" box in the lower-left corner as in the real lower-GI images (at random, not tied to the class).
Each class has its own colour tint and motif (bright blobs / a dark lumen / stripes, a class-dependent count), so a
kNN on simple features (e.g. mean colour) beats chance. Unlabelled pictures draw their content from a random class,
as the unlabelled set is the same kind of footage. Sizes vary between pictures (non-square, 64-96 px by default),
like the real set's mixed resolutions. The output is a function of the arguments (seeded, no global state).
"""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

import numpy as np

from ._draw import _smooth_noise, _tissue, _vignette

__all__ = ["HYPERKVASIR_CLASSES", "hyperkvasir"]

#: (tract, category) -> class folder names of the Hyperkvasir labelled release.
HYPERKVASIR_CLASSES: dict[tuple[str, str], tuple[str, ...]] = {
    ("lower-gi-tract", "anatomical-landmarks"): ("cecum", "ileum", "retroflex-rectum"),
    ("upper-gi-tract", "anatomical-landmarks"): ("pylorus", "retroflex-stomach", "z-line"),
    ("lower-gi-tract", "pathological-findings"): (
        "hemorrhoids",
        "polyps",
        "ulcerative-colitis-grade-0-1",
        "ulcerative-colitis-grade-1",
        "ulcerative-colitis-grade-1-2",
        "ulcerative-colitis-grade-2",
        "ulcerative-colitis-grade-2-3",
        "ulcerative-colitis-grade-3",
    ),
    ("upper-gi-tract", "pathological-findings"): (
        "barretts",
        "barretts-short-segment",
        "esophagitis-a",
        "esophagitis-b-d",
    ),
}

#: Picture sizes (height, width) drawn per image: mixed and non-square, as in the release.
DEFAULT_SIZES = ((64, 64), (64, 80), (72, 88), (80, 96), (96, 96))

# 6 well separated tints; class k of a category gets tint k % 6 and motif k // 6 (so 12 distinct looks).
_TINTS = np.array(
    [[235, 205, 70], [70, 200, 80], [60, 90, 230], [180, 60, 210], [60, 210, 210], [245, 245, 245]], np.float32
)


def _uuid_name(rng: np.random.Generator) -> str:
    return f"{uuid.UUID(bytes=rng.bytes(16), version=4)}.jpg"


def _picture(rng: np.random.Generator, h: int, w: int, look: int) -> np.ndarray:
    """An endoscopy-like RGB picture (h, w, 3) uint8 whose tint and motif depend on ``look`` (0..11)."""
    tint, motif = _TINTS[look % 6], look // 6
    img = 0.6 * _tissue(rng, h, w) + 0.4 * tint
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    s = min(h, w)
    if motif == 0:  # 1-3 bright blobs (polyp-/fold-like), count set by the tint index
        for _ in range(look % 3 + 1):
            cy, cx = rng.uniform(0.25, 0.75, 2) * (h, w)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (rng.uniform(0.06, 0.1) * s) ** 2))[..., None]
            img = img * (1 - 0.7 * blob) + 0.7 * blob * np.array([250, 230, 200], np.float32)
    else:  # a dark lumen plus stripes whose count is set by the tint index
        cy, cx = rng.uniform(0.35, 0.65, 2) * (h, w)
        lumen = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.12 * s) ** 2))[..., None]
        stripes = 0.5 + 0.5 * np.cos(2 * np.pi * (look % 3 + 2) * (yy + 0.5 * xx) / s + rng.uniform(0, 2 * np.pi))
        img = img * (1 - 0.8 * lumen) * (0.8 + 0.2 * stripes[..., None])
    img = img * (0.9 + 0.2 * _smooth_noise(rng, h, w, 3)[..., None])  # uneven lighting
    vignette = _vignette(h, w)
    img = img * np.where(vignette > 0.3, vignette, 0.0)  # black corners outside the scope's circle
    if rng.random() < 0.5:  # green ScopeGuide box, lower left
        bh, bw = max(4, h // 5), max(4, w // 5)
        img[h - bh - 1 : h - 1, 1 : bw + 1] = (40, 150, 60)
    img = img + rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def hyperkvasir(
    out_dir: str,
    n_unlabeled: int = 48,
    n_per_class: int | tuple = (4, 6),
    sizes=DEFAULT_SIZES,
    seed: int = 0,
    quality: int = 90,
) -> dict:
    """Hyperkvasir-style demo data: the unlabelled folder, the labelled class tree and two ``path,label`` CSVs.

    Args:
        out_dir: output root (the module docstring gives the layout).
        n_unlabeled: number of unlabelled pictures.
        n_per_class: pictures per labelled class: an int, or ``(min, max)`` for a seeded count per class (the
            release is imbalanced too).
        sizes: picture sizes ``(height, width)`` drawn per picture (an int is a square size).
        seed: random seed; the output is a function of the arguments.
        quality: JPEG quality.

    Returns:
        ``{"unlabeled": n, "labeled": {"<tract>/<category>/<class>": n, ...}, "knn_csv": path,
        "unlabeled_csv": path}``.
    """
    from PIL import Image

    sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    sizes = [(int(s), int(s)) if isinstance(s, (int, np.integer)) else (int(s[0]), int(s[1])) for s in sizes]
    if not sizes or min(min(s) for s in sizes) < 16:
        raise ValueError(f"hyperkvasir: sizes must be sizes of at least 16 px, got {sizes!r}.")
    lo, hi = (n_per_class, n_per_class) if isinstance(n_per_class, int) else (int(n_per_class[0]), int(n_per_class[1]))
    if not 1 <= lo <= hi:
        raise ValueError(f"hyperkvasir: n_per_class must be >= 1 (or a (min, max) range), got {n_per_class!r}.")
    if n_unlabeled < 0:
        raise ValueError(f"hyperkvasir: n_unlabeled must be >= 0, got {n_unlabeled}.")
    out = Path(out_dir)

    def save(rng: np.random.Generator, rel_dir: str, look: int) -> str:
        h, w = sizes[int(rng.integers(len(sizes)))]
        rel = f"{rel_dir}/{_uuid_name(rng)}"
        (out / rel_dir).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_picture(rng, h, w, look)).save(out / rel, quality=quality)
        return rel

    looks = {}  # class -> look, 0..5 per anatomical category pair, 0..11 for the pathological findings
    for category in ("anatomical-landmarks", "pathological-findings"):
        names = [c for (_, cat), classes in HYPERKVASIR_CLASSES.items() if cat == category for c in classes]
        looks.update({(category, c): i for i, c in enumerate(names)})

    counts: dict[str, int] = {}
    knn_rows: list[tuple[str, str]] = []
    for ci, ((tract, category), classes) in enumerate(HYPERKVASIR_CLASSES.items()):
        for cj, name in enumerate(classes):
            rng = np.random.default_rng([seed, 1, ci, cj])
            n = int(rng.integers(lo, hi + 1))
            rel_dir = f"labeled-images/{tract}/{category}/{name}"
            rels = [save(rng, rel_dir, looks[category, name]) for _ in range(n)]
            counts[f"{tract}/{category}/{name}"] = n
            if category == "anatomical-landmarks":
                knn_rows += [(r, name) for r in sorted(rels)]

    all_looks = sorted(set(looks.values()))
    unlabeled = []
    for i in range(int(n_unlabeled)):
        rng = np.random.default_rng([seed, 0, i])
        unlabeled.append(save(rng, "unlabeled-images/images", int(rng.choice(all_looks))))

    for name, rows in (("knn.csv", knn_rows), ("unlabeled.csv", [(r, "-1") for r in sorted(unlabeled)])):
        with open(out / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["path", "label"])
            writer.writerows(rows)
    from ..gie import HYPERKVASIR_CLASS_SETS, prepare_hyperkvasir  # the frozen classification splits, as for real data

    splits = {c: prepare_hyperkvasir(str(out), class_set=c, overwrite=True) for c in HYPERKVASIR_CLASS_SETS}
    return {"unlabeled": len(unlabeled), "labeled": counts, "knn_csv": str(out / "knn.csv"),
            "unlabeled_csv": str(out / "unlabeled.csv"), "splits": splits}
