"""gie_depth through the bundle: a depth file that is not 16-bit stops training with its name; evaluate.json writes
the four test metrics (and one row per test frame); inference.json writes a 16-bit depth PNG and an error map at
each frame's size."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle_runner import run_config
from conftest import ROOT

BUNDLE = ROOT / "bundles" / "gie_depth"


def messages(exc: BaseException) -> str:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(out)


def test_an_8_bit_depth_file_stops_training_with_its_name(demo_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_data("c3vd"), data)
    bad = data / "cecum_t1_a_under_review" / "c1v1" / "1_depth.tiff"
    depth = np.asarray(Image.open(bad))
    Image.fromarray((depth // 257).astype(np.uint8)).save(bad)  # an 8-bit export of the same map
    with pytest.raises(Exception) as err:
        run_config(BUNDLE, ["train.json"], str(tmp_path / "root"), str(data))
    text = messages(err.value)
    assert "DepthFormatError" in text and str(bad) in text and "16-bit" in text


def test_evaluate_and_inference_outputs(demo_data, tmp_path):
    data = demo_data("c3vd")
    root = str(tmp_path)
    run_config(BUNDLE, ["train.json"], root, data)
    res = run_config(BUNDLE, ["train.json", "evaluate.json"], root, data)
    out = Path(res["output_dir"])
    rows = {r[0]: float(r[1]) for r in csv.reader((out / "eval" / "metrics.csv").read_text().splitlines()) if r}
    assert set(rows) == {"test_ssi_loss", "test_rmse", "test_abs_rel", "test_abs"}
    assert all(np.isfinite(v) and v >= 0 for v in rows.values())
    assert rows["test_abs"] <= rows["test_rmse"] <= 10  # mean |e| <= RMSE; errors in [0, 10] after the x10
    per_image = (out / "eval" / "test_rmse_raw.csv").read_text().splitlines()
    n_test = len(json.loads((Path(data) / "c3vd_split.json").read_text())["test"])
    assert n_test == 12 and len(per_image) == 1 + n_test  # header + every test frame (2 fixed videos x 6)
    res = run_config(BUNDLE, ["train.json", "inference.json"], root, data)
    frame = Path(data) / "cecum_t4_b_under_review" / "c4v3" / "1_color.png"
    written = Path(res["output_dir"]) / "predictions" / "cecum_t4_b_under_review" / "c4v3" / "1_color_depth.png"
    depth_map = Image.open(written)
    assert depth_map.mode.startswith("I;16") and depth_map.size == Image.open(frame).size
    error_map = Image.open(written.with_name("1_color_error.png"))
    assert error_map.mode == "RGB" and error_map.size == depth_map.size
    gt = np.asarray(Image.open(frame.with_name("1_depth.tiff")))
    assert (np.asarray(error_map)[gt == 0] == 0).all()  # black where there is no ground truth
