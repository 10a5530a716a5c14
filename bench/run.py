"""``python -m bench``: interleaved rounds of each SSL bundle's training through ``monai.bundle run``, a plain
PyTorch loop over the same components and (where lightly has the method and is installed) lightly's loop; the augmentation
pipeline's items/s in one process (one DataLoader worker's share). Writes ``<out>/bench.json`` and
``<out>/bench.md``.

Ratios are per round (the modes of a round run one after the other, their order alternating between rounds),
then the median over rounds, as single runs on shared cores vary by about 15%. Each run's seconds are split into
waiting for batches, steps and the rest (start-up, epoch boundaries, end of the run: ``bench.loops.Phases``); the
table shows the median per-round difference between the bundle and the plain loop in each, and the ratios over the
epochs only: whole epochs with the boundaries between them (the bundle's epoch-end checkpoint and export included),
without what follows the last step (``end_s``: the run's final checkpoint and export, a once-per-run cost that a
2-epoch bench run weighs heavily).

``--variants`` adds bundle runs with other config values to the same rounds, e.g. the options to choose by
measurement on a machine: ``python -m bench --bundles simclr_cholec --variants '{"no_cl": {"channels_last": false},
"amp": {"amp": true}, "compile": {"train#trainer#compile": true}}'``; each is reported as variant / bundle.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .loops import LIGHTLY
from .settings import BUNDLES, COMMON, DATA, EPOCHS

ROOT = Path(__file__).resolve().parent.parent


def _lightly_available() -> bool:
    try:
        import lightly.loss  # noqa: F401
        return True
    except ImportError:
        return False


def demo_data(kind: str, cache: Path, sizes: dict | None = None) -> str:
    """The bundle's demo data (made once, deterministic) under ``cache``, with the generator arguments ``sizes``
    (default :data:`bench.settings.DATA`)."""
    from monai_ssl_ext.demo import GENERATORS

    out = cache / kind
    if not (out / ".complete").is_file():
        out.mkdir(parents=True, exist_ok=True)
        GENERATORS[kind](str(out), **(DATA.get(kind, {}) if sizes is None else sizes))
        (out / ".complete").write_text("")
    return str(out)


def fresh_process(module: str, *args: str) -> dict:
    """``python -m <module> <args>`` in a fresh process, offline; the JSON object its last output line prints."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, "-m", module, *args], cwd=str(ROOT), env=env, capture_output=True,
                         text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)[:200]} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_mode(mode: str, configs: list[str], overrides: dict, epochs: int, threads: int) -> dict:
    """One timed run in a fresh process (``bench.loops``)."""
    return fresh_process("bench.loops", mode, json.dumps(configs), json.dumps({**overrides, "torch_threads": threads}),
                         str(epochs))


