"""MoCoV3 wrapper: heads as moco-v3's _build_mlp (written out here layer by layer), base/momentum encoders on the
shared MomentumPair (momentum frozen, equal at the start), q = predictor(projector(backbone(x))) with k under
no_grad, the frozen patch embedding (--stop-grad-conv1) of timm and MONAI ViTs, the VisionTransformerMoCo
initialisation (2D sin-cos position embedding written here from moco-v3's formula), the exported branch (the base
encoder, torchvision-key compatible for SSL4GIE's strict load) and the cosine momentum schedule through
EMATargetUpdate against moco-v3's adjust_moco_momentum written here; the mocov3_hyperkvasir configs wire them
(pair, exported branch, optimizer, ViT variant) and its README's ViT table matches train_vit.json."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from conftest import ROOT, read_bundle_config
from monai_ssl_ext.handlers import EMATargetUpdate
from monai_ssl_ext.losses import MoCoV3Loss
from monai_ssl_ext.networks import Backbone, MoCoV3, MomentumPair, build_backbone, sincos_position_embedding

PROJ, PRED = (48, 16), (40, 16)


def _resnet(seed: int = 0, **kwargs) -> MoCoV3:
    torch.manual_seed(seed)
    return MoCoV3(build_backbone("timm/test_resnet"), projection_dims=PROJ, prediction_dims=PRED, **kwargs)


def _vit(seed: int = 0, **kwargs) -> MoCoV3:
    torch.manual_seed(seed)
    return MoCoV3(build_backbone("timm/test_vit"), projection_dims=PROJ, prediction_dims=PRED, projector_layers=3,
                  predictor_last_batch_norm=True, **kwargs)


def _monai_vit(seed: int = 0, **kwargs) -> MoCoV3:
    torch.manual_seed(seed)
    backbone = build_backbone("vit", img_size=32, patch_size=8, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4)
    return MoCoV3(backbone, projection_dims=PROJ, prediction_dims=PRED, **kwargs)


def _build_mlp_layout(num_layers, input_dim, mlp_dim, output_dim, last_bn):
    """moco-v3's _build_mlp, as a list of (type, sizes, flags): Linear(no bias) -> BN -> ReLU per hidden layer, the
    last Linear(no bias) then BN(affine=False) when last_bn."""
    out = []
    for layer in range(num_layers):
        d1 = input_dim if layer == 0 else mlp_dim
        d2 = output_dim if layer == num_layers - 1 else mlp_dim
        out.append(("Linear", d1, d2, False))
        if layer < num_layers - 1:
            out += [("BatchNorm1d", d2, True), ("ReLU",)]
        elif last_bn:
            out.append(("BatchNorm1d", d2, False))
    return out


def _layout(head: nn.Module):
    out = []
    for m in head:
        if isinstance(m, nn.Linear):
            out.append(("Linear", m.in_features, m.out_features, m.bias is not None))
        elif isinstance(m, nn.BatchNorm1d):
            out.append(("BatchNorm1d", m.num_features, m.affine))
        else:
            out.append((type(m).__name__,))
    return out


def test_heads_follow_moco_v3():
    resnet = _resnet()
    feat = resnet.backbone.feature_dim
    assert _layout(resnet.projector) == _build_mlp_layout(2, feat, PROJ[0], PROJ[1], last_bn=True)  # MoCo_ResNet
    assert _layout(resnet.predictor) == _build_mlp_layout(2, PROJ[1], PRED[0], PRED[1], last_bn=False)
    vit = _vit()
    assert _layout(vit.projector) == _build_mlp_layout(3, vit.backbone.feature_dim, PROJ[0], PROJ[1], last_bn=True)
    assert _layout(vit.predictor) == _build_mlp_layout(2, PROJ[1], PRED[0], PRED[1], last_bn=True)  # MoCo_ViT
    # published defaults: 4096 / 256 heads, 2-layer projector, no last BN on the predictor
    model = MoCoV3(build_backbone("timm/test_resnet"))
    assert _layout(model.projector) == _build_mlp_layout(2, model.backbone.feature_dim, 4096, 256, last_bn=True)
    assert _layout(model.predictor) == _build_mlp_layout(2, 256, 4096, 256, last_bn=False)
    with pytest.raises(ValueError, match="same output size"):
        MoCoV3(build_backbone("timm/test_resnet"), projection_dims=(32, 16), prediction_dims=(32, 8))
    with pytest.raises(ValueError, match="projector_layers"):
        MoCoV3(build_backbone("timm/test_resnet"), projector_layers=1)


def test_monai_3d_resnet_starts_zero_init_residual_in_both_encoders():
    """moco-v3 builds torchvision's ``resnet50(zero_init_residual=True)``; MONAI's 3D ResNet (train_3d.json) does not
    zero its blocks, the wrapper does, before the momentum copy: the last BN weight of every residual block is 0 in
    the base and the momentum encoder (the residual branch of each block starts as the identity's nothing)."""
    from monai.networks.nets.resnet import ResNetBlock

    torch.manual_seed(0)
    backbone = build_backbone("resnet10", spatial_dims=3, in_channels=1)
    last_bns = lambda trunk: [m.bn2 for m in trunk.modules() if isinstance(m, ResNetBlock)]  # noqa: E731
    assert len(last_bns(backbone.trunk)) == 4 and all(bool((bn.weight != 0).all()) for bn in last_bns(backbone.trunk))
    net = MoCoV3(backbone, projection_dims=PROJ, prediction_dims=PRED)
    for branch in (net.pair.online, net.pair.target):
        assert all(torch.count_nonzero(bn.weight) == 0 for bn in last_bns(branch.backbone.trunk))
    fresh = build_backbone("resnet10", spatial_dims=3, in_channels=1)
    MoCoV3(fresh, projection_dims=PROJ, prediction_dims=PRED, zero_init_residual=False)
    assert all(bool((bn.weight != 0).all()) for bn in last_bns(fresh.trunk))


def test_momentum_encoder_is_a_frozen_copy_and_forward_outputs():
    model = _resnet()
    assert isinstance(model.pair, MomentumPair)
    assert model.backbone is model.pair.online.backbone and model.target_backbone is model.pair.target.backbone
    assert model.projector is model.pair.online.projector and model.target_projector is model.pair.target.projector
    assert {k.split(".")[0] for k in model.state_dict()} == {"pair", "predictor"}
    online, target = model.pair.online.state_dict(), model.pair.target.state_dict()
    assert list(online) == list(target)
    for k in online:
        assert torch.equal(online[k], target[k]) and online[k].data_ptr() != target[k].data_ptr(), k
    assert all(not p.requires_grad for p in model.pair.target.parameters())
    # the optimizer sees the base encoder and the predictor, never the momentum encoder
    trained = {id(p) for p in model.online_parameters()}
    assert trained == {id(p) for m in (model.backbone, model.projector, model.predictor) for p in m.parameters()}
    assert not trained & {id(p) for p in model.pair.target.parameters()}

    with torch.no_grad():  # make the momentum encoder differ, to tell the branches apart
        for p in model.pair.target.parameters():
            p.mul_(0.5)
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 3, 32, 32, generator=g)
    q1, q2, k1, k2 = model(x1, x2)
    assert all(t.shape == (4, PROJ[1]) for t in (q1, q2, k1, k2))
    assert q1.requires_grad and q2.requires_grad and not k1.requires_grad and not k2.requires_grad
    model.eval()  # same outputs from the parts (eval: no batch-statistics difference between calls)
    q1, q2, k1, k2 = model(x1, x2)
    with torch.no_grad():
        torch.testing.assert_close(q2, model.predictor(model.projector(model.backbone(x2))))
        torch.testing.assert_close(k1, model.target_projector(model.target_backbone(x1)))
        assert not torch.allclose(k1, model.projector(model.backbone(x1)), atol=1e-4)

    # one training step: gradients reach the base encoder and the predictor only
    model.train()
    MoCoV3Loss(temperature=1.0)(*model(x1, x2)).backward()
    assert all(p.grad is not None for p in model.online_parameters())
    assert all(p.grad is None for p in model.pair.target.parameters())


