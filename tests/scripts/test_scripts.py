"""Tests of the command-line tools in scripts/: make_demo_data, extract_frames, verify_bundles.

scripts/ is not a package: each script is loaded from its file with importlib under its own
module name (so make_demo_data's ``import extract_frames`` shares the module loaded here).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_ssl_ext.data import load_datalist, read_frame_csv

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
SCHEMA = REPO.parent / "shared" / "schema" / "meta_schema_20240725.json"


def _script(name: str):
    """Import ``scripts/<name>.py`` as module ``name`` (reusing an earlier import of that file)."""
    path = SCRIPTS / f"{name}.py"
    mod = sys.modules.get(name)
    if mod is not None and Path(getattr(mod, "__file__", "")).resolve() == path:
        return mod
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


ef = _script("extract_frames")
mdd = _script("make_demo_data")
vb = _script("verify_bundles")


def _csv_rows(path: Path) -> list[tuple[str, int]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "path,label"
    return [(p, int(lab)) for p, lab in (line.rsplit(",", 1) for line in lines[1:])]


# ------------------------------------------------------------------------------ cholec demo


@pytest.fixture(scope="module")
def cholec_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("cholec")
    summary = mdd.cholec(str(out), n_videos=4, frames_per_video=20, size=64, seed=0)
    return out, summary


def test_cholec_demo_layout_and_labels(cholec_demo):
    out, summary = cholec_demo
    ids = summary["video_ids"]
    assert summary["codec"] in mdd.VIDEO_CODECS
    assert summary["frames"] == {"train": 40, "val": 20, "test": 20}
    for vid in ids:
        assert (out / "raw" / "videos" / f"video{vid:02d}.mp4").is_file()
        ann = (out / "raw" / "phase_annotations" / f"video{vid:02d}-phase.txt").read_text().splitlines()
        assert ann[0] == "Frame\tPhase" and len(ann) == 21
    ranges = {"train": range(1, 41), "val": range(41, 49), "test": range(49, 81)}
    seen_splits = set()
    for split, rng in ranges.items():
        rows = _csv_rows(out / f"{split}.csv")
        assert rows, split
        seen_splits.add(split)
        by_video: dict[str, list[tuple[int, int]]] = {}
        for rel, label in rows:
            parts = Path(rel).parts
            assert parts[:2] == ("frames", split) and not Path(rel).is_absolute()
            assert int(parts[2][len("video"):]) in rng
            assert 0 <= label <= 6
            by_video.setdefault(parts[2], []).append((int(Path(rel).stem), label))
        for video, frames in by_video.items():
            assert [i for i, _ in frames] == list(range(20))  # every frame, original numbering
            labels = [lab for _, lab in frames]
            assert labels == sorted(labels) and set(labels) == set(range(7))  # phases progress 0..6
            ann = (out / "raw" / "phase_annotations" / f"{video}-phase.txt").read_text().splitlines()[1:]
            assert labels == [ef.PHASE_TO_INDEX[line.split("\t")[1]] for line in ann]
        items = read_frame_csv(out / f"{split}.csv")
        img = Image.open(items[0]["image"])
        assert img.size == (64, 64) and img.mode == "RGB"
    assert seen_splits == {"train", "val", "test"}


def test_cholec_demo_is_deterministic_and_phase_dependent(cholec_demo, tmp_path):
    out, _ = cholec_demo
    mdd.cholec(str(tmp_path), n_videos=4, frames_per_video=20, size=64, seed=0)
    for split in ("train", "val", "test"):
        assert (tmp_path / f"{split}.csv").read_text() == (out / f"{split}.csv").read_text()
    for rel in ("raw/videos/video41.mp4", "frames/test/video49/000007.jpg"):
        assert (tmp_path / rel).read_bytes() == (out / rel).read_bytes()
    # the mean colour of a frame separates the phases (what a linear probe can pick up)
    items = read_frame_csv(out / "train.csv")
    feats = np.stack([np.asarray(Image.open(it["image"]), np.float32).mean((0, 1)) for it in items])
    labels = np.array([it["label"] for it in items])
    centroids = np.stack([feats[labels == c].mean(0) for c in range(7)])
    nearest = np.argmin(((feats[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).mean() > 0.8


def test_make_demo_data_cli(tmp_path):
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "make_demo_data.py"), "tools", "--out_dir", str(tmp_path),
         "--n_train", "2", "--n_val", "1", "--n_test", "1", "--size", "32"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "datalist.json").read_text())["testing"] == [
        {"image": "images/test_000.png", "label": "masks/test_000.png"}
    ]


# ------------------------------------------------------------------------------- tools demo


def test_tools_demo(tmp_path):
    summary = mdd.tools(str(tmp_path), n_train=8, n_val=4, n_test=4, size=64, seed=0)
    assert summary["counts"] == {"training": 8, "validation": 4, "testing": 4}
    raw = json.loads((tmp_path / "datalist.json").read_text())
    assert set(raw) == {"training", "validation", "testing"}
    assert raw["training"][0] == {"image": "images/train_000.png", "label": "masks/train_000.png"}
    for key in raw:
        for item in load_datalist(tmp_path / "datalist.json", key):
            img = np.asarray(Image.open(item["image"]))
            mask_img = Image.open(item["label"])
            mask = np.asarray(mask_img)
            assert img.shape == (64, 64, 3) and img.dtype == np.uint8
            assert mask_img.mode == "L" and mask.shape == (64, 64) and mask.dtype == np.uint8
            assert set(np.unique(mask)) == {0, 1}
            r, g = img[..., 0].astype(int), img[..., 1].astype(int)
            assert np.all(r[mask == 1] == g[mask == 1])  # tools are grey
            assert np.all(r[mask == 0] - g[mask == 0] >= 20)  # background is reddish
    again = tmp_path / "again"
    mdd.tools(str(again), n_train=8, n_val=4, n_test=4, size=64, seed=0)
    assert (again / "images" / "val_002.png").read_bytes() == (tmp_path / "images" / "val_002.png").read_bytes()
    other = tmp_path / "other"
    mdd.tools(str(other), n_train=1, n_val=0, n_test=0, size=(48, 80), seed=1)
    assert np.asarray(Image.open(other / "masks" / "train_000.png")).shape == (48, 80)
    assert (other / "images" / "train_000.png").read_bytes() != (tmp_path / "images" / "train_000.png").read_bytes()


# ---------------------------------------------------------------------------- extract_frames


def _raw_video(root: Path, vid: int, n_frames: int, phases: list[str] | None = None, size: int = 32) -> None:
    frames = np.random.default_rng(vid).integers(0, 255, (n_frames, size, size, 3), dtype=np.uint8)
    mdd.write_video(root / "videos" / f"video{vid:02d}.mp4", frames)
    if phases is not None:
        (root / "phase_annotations").mkdir(parents=True, exist_ok=True)
        lines = ["Frame\tPhase"] + [f"{i}\t{phases[i]}" for i in range(n_frames)]
        (root / "phase_annotations" / f"video{vid:02d}-phase.txt").write_text("\n".join(lines) + "\n")


def test_extract_frames_1fps_original_numbering(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    phases = ["Preparation"] * 30 + ["ClippingCutting"] * 30 + ["GallbladderRetraction"] * 1
    _raw_video(raw, 3, 61, phases)
    _raw_video(raw, 60, 30)  # no annotations -> label -1
    counts = ef.extract_frames(raw, out, fps=1, size=None)
    assert counts == {"train": 3, "val": 0, "test": 2}
    assert _csv_rows(out / "train.csv") == [
        ("frames/train/video03/000000.jpg", 0),
        ("frames/train/video03/000025.jpg", 0),
        ("frames/train/video03/000050.jpg", 2),
    ]
    assert _csv_rows(out / "test.csv") == [
        ("frames/test/video60/000000.jpg", -1),
        ("frames/test/video60/000025.jpg", -1),
    ]
    assert _csv_rows(out / "val.csv") == []
    assert Image.open(out / "frames/train/video03/000025.jpg").size == (32, 32)
    # every frame, resized, custom splits
    counts = ef.extract_frames(raw, tmp_path / "all", fps=None, size=16, splits="a=1-10,b=11-80")
    assert counts == {"a": 61, "b": 30}
    assert Image.open(tmp_path / "all/frames/b/video60/000029.jpg").size == (16, 16)
    # fps 5 of 25 keeps every 5th frame
    rows = _csv_rows(tmp_path / "all" / "a.csv")
    assert len(rows) == 61
    ef.extract_frames(raw, tmp_path / "five", fps=5, size=None, splits={"train": [1, 80]})
    idx = [int(Path(p).stem) for p, _ in _csv_rows(tmp_path / "five" / "train.csv")]
    assert idx[:13] == list(range(0, 61, 5)) and len(idx) == 13 + 6


def test_parse_splits():
    assert ef.parse_splits(None) == {"train": (1, 40), "val": (41, 48), "test": (49, 80)}
    assert ef.parse_splits("train=1-2,test=3-4") == {"train": (1, 2), "test": (3, 4)}
    assert ef.parse_splits({"x": [5, 6]}) == {"x": (5, 6)}
    for bad in ("train=1", "train=5-1", {"x": 3}, 42):
        with pytest.raises(ValueError, match="split"):
            ef.parse_splits(bad)


def test_extract_frames_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nodata" / "videos")):
        ef.extract_frames(tmp_path / "nodata", tmp_path / "o")
    (tmp_path / "empty" / "videos").mkdir(parents=True)
    (tmp_path / "empty" / "videos" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no videoXX.*empty/videos"):
        ef.extract_frames(tmp_path / "empty", tmp_path / "o")
    bad = tmp_path / "bad" / "videos" / "video02.mp4"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(ef.VideoReadError, match=str(bad)):
        ef.extract_frames(tmp_path / "bad", tmp_path / "o")
    raw = tmp_path / "ann"
    _raw_video(raw, 1, 3, ["Preparation", "Lunch", "Preparation"])
    with pytest.raises(ValueError, match=r"video01-phase\.txt, line 3: unknown phase 'Lunch'"):
        ef.extract_frames(raw, tmp_path / "o")
    for kw in ({"fps": 0}, {"fps": -1}, {"size": 0}):
        with pytest.raises(ValueError):
            ef.extract_frames(raw, tmp_path / "o", **kw)


def test_extract_frames_cli(tmp_path):
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "extract_frames.py"), "--data_dir", str(tmp_path / "x"), "--out_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1 and str(tmp_path / "x" / "videos") in r.stderr
    raw = tmp_path / "raw"
    _raw_video(raw, 45, 30, ["CleaningCoagulation"] * 30)
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "extract_frames.py"), "--data_dir", str(raw), "--out_dir", str(tmp_path / "o"),
         "--fps", "1", "--size", "24"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert _csv_rows(tmp_path / "o" / "val.csv") == [("frames/val/video45/000000.jpg", 5), ("frames/val/video45/000025.jpg", 5)]
    assert Image.open(tmp_path / "o/frames/val/video45/000000.jpg").size == (24, 24)


# ---------------------------------------------------------------------------- verify_bundles

GOOD_META = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
    "version": "0.1.0",
    "changelog": {"0.1.0": "first version"},
    "monai_version": "1.6.1",
    "pytorch_version": "2.14.1",
    "numpy_version": "2.0.0",
    "required_packages_version": {"fire": "0.7.0"},
    "task": "test bundle",
    "description": "a fake bundle",
    "authors": "me",
    "copyright": "none",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "magnitude", "num_channels": 3,
                             "spatial_shape": [224, 224], "dtype": "float32", "value_range": [-1, 1]}},
        "outputs": {"pred": {"type": "probabilities", "format": "classes", "num_channels": 7,
                             "spatial_shape": [7], "dtype": "float32", "value_range": [0, 1]}},
    },
}
GOOD_TRAIN = {
    "imports": ["$import monai_ssl_ext"],
    "learning_rate": 5e-4,
    "hidden_dims": [512, 128],
    "amp": True,
    "network_def": {"_target_": "FlexibleUNet", "in_channels": 3, "out_channels": 2, "backbone": "efficientnet-b0"},
    "optimizer": {"_target_": "torch.optim.AdamW", "params": "$@network.parameters()", "lr": "@learning_rate"},
    "network": "$@network_def.to('cpu')",
    "temperature": 0.07,
}
GOOD_README = """# Fake bundle

