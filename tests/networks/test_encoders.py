"""The encoder hand-off: format, key maps, strict reports, channel conversion, weight specs."""

from __future__ import annotations

import os

import pytest
import torch
from monai.networks.nets import FlexibleUNet

from monai_ssl_ext.encoders import (
    EncoderLoadError,
    convert_input_channels,
    export_encoder,
    load_encoder,
    pretrained_backbone,
    read_encoder,
    resolve_weight_spec,
)
from monai_ssl_ext.networks import build_backbone

NORM = {"mean": [0.5] * 3, "std": [0.5] * 3}


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights and BN statistics, so equal features cannot come from equal inits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("arch", ["efficientnet-b0", "resnet18"])
def test_monai_trunk_into_flexibleunet_every_stage_matches(arch, tmp_path):
    source = build_backbone(arch)
    _randomise(source.trunk)
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="simclr", normalization=NORM)
    net = FlexibleUNet(3, 2, backbone=arch, pretrained=False)
    report = load_encoder(net.encoder, str(path))
    assert report.missing == [] and report.unused == [] and report.mismatched == []
    assert report.loaded and all(k.startswith("_fc.") for k in report.ignored)
    source.eval(), net.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = source.feature_maps(x), net.encoder(x)
    assert len(ref) == len(got) == 5
    for r, g in zip(ref, got):
        assert r.shape == g.shape and _rel_err(g, r) <= 1e-5


def test_header_round_trip(tmp_path):
    backbone = build_backbone("resnet18", in_channels=1)
    path = tmp_path / "enc.pt"
    export_encoder(backbone, str(path), method="byol", normalization={"mean": [0.1], "std": [0.2]}, epoch=3)
    payload = read_encoder(str(path))
    assert payload["arch"] == "resnet18" and payload["in_channels"] == 1 and payload["spatial_dims"] == 2
    assert payload["method"] == "byol" and payload["epoch"] == 3 and payload["first_conv"] == "conv1.weight"
    assert payload["normalization"] == {"mean": [0.1], "std": [0.2]}
    assert set(payload["state_dict"]) == set(backbone.trunk.state_dict())
    assert not any(k.startswith("fc.") for k in payload["state_dict"])


def test_timm_resnet50_maps_exactly_onto_monai_resnet50(tmp_path):
    source = build_backbone("timm/resnet50")
    _randomise(source.trunk, seed=3)
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="supervised")
    net = FlexibleUNet(3, 2, backbone="resnet50", pretrained=False)
    report = load_encoder(net.encoder, str(path))
    assert report.ok and not report.ignored
    source.eval(), net.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        pooled = source(x)
        last = net.encoder(x)[-1].mean(dim=(2, 3))
    assert _rel_err(last, pooled) <= 1e-5


def test_timm_resnet18_does_not_fit_monai_resnet18(tmp_path):
    """timm's resnet18 has projection shortcuts (downsample) that MONAI's resnet18 lacks."""
    path = tmp_path / "encoder.pt"
    export_encoder(build_backbone("timm/resnet18"), str(path), method="supervised")
    net = FlexibleUNet(3, 2, backbone="resnet18", pretrained=False)
    with pytest.raises(EncoderLoadError, match="downsample") as err:
        load_encoder(net.encoder, str(path))
    assert str(path) in str(err.value) and "unused" in str(err.value)
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in net.encoder.state_dict().items())  # nothing half-loaded


def test_input_channel_conversion(tmp_path):
    rgb = build_backbone("resnet18", in_channels=3)
    _randomise(rgb.trunk, seed=5)
    path = tmp_path / "rgb.pt"
    export_encoder(rgb, str(path), method="simclr")
    grey = build_backbone("resnet18", in_channels=1)
    with pytest.raises(EncoderLoadError, match="convert_channels"):
        load_encoder(grey, str(path))
    report = load_encoder(grey, str(path), convert_channels=True)
    assert report.ok and report.converted == ["conv1.weight 3→1"]
    rgb.eval(), grey.eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():  # summed filters: a grey image equals the RGB image with R = G = B
        assert _rel_err(grey(x), rgb(x.repeat(1, 3, 1, 1))) <= 1e-5
    w = torch.randn(4, 1, 3, 3)
    w3 = convert_input_channels(w, 3)
    assert w3.shape == (4, 3, 3, 3) and torch.allclose(w3.sum(1, keepdim=True), w)


