"""A reduced ``python -m bench``: SimCLR on a few tiny demo frames, two interleaved rounds of one epoch; the lightly
loops of Barlow Twins, SwAV and MAE on tiny data (skipped without the optional lightly extra).

What would be wrong: a mode that trains on other data or batch sizes than it reports, a plain loop that trains
something else than the bundle (schedule, rules), ratios that are not the median of per-round ratios, a table that
drops a bundle, results not written where asked, phases that do not split a run's seconds, a lightly loop that optimises another objective than the bundle's
or does not train on the bundle's items in whole batches."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
import torch


def test_reduced_bench_writes_consistent_medians(tmp_path):
    from bench.run import run_bench, table

    res = run_bench("simclr_cholec", rounds=2, epochs=1, out=str(tmp_path / "out"), threads=1, augment_items=4,
                    lightly=False, cache=str(tmp_path / "data"),
                    overrides={"backbone": "timm/resnet10t", "image_size": 32, "batch_size": 4, "num_workers": 0},
                    data={"cholec": {"n_videos": 4, "frames_per_video": 6}},
                    variants={"contiguous": {"channels_last": False}})
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
            # the phases split the timed seconds: waits and steps are parts of it, the rest is what is left
            assert run["data_s"] > 0 and run["step_s"] > 0 and run["other_s"] >= 0, (mode, run)
            assert run["data_s"] + run["step_s"] + run["other_s"] == pytest.approx(run["seconds"])
            # what follows the last step (the final checkpoint and export) is part of the rest; the bare loop has none
            assert run["end_s"] <= run["other_s"] and (run["end_s"] > 0 if mode == "bundle" else run["end_s"] == 0)
        assert entry["samples_per_s"][mode] == pytest.approx(statistics.median(r["samples_per_s"] for r in runs))
    for bundle_run, plain_run in zip(entry["runs"]["bundle"], entry["runs"]["plain"]):
        # the plain loop trains what the bundle trains (same seed, data, schedule): the same loss at every reported step
        assert plain_run["loss_first"] == pytest.approx(bundle_run["loss_first"], rel=1e-5)
        assert plain_run["loss_last"] == pytest.approx(bundle_run["loss_last"], rel=1e-5)
    per_round = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(entry["runs"]["bundle"], entry["runs"]["plain"])]
    assert entry["ratio_vs_plain"] == pytest.approx(statistics.median(per_round))
    other_gap = [a["other_s"] - b["other_s"] for a, b in zip(entry["runs"]["bundle"], entry["runs"]["plain"])]
    assert entry["bundle_minus_plain_s"]["other"] == pytest.approx(statistics.median(other_gap))
    epochs_only = [a["samples"] / (a["seconds"] - a["end_s"]) / b["samples_per_s"]
                   for a, b in zip(entry["runs"]["bundle"], entry["runs"]["plain"])]
    assert entry["epochs_ratio_vs_plain"] == pytest.approx(statistics.median(epochs_only))
    counts = entry["augment_items_per_s_rounds"]  # one count after each round, the median reported
    assert len(counts) == 2 and min(counts) > 0 and entry["augment_items_per_s"] == statistics.median(counts)
    written = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert written["bundles"]["simclr_cholec"]["runs"] == entry["runs"]
    md = (tmp_path / "out" / "bench.md").read_text()
    assert md == table(res) and "| simclr_cholec | 1 |" in md and "2 interleaved rounds" in md
    assert entry["epochs"] == 1 and entry["ratio_vs_plain_interval"] == [min(per_round), max(per_round), 0.5]
    # a variant: the bundle run with other config values in the same rounds, reported against the bundle run
    variant = entry["variants"]["contiguous"]
    assert variant["overrides"] == {"channels_last": False} and len(variant["runs"]) == 2
    for run, bundle_run in zip(variant["runs"], entry["runs"]["bundle"]):
        # the same training in another memory layout: the same first loss, the same steps
        assert run["steps"] == bundle_run["steps"]
        assert run["loss_first"] == pytest.approx(bundle_run["loss_first"], rel=1e-4)
        # the override reached the trainer: the bundle run (train.json: channels_last true) trained channels-last,
        # the variant in PyTorch's default layout
        assert bundle_run["channels_last"] is True and run["channels_last"] is False
    ratios = [v["samples_per_s"] / b["samples_per_s"] for v, b in zip(variant["runs"], entry["runs"]["bundle"])]
    assert variant["ratio_vs_bundle"] == pytest.approx(statistics.median(ratios))
    assert f"| simclr_cholec | contiguous | `{json.dumps({'channels_last': False})}` |" in md


@pytest.mark.parametrize("n, ranks", [(5, (1, 5)), (10, (2, 9)), (20, (6, 15)), (30, (10, 21))])
def test_median_interval_is_the_binomial_order_statistics_interval(n, ranks):
    """The interval of the median: the 95% ranks of the sign-test tables (the binomial with p = 1/2:
    n 10 -> 2nd and 9th, 20 -> 6th and 15th, 30 -> 10th and 21st; at n 5 no pair reaches 95%, the range is
    given), with the coverage P(x_(k) <= median <= x_(n+1-k)) = 1 - 2 P(Binomial(n, 1/2) <= k - 1) from scipy."""
    from scipy.stats import binom

    from bench.run import median_interval

    values = [float(v) for v in range(100, 100 - n, -1)]  # unsorted input: n distinct values, descending
    low, high, coverage = median_interval(values)
    ordered = sorted(values)
    assert (low, high) == (ordered[ranks[0] - 1], ordered[ranks[1] - 1])
    assert coverage == pytest.approx(1 - 2 * binom.cdf(ranks[0] - 1, n, 0.5))
    assert coverage >= 0.95 or ranks == (1, n)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_the_reported_layout_is_the_networks(in_channels):
    """A bundle run reports ``channels_last`` from the trained network's kernels: False in PyTorch's default layout,
    True once converted, also when the first kernel has one input channel (grey images: BYOL's ACDC), whose two
    layouts are the same strides (the first version of the check read it as not channels-last)."""
    import torch

    from bench.loops import trained_channels_last
    from monai_ssl_ext.memory_format import network_to_channels_last

    network = torch.nn.Sequential(torch.nn.Conv2d(in_channels, 8, 3), torch.nn.Conv2d(8, 8, 3), torch.nn.Conv2d(8, 4, 1))
    assert trained_channels_last(network) is False
    assert trained_channels_last(network_to_channels_last(network)) is True
    assert trained_channels_last(torch.nn.Linear(4, 2)) is None  # no kernel: nothing to report


#: reduced settings of the lightly loops added for Barlow Twins, SwAV and MAE: demo data kind, its generator
#: arguments and the overrides (tiny networks, 32 px, batch 4, no workers)
_SMALL_2D = {"backbone": "timm/resnet10t", "image_size": 32, "batch_size": 4, "num_workers": 0}
_LIGHTLY_CASES = {
    "barlowtwins_hyperkvasir": ("hyperkvasir", {"n_unlabeled": 16}, {**_SMALL_2D, "projection_dims": [64, 64]}),
    # the queue on from the first epoch and the prototypes frozen for 2 of the 4 steps: every SwAV rule runs
    "swav_slices": ("ssl_slices", {"n_volumes": 3, "depth": 4},
                    {**_SMALL_2D, "local_image_size": 16, "projection_dims": [64, 32], "n_prototypes": 16,
                     "freeze_prototypes_iters": 2, "queue_length": 8, "queue_start_epoch": 0}),
    "mae_hyperkvasir": ("hyperkvasir", {"n_unlabeled": 16},
                        {"image_size": 32, "batch_size": 4, "num_workers": 0, "hidden_size": 48, "mlp_dim": 96,
                         "num_layers": 1, "num_heads": 2, "decoder_hidden_size": 32, "decoder_num_layers": 1,
                         "decoder_num_heads": 2}),
}


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    """One folder of tiny demo data for the lightly loops (two of them share the Hyperkvasir pictures)."""
    return tmp_path_factory.mktemp("bench_data")


def test_phases_split_a_loop_into_waits_and_steps():
    """Phases times a loader's waits and the loop body separately: a loader that takes 50 ms per batch and a body
    of 20 ms, three batches."""
    from bench.loops import Phases

    def slow_loader():
        for i in range(3):
            time.sleep(0.05)
            yield i

    phases = Phases()
    seen = []
    for batch in phases.batches(slow_loader()):
        time.sleep(0.02)
        seen.append(batch)
    assert seen == [0, 1, 2]
    assert 0.15 <= phases.data < 0.15 + 0.1
    assert 0.06 <= phases.step < 0.06 + 0.1


def test_phases_count_a_new_iterator_as_waiting():
    """Making an epoch's iterator (a DataLoader's worker start, or its next pass) is part of the first wait, as in the
    bundle's engine, where ignite asks for the iterator after ``GET_BATCH_STARTED``: otherwise the bare loops would
    book it under "other" and the bundle under "data"."""
    from bench.loops import Phases

    class SlowStart:
        def __iter__(self):
            time.sleep(0.1)
            return iter([0, 1])

    phases = Phases()
    assert list(phases.batches(SlowStart())) == [0, 1]
    assert 0.1 <= phases.data < 0.1 + 0.08


@pytest.mark.parametrize("name", sorted(_LIGHTLY_CASES))
def test_lightly_loop_trains_the_bundle_items_in_whole_batches(tmp_path, demo_cache, name):
    """Each new lightly loop, in its own process as ``python -m bench`` runs it: one epoch over the bundle's items
    in full batches of the bundle's size, a finite throughput, a finite positive loss at its first and last step."""
    pytest.importorskip("lightly")
    import math

    from bench.loops import LIGHTLY
    from bench.run import ROOT, demo_data, run_mode
    from bench.settings import BUNDLES, COMMON

    kind, sizes, overrides = _LIGHTLY_CASES[name]
    assert name in LIGHTLY and BUNDLES[name][0] == kind
    cfg = ROOT / "bundles" / name / "configs"
    configs = [str(cfg / "train.json"), str(cfg / "cpu_demo.json")]
    data = demo_data(kind, demo_cache, sizes)
    over = {**COMMON, **BUNDLES[name][1], **overrides, "dataset_dir": data, "bundle_root": str(tmp_path / "root")}
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs)
    for key, value in over.items():
        parser[key] = value
    n_items = len(parser.get_parsed_content("train#datalist"))
    assert n_items >= 8
    run = run_mode(f"lightly:{name}", configs, over, epochs=1, threads=1)
    assert run["steps"] == n_items // 4 and run["samples"] == 4 * run["steps"]
    assert math.isfinite(run["samples_per_s"]) and run["samples_per_s"] > 0
    assert run["samples_per_s"] == pytest.approx(run["samples"] / run["seconds"])
    for key in ("loss_first", "loss_last"):
        assert math.isfinite(run[key]) and run[key] > 0, (key, run)


