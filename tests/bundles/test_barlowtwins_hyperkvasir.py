"""barlowtwins_hyperkvasir's train.json wires the reference recipe (facebookresearch/barlowtwins main.py): two LARS
parameter groups (weights at 0.2 x batch / 256; biases and BN parameters at 0.0048 x batch / 256, without weight
decay or trust ratio), the schedule (first iteration at lr 0, 10 warmup epochs, cosine to 0.001x), lambda 0.0051,
the projector without biases, and the trunk as the exported encoder."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import ROOT, read_bundle_config

BUNDLE = ROOT / "bundles" / "barlowtwins_hyperkvasir"


@pytest.fixture(scope="module")
def parsed(demo_data):
    # published settings except the trunk and projector sizes (a CPU-sized model) and a fixed epoch length
    parser = read_bundle_config(BUNDLE / "configs", ["train.json"], {
        "dataset_dir": demo_data("hyperkvasir"), "backbone": "timm/resnet18", "projection_dims": [32, 32, 16],
        "epoch_length": 5, "num_workers": 0, "device": "$torch.device('cpu')"})
    return parser


def test_published_optimizer_groups(parsed):
    assert parsed["batch_size"] == 256  # SSL4GIE: 6 GPUs x 256
    net = parsed.get_parsed_content("network_def")
    opt = parsed.get_parsed_content("optimizer")
    assert type(opt).__name__ == "LARS"
    weights, biases = opt.param_groups
    assert weights["lr"] == pytest.approx(0.2) and biases["lr"] == pytest.approx(0.0048)
    for group in (weights, biases):
        assert group["variant"] == "barlowtwins" and group["exclude_bias_and_norm"]
        assert group["weight_decay"] == 1e-6 and group["eta"] == 0.001 and group["momentum"] == 0.9
    assert all(p.ndim != 1 for p in weights["params"]) and all(p.ndim == 1 for p in biases["params"])
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    assert grouped == {id(p) for p in net.parameters()} and len(grouped) == sum(len(g["params"]) for g in (weights, biases))
    assert all(m.bias is None for m in net.projector if isinstance(m, torch.nn.Linear))
    loss = parsed.get_parsed_content("loss")
    assert type(loss).__name__ == "BarlowTwinsCrossCorrelationLoss" and loss.lambd == 0.0051


def test_published_schedule(parsed):
    opt = parsed.get_parsed_content("optimizer")
    sched = parsed.get_parsed_content("lr_scheduler")
    warmup, total = 10 * 5, 1000 * 5
    assert (sched.warmup_steps, sched.total_steps, sched.end_factor) == (warmup, total, 0.001)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]  # the first iteration runs at lr 0, as main.py
    for step in (warmup // 2, warmup, 3000, total):
        q = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) if step >= warmup else None
        factor = step / warmup if q is None else q + 0.001 * (1 - q)
        assert sched.factor(step) == pytest.approx(factor, rel=1e-12)


def test_exported_trunk_is_the_backbone(parsed):
    net = parsed.get_parsed_content("network_def")
    export = [h for h in parsed.get_parsed_content("train#handlers") if type(h).__name__ == "EncoderExport"]
    assert len(export) == 1 and export[0].backbone is net.backbone
    assert type(net).__name__ == "BarlowTwins"
