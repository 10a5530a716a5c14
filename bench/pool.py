"""The rounds of several bench sets pooled: per bundle, the per-round ratios bundle / plain and bundle / lightly of
every chosen set of ``docs/bench_results.json`` (the sets ``python -m bench`` wrote, one labelled entry each), with
their median and its interval (:func:`bench.run.median_interval`). Each round is one interleaved comparison, so
rounds of sets run at other times are samples of the same ratio as long as the code they timed did not change: pick
the sets by the code they ran (``since``, ``since_for`` per bundle, ``since_mode`` per compared loop)::

    python -m bench.pool --since 5 --since_for '{"simclr_cholec": 11, "byol_acdc": 11}' --since_mode '{"lightly": 15}'

``--epochs_only`` pools the ratios over the epochs (the bench's "epochs only" column) instead of whole runs.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .run import epochs_rate, median_interval

ROOT = Path(__file__).resolve().parent.parent
OTHERS = ("plain", "lightly")


def pool(results: str | Path = ROOT / "docs" / "bench_results.json", since: int = 1,
         since_for: dict | None = None, since_mode: dict | None = None, epochs_only: bool = False) -> dict:
    """``{bundle: {"sets": [set numbers], other: {"ratios", "median", "interval"}}}`` over the sets numbered (from 1,
    in file order) ``since`` or later, or ``since_for[bundle]`` or later for the bundles it names; the ratios to a
    mode named in ``since_mode`` (``"plain"`` or ``"lightly"``) only from the set it gives on (a mode whose loop
    changed). With ``epochs_only`` the ratios are over each run's epochs (its seconds less ``end_s``, what follows its
    last step: :func:`bench.run.epochs_rate`), as the bench's "epochs only" column."""
    since_for, since_mode = dict(since_for or {}), dict(since_mode or {})
    rate = epochs_rate if epochs_only else (lambda run: run["samples_per_s"])
    sets = json.loads(Path(results).read_text())["sets"]
    out: dict[str, dict] = {}
    for number, entry in enumerate(sets, start=1):
        for name, bench in entry["bundles"].items():
            if number < since_for.get(name, since):
                continue
            item = out.setdefault(name, {"sets": []})
            item["sets"].append(number)
            for other in OTHERS:
                if other in bench["runs"] and number >= since_mode.get(other, 1):
                    pairs = list(zip(bench["runs"]["bundle"], bench["runs"][other]))
                    if epochs_only and any("end_s" not in run for pair in pairs for run in pair):
                        raise ValueError(f"set {number} ({entry.get('label', '?')[:40]}) has no end_s for {name}: "
                                         "its epochs-only ratios cannot be pooled (choose later sets)")
                    ratios = [rate(b) / rate(o) for b, o in pairs]
                    item.setdefault(other, {"ratios": []})["ratios"] += ratios
    for item in out.values():
        for other in OTHERS:
            if other in item:
                ratios = item[other]["ratios"]
                item[other].update(median=statistics.median(ratios), interval=median_interval(ratios))
    return out


def table(pooled: dict) -> str:
    """Markdown: one row per bundle, its sets, and the pooled ratios with their intervals, coverage and rounds."""
    lines = ["| bundle | sets | bundle / plain | bundle / lightly |", "|---|---|---|---|"]
    for name, item in pooled.items():
        cells = []
        for other in OTHERS:
            if other in item:
                low, high, coverage = item[other]["interval"]
                n = len(item[other]["ratios"])
                rounds = f"{n} round{'s' * (n != 1)}"
                cells.append(f"{item[other]['median']:.2f} [{low:.2f}, {high:.2f}] ({coverage:.1%}, {rounds})")
            else:
                cells.append("–")
        lines.append(f"| {name} | {', '.join(map(str, item['sets']))} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(results: str = str(ROOT / "docs" / "bench_results.json"), since: int = 1, since_for: dict | None = None,
         since_mode: dict | None = None, epochs_only: bool = False):
    """Print the pooled table (see the module docstring)."""
    print(table(pool(results, since, since_for, since_mode, epochs_only)))


if __name__ == "__main__":
    import fire

    fire.Fire(main)