def test_lightly_losses_are_the_bundle_objectives():
    """The lightly loops optimise what the bundles optimise: lightly's Barlow Twins and SwAV losses (the SwAV one with
    the loop's split into global and local crops, with and without queue scores) and the loop's MAE loss (lightly's
    ``patchify`` / ``normalize_mean_var`` + MSE on the masked patches) equal the bundles' losses on the same inputs."""
    pytest.importorskip("lightly")
    import torch
    import torch.nn.functional as F
    from lightly.loss import BarlowTwinsLoss, SwaVLoss

    from bench.loops import mae_reconstruction_loss
    from monai_ssl_ext.losses import BarlowTwinsCrossCorrelationLoss, MAELoss, SwAVLoss
    from monai_ssl_ext.networks.mae import patchify

    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(16, 12, generator=g), torch.randn(16, 12, generator=g)
    assert float(BarlowTwinsLoss(lambda_param=0.0051)(z_a, z_b)) == pytest.approx(
        float(BarlowTwinsCrossCorrelationLoss(lambd=0.0051)(z_a, z_b)), rel=1e-5)

    scores = [F.normalize(torch.randn(8, 6, generator=g), dim=1) @ F.normalize(torch.randn(5, 6, generator=g), dim=1).T
              for _ in range(5)]  # 2 global + 3 local crops, 5 unit prototypes
    queue = [torch.randn(16, 5, generator=g).tanh() for _ in range(2)]
    ours = SwAVLoss(temperature=0.1, epsilon=0.05, sinkhorn_iterations=3)
    theirs = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)
    for q in (None, queue):
        assert float(theirs(scores[:2], scores[2:], q)) == pytest.approx(float(ours(scores, q)), rel=1e-4)

    images = torch.randn(3, 3, 16, 16, generator=g)
    pred = torch.randn(3, 16, 48, generator=g)
    mask = (torch.rand(3, 16, generator=g) < 0.75).float()
    for norm_pix in (True, False):
        assert float(mae_reconstruction_loss(pred, images, mask, 4, norm_pix)) == pytest.approx(
            float(MAELoss(norm_pix_loss=norm_pix)(pred, patchify(images, 4), mask)), rel=1e-5)


