"""The online/target momentum pair (MomentumPair): frozen target, online-only optimizer parameters, reinit, the EMA
handler over a pair against the formula written here, BYOL on the pair (old checkpoint keys still load) and the
exported branch chosen by config (byol_acdc exports the target)."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine

from conftest import ROOT, read_bundle_config
from monai_ssl_ext.handlers import EMATargetUpdate
from monai_ssl_ext.handlers.ema import find_pair
from monai_ssl_ext.networks import BYOL, Backbone, MomentumPair, build_backbone

BASE, FINAL = 0.9, 1.0


def _online(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def test_pair_target_is_a_frozen_copy_and_optimizer_sees_online_only():
    online = _online()
    pair = MomentumPair(online)
    assert pair.online is online and pair.target is not online
    assert all(not p.requires_grad for p in pair.target.parameters())
    assert all(p.requires_grad for p in pair.online.parameters())
    for (n, o), (m, t) in zip(pair.online.state_dict().items(), pair.target.state_dict().items()):
        assert n == m and torch.equal(o, t) and o.data_ptr() != t.data_ptr(), n  # a copy, not shared storage
    assert {id(p) for p in pair.online_parameters()} == {id(p) for p in online.parameters()}
    assert not {id(p) for p in pair.online_parameters()} & {id(p) for p in pair.target.parameters()}
    assert set(pair.state_dict()) == {f"{b}.{k}" for b in ("online", "target") for k in online.state_dict()}

    # forward: online with gradients, target under no_grad; only the online parameters get gradients
    x = torch.randn(5, 3)
    y, z = pair(x), pair.forward_target(x)
    assert y.requires_grad and not z.requires_grad and z.grad_fn is None
    torch.testing.assert_close(y, z)  # same weights, same batch, both in train mode
    (y - z).pow(2).sum().backward()
    assert all(p.grad is not None for p in pair.online.parameters())
    assert all(p.grad is None for p in pair.target.parameters())

    opt = torch.optim.SGD(pair.online_parameters(), lr=0.1)
    opt.step()
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in online.parameters()}

    assert pair.exported("target") is pair.target and pair.exported("online") is pair.online
    assert pair.exported() is pair.target
    with pytest.raises(ValueError, match="which"):
        pair.exported("momentum")


def test_pair_reinit_copies_parameters_and_buffers():
    pair = MomentumPair(_online())
    with torch.no_grad():
        for p in pair.online.parameters():
            p.mul_(-2.0).add_(1.0)  # weights loaded into the online net after construction
        pair.online[1].running_mean.fill_(3.0)
    assert not torch.equal(pair.online[0].weight, pair.target[0].weight)
    pair.reinit_target()
    for (n, o), t in zip(pair.online.state_dict().items(), pair.target.state_dict().values()):
        assert torch.equal(o, t), n
    assert all(not p.requires_grad for p in pair.target.parameters())
    assert pair.online[0].weight.data_ptr() != pair.target[0].weight.data_ptr()


def test_pair_from_named_parts():
    backbone, head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    pair = MomentumPair({"backbone": backbone, "projector": head})
    assert pair.online.backbone is backbone and pair.online.projector is head
    assert isinstance(pair.target.backbone, torch.nn.Linear) and pair.target.backbone is not backbone
    assert list(pair.state_dict()) == ["online.backbone.weight", "online.backbone.bias", "online.projector.weight",
                                       "online.projector.bias", "target.backbone.weight", "target.backbone.bias",
                                       "target.projector.weight", "target.projector.bias"]
    x = torch.randn(2, 3)
    torch.testing.assert_close(pair(x), head(backbone(x)))  # the parts are chained in order
    with pytest.raises(ValueError, match="empty"):
        MomentumPair({})
    with pytest.raises(TypeError):
        MomentumPair(3)  # type: ignore[arg-type]


def _reference_ema(online: torch.nn.Module, target: torch.nn.Module, batches, total: int):
    """By hand: SGD step k on ||online(x)||^2, then for every parameter
    xi <- tau_k xi + (1 - tau_k) theta, tau_k = FINAL - (FINAL - BASE) (cos(pi k / K) + 1) / 2 (buffers untouched)."""
    opt = torch.optim.SGD(online.parameters(), lr=0.1)
    xi = {n: p.detach().clone() for n, p in target.named_parameters()}
    for k, x in enumerate(batches):
        opt.zero_grad()
        online(x).pow(2).mean().backward()
        opt.step()
        tau = FINAL - (FINAL - BASE) * (math.cos(math.pi * k / total) + 1) / 2
        theta = dict(online.named_parameters())
        xi = {n: tau * xi[n] + (1 - tau) * theta[n].detach() for n in xi}
    return xi


@pytest.mark.parametrize("how", ["pair", "network", "positional"])
def test_ema_over_a_pair_matches_formula(how):
    """EMATargetUpdate over a MomentumPair (given as the pair, as a network holding it, or positionally) moves the
    target parameters by the EMA formula, once per step, and leaves the target's buffers alone."""
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(6, 3, generator=g) for _ in range(4)]
    pair = MomentumPair(_online())
    with torch.no_grad():
        for p in pair.target.parameters():
            p.add_(0.5)  # start the target away from the online net
    ref_online, ref_target = _online(), MomentumPair(_online()).target
    ref_online.load_state_dict(pair.online.state_dict())
    ref_target.load_state_dict(pair.target.state_dict())
    expected = _reference_ema(ref_online, ref_target, batches, total=4)

    holder = torch.nn.Module()
    holder.head, holder.pair = torch.nn.Linear(2, 2), pair
    handler = {"pair": lambda: EMATargetUpdate(pair=pair, base_momentum=BASE, final_momentum=FINAL),
               "network": lambda: EMATargetUpdate(pair=holder, base_momentum=BASE, final_momentum=FINAL),
               "positional": lambda: EMATargetUpdate(pair, None, BASE, FINAL)}[how]()
    assert handler.pair is pair and handler.online is pair.online and handler.target is pair.target
    opt = torch.optim.SGD(pair.online_parameters(), lr=0.1)

    def step(engine, x):
        opt.zero_grad()
        pair(x).pow(2).mean().backward()
        opt.step()

    engine = Engine(step)
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    for n, t in pair.target.named_parameters():
        torch.testing.assert_close(t, expected[n], rtol=1e-6, atol=1e-7, msg=n)
    assert torch.equal(pair.target[1].running_mean, torch.zeros(4))  # never ran a forward: initial statistics
    assert int(pair.target[1].num_batches_tracked) == 0 and int(pair.online[1].num_batches_tracked) == 4


