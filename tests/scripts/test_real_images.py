"""The real-image experiment (``python -m bench.real_images``) on a stand-in wheel with the real one's layout.

What would be wrong: duplicates kept (the same slice in training and test), a class read from the wrong folder,
test slices seen by the SSL pretraining, a split that loses or repeats slices, a wheel without the images taken
silently, and the pipeline (prepare -> two pretrainings -> finetuning sweep) not reaching the test scores."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from bench.real_images import CLASSES, WHEEL_PREFIX, main, prepare, read_wheel


def _png(value: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    a = np.clip(rng.normal(value, 20, (40, 36)), 0, 255).astype(np.uint8)  # grey, not square
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _wheel(path, n_per_class: int = 10, duplicate: bool = True):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("my_datasets/__init__.py", "")
        for label, folder in enumerate(CLASSES):
            for i in range(n_per_class):
                z.writestr(f"{WHEEL_PREFIX}{folder}/{folder}{i}.jpg", _png(60 + 120 * label, 100 * label + i))
        if duplicate:  # the same pixels under another name
            z.writestr(f"{WHEEL_PREFIX}yes/copy_of_yes0.png", _png(180, 100))
        z.writestr(f"{WHEEL_PREFIX}yes/notes.txt", "not a picture")
    return path


def test_prepare_dedups_splits_and_keeps_test_out_of_pretraining(tmp_path):
    wheel = _wheel(tmp_path / "w.whl")
    assert [label for _, label, _ in read_wheel(wheel)].count(1) == 11  # 10 + the copy; notes.txt skipped
    info = prepare(wheel, tmp_path / "data", size=24, seed=0)
    assert info["unique"] == 20 and info["duplicates_dropped"] == 1
    split = json.loads((tmp_path / "data" / "split.json").read_text())
    assert split["class_names"] == ["no", "yes"]
    names = {k: [it["image"] for it in split[k]] for k in ("training", "validation", "test")}
    everything = sum(names.values(), [])
    assert len(everything) == len(set(everything)) == 20  # nothing lost, nothing twice
    for k in names:
        for it in split[k]:
            assert it["class_name"] == CLASSES[it["label"]] and f"/{it['class_name']}/" in it["source"]
            with Image.open(tmp_path / "data" / it["image"]) as im:
                assert im.size == (24, 24) and im.mode == "RGB"
                # the class is in the pixels (dark "no", bright "yes"): labels follow their own pictures
                assert (np.asarray(im).mean() > 120) == (it["label"] == 1)
    assert {k: sum(v.values()) for k, v in info["counts"].items()} == {"training": 12, "validation": 4, "test": 4}
    with open(tmp_path / "data" / "ssl_train.csv") as f:
        ssl = [row[0] for row in csv.reader(f)][1:]
    assert sorted(ssl) == sorted(names["training"])
    unlabeled = sorted(p.name for p in (tmp_path / "data" / "unlabeled").iterdir())
    assert unlabeled == sorted(n.split("/")[-1] for n in names["training"])
    # prepared again with another split in the same folder: the unlabelled set is the new training split, with none
    # of the earlier one's links (which would now point at validation or test pictures)
    prepare(wheel, tmp_path / "data", size=24, seed=1)
    training = [it["image"] for it in json.loads((tmp_path / "data" / "split.json").read_text())["training"]]
    assert training != names["training"]
    unlabeled = sorted(p.name for p in (tmp_path / "data" / "unlabeled").iterdir())
    assert unlabeled == sorted(n.split("/")[-1] for n in training)


def test_wheel_without_the_images_is_refused(tmp_path):
    path = tmp_path / "empty.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("my_datasets/__init__.py", "")
    with pytest.raises(ValueError, match="0.9.7"):
        read_wheel(path)
    with pytest.raises(FileNotFoundError, match="pip download"):
        read_wheel(tmp_path / "missing.whl")


def test_reduced_experiment_reaches_test_scores(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    wheel = _wheel(tmp_path / "w.whl", n_per_class=8, duplicate=False)
    main(str(wheel), out_dir=str(tmp_path / "out"), reduced=True)
    out = tmp_path / "out"
    for label in ("simclr", "mocov3"):
        assert list((out / "pretrain" / label).glob("runs/*/models/encoder.pt")), label
    with open(out / "finetune" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["init"] for r in rows) == ["mocov3", "random", "simclr"]
    assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 for r in rows)
    assert "| label_budget | random | simclr | mocov3 |" in (out / "finetune" / "summary.md").read_text()