def test_pooled_rounds_are_the_chosen_sets_per_round_ratios(tmp_path):
    """``bench.pool``: the per-round ratios of the chosen sets, concatenated, their median and its interval; a set
    before a bundle's ``since_for`` is left out for that bundle only. The reference ratios are written by hand."""
    from bench.pool import pool, table

    def runs(*rates):
        return [{"samples_per_s": r} for r in rates]

    sets = [{"label": "one", "bundles": {"a": {"runs": {"bundle": runs(10, 12), "plain": runs(10, 10)}},
                                         "b": {"runs": {"bundle": runs(9), "plain": runs(10), "lightly": runs(6)}}}},
            {"label": "two", "bundles": {"a": {"runs": {"bundle": runs(11, 9, 10), "plain": runs(10, 10, 8)}},
                                         "b": {"runs": {"bundle": runs(8), "plain": runs(8), "lightly": runs(4)}}}}]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"sets": sets}))
    pooled = pool(path, since=1, since_for={"b": 2})
    assert pooled["a"]["sets"] == [1, 2] and pooled["b"]["sets"] == [2]
    assert pooled["a"]["plain"]["ratios"] == pytest.approx([1.0, 1.2, 1.1, 0.9, 1.25])
    assert pooled["a"]["plain"]["median"] == pytest.approx(1.1)
    assert pooled["a"]["plain"]["interval"][:2] == pytest.approx([0.9, 1.25])  # 5 rounds: the range
    assert "lightly" not in pooled["a"]
    assert pooled["b"]["lightly"]["ratios"] == pytest.approx([2.0]) and pooled["b"]["plain"]["median"] == 1.0
    md = table(pooled)
    assert "| a | 1, 2 | 1.10 [0.90, 1.25] (93.8%, 5 rounds) | – |" in md and "| b | 2 | 1.00 [1.00, 1.00]" in md
    # the lightly loop changed at set 2: its ratios from set 2 on, the plain ones from every chosen set
    pooled = pool(path, since=1, since_mode={"lightly": 2})
    assert pooled["b"]["plain"]["ratios"] == pytest.approx([0.9, 1.0])
    assert pooled["b"]["lightly"]["ratios"] == pytest.approx([2.0])
    assert "(50.0%, 2 rounds) | 2.00 [2.00, 2.00] (0.0%, 1 round) |" in table(pooled)
    # over the epochs: each run's samples over its seconds less end_s (what follows its last step)
    epochs = {"label": "three", "bundles": {"c": {"runs": {
        "bundle": [{"samples_per_s": 10.0, "samples": 100, "seconds": 10.0, "end_s": 2.0}],
        "plain": [{"samples_per_s": 10.0, "samples": 100, "seconds": 10.0, "end_s": 0.0}]}}}}
    path.write_text(json.dumps({"sets": sets + [epochs]}))
    assert pool(path, since=3)["c"]["plain"]["ratios"] == pytest.approx([1.0])
    assert pool(path, since=3, epochs_only=True)["c"]["plain"]["ratios"] == pytest.approx([(100 / 8) / (100 / 10)])
    with pytest.raises(ValueError, match="set 1 .* no end_s"):
        pool(path, since=1, epochs_only=True)


