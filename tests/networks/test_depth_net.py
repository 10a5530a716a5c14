"""BackboneDepthNet (SSL4GIE's ResNet depth network): the encoder hand-off from an exported trunk, the decoder's
shape and output range, the frozen encoder, and the refusal of trunks whose maps do not double in channels."""

from __future__ import annotations

import pytest
import torch

from monai_ssl_ext.encoders import export_encoder, load_encoder
from monai_ssl_ext.losses import ScaleShiftInvariantLoss
from monai_ssl_ext.networks import BackboneDepthNet, build_backbone

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_handoff_from_an_exported_resnet_trunk(tmp_path):
    """What a ResNet pretraining bundle exports (a resnet18-size stand-in for ResNet-50) loads whole into the depth
    net's encoder, which then computes the exported trunk's features (eval mode, max relative error <= 1e-5)."""
    torch.manual_seed(0)
    source = build_backbone("timm/resnet18")
    with torch.no_grad():  # non-trivial BatchNorm statistics, so running buffers must travel too
        for m in source.trunk.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="barlowtwins", normalization=NORM)
    torch.manual_seed(1)
    net = BackboneDepthNet(build_backbone("timm/resnet18"))
    report = load_encoder(net.encoder, str(path), expected_normalization=NORM)
    assert report.missing == [] and report.unused == [] and report.mismatched == [] and report.loaded
    x = torch.randn(2, 3, 64, 64)
    source.eval()
    net.eval()
    with torch.no_grad():
        ref = source.feature_maps(x)[-4:]
        got = net.features(x)
    for a, b in zip(got, ref):
        assert float((a - b).abs().max() / b.abs().max()) <= 1e-5


def test_output_shape_range_and_training_step():
    torch.manual_seed(0)
    net = BackboneDepthNet(build_backbone("timm/resnet18"))
    x = torch.randn(2, 3, 64, 64)
    y = net(x)
    assert y.shape == (2, 1, 64, 64) and float(y.detach().min()) > 0 and float(y.detach().max()) < 1
    assert [lvl.chan_reduce[0].out_channels for lvl in net.decoder_levels] == [256, 128, 64]  # resnet18 c3, c2, c1
    target = 0.1 + torch.rand(2, 1, 64, 64)
    ScaleShiftInvariantLoss()(y, target).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_resnet50_widths_are_the_sources():
    net = BackboneDepthNet(build_backbone("timm/resnet50"))
    assert [lvl.chan_reduce[0].in_channels for lvl in net.decoder_levels] == [2048, 1024, 512]
    assert net.head_conv1.in_channels == 256 and net.head_conv1.out_channels == 128
    assert net.head_conv2.out_channels == 32
    assert net(torch.randn(1, 3, 224, 224)).shape == (1, 1, 224, 224)


def test_frozen_encoder_gets_no_gradient_and_keeps_its_statistics():
    torch.manual_seed(0)
    net = BackboneDepthNet(build_backbone("timm/resnet18"), frozen=True)
    net.train()
    assert not net.encoder.training
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    out = net(torch.randn(2, 3, 32, 32))
    ScaleShiftInvariantLoss()(out, 0.1 + torch.rand(2, 1, 32, 32)).backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.encoder.state_dict().items())
    trainable = {id(p) for p in net.trainable_parameters()}
    assert trainable and not trainable & {id(p) for p in net.encoder.parameters()}


def test_refuses_a_trunk_whose_maps_do_not_double():
    with pytest.raises(ValueError, match="double"):
        BackboneDepthNet(build_backbone("efficientnet-b0"))


def test_vit_variant_handoff_and_depth_head(tmp_path):
    """The ViT-B variant (train_vit.json: ViTDPT without batch norm + DPTDepthHead), with a tiny timm ViT standing in
    for ViT-B: an exported ViT trunk loads whole into the network's encoder and gives the same token maps; the head
    is the source's (conv 3x3 c -> c/2, x2, conv 3x3 -> 32, ReLU, conv 1x1 -> 1, sigmoid) and the output matches the
    input size in (0, 1)."""
    from monai_ssl_ext.networks import DPTDepthHead, ViTDPT, vit_token_maps

    torch.manual_seed(0)
    source = build_backbone("timm/test_vit")
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="mocov3", normalization=NORM)
    torch.manual_seed(1)
    net = ViTDPT(build_backbone("timm/test_vit"), blocks=(0, 2, 3, 5), reassemble_channels=(8, 16, 24, 32),
                 decoder_channels=16, use_bn=False, head=DPTDepthHead(16))
    report = load_encoder(net.encoder, str(path), expected_normalization=NORM)
    assert report.missing == [] and report.unused == [] and report.mismatched == []
    x = torch.randn(2, 3, 160, 160)
    source.eval()
    net.eval()
    with torch.no_grad():
        for a, b in zip(vit_token_maps(net.encoder, x, (0, 2, 3, 5)), vit_token_maps(source, x, (0, 2, 3, 5))):
            assert float((a - b).abs().max() / b.abs().max()) <= 1e-5
        y = net(x)
    assert y.shape == (2, 1, 160, 160) and 0 < float(y.min()) and float(y.max()) < 1
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.decoder.modules())
    head = DPTDepthHead(256)
    assert [type(m).__name__ for m in head] == ["Conv2d", "Upsample", "Conv2d", "ReLU", "Conv2d", "Sigmoid"]
    assert (head[0].out_channels, head[2].out_channels, head[4].out_channels) == (128, 32, 1)
    assert head(torch.randn(1, 256, 7, 7)).shape == (1, 1, 14, 14)
