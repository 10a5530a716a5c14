"""The label-efficiency report carries every metric the evaluate runs wrote (tables, CSV columns, plot panels), the
means and sample standard deviations are those of the seeds (computed here with ``statistics``), and a sweep of a
single budget keeps a readable x axis (the budget itself as the tick, no offset such as "+3e1")."""

import csv
import statistics

import matplotlib.figure
import pytest

from monai_ssl_ext.sweep import metric_names, plot, summary_markdown, write_csv

SEEDS = [0, 1, 2]
VALUES = {  # (init, seed) -> evaluate-run metrics
    ("random", 0): {"test_dice": 0.50, "test_iou": 0.40, "test_iou_3d": 0.30},
    ("random", 1): {"test_dice": 0.60, "test_iou": 0.45, "test_iou_3d": 0.35},
    ("random", 2): {"test_dice": 0.55, "test_iou": 0.41, "test_iou_3d": 0.20},
    ("swav", 0): {"test_dice": 0.70, "test_iou": 0.60, "test_iou_3d": 0.50},
    ("swav", 1): {"test_dice": 0.72, "test_iou": 0.61, "test_iou_3d": 0.52},
    ("swav", 2): {"test_dice": 0.80, "test_iou": 0.66, "test_iou_3d": 0.58},
}


def _rows(budget=30):
    return [{"init": i, "budget": budget, "x": budget, "seed": s, "test_metric": "test_dice",
             "test_value": m["test_dice"], "val_metric": "val_dice", "best_val_value": 0.0, "run_id": f"{i}{s}",
             "run_name": f"{i}-{s}", "output_dir": "", "metrics": m} for (i, s), m in VALUES.items()]


def _cell(init: str, key: str) -> str:
    vals = [VALUES[(init, s)][key] for s in SEEDS]
    return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}"


def test_every_metric_in_tables_and_csv(tmp_path):
    rows = _rows()
    names = metric_names(rows, "test_dice")
    assert names == ["test_dice", "test_iou", "test_iou_3d"]
    md = summary_markdown(rows, [30], ["random", "swav"], "train_fraction", "test_dice (evaluate.json)",
                          metrics=names[1:])
    for key in names:
        for init in ("random", "swav"):
            assert _cell(init, key) in md, (key, init)
    assert md.count("| train_fraction | random | swav |") == 3
    assert "test_iou_3d:" in md
    write_csv(rows, tmp_path / "results.csv")
    with open(tmp_path / "results.csv", newline="") as f:
        read = list(csv.DictReader(f))
    assert {"test_iou", "test_iou_3d", "test_dice"} <= set(read[0])
    assert [float(r["test_iou_3d"]) for r in read] == [m["test_iou_3d"] for m in VALUES.values()]


@pytest.mark.parametrize("budget", [30, 0.05])
def test_single_budget_plot_is_readable(tmp_path, monkeypatch, budget):
    figures = []
    original = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    png = plot(_rows(budget), [budget], ["random", "swav"], tmp_path / "le.png", "test_dice", "labelled slices",
               metrics=["test_iou", "test_iou_3d"])
    assert (tmp_path / "le.png").is_file() and png.endswith("le.png")
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in panels] == ["test_dice", "test_iou", "test_iou_3d"]
    for ax in panels:
        fig.canvas.draw()
        assert ax.xaxis.get_major_formatter().get_offset() == ""
        assert [t.get_text() for t in ax.get_xticklabels()] == [f"{budget:g}"]
        lo, hi = ax.get_xlim()
        assert lo < budget < hi and (hi - lo) < abs(budget)  # the point is in view, not lost on a huge range
        # the plotted means are the seeds' means
        means = sorted(c.lines[0].get_ydata()[0] for c in ax.containers)  # the error-bar data lines
        key = ax.get_ylabel()
        expected = sorted(statistics.mean(VALUES[(i, s)][key] for s in SEEDS) for i in ("random", "swav"))
        assert means == pytest.approx(expected)