def test_layout_comparison_times_the_same_step_in_both_layouts():
    """``python -m bench.layout`` reduced: one round of a 3D ResNet-10 step in each layout. Channels-last stores the
    same values in another order, so both processes compute the same first loss (to float rounding) from the same
    seed; a layout that changed the maths, or a run that timed another network or batch, would not. (Later losses
    drift apart with the rounding in batch norm over few items: batch 8 here, where 3 steps stay within 1e-3.)"""
    from bench.layout import compare

    res = compare(arch="resnet10", spatial_dims=3, size=16, batch=8, rounds=1, steps=3, threads=1)
    default, channels_last = res["runs"]["default"][0], res["runs"]["channels_last"][0]
    assert (default["channels_last"], channels_last["channels_last"]) == (False, True)  # each timed its layout
    assert default["loss_first"] == pytest.approx(channels_last["loss_first"], rel=1e-5)
    assert default["loss_last"] != default["loss_first"]  # the SGD steps changed the network
    assert res["ratios"] == [pytest.approx(channels_last["step_s"] / default["step_s"])]
    assert res["median"] == res["ratios"][0]


def test_layout_step_refuses_an_unknown_layout():
    from bench.layout import step_seconds

    with pytest.raises(ValueError, match="layout must be one of"):
        step_seconds("resnet10", 3, 8, 1, "channel_last")


