"""A reduced ``python -m bench``: SimCLR on a few tiny demo frames, two interleaved rounds of one epoch.

What would be wrong: a mode that trains on other data or batch sizes than it reports, ratios that are not the
median of per-round ratios, a table that drops a bundle, results not written where asked."""

from __future__ import annotations

import json
import statistics

import pytest


def test_reduced_bench_writes_consistent_medians(tmp_path):
    from bench.run import run_bench, table

    res = run_bench("simclr_cholec", rounds=2, epochs=1, out=str(tmp_path / "out"), threads=1, augment_items=4,
                    lightly=False, cache=str(tmp_path / "data"),
                    overrides={"backbone": "timm/resnet10t", "image_size": 32, "batch_size": 4, "num_workers": 0},
                    data={"cholec": {"n_videos": 4, "frames_per_video": 6}})
    entry = res["bundles"]["simclr_cholec"]
    modes = ["bundle", "plain"]  # lightly is an optional extra (its loops run in `python -m bench`)
    assert sorted(entry["runs"]) == sorted(modes)
    train_items = sum(1 for _ in open(tmp_path / "data" / "cholec" / "train.csv")) - 1  # header
    for mode, runs in entry["runs"].items():
        assert len(runs) == 2
        for run in runs:
            # one whole epoch of full batches (drop_last) of 4, in every mode
            assert run["steps"] == train_items // 4 and run["samples"] == 4 * run["steps"], mode
            assert run["samples_per_s"] == pytest.approx(run["samples"] / run["seconds"])
        assert entry["samples_per_s"][mode] == pytest.approx(statistics.median(r["samples_per_s"] for r in runs))
    per_round = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(entry["runs"]["bundle"], entry["runs"]["plain"])]
    assert entry["ratio_vs_plain"] == pytest.approx(statistics.median(per_round))
    assert entry["augment_items_per_s"] > 0
    written = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert written["bundles"]["simclr_cholec"]["runs"] == entry["runs"]
    md = (tmp_path / "out" / "bench.md").read_text()
    assert md == table(res) and "| simclr_cholec |" in md and "2 interleaved rounds of 1 epochs" in md
