"""Extract Cholec80 video frames into per-split folders and ``path,label`` CSVs.

Usage::

    python scripts/extract_frames.py --data_dir /data/cholec80 --out_dir /data/cholec80_frames \\
        [--fps 1] [--size 256] [--splits train=1-40,val=41-48,test=49-80] [--num_workers 2]

Input (Cholec80 layout)::

    <data_dir>/videos/videoXX.mp4
    <data_dir>/phase_annotations/videoXX-phase.txt     (optional; "Frame<TAB>Phase" per frame)

Output::

    <out_dir>/frames/<split>/videoXX/<frame_index:06d>.jpg
    <out_dir>/<split>.csv       header "path,label", paths relative to <out_dir>

``frame_index`` is the index in the video's ORIGINAL frame numbering (25 fps for Cholec80), so
with ``--fps 1`` the files are ``000000.jpg, 000025.jpg, ...`` and line up with the phase
annotations. ``--fps None`` keeps every frame (what the published script did). ``--size``
resizes to size x size (``--size None`` keeps the native resolution). Labels are the phase
indices of :data:`PHASES` (0..6) or -1 when a video has no annotation file.

This replaces the published ``extract_frames.py``, which crashed (``--datadir`` parsed but
``args.data_path`` read). The functions here are importable (tests load this file by path).
"""

from __future__ import annotations

import csv
import os
import re
import sys
import warnings
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

#: Cholec80 surgical phases in label order (0..6).
PHASES = (
    "Preparation",
    "CalotTriangleDissection",
    "ClippingCutting",
    "GallbladderDissection",
    "GallbladderPackaging",
    "CleaningCoagulation",
    "GallbladderRetraction",
)
PHASE_TO_INDEX = {name: i for i, name in enumerate(PHASES)}

#: Cholec80 split by video id (inclusive ranges).
DEFAULT_SPLITS: dict[str, tuple[int, int]] = {"train": (1, 40), "val": (41, 48), "test": (49, 80)}

NATIVE_FPS = 25
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov")
_VIDEO_RE = re.compile(r"^video(\d+)$", re.IGNORECASE)


class VideoReadError(RuntimeError):
    """A video file could not be opened or decoded (the message names the file)."""


def parse_splits(splits: str | Mapping | None) -> dict[str, tuple[int, int]]:
    """Normalise a split specification to ``{name: (first_id, last_id)}``.

    Accepts None (the Cholec80 default), a mapping ``{"train": [1, 40], ...}`` (also what
    ``fire`` makes of ``--splits '{"train": [1, 40], ...}'``) or a string
    ``"train=1-40,val=41-48,test=49-80"``.
    """
    if splits is None:
        return dict(DEFAULT_SPLITS)
    out: dict[str, tuple[int, int]] = {}
    if isinstance(splits, str):
        for part in filter(None, (p.strip() for p in splits.split(","))):
            m = re.fullmatch(r"(\w+)\s*[=:]\s*(\d+)\s*-\s*(\d+)", part)
            if not m:
                raise ValueError(f"bad split {part!r}: expected e.g. 'train=1-40,val=41-48,test=49-80'.")
            out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    elif isinstance(splits, Mapping):
        for name, rng in splits.items():
            try:
                lo, hi = (int(v) for v in rng)
            except (TypeError, ValueError):
                raise ValueError(f"bad split {name!r}: {rng!r}, expected [first_id, last_id].") from None
            out[str(name)] = (lo, hi)
    else:
        raise ValueError(f"bad splits {splits!r}: use a mapping or 'train=1-40,val=41-48,test=49-80'.")
    if not out:
        raise ValueError(f"no splits given: {splits!r}.")
    for name, (lo, hi) in out.items():
        if lo > hi:
            raise ValueError(f"bad split {name!r}: first id {lo} > last id {hi}.")
    return out


def video_id(path: str | os.PathLike) -> int | None:
    """The Cholec80 id of ``videoXX.<ext>`` (e.g. 7 for ``video07.mp4``), else None."""
    m = _VIDEO_RE.match(Path(path).stem)
    return int(m.group(1)) if m else None