def test_ema_pair_arguments():
    pair = MomentumPair(_online())
    with pytest.raises(ValueError, match="not both"):
        EMATargetUpdate(pair.online, pair.target, pair=pair)
    with pytest.raises(ValueError, match="both `online` and `target`"):
        EMATargetUpdate(pair.online)
    two = torch.nn.ModuleDict({"a": MomentumPair(_online()), "b": MomentumPair(_online())})
    with pytest.raises(ValueError, match="exactly one MomentumPair, found 'a', 'b'"):
        EMATargetUpdate(pair=two)
    with pytest.raises(ValueError, match="found none"):
        EMATargetUpdate(pair=_online())
    assert find_pair(torch.nn.Sequential(pair)) is pair


# ---- BYOL on the pair -------------------------------------------------------------------------

PROJ, PRED = (32, 16), (24, 16)


def _byol(seed: int = 0) -> BYOL:
    torch.manual_seed(seed)
    return BYOL(build_backbone("timm/test_resnet", in_channels=1), projection_dims=PROJ, prediction_dims=PRED)


def _legacy(state: dict) -> dict:
    """The state-dict keys BYOL had before the pair (0.2.0)."""
    renames = {"pair.online.backbone.": "backbone.", "pair.online.projector.": "projector.",
               "pair.target.backbone.": "target_backbone.", "pair.target.projector.": "target_projector."}
    out = {}
    for k, v in state.items():
        for new, old in renames.items():
            if k.startswith(new):
                k = old + k[len(new):]
                break
        out[k] = v
    return out