def test_pretrained_backbone_builds_arch_from_header(tmp_path):
    source = build_backbone("efficientnet-b0")
    _randomise(source.trunk, seed=7)
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="simclr", normalization=NORM)
    backbone = pretrained_backbone(arch=None, weights=str(path))
    assert backbone.arch == "efficientnet-b0" and backbone.load_report.ok
    for k, v in source.trunk.state_dict().items():
        assert torch.equal(backbone.trunk.state_dict()[k], v)


def test_bad_encoder_files_name_the_file(tmp_path):
    target = build_backbone("resnet18").trunk
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_encoder(target, str(missing))
    good = tmp_path / "good.pt"
    export_encoder(build_backbone("resnet18"), str(good), method="simclr")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    with pytest.raises(EncoderLoadError, match=str(truncated)):
        load_encoder(target, str(truncated))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(EncoderLoadError, match=str(garbage)):
        load_encoder(target, str(garbage))
    plain = tmp_path / "plain_state_dict.pt"
    torch.save(target.state_dict(), plain)
    with pytest.raises(EncoderLoadError, match="not an encoder file"):
        load_encoder(target, str(plain))
    pickled = tmp_path / "pickled_object.pt"
    torch.save({"state_dict": {}, "format": 1, "obj": _Opaque()}, pickled)
    with pytest.raises(EncoderLoadError, match=str(pickled)):  # weights_only=True refuses objects
        load_encoder(target, str(pickled))


class _Opaque:
    pass


def test_wrong_architecture_is_rejected(tmp_path):
    path = tmp_path / "encoder.pt"
    export_encoder(build_backbone("resnet18"), str(path), method="simclr")
    with pytest.raises(EncoderLoadError, match="not filled"):
        load_encoder(FlexibleUNet(3, 2, backbone="resnet34", pretrained=False).encoder, str(path))


def test_null_spec_is_random_init():
    assert resolve_weight_spec(None) is None and resolve_weight_spec("null") is None
    assert load_encoder(build_backbone("resnet18"), None) is None