def test_rounds_alternate_the_order_of_modes_and_variants(tmp_path, monkeypatch):
    """Each round runs every mode and variant once; every other round runs them in the reverse order, so no mode or
    variant always runs right after another. The per-round ratios pair the runs of the same round."""
    import bench.run as bench_run

    calls = []

    def fake_run(loop, configs, overrides, epochs, threads):
        calls.append((loop, overrides.get("channels_last")))
        speed = 5.0 if overrides.get("channels_last") is False else {"bundle": 10.0, "plain": 8.0}[loop]
        rate = speed * (1 + len(calls) / 100)  # the machine drifts: only same-round pairs keep the true ratio
        return {"samples_per_s": rate, "samples": rate, "seconds": 1.0, "end_s": 0.0, "peak_rss_mb": 1.0,
                **{f"{p}_s": 0.0 for p in ("data", "step", "other", "end")}}

    monkeypatch.setattr(bench_run, "run_mode", fake_run)
    monkeypatch.setattr(bench_run, "demo_data", lambda kind, cache, sizes=None: str(tmp_path))
    monkeypatch.setattr(bench_run, "augment_rate", lambda *a, **k: 1.0)
    res = bench_run.run_bench("vitautoenc_ct", rounds=2, out=str(tmp_path / "out"), lightly=False,
                              variants={"contiguous": {"channels_last": False}})
    assert calls == [("bundle", None), ("plain", None), ("bundle", False),
                     ("bundle", False), ("plain", None), ("bundle", None)]
    entry = res["bundles"]["vitautoenc_ct"]
    # same-round pairs: bundle / plain drifts by under 1% within a round, and the variant runs at half the bundle
    assert entry["ratio_vs_plain"] == pytest.approx(10 / 8, rel=0.02)
    assert entry["variants"]["contiguous"]["ratio_vs_bundle"] == pytest.approx(0.5, rel=0.03)


def test_plain_loop_trains_in_the_bundles_precision(tmp_path, capsys):
    """With ``amp`` on (on a CPU: the SSL inferer's bfloat16 autocast of the forward), the plain loop computes the
    bundle's loss: it runs the trainer's inferer and amp, not the bare network in float32 (which gives another loss:
    checked against the float32 run)."""
    from bench.loops import bundle, plain
    from bench.run import demo_data
    from bench.settings import COMMON

    root = Path(__file__).resolve().parents[2] / "bundles" / "simclr_cholec" / "configs"
    configs = [str(root / "train.json"), str(root / "cpu_demo.json")]
    base = {**COMMON, "backbone": "timm/resnet10t", "image_size": 32, "batch_size": 4, "num_workers": 0,
            "val_interval": 1000,
            "dataset_dir": demo_data("cholec", tmp_path / "data", {"n_videos": 4, "frames_per_video": 3})}

    def first_loss(loop, amp: bool) -> float:
        loop(configs, {**base, "amp": amp, "bundle_root": str(tmp_path / f"{loop.__name__}_amp_{amp}")}, 1)
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["loss_first"]

    amp_bundle, amp_plain = first_loss(bundle, amp=True), first_loss(plain, amp=True)
    assert amp_plain == pytest.approx(amp_bundle, rel=1e-6)
    assert first_loss(plain, amp=False) != pytest.approx(amp_bundle, rel=1e-4)  # the precision shows in the loss


