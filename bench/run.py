"""``python -m bench``: interleaved rounds of each SSL bundle's training through ``monai.bundle run``, a plain
PyTorch loop over the same components and (where lightly has the method and is installed) lightly's loop; the augmentation
pipeline's items/s in one process (one DataLoader worker's share). Writes ``<out>/bench.json`` and
``<out>/bench.md``.

Ratios are per round (the modes of a round run one after the other, their order alternating between rounds),
then the median over rounds, as single runs on shared cores vary by about 15%. Each run's seconds are split into
waiting for batches, steps and the rest (start-up, epoch boundaries, end of the run: ``bench.loops.Phases``); the
table shows the median per-round difference between the bundle and the plain loop in each, and the ratios over the
epochs only: whole epochs with their boundaries (the bundle's epoch-end checkpoint and export included), without the
run's final wait for its last writes (``end_s``, a once-per-run cost that a 1-epoch bench run weighs heavily).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .loops import LIGHTLY
from .settings import BUNDLES, COMMON, DATA

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


def run_mode(mode: str, configs: list[str], overrides: dict, epochs: int, threads: int) -> dict:
    """One timed run in a fresh process (``bench.loops``)."""
    cmd = [sys.executable, "-m", "bench.loops", mode, json.dumps(configs),
           json.dumps({**overrides, "torch_threads": threads}), str(epochs)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONWARNINGS="ignore")
    res = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"bench {mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def augment_rate(configs: list[str], overrides: dict, n: int) -> float:
    """Items/s of ``train#dataset[i]`` (load + every transform, all views) in this process."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs)
    for key, value in overrides.items():
        parser[key] = value
    dataset = parser.get_parsed_content("train#dataset")
    n = min(n, len(dataset))
    dataset[0]  # warm-up (lazy imports, caches)
    start = time.perf_counter()
    for i in range(n):
        dataset[i]
    return n / (time.perf_counter() - start)


def main(bundles: str | None = None, rounds: int = 5, epochs: int = 2, out: str = "bench/results",
         threads: int | None = None, augment_items: int = 32, lightly: bool = True) -> None:
    """Benchmark ``bundles`` (comma-separated; default: every bundle in :data:`bench.settings.BUNDLES`) and print the
    table."""
    print(table(run_bench(bundles, rounds, epochs, out, threads, augment_items, lightly)))


def run_bench(bundles: str | None = None, rounds: int = 5, epochs: int = 2, out: str = "bench/results",
              threads: int | None = None, augment_items: int = 32, lightly: bool = True,
              overrides: dict | None = None, data: dict | None = None, cache: str | None = None) -> dict:
    """The benchmark of :func:`main`; returns the results dict (also written to ``<out>/bench.json``).

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
    threads = int(threads or os.cpu_count() or 1)
    out_dir = ROOT / out
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = ROOT / "bench" / ".data" if cache is None else Path(cache)
    results = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                           "cpus": os.cpu_count(), "torch_threads": threads,
                           "gpu": _gpu_name()},
               "rounds": rounds, "epochs": epochs, "bundles": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            kind, extra = BUNDLES[name]
            cfg = ROOT / "bundles" / name / "configs"
            configs = [str(cfg / "train.json"), str(cfg / "cpu_demo.json")]
            sizes = None if data is None else data.get(kind, {})
            base = {**COMMON, **extra, **(overrides or {}), "dataset_dir": demo_data(kind, cache, sizes)}
            modes = ["bundle", "plain"] + (["lightly"] if lightly and name in LIGHTLY and _lightly_available() else [])
            runs = {m: [] for m in modes}
            for r in range(rounds):
                for mode in (modes if r % 2 == 0 else modes[::-1]):
                    root = Path(tmp) / f"{name}_{mode}_{r}"
                    loop = f"lightly:{name}" if mode == "lightly" else mode
                    runs[mode].append(run_mode(loop, configs, {**base, "bundle_root": str(root)}, epochs, threads))
            entry = {"settings": extra, "demo_data": kind, "runs": runs,
                     "samples_per_s": {m: statistics.median(x["samples_per_s"] for x in v) for m, v in runs.items()},
                     "peak_rss_mb": {m: max(x["peak_rss_mb"] for x in v) for m, v in runs.items()}}
            for other in modes[1:]:
                entry[f"ratio_vs_{other}"] = statistics.median(
                    a["samples_per_s"] / b["samples_per_s"] for a, b in zip(runs["bundle"], runs[other]))
            # over the epochs only (their boundaries included, the run's final wait for its writes not)
            for other in modes[1:]:
                entry[f"epochs_ratio_vs_{other}"] = statistics.median(
                    _epochs_rate(a) / _epochs_rate(b) for a, b in zip(runs["bundle"], runs[other]))
            # where the bundle's extra seconds go (median per-round difference to the plain loop, see loops.Phases)
            entry["bundle_minus_plain_s"] = {
                phase: statistics.median(a[f"{phase}_s"] - b[f"{phase}_s"] for a, b in zip(runs["bundle"], runs["plain"]))
                for phase in ("data", "step", "other", "end")}
            entry["augment_items_per_s"] = augment_rate(configs, {**base, "bundle_root": str(Path(tmp) / "aug")},
                                                        augment_items)
            results["bundles"][name] = entry
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "bench.md").write_text(table(results))
    return results


def _epochs_rate(run: dict) -> float:
    """Samples/s over a run's epochs: its seconds less ``end_s``, the wait after the last epoch (for the bundle's
    last checkpoint and export writes)."""
    return run["samples"] / (run["seconds"] - run["end_s"])


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def table(results: dict) -> str:
    """The Markdown table of a results dict."""
    m = results["machine"]
    lines = [f"Machine: {m['platform']}, {m['cpus']} CPUs ({m['torch_threads']} torch threads), GPU: {m['gpu'] or 'none'}; "
             f"{results['rounds']} interleaved rounds of {results['epochs']} epochs (medians).", "",
             "| bundle | bundle samples/s | plain samples/s | bundle / plain | lightly samples/s | bundle / lightly "
             "| epochs only: bundle / plain, / lightly | bundle − plain s: data / step / other (end) "
             "| augmentation items/s (1 process) | peak RSS bundle / plain (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in results["bundles"].items():
        sps, rss = e["samples_per_s"], e["peak_rss_mb"]
        light = f"{sps['lightly']:.1f}" if "lightly" in sps else "–"
        ratio_l = f"{e['ratio_vs_lightly']:.2f}" if "ratio_vs_lightly" in e else "–"
        gap = " / ".join(f"{e['bundle_minus_plain_s'][p]:+.2f}" for p in ("data", "step", "other"))
        gap += f" ({e['bundle_minus_plain_s']['end']:+.2f})"
        epochs = f"{e['epochs_ratio_vs_plain']:.2f}, " + (f"{e['epochs_ratio_vs_lightly']:.2f}"
                                                          if "epochs_ratio_vs_lightly" in e else "–")
        lines.append(f"| {name} | {sps['bundle']:.1f} | {sps['plain']:.1f} | {e['ratio_vs_plain']:.2f} | {light} | "
                     f"{ratio_l} | {epochs} | {gap} | {e['augment_items_per_s']:.1f} | "
                     f"{rss['bundle']:.0f} / {rss['plain']:.0f} |")
    return "\n".join(lines) + "\n"
