"""The trunk-family registry: one entry per family, read by build_backbone, Backbone, load_encoder,
check_architecture and the converters. A new family is one entry (registered here, in the test)
and one round trip through export → load_encoder with equal features."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_ssl_ext.encoders import EncoderLoadError, export_encoder, load_encoder, pretrained_backbone, read_encoder
from monai_ssl_ext.networks import build_backbone
from monai_ssl_ext.networks.families import (
    TORCHVISION,
    TrunkFamily,
    conv_signature,
    family_of_arch,
    family_of_module,
    find_key_map,
    get_family,
    list_families,
    map_keys,
    map_keys_by_order,
    register_family,
    unregister_family,
)


# ---- a toy family, defined and registered in the test only ---------------------------------------


class ToyNet(nn.Module):
    """Two conv stages; ``head`` (off in the trunk) is a downstream-only layer no encoder fills."""

    def __init__(self, spatial_dims: int, in_channels: int, width: int = 4, stem_stride: int = 2, head: bool = False):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.stem = conv(in_channels, width, 3, stride=stem_stride, padding=1)
        self.stage = nn.Sequential(conv(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(2 * width, 3) if head else None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = torch.relu(self.stem(x))
        return [a, self.stage(a)]


def _toy_signature(module: nn.Module) -> dict:
    return {**conv_signature(module), "stem_stride": tuple(module.stem.stride)}


TOY = TrunkFamily(
    name="toy-conv",
    matches_arch=lambda arch: arch == "toy-conv",
    matches_module=lambda m: isinstance(m, ToyNet),
    build=lambda arch, spatial_dims, in_channels, **p: ToyNet(spatial_dims, in_channels, **p),
    pool=lambda trunk, x: trunk(x)[-1].flatten(2).mean(-1),
    feature_maps=lambda trunk, x: trunk(x),
    feature_dim=lambda trunk: trunk.stage[0].out_channels,
    first_conv="stem.weight",
    arch_params={"width": 4, "stem_stride": 2},
    ignore_missing=(r"^head\.",),
    signature=_toy_signature,
    names="'toy-conv' (test only)",
)


@pytest.fixture
def toy_family():
    before = [f.name for f in list_families()]
    register_family(TOY)
    try:
        yield TOY
    finally:
        unregister_family(TOY.name)
    assert [f.name for f in list_families()] == before and family_of_arch("toy-conv") is None


def _randomise(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) <= 1e-6


def test_new_family_is_one_entry(toy_family, tmp_path):
    source = build_backbone("toy-conv", spatial_dims=2, in_channels=3, width=6)
    assert source.family == "toy-conv" and source.feature_dim == 12 and source.first_conv == "stem.weight"
    assert source.arch_params == {"width": 6, "stem_stride": 2}
    _randomise(source.trunk, seed=1)
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="toy", normalization={"mean": [0.5] * 3, "std": [0.5] * 3})
    assert read_encoder(str(path))["arch_params"] == {"width": 6, "stem_stride": 2}
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))

    # a Backbone rebuilt from the header alone computes the same features
    rebuilt = pretrained_backbone(arch=None, weights=str(path))
    assert rebuilt.load_report.ok and rebuilt.arch_params == source.arch_params
    with torch.no_grad():
        _same(rebuilt(x), source(x))
        for got, ref in zip(rebuilt.feature_maps(x), source.feature_maps(x)):
            _same(got, ref)

    # a bare downstream module the entry recognises: its extra head is ignored, not missing
    target = ToyNet(2, 3, width=6, head=True)
    report = load_encoder(target, str(path))
    assert report.ok and report.ignored == ["head.weight", "head.bias"] and "stem_stride" in report.arch_checked
    with torch.no_grad():
        for got, ref in zip(target(x), source.feature_maps(x)):
            _same(got, ref)

    # its first convolution is converted on request; its shape-invariant parameters are checked
    grey = ToyNet(2, 1, width=6)
    assert load_encoder(grey, str(path), convert_channels=True).converted == ["stem.weight 3→1"]
    with pytest.raises(EncoderLoadError, match=r"stem_stride: encoder header \(2, 2\), target \(1, 1\)"):
        load_encoder(ToyNet(2, 3, width=6, stem_stride=1), str(path))
    with pytest.raises(ValueError, match="unknown parameters"):
        build_backbone("toy-conv", depth=3)


# ---- the built-in entries ------------------------------------------------------------------------


VIT = dict(img_size=16, patch_size=8, hidden_size=16, mlp_dim=32, num_layers=1, num_heads=2)


@pytest.mark.parametrize("arch,params,family,dim", [
    ("efficientnet-b0", {}, "monai-efficientnet", 1280),
    ("resnet50", {}, "monai-resnet", 2048),
    ("resnet10", {}, "monai-resnet", 512),
    ("vit", VIT, "monai-vit", 16),
    ("timm/resnet18", {}, "timm", 512),
    ("timm/tf_efficientnet_b0", {}, "timm-tf-efficientnet", 1280),
])
def test_builtin_family_recognises_its_trunks(arch, params, family, dim):
    """Every built-in family recognises its arch names and the modules it builds (built on the meta
    device: no memory, no weights)."""
    assert family_of_arch(arch).name == family
    with torch.device("meta"):
        backbone = build_backbone(arch, spatial_dims=2, in_channels=3, **params)
    assert backbone.family == family and backbone.feature_dim == dim
    assert family_of_module(backbone.trunk).name == family
    assert backbone.first_conv in backbone.trunk.state_dict()


def test_downstream_modules_are_recognised():
    from monai.networks.nets import UNETR, FlexibleUNet

    with torch.device("meta"):
        assert family_of_module(FlexibleUNet(3, 2, backbone="efficientnet-b0").encoder).name == "monai-efficientnet"
        assert family_of_module(FlexibleUNet(3, 2, backbone="resnet18").encoder).name == "monai-resnet"
        assert family_of_module(UNETR(1, 2, img_size=32, feature_size=8, hidden_size=24, mlp_dim=48,
                                      num_heads=2).vit).name == "monai-vit"
    assert family_of_module(nn.Linear(2, 2)) is None and family_of_arch("resnet_does_not_exist") is None


def test_registry_names_and_errors():
    names = [f.name for f in list_families()]
    assert names.index("timm-tf-efficientnet") < names.index("timm")  # the special case matches first
    assert {"monai-efficientnet", "monai-resnet", "monai-vit", "timm", "timm-tf-efficientnet"} <= set(names)
    with pytest.raises(ValueError, match="already registered"):
        register_family(get_family("timm"))
    with pytest.raises(KeyError, match="registered"):
        unregister_family("no-such-family")
    with pytest.raises(ValueError, match="unknown backbone 'nope'") as err:
        build_backbone("nope")
    assert all(name in str(err.value) for name in ("efficientnet-b0", "resnet50", "'vit'", "timm/<model-name>"))


def test_key_maps_live_in_the_registry():
    tf = find_key_map("timm-tf-efficientnet", get_family("monai-efficientnet"))
    assert tf is get_family("timm-tf-efficientnet").maps_to["monai-efficientnet"]
    assert tf(["conv_stem.weight", "blocks.0.0.conv_dw.weight"], ["_blocks.0.0._depthwise_conv.weight"]) == {
        "conv_stem.weight": "_conv_stem.weight", "blocks.0.0.conv_dw.weight": "_blocks.0.0._depthwise_conv.weight"}
    # the converter's foreign format: DDP prefixes stripped, classifier dropped, onto timm and MONAI ResNets
    for family in ("timm", "monai-resnet"):
        assert map_keys(TORCHVISION, ["module.conv1.weight", "module.fc.bias"], get_family(family), []) == {
            "module.conv1.weight": "conv1.weight"}
    # no map: identity
    assert map_keys("monai-resnet", ["a.weight"], get_family("timm"), []) == {"a.weight": "a.weight"}
    assert map_keys_by_order(["x", "y"], ["a", "b.num_batches_tracked", "b"]) == {"x": "a", "y": "b"}


# ---- MAE's encoder (a `vit` trunk with class token) into the downstream ViTs ---------------------
#
# One test per (source, target) pair of the registry: the exported encoder is loaded with load_encoder
# into the downstream trunk; eval mode; features equal to max relative error 1e-5; nothing missing or
# unused (only tensors no forward uses are ignored).

MAE_2D = dict(img_size=32, patch_size=8, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4, qkv_bias=True,
              pos_embed_type="sincos", cls_token=True, layer_norm_eps=1e-6)


def _randomise_vit(module: nn.Module, seed: int) -> None:
    """Random weights and biases everywhere (the fixed position table too), LayerNorm scales near 1, so a
    tensor loaded into the wrong place, or not at all, shows in the features."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                scale = torch.randn(t.shape, generator=g)
                t.copy_(1 + 0.1 * scale if "norm" in name and name.endswith("weight") else 0.05 * scale)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _mae_encoder(tmp_path, spatial_dims=2, seed=0, **params):
    from monai_ssl_ext.networks import MAE

    backbone = build_backbone("vit", spatial_dims=spatial_dims, in_channels=3, **params)
    MAE(backbone, decoder_hidden_size=24, decoder_num_layers=1, decoder_num_heads=4)  # the pretraining model
    _randomise_vit(backbone.trunk, seed)
    path = tmp_path / f"encoder_{seed}.pt"
    export_encoder(backbone, str(path), method="mae")
    return backbone.eval(), path


