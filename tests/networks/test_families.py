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
