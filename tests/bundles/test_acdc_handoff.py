"""BYOL-ACDC → U-Net ACDC hand-off: the exported encoder is the target (EMA) network's, and every
stage of unet_acdc's encoder computes that network's features."""

from __future__ import annotations

import torch
from monai.networks.nets import FlexibleUNet

from monai_ssl_ext.encoders import load_encoder, read_encoder
from monai_ssl_ext.handlers import EncoderExport
from monai_ssl_ext.networks import BYOL, BackboneUNet, build_backbone


class _State:
    epoch, iteration = 3, 30


class _Engine:
    state = _State()


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var") else torch.randn(t.shape, generator=g) * 0.05)


def test_byol_target_encoder_feeds_unet_acdc(tmp_path):
    model = BYOL(build_backbone("timm/resnet50", in_channels=1), projection_dims=[64, 32], prediction_dims=[64, 32])
    _randomise(model.target_backbone.trunk, seed=1)  # target differs from online
    _randomise(model.backbone.trunk, seed=2)
    path = tmp_path / "encoder.pt"
    EncoderExport(model.target_backbone, str(path), method="byol", normalization={"mean": [67.27], "std": [84.66]})(_Engine())
    exported = read_encoder(str(path))["state_dict"]
    target = model.target_backbone.trunk.state_dict()
    assert all(torch.equal(exported[k], target[k]) for k in target)
    assert not torch.equal(exported["conv1.weight"], model.backbone.trunk.state_dict()["conv1.weight"])

    model.eval()
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 80 + 60
    with torch.no_grad():
        ref = model.target_backbone.feature_maps(x)
    # unet_acdc's network (the timm trunk itself) and MONAI's FlexibleUNet (resnet50, key-identical)
    bundle_net = BackboneUNet(build_backbone("timm/resnet50", in_channels=1), out_channels=4)
    flexible = FlexibleUNet(in_channels=1, out_channels=4, backbone="resnet50", pretrained=False)
    for encoder in (bundle_net.backbone, flexible.encoder):
        report = load_encoder(encoder, str(path), convert_channels=True,
                              expected_normalization={"mean": [67.27], "std": [84.66]})
        assert report.missing == [] and report.unused == [] and report.mismatched == [] and report.converted == []
        encoder.eval()
        with torch.no_grad():
            got = encoder.feature_maps(x) if hasattr(encoder, "feature_maps") else encoder(x)
        assert len(ref) == len(got) == 5
        for r, g in zip(ref, got):
            assert r.shape == g.shape
            assert float((g - r).abs().max() / r.abs().max()) <= 1e-5


def test_backbone_unet_equals_flexibleunet_for_monai_trunks():
    """BackboneUNet on MONAI's resnet18 is FlexibleUNet(resnet18): same weights, same output."""
    flexible = FlexibleUNet(1, 4, "resnet18", pretrained=False).eval()
    ours = BackboneUNet(build_backbone("resnet18", in_channels=1), 4).eval()
    state = {("backbone.trunk." + k[len("encoder."):]) if k.startswith("encoder.") else k: v
             for k, v in flexible.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        assert torch.allclose(flexible(x), ours(x), atol=1e-6)