def test_a_gpu_run_reports_its_peak_gpu_memory(monkeypatch, capsys):
    """On a GPU each run reports the most memory its tensors held at once (``torch.cuda.max_memory_allocated``,
    the peak of its largest step); a CPU run reports none, rather than a zero that reads as a measurement."""
    from bench.loops import _report

    _report(2.0, 8, 2)
    assert "peak_gpu_mb" not in json.loads(capsys.readouterr().out)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 3 * 2**20 + 2**19)
    _report(2.0, 8, 2)
    out = json.loads(capsys.readouterr().out)
    assert out["peak_gpu_mb"] == 3.5 and out["samples_per_s"] == 4.0


def test_gpu_peaks_reach_the_table_per_mode_and_variant(tmp_path, monkeypatch):
    """The bench keeps each mode's and variant's largest GPU peak over its rounds and prints it beside the RSS: the
    memory an amp or layout variant saves is as much a reason to choose it as its speed."""
    import bench.run as bench_run

    gpu = {("bundle", None): [900.0, 950.0], ("plain", None): [800.0, 700.0], ("bundle", True): [500.0, 450.0]}

    def fake_run(loop, configs, overrides, epochs, threads):
        peak = gpu[(loop, overrides.get("amp"))].pop(0)
        return {"samples_per_s": 10.0, "samples": 10.0, "seconds": 1.0, "peak_rss_mb": 2000.0, "peak_gpu_mb": peak,
                **{f"{p}_s": 0.0 for p in ("data", "step", "other", "end")}}

    monkeypatch.setattr(bench_run, "run_mode", fake_run)
    monkeypatch.setattr(bench_run, "demo_data", lambda kind, cache, sizes=None: str(tmp_path))
    monkeypatch.setattr(bench_run, "augment_rate", lambda *a, **k: 1.0)
    res = bench_run.run_bench("vitautoenc_ct", rounds=2, out=str(tmp_path / "out"), lightly=False,
                              variants={"amp": {"amp": True}})
    entry = res["bundles"]["vitautoenc_ct"]
    assert entry["peak_gpu_mb"] == {"bundle": 950.0, "plain": 800.0}
    assert entry["variants"]["amp"]["peak_gpu_mb"] == 500.0
    md = bench_run.table(res)
    assert "| 2000 / 2000; GPU 950 / 800 |" in md and "| 2000; GPU 500 |" in md


@pytest.mark.parametrize("amp, device, expected", [(True, "cuda:0", True), (False, "cuda:0", False),
                                                   (True, "cpu", False)])
def test_plain_loop_takes_amp_as_monai_run_does(amp, device, expected):
    """On a GPU the bundle trains under CUDA autocast with a GradScaler when ``amp`` is on. MONAI makes that scaler
    in ``Trainer.run()``, which the plain loop never calls: the trainer it gets has ``scaler`` None whatever
    ``amp`` is, and reading amp from the scaler would run the plain loop in float32 against the bundle's float16.
    No GPU here: an SSL trainer is built for a CUDA device (nothing runs on it) and the decision checked."""
    from monai_ssl_ext.engines.ssl_trainer import SSLTrainer

    from bench.loops import cuda_amp

    net = torch.nn.Linear(2, 2)
    trainer = SSLTrainer(torch.device(device), 1, [], net, torch.optim.SGD(net.parameters(), lr=0.1),
                         lambda a, b: (a - b).pow(2).mean(), amp=amp)
    assert trainer.scaler is None  # as the plain loop sees it: MONAI's run() has not made it
    assert cuda_amp(trainer) is expected