def test_timm_spec_loads_through_timm_pretrained_path(tmp_path, monkeypatch):
    """``timm:<name>`` runs timm's own ``pretrained=True`` loading; here it finds the weights in a
    local Hugging Face cache (no network), as it would after a first online run."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    _randomise(model, seed=11)
    cfg = timm.models.get_pretrained_cfg("resnet18")
    repo = cfg.hf_hub_id
    snapshot = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    full = timm.create_model("resnet18", pretrained=False)
    state = dict(full.state_dict())
    state.update(model.state_dict())
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    refs = snapshot.parents[1] / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    backbone = pretrained_backbone(arch="timm/resnet18", weights="timm:resnet18")
    assert backbone.load_report.ok and backbone.load_report.arch == "timm/resnet18"
    assert backbone.load_report.header["normalization"]["mean"] == list(cfg.mean)
    for k, v in model.state_dict().items():
        assert torch.equal(backbone.trunk.state_dict()[k], v), k


def test_timm_spec_offline_without_cache_explains(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(EncoderLoadError, match="timm:resnet18"):
        resolve_weight_spec("timm:resnet18")


def test_random_init_specs():
    from monai_ssl_ext.encoders import is_random_init

    assert all(is_random_init(s) for s in (None, "", "null", "None", " random "))
    assert not any(is_random_init(s) for s in ("timm:resnet18", "runs/x/encoder.pt", "nullx.pt"))


def test_unused_vit_norms_are_frozen_and_everything_else_trains():
    """MONAI ViT blocks keep a cross-attention LayerNorm nothing uses; build_backbone freezes it so
    that every trainable parameter gets a gradient (what DistributedDataParallel requires)."""
    from monai.networks.nets import UNETR

    from monai_ssl_ext.networks import freeze_unused_vit_norms

    vit = build_backbone("vit", spatial_dims=3, in_channels=1, img_size=32, patch_size=16, hidden_size=24,
                         mlp_dim=48, num_layers=2, num_heads=2)
    vit(torch.randn(1, 1, 32, 32, 32)).sum().backward()
    trainable = {n for n, p in vit.named_parameters() if p.requires_grad}
    assert trainable and all(vit.get_parameter(n).grad is not None for n in trainable)
    frozen = {n for n, p in vit.named_parameters() if not p.requires_grad}
    assert frozen and all("norm_cross_attn" in n for n in frozen)
    unetr = UNETR(1, 2, img_size=32, feature_size=8, hidden_size=24, mlp_dim=48, num_heads=2)
    names = freeze_unused_vit_norms(unetr.vit)
    assert len(names) == 2 * 12 and all(not unetr.vit.get_parameter(n).requires_grad for n in names)


# ---- architecture parameters that tensor shapes do not reveal (defect 5) ----------------------

VIT_SMALL = dict(img_size=32, patch_size=8, hidden_size=48, mlp_dim=96, num_layers=2)


def _vit_encoder(tmp_path, name="vit.pt", seed=0, spatial_dims=3, **params):
    torch.manual_seed(seed)
    source = build_backbone("vit", spatial_dims=spatial_dims, in_channels=1, **params)
    _randomise(source.trunk, seed=seed)
    with torch.no_grad():  # sharp attention, so that how the heads split the channels matters
        for block in source.trunk.blocks:
            block.norm1.weight.fill_(1.0)
            block.attn.qkv.weight.mul_(10.0)
    path = tmp_path / name
    export_encoder(source, str(path), method="vitautoenc")
    return source, path


def _same_vit_outputs(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    a.eval(), b.eval()
    with torch.no_grad():
        (tok_a, hid_a), (tok_b, hid_b) = a(x), b(x)
    assert len(hid_a) == len(hid_b)
    for got, ref in zip([tok_a, *hid_a], [tok_b, *hid_b]):
        assert _rel_err(got, ref) <= 1e-5


def test_vit_with_other_num_heads_is_rejected(tmp_path):
    """An 8-head ViT trunk has exactly the tensors of a 12-head one; loading it into the 12-head
    trunk used to report 0 missing / 0 unused and compute other features."""
    from monai.networks.nets import ViT

    source, path = _vit_encoder(tmp_path, num_heads=8, **VIT_SMALL)
    x = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3))

    wrong = ViT(in_channels=1, spatial_dims=3, num_heads=12, **VIT_SMALL)
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    with pytest.raises(EncoderLoadError, match="num_heads: encoder header 8, target 12") as err:
        load_encoder(wrong, str(path))
    assert str(path) in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in wrong.state_dict().items())  # nothing loaded

    # the defect itself: without the check every tensor fits, and the features are not the encoder's
    report = load_encoder(wrong, str(path), check_arch=False)
    assert report.missing == report.unused == report.mismatched == [] and report.loaded
    wrong.eval(), source.eval()
    with torch.no_grad():
        assert _rel_err(wrong(x)[0], source.trunk(x)[0]) > 1e-2

    right = ViT(in_channels=1, spatial_dims=3, num_heads=8, **VIT_SMALL)
    report = load_encoder(right, str(path))
    assert report.ok and "num_heads" in report.arch_checked and report.arch_mismatches == []
    _same_vit_outputs(right, source.trunk, x)


def test_vit_encoder_into_unetr_checks_num_heads(tmp_path):
    """The unetr_btcv hand-off (``load_encoder(@network_def.vit, ...)``): UNETR's ViT has 12 layers
    and patch 16; only the head count differs."""
    from monai.networks.nets import UNETR

    params = dict(img_size=32, patch_size=16, hidden_size=48, mlp_dim=96, num_layers=12)
    source, path = _vit_encoder(tmp_path, num_heads=8, **params)

    def unetr(heads):
        return UNETR(in_channels=1, out_channels=3, img_size=32, feature_size=8, hidden_size=48, mlp_dim=96,
                     num_heads=heads, proj_type="conv", norm_name="instance", res_block=True, dropout_rate=0.0)

    with pytest.raises(EncoderLoadError, match="num_heads: encoder header 8, target 12") as err:
        load_encoder(unetr(12).vit, str(path))
    assert str(path) in str(err.value)
    net = unetr(8)
    assert load_encoder(net.vit, str(path), target_arch_params={"img_size": [32, 32, 32]}).ok
    _same_vit_outputs(net.vit, source.trunk, torch.rand(1, 1, 32, 32, 32))


def test_pretrained_backbone_rejects_overridden_vit_sizes(tmp_path):
    """``pretrained_backbone`` takes the header's ``arch_params`` unless told otherwise; an override
    that keeps every shape (heads, or an img_size with as many patches) is an error."""
    _, path = _vit_encoder(tmp_path, num_heads=8, **VIT_SMALL)
    assert pretrained_backbone("vit", str(path), spatial_dims=3, in_channels=1).load_report.ok
    with pytest.raises(EncoderLoadError, match="num_heads"):
        pretrained_backbone("vit", str(path), spatial_dims=3, in_channels=1, num_heads=4)
    with pytest.raises(EncoderLoadError, match=r"img_size: encoder header \(32, 32, 32\) \(patch grid \(4, 4, 4\)\)"):
        pretrained_backbone("vit", str(path), spatial_dims=3, in_channels=1, img_size=[16, 64, 32])


def test_vit_patch_grid_declared_for_a_bare_vit(tmp_path):
    """A bare ViT does not record its img_size: 16×64×32 has as many 8³ patches as 32³, so the
    position embeddings fit; ``target_arch_params`` lets the caller say it."""
    from monai.networks.nets import ViT

    _, path = _vit_encoder(tmp_path, num_heads=8, **VIT_SMALL)
    other = dict(VIT_SMALL, img_size=(16, 64, 32))
    assert load_encoder(ViT(in_channels=1, spatial_dims=3, num_heads=8, **other), str(path)).ok
    with pytest.raises(EncoderLoadError, match=r"img_size: .*patch grid \(4, 4, 4\).*patch grid \(2, 8, 4\)"):
        load_encoder(ViT(in_channels=1, spatial_dims=3, num_heads=8, **other), str(path),
                     target_arch_params={"img_size": (16, 64, 32)})
    with pytest.raises(ValueError, match="num_heads"):  # a declaration the module contradicts
        load_encoder(ViT(in_channels=1, spatial_dims=3, num_heads=8, **VIT_SMALL), str(path),
                     target_arch_params={"num_heads": 12})


def test_perceptron_vit_patch_size_and_pos_embedding(tmp_path):
    """A perceptron patch embedding is a Linear over p1·p2·C inputs: 8×8 and 4×16 patches share it."""
    from monai.networks.nets import ViT

    _, path = _vit_encoder(tmp_path, spatial_dims=2, num_heads=4, proj_type="perceptron", **VIT_SMALL)
    base = dict(in_channels=1, spatial_dims=2, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4,
                proj_type="perceptron")
    with pytest.raises(EncoderLoadError, match=r"patch_size: encoder header \(8, 8\), target \(4, 16\)"):
        load_encoder(ViT(img_size=(16, 64), patch_size=(4, 16), **base), str(path))  # 4×4 patches too
    with pytest.raises(EncoderLoadError, match="pos_embed_type: encoder header 'learnable', target 'sincos'"):
        load_encoder(ViT(img_size=32, patch_size=8, pos_embed_type="sincos", **base), str(path))
    assert load_encoder(ViT(img_size=32, patch_size=8, **base), str(path)).ok


def test_resnet_stem_and_strides_are_checked(tmp_path):
    """MONAI ResNet keeps its max-pool layer whether or not it uses it, and strides have no tensor:
    a resnet18 without the stem max-pool, or with another stride, has the same state dict."""
    from monai.networks.nets.resnet import ResNet, get_inplanes, resnet_params

    source = build_backbone("resnet18")
    _randomise(source.trunk, seed=4)
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="simclr")
    block, layers, shortcut, bias_ds, _ = resnet_params["resnet18"]

    def resnet(**kw):
        args = dict(block=block, layers=layers, block_inplanes=get_inplanes(), spatial_dims=2, n_input_channels=3,
                    conv1_t_stride=2, shortcut_type=shortcut, feed_forward=False, bias_downsample=bias_ds)
        return ResNet(**{**args, **kw})

    with pytest.raises(EncoderLoadError, match="max_pool: encoder header True, target False") as err:
        load_encoder(resnet(no_max_pool=True), str(path))
    assert str(path) in str(err.value)
    with pytest.raises(EncoderLoadError, match=r"conv1_stride: encoder header \(2, 2\), target \(1, 1\)"):
        load_encoder(resnet(conv1_t_stride=1), str(path))
    strided = resnet()
    strided.layer3[0].conv1.stride = (1, 1)  # e.g. a dilated / output-stride-16 variant
    with pytest.raises(EncoderLoadError, match=r"layer3\.0\.conv1\.stride: encoder \(2, 2\), target \(1, 1\)"):
        load_encoder(strided, str(path))
    with pytest.raises(EncoderLoadError, match="activation"):
        load_encoder(resnet(act="leakyrelu"), str(path))
    report = load_encoder(resnet(), str(path))
    assert report.ok and {"conv1_stride", "max_pool", "layer settings"} <= set(report.arch_checked)


# ---- encoder format 2: several named trunks in one file; format 1 still loads ------------------

VIT_TINY = dict(img_size=16, patch_size=8, hidden_size=16, mlp_dim=32, num_layers=2, num_heads=2)


def test_format2_file_with_two_trunks_loads_each_by_name(tmp_path):
    from monai_ssl_ext.encoders import export_encoders

    cnn = build_backbone("resnet18", spatial_dims=2, in_channels=1)
    vit = build_backbone("vit", spatial_dims=2, in_channels=1, **VIT_TINY)
    _randomise(cnn.trunk, seed=21), _randomise(vit.trunk, seed=22)
    path = tmp_path / "encoder.pt"
    export_encoders({"slice_encoder": cnn, "slice_transformer": vit}, str(path), method="joint2d3d",
                    normalization={"mean": [0.2], "std": [0.3]}, epoch=4)

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == 2 and sorted(raw["trunks"]) == ["slice_encoder", "slice_transformer"]
    assert raw["method"] == "joint2d3d" and raw["epoch"] == 4 and "state_dict" not in raw
    header = {k: v for k, v in raw["trunks"]["slice_transformer"].items() if k != "state_dict"}
    assert header == {"arch": "vit", "spatial_dims": 2, "in_channels": 1, "arch_params": vit.arch_params,
                      "feature_dim": 16, "first_conv": "patch_embedding.patch_embeddings.weight"}

    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    target = build_backbone("resnet18", spatial_dims=2, in_channels=1)
    report = load_encoder(target, str(path), trunk="slice_encoder")
    assert report.ok and report.header["trunk"] == "slice_encoder" and report.header["method"] == "joint2d3d"
    cnn.eval(), target.eval()
    with torch.no_grad():
        assert _rel_err(target(x), cnn(x)) <= 1e-5
    rebuilt = pretrained_backbone(arch=None, weights=str(path), in_channels=1, trunk="slice_transformer")
    assert rebuilt.arch == "vit" and rebuilt.arch_params == vit.arch_params and rebuilt.load_report.ok
    vit.eval(), rebuilt.eval()
    with torch.no_grad():
        assert _rel_err(rebuilt(x[..., :16, :16]), vit(x[..., :16, :16])) <= 1e-5
    view = read_encoder(str(path), trunk="slice_transformer")
    assert view["arch"] == "vit" and view["normalization"] == {"mean": [0.2], "std": [0.3]} and view["epoch"] == 4


def test_format2_trunk_name_missing_or_ambiguous_lists_the_trunks(tmp_path):
    from monai_ssl_ext.encoders import export_encoders

    path = tmp_path / "encoder.pt"
    export_encoders({"a": build_backbone("resnet10"), "b": build_backbone("resnet10")}, str(path), method="x")
    target = build_backbone("resnet10")
    with pytest.raises(EncoderLoadError, match=r"no trunk 'c'; its trunks: \['a', 'b'\]") as err:
        load_encoder(target, str(path), trunk="c")
    assert str(path) in str(err.value)
    with pytest.raises(EncoderLoadError, match=r"holds 2 trunks \['a', 'b'\]: pick one with trunk=<name>"):
        load_encoder(target, str(path))
    with pytest.raises(EncoderLoadError, match=r"no trunk 'c'"):
        read_encoder(str(path), trunk="c")
    assert load_encoder(target, str(path), trunk="b").ok


def test_single_trunk_exports(tmp_path):
    """``export_encoder`` writes one trunk as format 1 (flat); ``export_encoders`` with one trunk
    writes format 2; both read as one trunk view and load without naming the trunk."""
    from monai_ssl_ext.encoders import export_encoders

    backbone = build_backbone("resnet10")
    flat, named = tmp_path / "flat.pt", tmp_path / "named.pt"
    payload = export_encoder(backbone, str(flat), method="simclr", normalization=NORM, epoch=2)
    raw = torch.load(flat, map_location="cpu", weights_only=True)
    assert raw["format"] == 1 and raw["arch"] == "resnet10" and set(raw) == set(payload) and "trunks" not in raw
    export_encoders({"slice_encoder": backbone}, str(named), method="simclr", normalization=NORM, epoch=2)
    a, b = read_encoder(str(flat)), read_encoder(str(named))
    assert a["trunk"] == "encoder" and b["trunk"] == "slice_encoder"
    assert {k: v for k, v in a.items() if k not in ("format", "trunk", "state_dict")} == {
        k: v for k, v in b.items() if k not in ("format", "trunk", "state_dict")}
    assert load_encoder(build_backbone("resnet10"), str(flat), trunk="encoder").ok
    assert load_encoder(build_backbone("resnet10"), str(named)).ok
    with pytest.raises(ValueError, match="state_dict"):
        export_encoder(backbone, str(tmp_path / "x.pt"), method="simclr", state_dict={})


def test_format1_file_still_loads(tmp_path):
    """A file in the layout 0.2.0 wrote (flat header, one ``state_dict``) loads as trunk "encoder"."""
    source = build_backbone("resnet18")
    _randomise(source.trunk, seed=9)
    path = tmp_path / "old_encoder.pt"
    torch.save({
        "format": 1, "arch": "resnet18", "spatial_dims": 2, "in_channels": 3, "feature_dim": 512,
        "first_conv": "conv1.weight", "arch_params": {}, "normalization": NORM, "method": "simclr",
        "package_version": "0.2.0", "epoch": 3, "iteration": 30,
        "state_dict": {k: v.clone() for k, v in source.trunk.state_dict().items()},
    }, path)
    view = read_encoder(str(path))
    assert view["format"] == 1 and view["trunk"] == "encoder" and view["epoch"] == 3 and view["arch"] == "resnet18"
    net = FlexibleUNet(3, 2, backbone="resnet18", pretrained=False)
    report = load_encoder(net.encoder, str(path), trunk="encoder")
    assert report.ok and report.header["method"] == "simclr"
    source.eval(), net.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for r, g in zip(source.feature_maps(x), net.encoder(x)):
            assert _rel_err(g, r) <= 1e-5
    with pytest.raises(EncoderLoadError, match=r"no trunk 'slice_encoder'; its trunks: \['encoder'\]"):
        load_encoder(net.encoder, str(path), trunk="slice_encoder")
    assert pretrained_backbone(arch=None, weights=str(path)).load_report.ok


def test_pretrained_backbone_names_the_file_of_a_mismatched_encoder(tmp_path):
    """pretrained_backbone reads the file once and hands the payload on: the refusal still names the file."""
    from monai_ssl_ext.encoders import EncoderLoadError, export_encoder, pretrained_backbone
    from monai_ssl_ext.networks import build_backbone

    path = tmp_path / "runs" / "encoder.pt"
    path.parent.mkdir()
    export_encoder(build_backbone("timm/resnet18"), str(path), method="test")
    with pytest.raises(EncoderLoadError, match=str(path)):
        pretrained_backbone("timm/resnet34", weights=str(path))
