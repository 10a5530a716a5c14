"""DeepLabV3+ around a Backbone (gie_polyp_segmentation): output shapes, gradients, frozen encoder, and the
hand-off from an exported ResNet trunk (features equal, nothing missing or unused)."""

from __future__ import annotations

import copy

import pytest
import torch

from monai_ssl_ext.encoders import export_encoder, load_encoder
from monai_ssl_ext.networks import DeepLabV3Plus, build_backbone, dilate_last_stage

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _net(output_stride=16, frozen=False, decoder_channels=32):
    torch.manual_seed(0)
    return DeepLabV3Plus(build_backbone("timm/resnet18"), out_channels=1, output_stride=output_stride,
                         decoder_channels=decoder_channels, frozen=frozen)


@pytest.mark.parametrize("output_stride", [16, 32])
@pytest.mark.parametrize("size", [(64, 64), (64, 96), (80, 48)])
def test_output_shape(output_stride, size):
    net = _net(output_stride).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, *size)).shape == (2, 1, *size)


def test_avg_down_trunk_dilates():
    """timm ResNets with an average-pool shortcut (resnet10t, resnet50d): the pool is made stride 1 too."""
    net = DeepLabV3Plus(build_backbone("timm/resnet10t"), decoder_channels=16).eval()
    with torch.no_grad():
        maps = net.backbone.feature_maps(torch.randn(1, 3, 64, 96))
        assert [tuple(m.shape[-2:]) for m in maps][-2:] == [(4, 6), (4, 6)]
        assert net(torch.randn(1, 3, 64, 96)).shape == (1, 1, 64, 96)


def test_strides_of_the_feature_maps():
    """Output stride 16: the deepest map is 1/16 of the input (last stage dilated); 32: 1/32."""
    x = torch.randn(1, 3, 64, 64)
    for os_, last in ((16, 4), (32, 2)):
        net = _net(os_).eval()
        with torch.no_grad():
            maps = net.backbone.feature_maps(x)
        assert [m.shape[-1] for m in maps] == [32, 16, 8, 4, last]
        assert net.low_index == 1  # the stride-4 map (layer1) is the low-level skip


def test_decoder_widths_as_smp():
    """ASPP -> 256, 48-channel low-level reduction, 304 -> 256 fusion, 1x1 head (smp's DeepLabV3Plus)."""
    net = _net(decoder_channels=256)
    assert net.decoder.low_level[0].out_channels == 48
    assert net.decoder.fuse[0][0].in_channels == 256 + 48  # depthwise part of the separable conv
    assert net.decoder.aspp[0].project[0].in_channels == 5 * 256
    assert [b[0][0].dilation for b in net.decoder.aspp[0].branches[1:4]] == [(12, 12), (24, 24), (36, 36)]
    assert net.segmentation_head.kernel_size == (1, 1) and net.segmentation_head.out_channels == 1


def test_every_parameter_gets_a_gradient():
    """Every tensor of encoder, decoder and head gets a non-zero gradient. timm zero-initialises the last BN of each
    residual block (``zero_init_last``), which blocks the gradient of the block's other tensors at initialisation, so
    the BN scales are set to non-zero values first, as after any (pre)training."""
    net = _net().train()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    out = net(torch.randn(2, 3, 64, 64))
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing


def test_frozen_encoder_gets_no_gradient_and_keeps_bn_statistics():
    net = _net(frozen=True).train()
    assert not net.backbone.training
    before = copy.deepcopy(net.backbone.state_dict())
    out = net(torch.randn(2, 3, 64, 64) * 3 + 1)
    out.sum().backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert all(p.grad is not None for p in net.decoder.parameters())
    trainable = {id(p) for p in net.trainable_parameters()}
    assert trainable == {id(p) for n, p in net.named_parameters() if not n.startswith("backbone.")}
    after = net.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched


def test_frozen_flag_from_the_command_line():
    """`--frozen false` reaches the network as the string "false": it must not freeze."""
    assert DeepLabV3Plus(build_backbone("timm/resnet18"), decoder_channels=8, frozen="false").frozen is False
    assert DeepLabV3Plus(build_backbone("timm/resnet18"), decoder_channels=8, frozen="true").frozen is True
    with pytest.raises(ValueError, match="frozen"):
        DeepLabV3Plus(build_backbone("timm/resnet18"), decoder_channels=8, frozen="maybe")


def test_bad_arguments():
    with pytest.raises(ValueError, match="output_stride"):
        DeepLabV3Plus(build_backbone("timm/resnet18"), output_stride=8)
    with pytest.raises(TypeError, match="Backbone"):
        DeepLabV3Plus(torch.nn.Conv2d(3, 3, 1))


@pytest.mark.parametrize("output_stride", [16, 32])
def test_handoff_from_exported_trunk(tmp_path, output_stride):
    """A ResNet trunk exported as encoder.pt loads into the DeepLabV3+ encoder with nothing missing or unused, and
    the encoder then computes the exported trunk's features (eval mode, max relative error <= 1e-5); with output
    stride 16 the deepest map equals the source trunk's with the same dilation (same tensors, dilated stage)."""
    torch.manual_seed(1)
    source = build_backbone("timm/resnet18")
    with torch.no_grad():  # non-trivial BN statistics, so a stats mix-up would show
        for m in source.trunk.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="test", normalization=NORM)

    torch.manual_seed(2)
    backbone = build_backbone("timm/resnet18")  # the bundle's order: load into the trunk, then build the network
    report = load_encoder(backbone, str(path), expected_normalization=NORM)
    net = DeepLabV3Plus(backbone, output_stride=output_stride, decoder_channels=32)
    assert report.ok and report.missing == [] and report.unused == [] and report.mismatched == []
    assert len(report.loaded) == len(source.trunk.state_dict())

    reference = copy.deepcopy(source)
    if output_stride == 16:
        dilate_last_stage(reference.trunk, 2)
    net.eval()
    reference.eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        got, want = net.encoder.feature_maps(x), reference.feature_maps(x)
    assert len(got) == len(want) == 5
    for g, w in zip(got, want):
        assert g.shape == w.shape
        rel = (g - w).abs().max() / w.abs().max().clamp_min(1e-12)
        assert rel <= 1e-5
    if output_stride == 32:  # unchanged trunk: the source's own features
        with torch.no_grad():
            plain = source.eval().feature_maps(x)
        assert all(torch.allclose(g, p, atol=1e-6) for g, p in zip(got, plain))


def test_loading_into_a_dilated_trunk_is_refused(tmp_path):
    """load_encoder's layer check sees the dilated last stage: the bundle loads before building the network."""
    source = build_backbone("timm/resnet18")
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="test", normalization=NORM)
    net = DeepLabV3Plus(build_backbone("timm/resnet18"), output_stride=16, decoder_channels=32)
    with pytest.raises(Exception, match="dilation"):
        load_encoder(net.encoder, str(path))
    net32 = DeepLabV3Plus(build_backbone("timm/resnet18"), output_stride=32, decoder_channels=32)
    assert load_encoder(net32.encoder, str(path)).ok


def test_handoff_refuses_a_different_trunk(tmp_path):
    source = build_backbone("timm/resnet18")
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="test", normalization=NORM)
    net = DeepLabV3Plus(build_backbone("timm/resnet34"), decoder_channels=32)
    with pytest.raises(Exception, match="missing|unused|resnet"):
        load_encoder(net.encoder, str(path))