def augment_rate(configs: list[str], overrides: dict, n: int, repeats: int = 5) -> float:
    """Items/s of ``train#dataset[i]`` (load + every transform, all views) in this process: the median over
    ``repeats`` passes over the first ``n`` items. One pass of 32 items lasts 0.05-0.4 s: single passes gave SimCLR
    240 and 518 items/s in bench sets 3 and 4, with no change to its transforms in between."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs)
    for key, value in overrides.items():
        parser[key] = value
    dataset = parser.get_parsed_content("train#dataset")
    n = min(n, len(dataset))
    dataset[0]  # warm-up (lazy imports, caches)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            dataset[i]
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def main(bundles: str | None = None, rounds: int = 5, epochs: int | None = None, out: str = "bench/results",
         threads: int | None = None, augment_items: int = 32, lightly: bool = True,
         variants: dict | None = None) -> None:
    """Benchmark ``bundles`` (comma-separated; default: every bundle in :data:`bench.settings.BUNDLES`) for ``epochs``
    whole epochs per run (default: each bundle's :data:`bench.settings.EPOCHS`) and print the table; ``variants``
    (label -> config overrides) adds the bundle run with those values to each round."""
    print(table(run_bench(bundles, rounds, epochs, out, threads, augment_items, lightly, variants=variants)))


def run_bench(bundles: str | None = None, rounds: int = 5, epochs: int | None = None, out: str = "bench/results",
              threads: int | None = None, augment_items: int = 32, lightly: bool = True,
              overrides: dict | None = None, data: dict | None = None, cache: str | None = None,
              variants: dict | None = None) -> dict:
    """The benchmark of :func:`main`; returns the results dict (also written to ``<out>/bench.json``).

    ``variants`` (label -> config overrides): in each round, after the modes (before them in every other round, which
    runs the whole sequence reversed), the bundle run once more per variant with those values;
    ``entry["variants"][label]`` holds its runs and the median per-round ratio variant / bundle.

    ``overrides`` (config ids, every bundle and mode), ``data`` (demo data kind -> generator arguments, replacing
    :data:`bench.settings.DATA`) and ``cache`` (folder of the demo data) shrink it, e.g. for a test."""
    if bundles is None:
        names = list(BUNDLES)
    else:  # "a,b" on the command line reaches here as a tuple (fire), or as a string
        names = [b.strip() for b in (bundles if isinstance(bundles, (list, tuple)) else str(bundles).split(","))
                 if str(b).strip()]
    unknown = [b for b in names if b not in BUNDLES]
    if unknown:
        raise ValueError(f"no bench settings for {unknown}; known: {sorted(BUNDLES)}")
    variants = dict(variants or {})
    bad = {k: v for k, v in variants.items() if not isinstance(v, dict)}
    if bad:
        raise ValueError(f"--variants: each variant is a label and a dict of config overrides, got {bad}")
    threads = int(threads or os.cpu_count() or 1)
    out_dir = ROOT / out
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = ROOT / "bench" / ".data" if cache is None else Path(cache)
    results = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                           "cpus": os.cpu_count(), "torch_threads": threads,
                           "gpu": _gpu_name()},
               "rounds": rounds, "bundles": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            kind, extra = BUNDLES[name]
            cfg = ROOT / "bundles" / name / "configs"
            configs = [str(cfg / "train.json"), str(cfg / "cpu_demo.json")]
            sizes = None if data is None else data.get(kind, {})
            base = {**COMMON, **extra, **(overrides or {}), "dataset_dir": demo_data(kind, cache, sizes)}
            n_epochs = int(epochs or EPOCHS[name])
            modes = ["bundle", "plain"] + (["lightly"] if lightly and name in LIGHTLY and _lightly_available() else [])
            runs = {m: [] for m in modes}
            variant_runs = {label: [] for label in variants}
            # a round runs the modes, then the variants; every other round in the reverse order
            order = [(mode, None) for mode in modes] + [("bundle", label) for label in variants]
            # the augmentation count after every round: one process at one moment is as exposed to the machine's
            # load as one run (sets 22-23 counted MAE at 1270 and 1386 items/s, interleaved pairs 1891-1928)
            augment = []
            for r in range(rounds):
                for mode, label in (order if r % 2 == 0 else order[::-1]):
                    loop = f"lightly:{name}" if mode == "lightly" else mode
                    folder = mode if label is None else f"variant{list(variants).index(label)}"
                    values = {} if label is None else variants[label]
                    root = Path(tmp) / f"{name}_{folder}_{r}"
                    run = run_mode(loop, configs, {**base, **values, "bundle_root": str(root)}, n_epochs, threads)
                    (runs[mode] if label is None else variant_runs[label]).append(run)
                augment.append(augment_rate(configs, {**base, "bundle_root": str(Path(tmp) / "aug")}, augment_items))
            entry = {"settings": extra, "demo_data": kind, "epochs": n_epochs, "runs": runs,
                     "samples_per_s": {m: statistics.median(x["samples_per_s"] for x in v) for m, v in runs.items()},
                     "peak_rss_mb": {m: max(x["peak_rss_mb"] for x in v) for m, v in runs.items()}}
            gpu = {m: peak for m, v in runs.items() if (peak := _gpu_peak(v)) is not None}
            if gpu:
                entry["peak_gpu_mb"] = gpu
            for other in modes[1:]:
                whole = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(runs["bundle"], runs[other])]
                # over the epochs only (the boundaries between them included, the run's final writes not)
                epochs_only = [epochs_rate(a) / epochs_rate(b) for a, b in zip(runs["bundle"], runs[other])]
                for key, ratios in ((f"ratio_vs_{other}", whole), (f"epochs_ratio_vs_{other}", epochs_only)):
                    entry[key] = statistics.median(ratios)
                    entry[f"{key}_interval"] = median_interval(ratios)
            # where the bundle's extra seconds go (median per-round difference to the plain loop, see loops.Phases)
            entry["bundle_minus_plain_s"] = {
                phase: statistics.median(a[f"{phase}_s"] - b[f"{phase}_s"] for a, b in zip(runs["bundle"], runs["plain"]))
                for phase in ("data", "step", "other", "end")}
            if variants:
                entry["variants"] = {label: _variant(variants[label], runs["bundle"], variant_runs[label])
                                     for label in variants}
            entry["augment_items_per_s"] = statistics.median(augment)
            entry["augment_items_per_s_rounds"] = augment
            results["bundles"][name] = entry
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "bench.md").write_text(table(results))
    return results


def _variant(overrides: dict, bundle_runs: list[dict], runs: list[dict]) -> dict:
    """A variant's entry: its overrides and runs, the median samples/s, and the median per-round ratio to the
    bundle run of the same round (with its interval)."""
    ratios = [v["samples_per_s"] / b["samples_per_s"] for v, b in zip(runs, bundle_runs)]
    out = {"overrides": overrides, "runs": runs, "samples_per_s": statistics.median(r["samples_per_s"] for r in runs),
           "ratio_vs_bundle": statistics.median(ratios), "ratio_vs_bundle_interval": median_interval(ratios),
           "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
    peak = _gpu_peak(runs)
    if peak is not None:  # what an amp or layout variant saves on the GPU is as much a reason to choose it as its speed
        out["peak_gpu_mb"] = peak
    return out


def _gpu_peak(runs: list[dict]) -> float | None:
    """The largest ``peak_gpu_mb`` of ``runs``; None unless every run trained on a GPU."""
    return max(r["peak_gpu_mb"] for r in runs) if runs and all("peak_gpu_mb" in r for r in runs) else None


def median_interval(values: list[float], level: float = 0.95) -> list[float]:
    """A distribution-free confidence interval of the median of ``values`` (independent rounds): the order statistics
    ``(x_(k), x_(n+1-k))`` with the largest ``k`` whose coverage ``1 - 2 P(Binomial(n, 1/2) < k)`` is at least
    ``level``; with too few values for ``level`` (fewer than 6 at 95%) the whole range (``k = 1``). Returns
    ``[low, high, coverage]``."""
    xs, n = sorted(values), len(values)

    def coverage(k: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0 ** n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return [xs[k - 1], xs[n - k], coverage(k)]


def epochs_rate(run: dict) -> float:
    """Samples/s over a run's epochs: its seconds less ``end_s``, what follows its last step (the bundle's final
    checkpoint and export writes)."""
    return run["samples"] / (run["seconds"] - run["end_s"])


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _peak(entry: dict) -> str:
    """The peak-memory cell: RSS bundle / plain, and on a GPU the peak allocated there, bundle / plain."""
    rss, gpu = entry["peak_rss_mb"], entry.get("peak_gpu_mb", {})
    cell = f"{rss['bundle']:.0f} / {rss['plain']:.0f}"
    if "bundle" in gpu and "plain" in gpu:
        cell += f"; GPU {gpu['bundle']:.0f} / {gpu['plain']:.0f}"
    return cell


def table(results: dict) -> str:
    """The Markdown table of a results dict: medians over rounds; after each ratio, in brackets, the interval of its
    median (:func:`median_interval`, its coverage in the header)."""
    m = results["machine"]
    coverage = min(e[k][2] for e in results["bundles"].values() for k in e if k.endswith("_interval"))
    lines = [f"Machine: {m['platform']}, {m['cpus']} CPUs ({m['torch_threads']} torch threads), GPU: {m['gpu'] or 'none'}; "
             f"{results['rounds']} interleaved rounds (medians; [interval of the median ratio, coverage ≥ "
             f"{coverage:.1%}]).", "",
             "| bundle | epochs | bundle samples/s | plain samples/s | bundle / plain | lightly samples/s | bundle / lightly "
             "| epochs only: bundle / plain, / lightly | bundle − plain s: data / step / other (end) "
             "| augmentation items/s (1 process) | peak RSS bundle / plain (MB; on a GPU, then its peak allocated) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def ratio(e: dict, key: str) -> str:
        if key not in e:
            return "–"
        low, high, _ = e[f"{key}_interval"]
        return f"{e[key]:.2f} [{low:.2f}, {high:.2f}]"

    for name, e in results["bundles"].items():
        sps, rss = e["samples_per_s"], e["peak_rss_mb"]
        light = f"{sps['lightly']:.1f}" if "lightly" in sps else "–"
        gap = " / ".join(f"{e['bundle_minus_plain_s'][p]:+.2f}" for p in ("data", "step", "other"))
        gap += f" ({e['bundle_minus_plain_s']['end']:+.2f})"
        epochs = f"{ratio(e, 'epochs_ratio_vs_plain')}, {ratio(e, 'epochs_ratio_vs_lightly')}"
        lines.append(f"| {name} | {e['epochs']} | {sps['bundle']:.1f} | {sps['plain']:.1f} | {ratio(e, 'ratio_vs_plain')} "
                     f"| {light} | {ratio(e, 'ratio_vs_lightly')} | {epochs} | {gap} | {e['augment_items_per_s']:.1f} | "
                     f"{_peak(e)} |")
    rows = [(name, label, v) for name, e in results["bundles"].items() for label, v in e.get("variants", {}).items()]
    if rows:
        lines += ["", "| bundle | variant | overrides | variant samples/s | variant / bundle | variant peak RSS "
                  "(MB; on a GPU, then its peak allocated) |", "|---|---|---|---|---|---|"]
        for name, label, v in rows:
            low, high, _ = v["ratio_vs_bundle_interval"]
            peak = f"{v['peak_rss_mb']:.0f}" if "peak_rss_mb" in v else "–"  # sets before the column have none
            if "peak_gpu_mb" in v:
                peak += f"; GPU {v['peak_gpu_mb']:.0f}"
            lines.append(f"| {name} | {label} | `{json.dumps(v['overrides'])}` | {v['samples_per_s']:.1f} "
                         f"| {v['ratio_vs_bundle']:.2f} [{low:.2f}, {high:.2f}] | {peak} |")
    return "\n".join(lines) + "\n"