def test_views_are_separate_batches():
    """Each view is its own batch (per-view BN statistics, as moco-v3's forward): q1 does not depend on x2."""
    model = _resnet()
    g = torch.Generator().manual_seed(4)
    x1, x2, x3 = (torch.randn(4, 3, 32, 32, generator=g) for _ in range(3))
    q1_a, _, k1_a, _ = model(x1, x2)
    q1_b, _, k1_b, _ = model(x1, x3)
    torch.testing.assert_close(q1_a, q1_b)
    torch.testing.assert_close(k1_a, k1_b)


@pytest.mark.parametrize("make", [_vit, _monai_vit], ids=["timm", "monai"])
def test_stop_grad_patch_embedding(make):
    model = make(stop_grad_patch_embed=True)
    trunk = model.backbone.trunk
    patch = trunk.patch_embed.proj if hasattr(trunk, "patch_embed") else trunk.patch_embedding.patch_embeddings
    frozen = {id(p) for p in patch.parameters()}
    assert frozen and all(not p.requires_grad for p in patch.parameters())
    assert not frozen & {id(p) for p in model.online_parameters()}
    before = [p.detach().clone() for p in patch.parameters()]
    size = 160 if hasattr(trunk, "patch_embed") else 32
    x1, x2 = torch.randn(3, 3, size, size), torch.randn(3, 3, size, size)
    opt = torch.optim.SGD(model.online_parameters(), lr=0.5)
    MoCoV3Loss(0.2)(*model(x1, x2)).backward()
    assert all(p.grad is None for p in patch.parameters())
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, patch.parameters()))
    # the rest of the trunk trains
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trunk.parameters())
    # without the option the patch embedding trains
    assert all(p.requires_grad for p in make().backbone.trunk.parameters() if p.dim() == 4)