Some text.

## Published settings

| id | value | source |
|---|---|---|
| `learning_rate` | `5e-4` | `train_simclr_multigpu.py` lr, per GPU |
| `network_def#backbone` | `"efficientnet-b0"` | a | b |
| `hidden_dims` | `[512, 128]` | 4 x hidden, hidden |
| `optimizer#lr` | `"@learning_rate"` | raw reference |
| `amp` | `true` | |
| `temperature` | `0.07000000000000001` | tau |

## Other section

| `learning_rate` | `1` | tables outside the section are ignored |
"""


def _make_bundle(root: Path, meta=None, train=None, readme=GOOD_README) -> Path:
    b = root / "fake_bundle"
    (b / "configs").mkdir(parents=True, exist_ok=True)
    (b / "docs").mkdir(exist_ok=True)
    (b / "configs" / "metadata.json").write_text(json.dumps(GOOD_META if meta is None else meta))
    (b / "configs" / "train.json").write_text(json.dumps(GOOD_TRAIN if train is None else train))
    (b / "configs" / "multi_gpu_train.json").write_text(json.dumps(
        {"optimizer#lr": "$@learning_rate * 2", "network": "$@network_def.to(@device)"}  # an overlay on train.json
    ))
    (b / "configs" / "smoke.json").write_text(json.dumps({"epochs": 1}))
    (b / "configs" / "logging.conf").write_text("[loggers]\nkeys=root\n")
    (b / "docs" / "README.md").write_text(readme)
    (b / "LICENSE").write_text("Apache-2.0\n")
    return b


needs_schema = pytest.mark.skipif(not SCHEMA.is_file(), reason=f"vendored schema {SCHEMA} not found")


@needs_schema
def test_verify_bundle_good(tmp_path):
    b = _make_bundle(tmp_path)
    assert vb.verify_bundle(b, schema=SCHEMA) == []


def test_verify_bundle_downloads_schema_named_in_metadata(tmp_path):
    schema = {"type": "object", "required": ["version", "task"]}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    meta = dict(GOOD_META, schema=(tmp_path / "s.json").as_uri())  # a file:// URL stands in for https
    assert vb.verify_bundle(_make_bundle(tmp_path, meta=meta)) == []
    (tmp_path / "s2.json").write_text(json.dumps(schema))  # new URL: the first one is cached
    meta = {k: v for k, v in meta.items() if k != "task"}
    meta["schema"] = (tmp_path / "s2.json").as_uri()
    assert any("'task' is a required property" in p for p in vb.verify_bundle(_make_bundle(tmp_path, meta=meta)))
    meta["schema"] = (tmp_path / "missing.json").as_uri()
    assert any("could not download the metadata schema" in p for p in vb.verify_bundle(_make_bundle(tmp_path, meta=meta)))


def _problems(tmp_path, **kw) -> list[str]:
    return vb.verify_bundle(_make_bundle(tmp_path, **kw), schema=SCHEMA)


@needs_schema
def test_verify_bundle_missing_files(tmp_path):
    b = _make_bundle(tmp_path)
    (b / "LICENSE").unlink()
    (b / "configs" / "smoke.json").unlink()
    assert vb.verify_bundle(b, schema=SCHEMA) == ["missing required file configs/smoke.json", "missing required file LICENSE"]
    assert vb.verify_bundle(tmp_path / "nope", schema=SCHEMA) == [f"bundle folder {str(tmp_path / 'nope')!r} does not exist"]
    assert vb.verify_bundle(_make_bundle(tmp_path), schema=tmp_path / "no_schema.json") == [
        f"schema file {str(tmp_path / 'no_schema.json')!r} does not exist"
    ]


@needs_schema
def test_verify_bundle_metadata_problems(tmp_path):
    meta = {k: v for k, v in GOOD_META.items() if k != "required_packages_version"}
    assert _problems(tmp_path, meta=meta) == [
        "configs/metadata.json: schema violation at <root>: 'required_packages_version' is a required property"
    ]
    meta = dict(GOOD_META, version="0.2.0")
    assert _problems(tmp_path, meta=meta) == ["configs/metadata.json: version '0.2.0' is not a key of 'changelog'"]
    meta = copy.deepcopy(GOOD_META)
    meta["network_data_format"]["inputs"]["image"]["num_channels"] = "three"
    assert _problems(tmp_path, meta=meta) == [
        "configs/metadata.json: schema violation at network_data_format/inputs/image/num_channels: "
        "'three' is not of type 'integer'"
    ]


@needs_schema
def test_verify_bundle_config_does_not_parse(tmp_path):
    b = _make_bundle(tmp_path)
    (b / "configs" / "smoke.json").write_text('{"epochs": 1,,}')
    (p,) = vb.verify_bundle(b, schema=SCHEMA)
    assert p.startswith("configs/smoke.json: does not parse with ConfigParser")
    b = _make_bundle(tmp_path)
    (b / "configs" / "multi_gpu_train.json").write_text('{"trainer#max_epochs": 2}')  # no "trainer" in train.json
    (p,) = vb.verify_bundle(b, schema=SCHEMA)
    assert p.startswith("configs/multi_gpu_train.json: does not parse with ConfigParser") and "merged onto train.json" in p


@needs_schema
@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("| `learning_rate` | `5e-4` |", "| `learning_rate` | `1e-4` |",
         "docs/README.md:9: `learning_rate` is 0.0001 in the README but 0.0005 in configs/train.json"),
        ("`network_def#backbone`", "`network_def#arch`", "docs/README.md:10: `network_def#arch` is not an id of configs/train.json"),
        ("`[512, 128]`", "`[512, 128, 1]`", "docs/README.md:11: `hidden_dims` is [512, 128, 1] in the README but [512, 128] in configs/train.json"),
        ("`true`", "`1`", "docs/README.md:13: `amp` is 1 in the README but true in configs/train.json"),
        ("`0.07000000000000001`", "`0.0700001`", "docs/README.md:14: `temperature` is 0.0700001 in the README but 0.07 in configs/train.json"),
        ("`0.07000000000000001`", "`0.07,`", "docs/README.md:14: value of `temperature` is not a JSON literal"),
        ("| `amp` |", "| amp |", "docs/README.md:13: first column must be a backticked config id"),
        ("## Published settings", "## Settings", "docs/README.md: no '## Published settings' section"),
    ],
)
def test_verify_bundle_published_settings(tmp_path, old, new, expected):
    assert old in GOOD_README
    (p,) = _problems(tmp_path, readme=GOOD_README.replace(old, new))
    assert p.startswith(expected), p


@needs_schema
def test_verify_bundle_empty_settings_table(tmp_path):
    readme = "# B\n\n## Published settings\n\n| id | value |\n|---|---|\n\n## Next\n"
    assert _problems(tmp_path, readme=readme) == ["docs/README.md: the '## Published settings' section has no table rows"]


@needs_schema
def test_verify_bundles_cli(tmp_path, capsys):
    good = _make_bundle(tmp_path / "a")
    bad = _make_bundle(tmp_path / "b", meta=dict(GOOD_META, version="9.9"))
    root = tmp_path / "bundles"
    root.mkdir()
    good.rename(root / "good")
    bad.rename(root / "bad")
    vb.main(bundles_dir=str(root), schema=str(SCHEMA), names="good")
    assert "OK: 1 bundle(s) verified: good" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        vb.main(bundles_dir=str(root), schema=str(SCHEMA))
    assert e.value.code == 1
    out = capsys.readouterr().out.splitlines()
    assert out == ["bad: configs/metadata.json: version '9.9' is not a key of 'changelog'"]
    with pytest.raises(SystemExit):
        vb.main(bundles_dir=str(root), schema=str(SCHEMA), names=("good", "missing"))
    assert f"<bundles>: no bundle 'missing' in {str(root)!r}" in capsys.readouterr().out
