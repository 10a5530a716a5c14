"""Generate small synthetic datasets in the real layouts of the recipes (deterministic by seed).

Usage::

    python scripts/make_demo_data.py cholec --out_dir O [--n_videos 4] [--frames_per_video 20] \\
        [--size 64] [--seed 0] [--fps None]
    python scripts/make_demo_data.py tools --out_dir O [--n_train 8] [--n_val 4] [--n_test 4] \\
        [--size 64] [--seed 0]
    python scripts/make_demo_data.py btcv --out_dir O [--size 32] [--depth 32] [--seed 0]

``cholec`` writes Cholec80-style raw data and then runs ``extract_frames``::

    O/raw/videos/videoXX.mp4                      25 fps, size x size, MPEG-4 Part 2 ("mpeg4")
    O/raw/phase_annotations/videoXX-phase.txt     "Frame<TAB>Phase", one row per frame
    O/frames/{train,val,test}/videoXX/<frame:06d>.jpg
    O/{train,val,test}.csv                        header "path,label", paths relative to O

Video ids are drawn from the Cholec80 train (1-40), val (41-48) and test (49-80) ranges so that
every split gets at least one video (for ``n_videos >= 3``). ``frames_per_video`` is the length
of each video at 25 fps; by default every frame is extracted (``fps=None``), so each video gives
``frames_per_video`` labelled frames. Frames look vaguely endoscopic: a reddish textured
background with a circular vignette, grey elongated "tools" entering from the border and moving
over time, and a phase-specific colour tint plus a phase-specific number of bright "spots", so
a linear probe on the frames can learn the phase. Phases 0..6 progress in order through each
video, with random segment lengths.

``tools`` writes tool-segmentation data::

    O/images/<id>.png      RGB, size x size
    O/masks/<id>.png       uint8, 0 background, 1 tool (exactly the painted grey bars)
    O/datalist.json        {"training": [{"image": "images/<id>.png", "label": "masks/<id>.png"}, ...],
                            "validation": [...], "testing": [...]}

with ids ``train_000``, ``val_000``, ``test_000``, ...
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import extract_frames as _ef  # noqa: E402  (sibling script)

#: Codecs tried in order for the synthetic videos (both ship in the PyAV wheels).
VIDEO_CODECS = ("mpeg4", "libx264")

#: Phase-specific tint colours (RGB), one per Cholec80 phase.
PHASE_TINTS = np.array(
    [
        [235, 205, 70],  # Preparation: yellow
        [70, 200, 80],  # CalotTriangleDissection: green
        [60, 90, 230],  # ClippingCutting: blue
        [180, 60, 210],  # GallbladderDissection: purple
        [60, 210, 210],  # GallbladderPackaging: cyan
        [245, 245, 245],  # CleaningCoagulation: white
        [25, 25, 25],  # GallbladderRetraction: dark
    ],
    dtype=np.float32,
)


# ----------------------------------------------------------------------------------- drawing


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a cells x cells random grid upsampled bilinearly to h x w."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    ys = np.linspace(0, cells, h, dtype=np.float32)
    xs = np.linspace(0, cells, w, dtype=np.float32)
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    g00 = grid[y0][:, x0]
    g01 = grid[y0][:, x0 + 1]
    g10 = grid[y0 + 1][:, x0]
    g11 = grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fy) * (1 - fx) + g01 * (1 - fy) * fx + g10 * fy * (1 - fx) + g11 * fy * fx).astype(np.float32)


def _tissue(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Reddish textured "tissue" background, float32 (h, w, 3) in [0, 255]."""
    coarse = _smooth_noise(rng, h, w, 4)
    fine = _smooth_noise(rng, h, w, max(4, min(h, w) // 4))
    t = 0.6 * coarse + 0.4 * fine
    img = np.empty((h, w, 3), np.float32)
    img[..., 0] = 140 + 90 * t
    img[..., 1] = 35 + 55 * t * fine
    img[..., 2] = 40 + 45 * t * coarse
    return img


def _vignette(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2))
    return np.clip(1.25 - 0.6 * r**2, 0.25, 1.0)[..., None]


def _bar_mask(h: int, w: int, start, angle: float, length: float, width: float):
    """Boolean mask of a straight bar from ``start`` (y, x) along ``angle``, plus a shading map."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = np.sin(angle), np.cos(angle)
    py, px = yy - start[0], xx - start[1]
    along = py * dy + px * dx
    across = -py * dx + px * dy
    mask = (along >= 0) & (along <= length) & (np.abs(across) <= width / 2)
    shade = 1.0 - 0.35 * (np.abs(across) / max(width / 2, 1e-3)) ** 2
    return mask, shade


def _draw_tools(img: np.ndarray, tools: list[dict]) -> np.ndarray:
    """Paint grey bars (opaque) on ``img`` in place; returns the union mask (bool)."""
    h, w = img.shape[:2]
    union = np.zeros((h, w), bool)
    for tool in tools:
        mask, shade = _bar_mask(h, w, tool["start"], tool["angle"], tool["length"], tool["width"])
        grey = tool["grey"] * shade
        img[mask] = np.stack([grey, grey, grey * 1.03], axis=-1)[mask]
        union |= mask
    return union


def _random_tool(rng: np.random.Generator, h: int, w: int) -> dict:
    """A tool entering from a random border point, pointing roughly at the image centre."""
    side = rng.integers(4)
    u = rng.uniform(0.15, 0.85)
    start = [(0.0, u * w), (h - 1.0, u * w), (u * h, 0.0), (u * h, w - 1.0)][side]
    to_centre = np.arctan2(h / 2 - start[0], w / 2 - start[1])
    return {
        "start": start,
        "angle": float(to_centre + rng.uniform(-0.5, 0.5)),
        "length": float(rng.uniform(0.35, 0.7) * min(h, w)),
        "width": float(max(3.0, rng.uniform(0.06, 0.12) * min(h, w))),
        "grey": float(rng.uniform(135, 205)),
    }


# ------------------------------------------------------------------------------------ cholec


def _cholec_ids(n_videos: int) -> list[int]:
    """Video ids spread over the Cholec80 splits: about half train, a quarter val, a quarter test."""
    if n_videos < 1:
        raise ValueError(f"n_videos must be >= 1, got {n_videos}.")
    if n_videos == 1:
        return [1]
    if n_videos == 2:
        return [1, 49]
    n_val = min(8, max(1, n_videos // 4))
    n_test = min(32, max(1, n_videos // 4))
    n_train = n_videos - n_val - n_test
    if n_train > 40:
        raise ValueError(f"n_videos={n_videos} exceeds the 80 Cholec80 ids.")
    return list(range(1, n_train + 1)) + list(range(41, 41 + n_val)) + list(range(49, 49 + n_test))


def _phase_sequence(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """Phases 0..6 in order over ``n_frames`` with random segment lengths."""
    n_ph = len(_ef.PHASES)
    weights = rng.uniform(0.6, 1.4, n_ph)
    bounds = np.cumsum(weights) / weights.sum() * n_frames
    t = np.arange(n_frames) + 0.5
    return np.minimum(np.searchsorted(bounds, t, side="right"), n_ph - 1).astype(int)


def _cholec_frames(rng: np.random.Generator, phases: np.ndarray, size: int) -> np.ndarray:
    """Synthetic endoscopic frames (T, size, size, 3) uint8 for a phase sequence."""
    pad = max(4, size // 4)
    tissue = _tissue(rng, size + 2 * pad, size + 2 * pad)
    vign = _vignette(size, size)
    n = len(phases)
    tools = [_random_tool(rng, size, size) for _ in range(2)]
    drift = rng.uniform(-1.0, 1.0, 2)
    spot_pos = rng.uniform(0.2, 0.8, (7, 2)) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    frames = np.empty((n, size, size, 3), np.uint8)
    for t, ph in enumerate(phases):
        oy = int(np.clip(pad + drift[0] * t * 0.5, 0, 2 * pad))
        ox = int(np.clip(pad + drift[1] * t * 0.5, 0, 2 * pad))
        img = tissue[oy : oy + size, ox : ox + size].copy()
        img = 0.65 * img + 0.35 * PHASE_TINTS[ph]
        for k in range(ph % 3 + 1):  # phase-specific number of bright spots (1..3)
            cy, cx = spot_pos[(ph + k) % 7]
            spot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.06 * size) ** 2))[..., None]
            img = img * (1 - 0.6 * spot) + 0.6 * spot * PHASE_TINTS[(ph + 3) % 7]
        n_tools = 1 + (ph >= 2)
        moving = []
        for tool in tools[:n_tools]:
            tool = dict(tool)
            tool["angle"] += 0.15 * np.sin(0.3 * t + tool["grey"])
            tool["length"] *= 0.85 + 0.15 * np.sin(0.2 * t)
            moving.append(tool)
        _draw_tools(img, moving)
        img = img * vign + rng.normal(0, 3, img.shape).astype(np.float32)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 25, codec: str | None = None) -> str:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB to ``path`` with PyAV; returns the codec used."""
    import av

    codecs = (codec,) if codec else VIDEO_CODECS
    last_err: Exception | None = None
    for name in codecs:
        try:
            av.codec.Codec(name, "w")
        except Exception as e:  # codec not in this FFmpeg build
            last_err = e
            continue
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream(name, rate=fps)
            stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
            stream.pix_fmt = "yuv420p"
            stream.bit_rate = 4_000_000
            stream.thread_count = 1  # deterministic output
            for arr in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return name
    raise RuntimeError(f"none of the video codecs {codecs} is available in PyAV: {last_err}")


def cholec(
    out_dir: str,
    n_videos: int = 4,
    frames_per_video: int = 20,
    size: int = 64,
    seed: int = 0,
    fps: float | None = None,
) -> dict:
    """Cholec80-style demo data: raw videos + phase annotations, then extracted frames and CSVs.

    Args:
        out_dir: output root (see the module docstring for the layout).
        n_videos: number of videos; ids cover train, val and test when ``n_videos >= 3``.
        frames_per_video: frames per video (at 25 fps).
        size: frame size (even; the video is size x size and frames are extracted at it).
        seed: random seed; the output is a function of the arguments.
        fps: extraction rate passed to ``extract_frames`` (None = every frame).

    Returns:
        ``{"video_ids": [...], "codec": ..., "frames": {split: count}}``.
    """
    if frames_per_video < 1:
        raise ValueError(f"frames_per_video must be >= 1, got {frames_per_video}.")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16 (yuv420p video), got {size}.")
    out = Path(out_dir)
    raw = out / "raw"
    (raw / "phase_annotations").mkdir(parents=True, exist_ok=True)
    ids = _cholec_ids(n_videos)
    codec = None
    for vid in ids:
        rng = np.random.default_rng([seed, vid])
        phases = _phase_sequence(rng, frames_per_video)
        frames = _cholec_frames(rng, phases, size)
        codec = write_video(raw / "videos" / f"video{vid:02d}.mp4", frames, fps=_ef.NATIVE_FPS)
        with open(raw / "phase_annotations" / f"video{vid:02d}-phase.txt", "w", encoding="utf-8") as f:
            f.write("Frame\tPhase\n")
            for i, ph in enumerate(phases):
                f.write(f"{i}\t{_ef.PHASES[ph]}\n")
    counts = _ef.extract_frames(raw, out, fps=fps, size=size)
    return {"video_ids": ids, "codec": codec, "frames": counts}


# ------------------------------------------------------------------------------------- tools


def _tool_sample(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    img = _tissue(rng, h, w) * _vignette(h, w)
    tools = [_random_tool(rng, h, w) for _ in range(int(rng.integers(1, 4)))]
    mask = _draw_tools(img, tools)
    return np.clip(img, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def tools(
    out_dir: str, n_train: int = 8, n_val: int = 4, n_test: int = 4, size: int | tuple = 64, seed: int = 0
) -> dict:
    """Tool-segmentation demo data: RGB images, binary masks and a decathlon ``datalist.json``.

    ``size`` is an int (square) or ``(height, width)``. Returns ``{"datalist": path, "counts": {...}}``.
    """
    from PIL import Image

    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(h, w) < 8:
        raise ValueError(f"size must be at least 8, got {size!r}.")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    datalist: dict[str, list[dict[str, str]]] = {}
    for key, prefix, n in (("training", "train", n_train), ("validation", "val", n_val), ("testing", "test", n_test)):
        entries = []
        for i in range(int(n)):
            rng = np.random.default_rng([seed, ("train", "val", "test").index(prefix), i])
            img, mask = _tool_sample(rng, h, w)
            name = f"{prefix}_{i:03d}.png"
            Image.fromarray(img).save(out / "images" / name)
            Image.fromarray(mask).save(out / "masks" / name)
            entries.append({"image": f"images/{name}", "label": f"masks/{name}"})
        datalist[key] = entries
    with open(out / "datalist.json", "w", encoding="utf-8") as f:
        json.dump(datalist, f, indent=2)
        f.write("\n")
    return {"datalist": str(out / "datalist.json"), "counts": {k: len(v) for k, v in datalist.items()}}


# -------------------------------------------------------------------------------------- acdc

#: ACDC pathology groups: patients 1-20, 21-40, 41-60, 61-80, 81-100.
ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")


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


def _save_nifti(path: Path, arr: np.ndarray, pixdim: tuple) -> None:
    import nibabel as nib

    affine = np.diag([float(pixdim[0]), float(pixdim[1]), float(pixdim[2]), 1.0])
    img = nib.Nifti1Image(arr, affine)
    img.header.set_zooms(tuple(float(z) for z in pixdim[: arr.ndim]))
    img.header.set_xyzt_units("mm", "msec")
    nib.save(img, str(path))


def acdc(
    out_dir: str, n_patients: int = 6, size: int = 48, n_slices: int = 4, n_frames: int = 6, seed: int = 0
) -> dict:
    """ACDC-style demo data (raw release layout), then ``prepare_acdc`` -> ``acdc_slices.json``.

    Writes, for patient ids 1..n_patients (so with ``n_patients >= 3`` every split of the
    published rule gets a patient: 1 -> test, 2 -> validation, 3.. -> train; 11 / 12 go to
    test / validation again)::

        O/training/patientXXX/Info.cfg                       ED: 1, ES: n_frames // 2 + 1, Group, NbFrame, ...
        O/training/patientXXX/patientXXX_4d.nii.gz           uint16, size x size x n_slices x n_frames
        O/training/patientXXX/patientXXX_frameEE.nii.gz      the ED / ES frames of the cine volume
        O/training/patientXXX/patientXXX_frameEE_gt.nii.gz   uint8 labels 0 bg, 1 RV, 2 MYO, 3 LV
        O/acdc_slices.json                                   scripts/prepare_acdc.py output

    Pixel spacing 1.5 x 1.5 mm, 10 mm slices. Raw intensities reach ~600 (blood pools > 255).

    Returns:
        ``{"patient_ids": [...], "index": <json path>, "slices": {list: count}}``.
    """
    from prepare_acdc import prepare_acdc

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
                f"ED: {ed}\nES: {es}\nGroup: {ACDC_GROUPS[(pid - 1) // 20]}\nHeight: {height:.1f}\n"
                f"NbFrame: {n_frames}\nWeight: {weight:.1f}\n"
            )
        _save_nifti(pdir / f"{name}_4d.nii.gz", image, (1.5, 1.5, 10.0, 1.0))
        for num in (ed, es):
            stem = pdir / f"{name}_frame{num:02d}"
            _save_nifti(Path(f"{stem}.nii.gz"), np.ascontiguousarray(image[..., num - 1]), (1.5, 1.5, 10.0))
            _save_nifti(Path(f"{stem}_gt.nii.gz"), np.ascontiguousarray(label[..., num - 1]), (1.5, 1.5, 10.0))
    index = out / "acdc_slices.json"
    content = prepare_acdc(out, index)
    counts = {k: len(content[k]) for k in ("pretrain", "training", "validation", "test")}
    return {"patient_ids": ids, "index": str(index), "slices": counts}


# -------------------------------------------------------------------------------------- btcv

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
BTCV_DATALISTS = _HERE.parent / "bundles" / "unetr_btcv" / "configs" / "datalists"


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
        _save_nifti(out / rel, _tcia_volume(np.random.default_rng([seed, i]), size), (spacing, spacing, spacing))
        split["training" if i <= n_train else "validation"].append({"image": rel})
    index = out / "dataset_split.json"
    index.write_text(json.dumps(split, indent=2), encoding="utf-8")
    return {"datalist": str(index), "training": n_train, "validation": n_val}


if __name__ == "__main__":
    import fire

    fire.Fire({"cholec": cholec, "tools": tools, "acdc": acdc, "btcv": btcv, "tcia": tcia})
