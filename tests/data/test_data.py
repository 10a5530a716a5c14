"""Tests of monai_ssl_ext.data: frame-CSV / datalist readers and label budgets."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from monai_ssl_ext.data import (
    BUDGETS,
    budget_subset,
    class_balanced_subset,
    load_datalist,
    percent_subset,
    read_frame_csv,
)

# ------------------------------------------------------------------------------ read_frame_csv


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def frames(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _touch(tmp_path / "frames" / name)
    return tmp_path


def test_read_frame_csv_with_header_relative_paths(frames):
    csv = frames / "train.csv"
    csv.write_text("path,label\nframes/a.jpg,0\n\nframes/b.jpg,6\nframes/c.jpg,-1\n")
    items = read_frame_csv(csv)
    assert items == [
        {"image": str(frames / "frames" / "a.jpg"), "label": 0},
        {"image": str(frames / "frames" / "b.jpg"), "label": 6},
        {"image": str(frames / "frames" / "c.jpg"), "label": -1},
    ]
    assert all(isinstance(it["label"], int) for it in items)


def test_read_frame_csv_published_format_without_header(frames, tmp_path):
    # sample_csv.csv: absolute paths, no header
    other = tmp_path / "elsewhere"
    other.mkdir()
    csv = other / "sample_csv.csv"
    csv.write_text(f"{frames / 'frames' / 'a.jpg'},3\n{frames / 'frames' / 'b.jpg'},4\n")
    items = read_frame_csv(csv)
    assert [it["label"] for it in items] == [3, 4]
    assert items[0]["image"] == str(frames / "frames" / "a.jpg")


def test_read_frame_csv_base_dir(frames, tmp_path):
    csv_dir = tmp_path / "lists"
    csv_dir.mkdir()
    csv = csv_dir / "x.csv"
    csv.write_text("a.jpg,1\nb.jpg,2\n")
    items = read_frame_csv(csv, base_dir=frames / "frames")
    assert [it["image"] for it in items] == [str(frames / "frames" / "a.jpg"), str(frames / "frames" / "b.jpg")]


def test_read_frame_csv_check_files_off(tmp_path):
    csv = tmp_path / "x.csv"
    csv.write_text("path,label\nmissing.jpg,1\n")
    assert read_frame_csv(csv, check_files=False) == [{"image": str(tmp_path / "missing.jpg"), "label": 1}]


def test_read_frame_csv_missing_csv(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_frame_csv(missing)


@pytest.mark.parametrize("content", ["", "path,label\n", "\n\n"])
def test_read_frame_csv_empty(tmp_path, content):
    csv = tmp_path / "empty.csv"
    csv.write_text(content)
    with pytest.raises(ValueError, match=r"empty\.csv.*no data rows"):
        read_frame_csv(csv)


@pytest.mark.parametrize(
    "row, what",
    [("frames/a.jpg,1,extra", "expected 2 fields"), ("frames/a.jpg", "expected 2 fields"),
     ("frames/a.jpg,cat", "not an integer"), (",3", "empty image path")],
)
def test_read_frame_csv_malformed_row(frames, row, what):
    csv = frames / "bad.csv"
    csv.write_text(f"path,label\nframes/a.jpg,0\n{row}\n")
    with pytest.raises(ValueError, match=what) as e:
        read_frame_csv(csv)
    assert str(csv) in str(e.value) and "line 3" in str(e.value)


def test_read_frame_csv_missing_image(frames):
    csv = frames / "train.csv"
    csv.write_text("frames/a.jpg,0\nframes/zz.jpg,1\n")
    with pytest.raises(FileNotFoundError) as e:
        read_frame_csv(csv)
    msg = str(e.value)
    assert str(csv) in msg and "line 2" in msg and str(frames / "frames" / "zz.jpg") in msg


# ------------------------------------------------------------------------------ percent_subset


def test_percent_subset_matches_source_sampling():
    items = [f"f{i}" for i in range(250)]
    sub = percent_subset(items, 10)
    assert len(sub) == 25
    assert sub == sorted(sub, key=items.index)  # original order
    random.seed(42)  # the source: random.seed(42); random.sample(train_files, k)
    assert set(sub) == set(random.sample(items, 25))
    assert percent_subset(items, 10) == sub  # deterministic
    assert percent_subset(items, 10, seed=1) != sub


def test_percent_subset_edges():
    items = list(range(30))
    assert percent_subset(items, 100) == items
    assert percent_subset(list(reversed(items)), 100) == list(reversed(items))
    assert len(percent_subset(items, 0.1)) == 1  # at least one item
    assert len(percent_subset(items, 50)) == 15
    assert percent_subset([], 5) == []
    for bad in (0, -5, 100.5, 1000, "10", None, True):
        with pytest.raises(ValueError, match="perc"):
            percent_subset(items, bad)


# ----------------------------------------------------------------------- class-balanced budgets


def _labelled(counts: dict[int, int]) -> list[dict]:
    items = [{"image": f"{c}_{i}.jpg", "label": c} for c, n in counts.items() for i in range(n)]
    random.Random(0).shuffle(items)
    return items


def test_class_balanced_subset():
    items = _labelled({0: 50, 1: 5, 2: 20, -1: 7})
    sub = class_balanced_subset(items, 10, seed=3)
    assert Counter(it["label"] for it in sub) == {0: 10, 1: 5, 2: 10, -1: 7}
    assert sub == [it for it in items if it in sub]  # original order kept
    assert class_balanced_subset(items, 10, seed=3) == sub
    assert class_balanced_subset(items, 10, seed=4) != sub
    assert class_balanced_subset(items, None) == items
    no_unlab = class_balanced_subset(items, 10, seed=3, exclude_labels=(-1,))
    assert Counter(it["label"] for it in no_unlab) == {0: 10, 1: 5, 2: 10}
    # a class's draw does not depend on the other classes present
    only0 = class_balanced_subset([it for it in items if it["label"] == 0], 10, seed=3)
    assert only0 == [it for it in sub if it["label"] == 0]
    other_key = [{"image": it["image"], "phase_label": it["label"]} for it in items]
    assert len(class_balanced_subset(other_key, 2, label_key="phase_label")) == 8


def test_class_balanced_subset_errors():
    with pytest.raises(ValueError, match="per_class"):
        class_balanced_subset([{"label": 0}], 0)
    with pytest.raises(ValueError, match="item 1 has no 'label'"):
        class_balanced_subset([{"label": 0}, {"image": "x"}], 1)


def test_budget_subset_linear_probe_budgets():
    items = _labelled({c: 2100 if c != 6 else 150 for c in range(7)})
    assert BUDGETS == {"1%": 200, "10%": 2000, "100%": None}
    one = budget_subset(items, "1%", seed=0)
    assert Counter(it["label"] for it in one) == {**{c: 200 for c in range(6)}, 6: 150}
    ten = budget_subset(items, "10%", seed=0)
    assert Counter(it["label"] for it in ten) == {**{c: 2000 for c in range(6)}, 6: 150}
    assert budget_subset(items, "100%", seed=0) == items
    assert budget_subset(items, None, seed=0) == items
    assert Counter(it["label"] for it in budget_subset(items, 5, seed=1)) == {c: 5 for c in range(7)}
    assert budget_subset(items, "5", seed=1) == budget_subset(items, 5, seed=1)
    assert budget_subset(items, "1%", seed=0) == one and budget_subset(items, "1%", seed=1) != one
    for bad in ("2%", "lots", 0, -3, 1.5, True):
        with pytest.raises(ValueError, match="budget"):
            budget_subset(items, bad, seed=0)


# ------------------------------------------------------------------------------- load_datalist


def test_load_datalist(tmp_path):
    (tmp_path / "images").mkdir()
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({
        "training": [{"image": "images/a.png", "label": "masks/a.png"}],
        "validation": [],
        "testing": [{"image": "images/b.png"}],
    }))
    items = load_datalist(dl, "training")
    assert items == [{"image": str(tmp_path / "images/a.png"), "label": str(tmp_path / "masks/a.png")}]
    assert load_datalist(dl, "testing", base_dir="/data") == [{"image": "/data/images/b.png"}]
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_datalist(tmp_path / "nope.json", "training")
    with pytest.raises(ValueError, match=r"datalist\.json.*'test'"):
        load_datalist(dl, "test")
    with pytest.raises(ValueError, match=r"datalist\.json.*'validation'.*empty"):
        load_datalist(dl, "validation")
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        load_datalist(bad, "training")