def test_stop_grad_and_vit_init_need_a_vit():
    with pytest.raises(ValueError, match="stop_grad_patch_embed needs a ViT"):
        _resnet(stop_grad_patch_embed=True)
    with pytest.raises(ValueError, match="vit_init needs a ViT"):
        _resnet(vit_init=True)


def _moco_v3_sincos(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """vits.VisionTransformerMoCo.build_2d_sincos_position_embedding, written out: meshgrid(arange(w), arange(h)),
    omega = 1 / T^(t / (dim/4)), [sin(w·ω), cos(w·ω), sin(h·ω), cos(h·ω)], a zero row for the class token."""
    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32),
                                    indexing="ij")
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim)
    out_w = grid_w.flatten()[:, None] * omega[None]
    out_h = grid_h.flatten()[:, None] * omega[None]
    table = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)
    return torch.cat([torch.zeros(1, dim), table])[None]


def test_vit_init_as_vision_transformer_moco():
    model = _vit(vit_init=True)
    trunk = model.backbone.trunk
    grid = trunk.patch_embed.grid_size
    torch.testing.assert_close(trunk.pos_embed.detach(), _moco_v3_sincos(grid[0], grid[1], trunk.embed_dim),
                               rtol=1e-5, atol=1e-5)
    assert not trunk.pos_embed.requires_grad  # fixed, as in moco-v3
    assert id(trunk.pos_embed) not in {id(p) for p in model.online_parameters()}
    assert trunk.cls_token.abs().max() < 1e-4
    qkv = trunk.blocks[0].attn.qkv
    bound = math.sqrt(6.0 / (qkv.weight.shape[0] // 3 + qkv.weight.shape[1]))
    assert qkv.weight.abs().max() <= bound and qkv.weight.abs().max() > 0.8 * bound
    fc1 = trunk.blocks[0].mlp.fc1
    assert fc1.weight.abs().max() <= math.sqrt(6.0 / (fc1.in_features + fc1.out_features))
    assert all(torch.count_nonzero(m.bias) == 0 for m in trunk.modules() if isinstance(m, nn.Linear))
    proj = trunk.patch_embed.proj
    assert proj.weight.abs().max() <= math.sqrt(6.0 / (3 * 16 * 16 + trunk.embed_dim))
    # the momentum encoder starts from the same initialisation
    assert torch.equal(model.target_backbone.trunk.pos_embed, trunk.pos_embed)
    # the general form: axis blocks in order (rows, then columns) on a square grid, 3D grids too
    torch.testing.assert_close(sincos_position_embedding((4, 4), 16)[None], _moco_v3_sincos(4, 4, 16)[:, 1:])
    assert sincos_position_embedding((2, 3, 4), 12).shape == (24, 12)
    with pytest.raises(ValueError, match="divisible"):
        sincos_position_embedding((4, 4), 10)


def test_vit_init_on_a_monai_vit_and_skipped_for_loaded_weights(caplog):
    model = _monai_vit(vit_init=True)
    pe = model.backbone.trunk.patch_embedding
    torch.testing.assert_close(pe.position_embeddings.detach(), sincos_position_embedding((4, 4), 48)[None])
    assert not pe.position_embeddings.requires_grad

    backbone = build_backbone("timm/test_vit")
    backbone.load_report = object()  # what pretrained_backbone sets after loading init_weights
    before = backbone.trunk.pos_embed.detach().clone()
    with caplog.at_level("WARNING"):
        MoCoV3(backbone, PROJ, PRED, vit_init=True)
    assert torch.equal(backbone.trunk.pos_embed, before) and backbone.trunk.pos_embed.requires_grad
    assert "skipped" in caplog.text


def test_exported_branch_is_the_base_encoder_with_torchvision_keys(tmp_path):
    """MoCo v3's result is the base encoder (SSL4GIE saves module.base_encoder, projector stripped) and its keys are
    torchvision's ResNet-50 keys without fc, which SSL4GIE's ResNet_from_Any loads strictly."""
    import torchvision

    from monai_ssl_ext.encoders import export_encoder, read_encoder

    model = MoCoV3(build_backbone("timm/resnet50"))
    assert model.exported_backbone() is model.backbone
    assert model.exported_backbone("online") is model.pair.online.backbone
    assert model.exported_backbone("target") is model.target_backbone
    assert isinstance(model.exported_backbone(), Backbone)
    with pytest.raises(ValueError, match="which"):
        model.exported_backbone("momentum")
    path = tmp_path / "encoder.pt"
    export_encoder(model.exported_backbone(), str(path), method="mocov3",
                   normalization={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    payload = read_encoder(str(path))
    state = payload["state_dict"]
    assert payload["method"] == "mocov3" and payload["arch"] == "timm/resnet50"
    reference = torchvision.models.resnet50()
    reference.fc = nn.Identity()  # SSL4GIE's ResNet_from_Any
    assert set(state) == set(reference.state_dict())
    reference.load_state_dict(state, strict=True)
    for k, v in model.backbone.trunk.state_dict().items():
        assert torch.equal(state[k], v), k


def test_momentum_schedule_through_ema_handler():
    """EMATargetUpdate(pair=model.pair, 0.99, 1.0) after each optimizer step k (0-based) of K moves every momentum
    parameter by xi <- m xi + (1 - m) theta with m = 1 - (1 + cos(pi k / K)) / 2 * (1 - 0.99): moco-v3's cosine
    momentum (adjust_moco_momentum), applied after step k rather than before step k + 1 as moco-v3 does (the bundle
    README's "momentum update timing"; the same updates with the index one step earlier)."""
    model = _resnet()
    base = 0.99
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 3, 32, 32, generator=g)) for _ in range(4)]
    total = len(batches)
    handler = EMATargetUpdate(pair=model.pair, base_momentum=base, final_momentum=1.0)
    assert handler.pair is model.pair
    opt = torch.optim.SGD(model.online_parameters(), lr=0.5)
    loss_fn = MoCoV3Loss(1.0)
    expected = {n: p.detach().clone() for n, p in model.pair.target.named_parameters()}
    momenta = []

    def step(engine, batch):
        opt.zero_grad()
        loss_fn(*model(*batch)).backward()
        opt.step()
        k = engine.state.iteration - 1
        m = 1.0 - 0.5 * (1.0 + math.cos(math.pi * k / total)) * (1.0 - base)  # adjust_moco_momentum
        momenta.append(m)
        theta = dict(model.pair.online.named_parameters())
        for n in expected:
            expected[n] = m * expected[n] + (1 - m) * theta[n].detach()

    engine = Engine(step)
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    assert momenta[0] == pytest.approx(base) and momenta[-1] < 1.0
    assert handler.momentum == pytest.approx(momenta[-1])
    for n, p in model.pair.target.named_parameters():
        torch.testing.assert_close(p, expected[n], rtol=1e-6, atol=1e-7, msg=n)
    # the momentum encoder moved, and is not the base encoder
    online = dict(model.pair.online.named_parameters())
    assert any(not torch.allclose(p, online[n]) for n, p in model.pair.target.named_parameters())


# ---- the mocov3_hyperkvasir bundle's wiring ------------------------------------------------------

CONFIGS = ROOT / "bundles" / "mocov3_hyperkvasir" / "configs"


def _handler(parser, target: str):
    index = next(i for i, h in enumerate(parser["train"]["handlers"]) if h.get("_target_") == target)
    return parser.get_parsed_content(f"train#handlers#{index}")


def test_bundle_wires_the_pair_the_export_and_the_optimizer(tmp_path):
    """train.json: EMA over the MoCo pair, the base (online) trunk exported and monitored, LARS over the trained
    parameters with lr = 0.6 x batch / 256, the loss at tau 1."""
    parser = read_bundle_config(CONFIGS, ["train.json", "smoke.json"], {"bundle_root": str(tmp_path)})
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, MoCoV3)
    ema = _handler(parser, "EMATargetUpdate")
    assert ema.pair is network.pair and (ema.base_momentum, ema.final_momentum) == (0.99, 1.0)
    assert _handler(parser, "EncoderExport").backbone is network.backbone  # the base encoder, not the momentum one
    optimizer = parser.get_parsed_content("optimizer")
    assert [id(p) for g in optimizer.param_groups for p in g["params"]] == [id(p) for p in network.online_parameters()]
    assert optimizer.defaults["lr"] == pytest.approx(0.6 * 4 / 256)  # smoke batch 4
    assert parser.get_parsed_content("loss").temperature == 1.0
    assert _layout(network.predictor)[-1][0] == "Linear" and len(_layout(network.projector)) == 5  # 2-layer heads