def test_byol_uses_the_pair_and_loads_old_checkpoints(tmp_path):
    model = _byol()
    assert isinstance(model.pair, MomentumPair)
    assert model.backbone is model.pair.online.backbone and model.projector is model.pair.online.projector
    assert model.target_backbone is model.pair.target.backbone
    assert model.target_projector is model.pair.target.projector
    keys = list(model.state_dict())
    assert {k.split(".")[0] for k in keys} == {"pair", "predictor"}
    assert any(k.startswith("pair.target.backbone.") for k in keys)
    # optimizer order unchanged (backbone, projector, predictor), so old optimizer states load too
    assert [id(p) for p in model.online_parameters()] == [
        id(p) for m in (model.backbone, model.projector, model.predictor) for p in m.parameters()]

    # forward outputs: p_v = q(g(f(x_v))), z_v = g'(f'(x_v)) per view
    model.eval()
    x0, x1 = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    p0, p1, z0, z1 = model(x0, x1)
    with torch.no_grad():
        torch.testing.assert_close(p1, model.predictor(model.projector(model.backbone(x1))))
        torch.testing.assert_close(z0, model.target_projector(model.target_backbone(x0)))

    # a checkpoint written with the old keys (target != online) loads into the pair, strictly
    source = _byol(seed=1)
    with torch.no_grad():
        for p in source.pair.target.parameters():
            p.add_(0.25)
    torch.save(_legacy(source.state_dict()), tmp_path / "old.pt")
    old = torch.load(tmp_path / "old.pt", weights_only=True)
    assert "target_backbone.trunk.conv1.0.weight" in old and "backbone.trunk.conv1.0.weight" in old
    fresh = _byol(seed=2)
    assert not fresh.load_state_dict(old).missing_keys
    for k, v in source.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # also under a prefix (a DDP-like wrapper)
    wrapper = torch.nn.Sequential(_byol(seed=3))
    wrapper.load_state_dict({f"0.{k}": v for k, v in old.items()})
    assert torch.equal(wrapper[0].target_backbone.trunk.conv1[0].weight, source.target_backbone.trunk.conv1[0].weight)


def test_byol_exported_branch():
    model = _byol()
    assert model.exported_backbone() is model.target_backbone
    assert model.exported_backbone("target") is model.pair.target.backbone
    assert model.exported_backbone("online") is model.backbone
    assert isinstance(model.exported_backbone("target"), Backbone)
    with pytest.raises(ValueError, match="which"):
        model.exported_backbone("teacher")


def _handler(parser, target: str) -> int:
    return next(i for i, h in enumerate(parser["train"]["handlers"]) if h.get("_target_") == target)


def test_byol_acdc_config_exports_the_target_and_updates_the_pair():
    """byol_acdc's EMA handler runs over the BYOL pair and its EncoderExport exports the target backbone; the
    same line with 'online' exports the online one (the branch is chosen in the config)."""
    configs = ROOT / "bundles" / "byol_acdc" / "configs"
    parser = read_bundle_config(configs, ["train.json", "smoke.json"])
    ema_i, export_i = _handler(parser, "EMATargetUpdate"), _handler(parser, "EncoderExport")
    network = parser.get_parsed_content("network_def")
    ema = parser.get_parsed_content(f"train#handlers#{ema_i}")
    assert ema.pair is network.pair and ema.target is network.pair.target
    export = parser.get_parsed_content(f"train#handlers#{export_i}")
    assert export.backbone is network.target_backbone and export.backbone is not network.backbone

    parser = read_bundle_config(configs, ["train.json", "smoke.json"])
    line = parser[f"train#handlers#{export_i}#backbone"]
    assert "'target'" in line
    parser[f"train#handlers#{export_i}#backbone"] = line.replace("'target'", "'online'")
    network = parser.get_parsed_content("network_def")
    export = parser.get_parsed_content(f"train#handlers#{export_i}")
    assert export.backbone is network.backbone
