"""Cholec80-style demo data (surgical video frames with phase labels).

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
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._draw import _draw_tools, _random_tool, _tissue, _vignette
from ._scripts import script

__all__ = ["PHASE_TINTS", "VIDEO_CODECS", "cholec", "write_video"]

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


def _ef():
    """``scripts/extract_frames.py`` (phase names, native fps, frame extraction)."""
    return script("extract_frames")


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
    n_ph = len(_ef().PHASES)
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
        codec = write_video(raw / "videos" / f"video{vid:02d}.mp4", frames, fps=_ef().NATIVE_FPS)
        with open(raw / "phase_annotations" / f"video{vid:02d}-phase.txt", "w", encoding="utf-8") as f:
            f.write("Frame\tPhase\n")
            for i, ph in enumerate(phases):
                f.write(f"{i}\t{_ef().PHASES[ph]}\n")
    counts = _ef().extract_frames(raw, out, fps=fps, size=size)
    return {"video_ids": ids, "codec": codec, "frames": counts}