def test_bundle_vit_variant(tmp_path):
    """train_vit.json (+ its smoke file): MoCo_ViT heads, frozen patch embedding, fixed sin-cos position embedding,
    AdamW at 1.5e-4 x batch / 256 and wd 0.1, tau 0.2, its own output folder."""
    files = ["train.json", "train_vit.json", "smoke.json", "smoke_train_vit.json"]
    parser = read_bundle_config(CONFIGS, files, {"bundle_root": str(tmp_path)})
    network = parser.get_parsed_content("network_def")
    trunk = network.backbone.trunk
    feat = network.backbone.feature_dim
    hidden, out = parser.get_parsed_content("projection_dims")
    assert _layout(network.projector) == _build_mlp_layout(3, feat, hidden, out, last_bn=True)
    assert _layout(network.predictor)[-1] == ("BatchNorm1d", out, False)
    assert not trunk.patch_embed.proj.weight.requires_grad and not trunk.pos_embed.requires_grad
    grid = trunk.patch_embed.grid_size
    torch.testing.assert_close(trunk.pos_embed.detach(), _moco_v3_sincos(grid[0], grid[1], trunk.embed_dim),
                               rtol=1e-5, atol=1e-5)
    optimizer = parser.get_parsed_content("optimizer")
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == pytest.approx(1.5e-4 * 4 / 256) and optimizer.defaults["weight_decay"] == 0.1
    assert [id(p) for g in optimizer.param_groups for p in g["params"]] == [id(p) for p in network.online_parameters()]
    assert parser.get_parsed_content("loss").temperature == 0.2
    assert parser.get_parsed_content("output_dir").endswith("mocov3_hyperkvasir_vit")


