"""C3VD-style demo data (colonoscopy frames with registered depth) for SSL4GIE's depth task (bundle gie_depth).

The C3VD release (Bobrow et al., Medical Image Analysis 2023) as SSL4GIE's ``Depth_estimation`` reads it::

    O/<folder>/<video>/<k>_color.png     RGB frame (the release: 1350 x 1080; here ``width x height``, non-square)
    O/<folder>/<video>/<k>_depth.tiff    16-bit depth TIFF of the same size, 0 .. 65535 for 0 .. 100 mm
                                         (0 = no ground truth)
    O/c3vd_split.json                    the frozen split (monai_ssl_ext.gie.prepare_c3vd)

The folders carry the source's names, with its ``_under_review`` suffix (``trans_t2_b_under_review/t2v2``): the
fixed test videos ``trans_t2_b/t2v2``, ``cecum_t4_b/c4v3``, the fixed validation videos ``trans_t4_a/t4v1``,
``cecum_t2_c/c2v3``, and ``n_train_videos`` training videos (``cecum_t1_a/c1v1``, ``sigmoid_t3_a/s3v1``, ...).
Frames are numbered ``k = 0 .. frames_per_video - 1``.

Each frame looks down a smooth "colon": depth is a tilted surface with a deep lumen (a Gaussian well) whose centre
drifts from frame to frame; the picture is lit from the camera, brightness falling with depth (about 1 / d),
times a reddish tissue texture, so depth can be learnt from the picture. In every other frame a small corner
patch has no ground truth (depth 0), as invalid pixels do in the release. The output is a function of the
arguments (seeded, no global state).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._draw import _tissue

__all__ = ["C3VD_DEMO_TRAIN_VIDEOS", "c3vd", "c3vd_frame"]

#: training videos written after the four fixed ones (folder, video), taken in order
C3VD_DEMO_TRAIN_VIDEOS = (("cecum_t1_a", "c1v1"), ("sigmoid_t3_a", "s3v1"), ("trans_t1_a", "t1v1"),
                          ("desc_t4_a", "d4v1"))


def c3vd_frame(rng: np.random.Generator, height: int, width: int, t: float) -> tuple[np.ndarray, np.ndarray]:
    """One frame: an RGB picture ``(H, W, 3)`` uint8 and its depth ``(H, W)`` uint16 (> 0 everywhere)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / max(height - 1, 1), xx / max(width - 1, 1)
    cy, cx = 0.5 + 0.25 * np.sin(t), 0.5 + 0.25 * np.cos(1.3 * t)
    tilt = rng.uniform(-0.15, 0.15, 2)
    well = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(0.04, 0.08)))
    depth = 0.12 + 0.1 * (tilt[0] * (yy - 0.5) + tilt[1] * (xx - 0.5)) + rng.uniform(0.4, 0.6) * well
    depth = np.clip(depth, 0.03, 0.95)
    light = np.clip(0.06 / depth, 0.0, 1.2)[..., None]
    img = _tissue(rng, height, width) * light + rng.normal(0, 2, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8), np.round(depth * 65535).astype(np.uint16)


def c3vd(out_dir: str, n_train_videos: int = 4, frames_per_video: int = 6, width: int = 48, height: int = 40,
         seed: int = 0) -> dict:
    """C3VD-style demo data (layout in the module docstring) and its frozen split.

    Args:
        out_dir: output root.
        n_train_videos: training videos besides the fixed validation / test ones (1 .. 4).
        frames_per_video: frames per video (at least 1).
        width, height: frame size (non-square, as the release; SSL4GIE pads to a square).
        seed: random seed.

    Returns ``{"split": <path of c3vd_split.json>, "videos": [...], "counts": {...}}``.
    """
    from ..gie import C3VD_TEST_VIDEOS, C3VD_VAL_VIDEOS, prepare_c3vd

    if not 1 <= int(n_train_videos) <= len(C3VD_DEMO_TRAIN_VIDEOS):
        raise ValueError(f"c3vd: n_train_videos must be in 1 .. {len(C3VD_DEMO_TRAIN_VIDEOS)}, got {n_train_videos}")
    if int(frames_per_video) < 1:
        raise ValueError(f"c3vd: frames_per_video must be >= 1, got {frames_per_video}")
    if min(int(width), int(height)) < 16:
        raise ValueError(f"c3vd: width and height must be at least 16 px, got {width} x {height}")
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    videos = list(C3VD_TEST_VIDEOS) + list(C3VD_VAL_VIDEOS) + list(C3VD_DEMO_TRAIN_VIDEOS[: int(n_train_videos)])
    written = []
    for folder, video in videos:
        vdir = root / f"{folder}_under_review" / video
        vdir.mkdir(parents=True, exist_ok=True)
        phase = rng.uniform(0, 2 * np.pi)
        for k in range(int(frames_per_video)):
            img, depth = c3vd_frame(rng, int(height), int(width), phase + 0.7 * k)
            if k % 2 == 1:  # a corner without ground truth
                depth[: height // 5, : width // 5] = 0
            Image.fromarray(img).save(vdir / f"{k}_color.png")
            Image.fromarray(depth).save(vdir / f"{k}_depth.tiff")
        written.append(vdir.relative_to(root).as_posix())
    split = prepare_c3vd(str(root))
    import json

    counts = json.loads(Path(split).read_text())["counts"]
    return {"split": split, "videos": written, "counts": counts}
