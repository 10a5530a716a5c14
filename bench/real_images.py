"""Label efficiency on real medical images that ship in a PyPI wheel: brain MR slices, tumour yes / no.

Data: the wheel of ``my-unique-datasets-library==0.9.7`` (PyPI, 45.7 MB), which holds the "Brain MRI Images for
Brain Tumor Detection" set under ``my_datasets/data/images/brain_tumor_dataset/{yes,no}/``: 253 axial MR slices
(T1, T2, FLAIR) of many patients, JPEG / PNG of various sizes, 155 with a tumour (``yes``) and 98 without (``no``);
the folder is the label. Later versions of the package dropped the images. Fetch it once (nothing is installed or
imported: the images are read from the wheel as a zip file)::

    pip download my-unique-datasets-library==0.9.7 --no-deps -d data/wheels
    python -m bench.real_images --wheel data/wheels/my_unique_datasets_library-0.9.7-py3-none-any.whl

Steps (all under ``--out_dir``):

1. :func:`prepare`: decode every picture, drop exact duplicates (the same pixels twice: 25 in this wheel), convert to
   RGB at ``size``², split per class 60 / 20 / 20 (seeded) into train / validation / test; write the PNGs, the
   classification split file (``split.json``, the layout of ``gie_classification``), the SSL frame CSVs
   (``simclr_cholec``) and a folder of the training images (``mocov3_hyperkvasir``). The split is by slice: the
   release names no patient, so slices of one patient may fall on both sides.
2. :func:`pretrain`: SimCLR (``simclr_cholec``) and MoCo v3 (``mocov3_hyperkvasir``) on the training images only
   (their labels unused), ResNet-18 at ``image_size`` px, each through ``python -m monai.bundle run``.
3. :func:`finetune`: ``gie_classification`` (whole network trained) at two label budgets (labelled training images
   per class) × {random init, SimCLR, MoCo v3} × seeds; the test split scored with the checkpoint selected on
   validation (``scripts/label_efficiency.py``'s sweep: ``summary.md``, ``results.csv``, ``label_efficiency.png``).

The defaults take about 18 minutes on 2 CPU cores (1057 s, 2026-12-05). :data:`REDUCED` is the tiny version the
test runs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WHEEL_PREFIX = "my_datasets/data/images/brain_tumor_dataset/"
CLASSES = ("no", "yes")  # label = index: 0 no tumour, 1 tumour
PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

#: the published run: pretraining and finetuning settings (CPU, ~18 min on 2 cores)
SETTINGS = {
    "size": 128, "image_size": 64, "backbone": "timm/resnet18", "pretrain_epochs": 40, "finetune_epochs": 12,
    "budgets": [8, 32], "seeds": [0, 1, 2, 3, 4], "batch_size": 16, "num_workers": 2,
}
#: the reduced run of the test: two pretraining epochs, one finetuning epoch, one budget and seed
REDUCED = {
    "size": 32, "image_size": 32, "backbone": "timm/resnet10t", "pretrain_epochs": 1, "finetune_epochs": 1,
    "budgets": [2], "seeds": [0], "batch_size": 4, "num_workers": 0,
}


def read_wheel(wheel: str | os.PathLike) -> list[tuple[str, int, bytes]]:
    """``(name in the wheel, label, file bytes)`` of every picture under :data:`WHEEL_PREFIX`, sorted by name.

    Raises:
        FileNotFoundError: ``wheel`` does not exist.
        ValueError: it is not a zip file, or holds no picture of a class (the package version without the images).
    """
    wheel = Path(wheel)
    if not wheel.is_file():
        raise FileNotFoundError(f"wheel {str(wheel)!r} not found: `pip download my-unique-datasets-library==0.9.7 "
                                "--no-deps -d data/wheels` fetches it")
    if not zipfile.is_zipfile(wheel):
        raise ValueError(f"{str(wheel)!r} is not a wheel (zip file)")
    out = []
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            if not name.startswith(WHEEL_PREFIX) or not name.lower().endswith(PICTURE_SUFFIXES):
                continue
            folder = name[len(WHEEL_PREFIX):].split("/")[0]
            if folder in CLASSES:
                out.append((name, CLASSES.index(folder), z.read(name)))
    missing = [c for k, c in enumerate(CLASSES) if not any(label == k for _, label, _ in out)]
    if missing:
        raise ValueError(f"{str(wheel)!r} holds no picture under {WHEEL_PREFIX}{{{','.join(missing)}}}/: only "
                         "my-unique-datasets-library 0.9.7 ships the images")
    return out


def prepare(wheel: str | os.PathLike, out_dir: str | os.PathLike, size: int = 128, seed: int = 0) -> dict:
    """Step 1 (see the module docstring); returns the counts and file paths written (``prepared.json``)."""
    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    items: list[dict] = []
    duplicates = conflicts = 0
    for name, label, data in read_wheel(wheel):
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")
        digest = hashlib.sha1(np.asarray(rgb).tobytes() + str(rgb.size).encode()).hexdigest()
        if digest in seen:
            duplicates += 1
            conflicts += seen[digest] != label
            continue
        seen[digest] = label
        rel = f"images/{CLASSES[label]}_{len(items):03d}.png"
        rgb.resize((size, size), Image.BICUBIC).save(out / rel)
        items.append({"image": rel, "label": label, "class_name": CLASSES[label], "source": name})
    if conflicts:
        raise ValueError(f"{conflicts} pictures appear in both class folders of {wheel}")
    rng = np.random.default_rng(seed)
    split: dict[str, list] = {"training": [], "validation": [], "test": []}
    for label in range(len(CLASSES)):
        idx = [i for i, it in enumerate(items) if it["label"] == label]
        idx = [idx[i] for i in rng.permutation(len(idx))]
        n_val = n_test = round(0.2 * len(idx))
        split["test"] += [items[i] for i in sorted(idx[:n_test])]
        split["validation"] += [items[i] for i in sorted(idx[n_test:n_test + n_val])]
        split["training"] += [items[i] for i in sorted(idx[n_test + n_val:])]
    counts = {k: {c: sum(it["label"] == i for it in v) for i, c in enumerate(CLASSES)} for k, v in split.items()}
    (out / "split.json").write_text(json.dumps({"class_names": list(CLASSES), **split, "counts": counts,
                                                "seed": seed, "source": str(wheel)}, indent=1))
    for name, key in (("ssl_train.csv", "training"), ("ssl_val.csv", "validation")):
        with open(out / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows([[it["image"], -1] for it in split[key]])  # unlabelled for SSL
    unlabeled = out / "unlabeled"  # links to this split's training pictures only: an earlier split's are removed
    shutil.rmtree(unlabeled, ignore_errors=True)
    unlabeled.mkdir()
    for it in split["training"]:
        os.symlink(os.path.relpath(out / it["image"], unlabeled), unlabeled / Path(it["image"]).name)
    info = {"unique": len(items), "duplicates_dropped": duplicates, "counts": counts, "size": size}
    (out / "prepared.json").write_text(json.dumps(info, indent=1))
    return info


def _bundle_run(bundle: str, configs: list[str], overrides: dict, log: Path) -> float:
    """``python -m monai.bundle run`` of ``bundle`` with ``configs`` (names under its configs/) and ``overrides``
    (written to an args file); returns the wall seconds. A failure raises with the log's tail."""
    cfg = ROOT / "bundles" / bundle / "configs"
    args = {"config_file": [str(cfg / c) for c in configs], "logging_file": str(cfg / "logging.conf"), **overrides}
    args_file = log.with_suffix(".args.json")
    args_file.write_text(json.dumps(args, indent=1))
    env = dict(os.environ, HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true")
    start = time.perf_counter()
    with open(log, "w") as f:
        res = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--args_file", str(args_file)],
                             cwd=str(ROOT), env=env, stdout=f, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        raise RuntimeError(f"{bundle} failed (log {log}):\n" + log.read_text()[-3000:])
    return time.perf_counter() - start


def pretrain(data_dir: str | os.PathLike, out_dir: str | os.PathLike, settings: dict) -> dict[str, str]:
    """Step 2: ``{"simclr": encoder.pt, "mocov3": encoder.pt}`` pretrained on the training images."""
    data, out = Path(data_dir).resolve(), Path(out_dir).resolve()
    common = {"backbone": settings["backbone"], "image_size": settings["image_size"],
              "epochs": settings["pretrain_epochs"], "batch_size": settings["batch_size"],
              "num_workers": settings["num_workers"], "resume": False, "knn_interval": 0}
    runs = {
        "simclr": ("simclr_cholec", {"train_csv": str(data / "ssl_train.csv"), "val_csv": str(data / "ssl_val.csv"),
                                     "val_interval": 10_000}),
        "mocov3": ("mocov3_hyperkvasir", {"unlabeled_images": str(data / "unlabeled"), "warmup_epochs": 1,
                                          "projection_dims": [512, 128], "prediction_dims": [512, 128]}),
    }
    encoders = {}
    for label, (bundle, extra) in runs.items():
        root = out / "pretrain" / label
        root.mkdir(parents=True, exist_ok=True)
        seconds = _bundle_run(bundle, ["train.json"], {**common, **extra, "bundle_root": str(root),
                                                       "dataset_dir": str(data)}, root / "train.log")
        encoders[label] = str(root / "runs" / bundle / "models" / "encoder.pt")
        print(f"pretrained {label} ({bundle}) in {seconds:.0f} s: {encoders[label]}", flush=True)
    return encoders


def finetune(data_dir: str | os.PathLike, out_dir: str | os.PathLike, encoders: dict[str, str], settings: dict) -> dict:
    """Step 3: the label-efficiency sweep of ``gie_classification``; returns :func:`monai_ssl_ext.sweep.sweep`'s dict."""
    from monai_ssl_ext.sweep import sweep

    data, out = Path(data_dir).resolve(), Path(out_dir).resolve()
    # each encoder's input normalisation comes from its header (SimCLR 0.5 / 0.5, MoCo v3 ImageNet)
    inits = {"random": None, "simclr": encoders["simclr"], "mocov3": encoders["mocov3"]}
    return sweep(bundle="gie_classification", budgets=settings["budgets"], inits=inits, seeds=settings["seeds"],
                 out_dir=str(out / "finetune"), budget_label="labelled training slices per class",
                 dataset_dir=str(data), split_file=str(data / "split.json"), backbone=settings["backbone"],
                 image_size=settings["image_size"], epochs=settings["finetune_epochs"],
                 batch_size=settings["batch_size"], num_workers=settings["num_workers"], cache_rate=1.0)


def main(wheel: str, out_dir: str = "runs/real_images", reduced: bool = False, **settings) -> None:
    """Run the three steps (see the module docstring); ``settings`` override :data:`SETTINGS` entries."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown settings {unknown}; known: {sorted(SETTINGS)}")
    s = {**(REDUCED if reduced else SETTINGS), **settings}
    out = Path(out_dir)
    start = time.perf_counter()
    info = prepare(wheel, out / "data", size=s["size"])
    print(f"prepared {info['unique']} unique pictures ({info['duplicates_dropped']} duplicates dropped): "
          f"{info['counts']}", flush=True)
    encoders = pretrain(out / "data", out, s)
    result = finetune(out / "data", out, encoders, s)
    print(result["summary"])
    print(f"total {time.perf_counter() - start:.0f} s; {result['summary_md']}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