def _norm_cross_attn(keys) -> list[str]:
    return [k for k in keys if "norm_cross_attn" in k]


def test_mae_encoder_into_a_timm_vision_transformer(tmp_path):
    """monai-vit → timm: MAE's encoder (class token, qkv bias, eps 1e-6) computes timm's features: the pooled
    class token and every token after the final norm."""
    from timm.models.vision_transformer import VisionTransformer

    assert find_key_map("monai-vit", get_family("timm")) is get_family("monai-vit").maps_to["timm"]
    source, path = _mae_encoder(tmp_path, **MAE_2D)
    target = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2,
                               num_classes=0).eval()
    report = load_encoder(target, str(path))
    assert report.ok and report.missing == [] and report.unused == [] and report.mismatched == []
    assert report.ignored == _norm_cross_attn(source.trunk.state_dict())  # used by no forward
    assert len(report.loaded) == len(target.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert _rel_err(target(x), source(x)) <= 1e-5
        assert _rel_err(target.forward_features(x), source.trunk(x)[0]) <= 1e-5
    # the class-token slot timm's table has is MAE's zero slot
    assert torch.count_nonzero(target.pos_embed[0, 0]) == 0
    assert torch.equal(target.pos_embed[0, 1:], source.trunk.patch_embedding.position_embeddings[0])


@pytest.mark.parametrize("img_size", [40, 48])
def test_monai_vit_into_a_timm_vit_of_another_patch_grid_refused(tmp_path, img_size):
    """A 4×4-patch encoder into a timm ViT of a 5×5 / 6×6 grid: the position tables differ by 9 / 20 rows,
    not by the one class-token slot, and the load is refused on the table's shape (padding it would put
    the 16 learned positions into the wrong rows and leave the other patches without one)."""
    from timm.models.vision_transformer import VisionTransformer

    _, path = _mae_encoder(tmp_path, **MAE_2D)
    target = VisionTransformer(img_size=img_size, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2,
                               num_classes=0)
    before = target.pos_embed.detach().clone()
    with pytest.raises(Exception, match="pos_embed"):
        load_encoder(target, str(path))
    assert torch.equal(target.pos_embed, before)


@pytest.mark.filterwarnings("ignore:for .* copying from a non-meta parameter")
def test_mae_vit_b16_into_timm_vit_base_patch16_224(tmp_path):
    """The recipe's encoder (ViT-B/16 at 224) fits ``timm/vit_base_patch16_224`` whole: every tensor placed,
    shapes (the 197-slot position table), heads and eps checked. The target is built on the meta device (no
    memory, no forward): the computation is the one compared above on a small timm ViT."""
    params = dict(MAE_2D, img_size=224, patch_size=16, hidden_size=768, mlp_dim=3072, num_layers=12, num_heads=12)
    source = build_backbone("vit", spatial_dims=2, in_channels=3, **params)
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="mae")
    with torch.device("meta"):
        target = build_backbone("timm/vit_base_patch16_224")
    report = load_encoder(target, str(path))
    assert report.ok and report.missing == [] and report.unused == [] and report.mismatched == []
    assert len(report.loaded) == len(target.trunk.state_dict()) == 150
    assert report.ignored == _norm_cross_attn(source.trunk.state_dict()) and len(report.ignored) == 24
    assert "layer settings" in report.arch_checked


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_mae_encoder_into_a_monai_vit_classifier(tmp_path, spatial_dims):
    """monai-vit → monai-vit: a class-token encoder into ``ViT(classification=True)`` (its head is the
    downstream's own: ignored, not missing); every block's output and the final norm equal; the header alone
    rebuilds the trunk (``pretrained_backbone(arch=None)``), pooled features equal."""
    from monai.networks.nets import ViT

    size = 32 if spatial_dims == 2 else 16
    params = dict(MAE_2D, img_size=size, layer_norm_eps=1e-5)  # MONAI's ViT keeps eps 1e-5
    source, path = _mae_encoder(tmp_path, spatial_dims=spatial_dims, seed=1, **params)
    target = ViT(in_channels=3, img_size=size, patch_size=8, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4,
                 qkv_bias=True, pos_embed_type="sincos", classification=True, num_classes=5,
                 spatial_dims=spatial_dims).eval()
    report = load_encoder(target, str(path))
    assert report.ok and report.missing == [] and report.unused == []
    assert sorted(report.ignored) == ["classification_head.0.bias", "classification_head.0.weight"]
    x = torch.randn(2, 3, *([size] * spatial_dims), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        tokens, hidden = source.trunk(x)
        _, target_hidden = target(x)
        for got, ref in zip(target_hidden, hidden):
            assert _rel_err(got, ref) <= 1e-5
        assert _rel_err(target.norm(target_hidden[-1]), tokens) <= 1e-5
        rebuilt = pretrained_backbone(arch=None, weights=str(path), spatial_dims=spatial_dims).eval()
        assert rebuilt.load_report.ok and rebuilt.arch_params == source.arch_params
        assert _rel_err(rebuilt(x), source(x)) <= 1e-5
        for got, ref in zip(rebuilt.feature_maps(x), source.feature_maps(x)):
            assert got.shape[1] == (size // 8) ** spatial_dims and _rel_err(got, ref) <= 1e-5  # no class token


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_mae_encoder_without_class_token_into_unetr_vit(tmp_path, spatial_dims):
    """monai-vit → UNETR.vit: an encoder pretrained as UNETR's trunk (no class token, eps 1e-5) loads key for
    key; its fixed sin-cos table initialises UNETR's learnable one (same function at load)."""
    from monai.networks.nets import UNETR

    size = 32  # UNETR's patches are 16 per axis: a 2×2(×2) grid
    params = dict(MAE_2D, img_size=size, patch_size=16, cls_token=False, layer_norm_eps=1e-5, qkv_bias=False)
    source, path = _mae_encoder(tmp_path, spatial_dims=spatial_dims, seed=2, **params)
    net = UNETR(in_channels=3, out_channels=2, img_size=size, feature_size=8, hidden_size=48, mlp_dim=96,
                num_heads=4, spatial_dims=spatial_dims).eval()
    net.vit.blocks = net.vit.blocks[:2]  # the encoder's depth (UNETR has 12 blocks and reads 3, 6, 9)
    assert net.vit.patch_embedding.pos_embed_type == "learnable"
    report = load_encoder(net.vit, str(path), target_arch_params={"img_size": size})
    assert report.ok and report.missing == [] and report.unused == [] and report.ignored == []
    x = torch.randn(2, 3, *([size] * spatial_dims), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        tokens, hidden = source.trunk(x)
        got, got_hidden = net.vit(x)
        assert _rel_err(got, tokens) <= 1e-5
        for a, b in zip(got_hidden, hidden):
            assert _rel_err(a, b) <= 1e-5


def test_mae_encoder_mismatches_are_refused_with_their_reason(tmp_path):
    """What cannot compute the same features is named: a class token UNETR.vit lacks, a LayerNorm eps the
    target does not share, a qkv bias timm's ViT expects."""
    from monai.networks.nets import UNETR, ViT
    from timm.models.vision_transformer import VisionTransformer

    from monai_ssl_ext.encoders import EncoderLoadError
    from monai_ssl_ext.networks.families import set_layer_norm_eps

    _, path = _mae_encoder(tmp_path, seed=4, **MAE_2D)  # the recipe's: class token, eps 1e-6, qkv bias
    unetr = UNETR(in_channels=3, out_channels=2, img_size=32, feature_size=8, hidden_size=48, mlp_dim=96,
                  num_heads=4, spatial_dims=2, qkv_bias=True)
    unetr.vit.blocks = unetr.vit.blocks[:2]
    with pytest.raises(EncoderLoadError, match="classification: encoder header True, target False"):
        load_encoder(unetr.vit, str(path))
    vit = ViT(in_channels=3, img_size=32, patch_size=8, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4,
              qkv_bias=True, pos_embed_type="sincos", classification=True, spatial_dims=2)
    with pytest.raises(EncoderLoadError, match=r"norm1\.eps: encoder 1e-06, target 1e-05"):
        load_encoder(vit, str(path))
    set_layer_norm_eps(vit, 1e-6)  # a downstream ViT built with the encoder's eps
    assert load_encoder(vit, str(path)).ok
    _, no_bias = _mae_encoder(tmp_path, seed=5, **dict(MAE_2D, qkv_bias=False))
    timm_vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2,
                                 num_classes=0)
    with pytest.raises(EncoderLoadError, match=r"2 downstream tensors not filled \[blocks\.0\.attn\.qkv\.bias"):
        load_encoder(timm_vit, str(no_bias))