def test_readme_vit_settings_match_train_vit():
    """The README's ViT-B/16 table (not covered by verify_bundles, which checks train.json's) equals the raw
    values of train.json merged with train_vit.json."""
    import json
    import re

    from conftest import load_script

    values_equal = load_script("verify_bundles").values_equal
    text = (CONFIGS.parent / "docs" / "README.md").read_text()
    section = text.split("## ViT-B/16 settings (`train_vit.json`)", 1)[1].split("\n\n", 3)[2]
    rows = re.findall(r"^\| `([^`]+)` \| `(.+?)` \|", section, flags=re.M)
    assert len(rows) >= 10
    parser = read_bundle_config(CONFIGS, ["train.json", "train_vit.json"])
    vit_only = read_bundle_config(CONFIGS, ["train_vit.json"])
    for cid, literal in rows:
        assert cid in vit_only.config, f"{cid} is in the ViT table but not set by train_vit.json"
        assert values_equal(json.loads(literal), parser[cid]), (cid, literal, parser[cid])


def test_bundle_lars_is_moco_v3s():
    """The optimizer train.json configures, applied to a weight matrix and a bias for two steps, moves them as
    moco-v3's moco/optimizer.py LARS (written out here): for p.ndim > 1, dp = g + wd p and
    dp *= eta ||p|| / ||dp|| (1 when a norm is 0); for biases dp = g; mu = momentum mu + dp (from zero);
    p -= lr mu."""
    from monai.bundle import ConfigParser

    parser = read_bundle_config(CONFIGS, ["train.json"])
    spec = parser["optimizer"]
    assert spec["_target_"] == "LARS"
    lr, wd, eta, momentum = 0.3, parser["weight_decay"], parser["lars_eta"], parser["lars_momentum"]
    g = torch.Generator().manual_seed(8)
    weight, bias = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    grads = [(torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64))
             for _ in range(2)]
    params = [weight.clone().requires_grad_(), bias.clone().requires_grad_()]
    kwargs = {k: v for k, v in spec.items() if k not in ("_target_", "params", "lr", "momentum", "weight_decay", "eta")}
    optimizer = ConfigParser({"o": {"_target_": "monai_ssl_ext.optimizers.LARS", "params": "$@p", "lr": lr,
                                    "momentum": momentum, "weight_decay": wd, "eta": eta, **kwargs},
                              "p": params}).get_parsed_content("o")
    expected, mu = [weight.clone(), bias.clone()], [torch.zeros_like(weight), torch.zeros_like(bias)]
    for step_grads in grads:
        for p, grad in zip(params, step_grads):
            p.grad = grad.clone()
        optimizer.step()
        for i, (p, grad) in enumerate(zip(expected, step_grads)):
            dp = grad.clone()
            if p.ndim > 1:
                dp = dp + wd * p
                p_norm, dp_norm = torch.norm(p), torch.norm(dp)
                dp = dp * (eta * p_norm / dp_norm if p_norm > 0 and dp_norm > 0 else 1.0)
            mu[i] = momentum * mu[i] + dp
            expected[i] = p - lr * mu[i]
    for got, want in zip(params, expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-14)