def split_of(vid: int, splits: Mapping[str, tuple[int, int]]) -> str | None:
    """The split whose id range holds ``vid``, else None."""
    for name, (lo, hi) in splits.items():
        if lo <= vid <= hi:
            return name
    return None


def read_phase_annotations(path: str | os.PathLike) -> dict[int, int]:
    """Read a Cholec80 ``videoXX-phase.txt`` into ``{frame_index: phase_index}``.

    The format is a header ``Frame<TAB>Phase`` then one ``<frame>\\t<phase name>`` row per
    original (25 fps) frame; phase names map to 0..6 by :data:`PHASES`.

    Raises:
        FileNotFoundError: missing file. ValueError: a malformed row or an unknown phase name
        (naming the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"phase annotation file {str(path)!r} does not exist.")
    labels: dict[int, int] = {}
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if lineno == 1 and parts[0].lower() == "frame":
                continue
            if len(parts) != 2 or not parts[0].isdigit():
                raise ValueError(f"{path}, line {lineno}: expected '<frame>\\t<phase>', got {line.rstrip()!r}.")
            if parts[1] not in PHASE_TO_INDEX:
                raise ValueError(f"{path}, line {lineno}: unknown phase {parts[1]!r} (known: {', '.join(PHASES)}).")
            labels[int(parts[0])] = PHASE_TO_INDEX[parts[1]]
    return labels


def _keep_frame(i: int, fps: float | None, native_fps: float) -> bool:
    """Whether original frame ``i`` is kept when sampling ``native_fps`` down to ``fps``."""
    if fps is None or fps >= native_fps:
        return True
    r = Fraction(fps).limit_denominator(10000) / Fraction(native_fps).limit_denominator(10000)
    return i == 0 or (i * r.numerator) // r.denominator > ((i - 1) * r.numerator) // r.denominator


def extract_video(
    video_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str,
    fps: float | None = 1,
    size: int | None = 256,
    labels: Mapping[int, int] | None = None,
    quality: int = 95,
) -> list[tuple[str, int]]:
    """Decode one video and write the kept frames as JPEGs.

    Frames go to ``<out_dir>/frames/<split>/<video stem>/<frame_index:06d>.jpg``; the index is
    the decoded-frame counter in the video's native frame rate. Returns
    ``[(path relative to out_dir, label), ...]`` with ``label = labels.get(frame_index, -1)``
    (all -1 when ``labels`` is None).

    Raises:
        VideoReadError: the file cannot be opened or decoded (names the file).
    """
    import av
    from PIL import Image

    video_path, out_dir = Path(video_path), Path(out_dir)
    rel_dir = Path("frames") / split / video_path.stem
    (out_dir / rel_dir).mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, int]] = []
    try:
        container = av.open(str(video_path))
    except Exception as e:  # av raises several FFmpegError / OSError subclasses
        raise VideoReadError(f"cannot open video {str(video_path)!r}: {e}") from e
    try:
        if not container.streams.video:
            raise VideoReadError(f"video {str(video_path)!r} has no video stream.")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        native = float(stream.average_rate) if stream.average_rate else float(NATIVE_FPS)
        if abs(native - NATIVE_FPS) > 0.01:
            warnings.warn(f"{video_path}: frame rate {native:g} fps, Cholec80 videos are {NATIVE_FPS} fps.")
        i = -1
        try:
            for i, frame in enumerate(container.decode(stream)):
                if not _keep_frame(i, fps, native):
                    continue
                img = frame.to_image()
                if size:
                    img = img.resize((int(size), int(size)), Image.BILINEAR)
                rel = rel_dir / f"{i:06d}.jpg"
                img.save(out_dir / rel, quality=quality)
                rows.append((rel.as_posix(), labels.get(i, -1) if labels is not None else -1))
        except VideoReadError:
            raise
        except Exception as e:
            raise VideoReadError(f"cannot decode video {str(video_path)!r} after frame {i}: {e}") from e
    finally:
        container.close()
    if not rows:
        raise VideoReadError(f"video {str(video_path)!r} has no decodable frames.")
    if labels is not None:
        n_unlabelled = sum(1 for _, lab in rows if lab < 0)
        if n_unlabelled:
            warnings.warn(f"{video_path}: {n_unlabelled} extracted frames have no phase annotation (label -1).")
    return rows


def find_videos(data_dir: str | os.PathLike) -> list[Path]:
    """The ``videoXX.*`` files in ``<data_dir>/videos``, sorted by id.

    Raises:
        FileNotFoundError: the folder is missing or holds no ``videoXX`` video.
    """
    vdir = Path(data_dir) / "videos"
    if not vdir.is_dir():
        raise FileNotFoundError(f"videos folder {str(vdir)!r} does not exist (expected <data_dir>/videos/videoXX.mp4).")
    videos = [p for p in vdir.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and video_id(p) is not None]
    if not videos:
        raise FileNotFoundError(f"no videoXX{'/'.join(VIDEO_EXTENSIONS)} files in {str(vdir)!r}.")
    return sorted(videos, key=lambda p: (video_id(p), p.name))


def _extract_job(args):
    video, out_dir, split, fps, size, ann, quality = args
    labels = read_phase_annotations(ann) if ann is not None else None
    return extract_video(video, out_dir, split, fps=fps, size=size, labels=labels, quality=quality)


def extract_frames(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    fps: float | None = 1,
    size: int | None = 256,
    splits: str | Mapping | None = None,
    quality: int = 95,
    num_workers: int = 1,
) -> dict[str, int]:
    """Extract every ``<data_dir>/videos/videoXX.*`` into ``<out_dir>`` and write the split CSVs.

    Args:
        data_dir: Cholec80 root with ``videos/`` and optionally ``phase_annotations/``.
        out_dir: output root (``frames/<split>/videoXX/*.jpg`` and ``<split>.csv``).
        fps: frames per second to keep (default 1); None keeps every frame.
        size: resize frames to size x size; None keeps the native size.
        splits: video-id ranges per split (see :func:`parse_splits`); default Cholec80
            train 1-40, val 41-48, test 49-80. Videos outside every range are skipped (warning).
        quality: JPEG quality.
        num_workers: videos decoded in parallel (processes).

    Returns:
        ``{split: number of frames written}``; a CSV (with header) is written for every split.
    """
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0):
        raise ValueError(f"fps must be a positive number or None, got {fps!r}.")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}.")
    split_ranges = parse_splits(splits)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    videos = find_videos(data_dir)
    ann_dir = data_dir / "phase_annotations"
    jobs, job_splits = [], []
    for video in videos:
        split = split_of(video_id(video), split_ranges)
        if split is None:
            warnings.warn(f"{video}: video id {video_id(video)} is in no split {split_ranges}; skipped.")
            continue
        ann = ann_dir / f"{video.stem}-phase.txt"
        jobs.append((video, out_dir, split, fps, size, ann if ann.is_file() else None, quality))
        job_splits.append(split)
    out_dir.mkdir(parents=True, exist_ok=True)
    if num_workers and num_workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(num_workers, len(jobs))) as pool:
            results = list(pool.map(_extract_job, jobs))
    else:
        results = [_extract_job(j) for j in jobs]
    rows: dict[str, list[tuple[str, int]]] = {name: [] for name in split_ranges}
    for split, res in zip(job_splits, results):
        rows[split].extend(res)
    for name, split_rows in rows.items():
        with open(out_dir / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["path", "label"])
            w.writerows(split_rows)
    return {name: len(r) for name, r in rows.items()}


def main(
    data_dir: str,
    out_dir: str,
    fps: float | None = 1,
    size: int | None = 256,
    splits: str | dict | None = None,
    quality: int = 95,
    num_workers: int = 1,
) -> None:
    """CLI entry point: see the module docstring."""
    counts = extract_frames(data_dir, out_dir, fps=fps, size=size, splits=splits, quality=quality, num_workers=num_workers)
    for name, n in counts.items():
        print(f"{name}: {n} frames -> {Path(out_dir) / (name + '.csv')}")


if __name__ == "__main__":
    import fire

    try:
        fire.Fire(main)
    except (FileNotFoundError, ValueError, VideoReadError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
