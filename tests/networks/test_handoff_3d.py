"""The 3D hand-off: a trunk pretrained on volumes by an SSL wrapper (SimCLR, BYOL, MoCo v3,
Barlow Twins; MONAI 3D ResNet or 3D ViT) is exported as ``encoder.pt`` and loaded with
``load_encoder`` into 3D finetuning trunks — the encoder of MONAI's 3D ``FlexibleUNet``, the
encoder of the package's 3D U-Net (``BackboneUNet``) and ``UNETR(...).vit`` — with zero missing and
zero unused tensors and the same features in eval mode (max relative error <= 1e-5 on every
stage / hidden state). One case exports from a real 3D pretraining run of a bundle
(``simclr_cholec`` with ``train_3d.json``, on the demo CT volumes)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNETR, FlexibleUNet

from monai_ssl_ext.encoders import export_encoder, load_encoder, read_encoder
from monai_ssl_ext.losses import BYOLLoss, NTXentLoss
from monai_ssl_ext.networks import BYOL, BackboneUNet, SimCLR, build_backbone
from monai_ssl_ext.transforms import AsymmetricVolumeAugment, VolumeViewAugment

ROOT = Path(__file__).resolve().parents[2]
NORM = {"mean": [0.5], "std": [0.5]}
ROI = (32, 32, 32)
VIT = dict(img_size=list(ROI), patch_size=16, hidden_size=48, mlp_dim=96, num_layers=12, num_heads=4, proj_type="conv")


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _views(augment, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of 3D views of random volumes (different sizes, one channel)."""
    first, second = (augment[0], augment[1]) if isinstance(augment, AsymmetricVolumeAugment) else (augment, augment)
    vols = [torch.rand(1, 40 + 3 * i, 36, 30 + 2 * i) for i in range(batch)]
    return torch.stack([first(v) for v in vols]), torch.stack([second(v) for v in vols])


def _pretrain(model: torch.nn.Module, loss_fn, params, augment, steps: int = 2) -> list[float]:
    """A few optimizer steps of the wrapper on 3D views (BN statistics and weights move away from
    their initial values)."""
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    model.train()
    losses = []
    for _ in range(steps):
        out = model(*_views(augment))
        loss = loss_fn(*out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _check_resnet_handoff(source, path: str, arch: str) -> None:
    """``path`` loads whole into the 3D FlexibleUNet encoder and into the 3D BackboneUNet's encoder,
    and both compute the exported trunk's features at every stage."""
    header = read_encoder(path)
    assert header["spatial_dims"] == 3 and header["in_channels"] == 1 and header["arch"] == arch
    flex = FlexibleUNet(in_channels=1, out_channels=2, backbone=arch, spatial_dims=3, pretrained=False)
    unet = BackboneUNet(build_backbone(arch, spatial_dims=3, in_channels=1), out_channels=2, probe_size=32)
    x = torch.randn(2, 1, *ROI, generator=torch.Generator().manual_seed(3))
    source.eval()
    with torch.no_grad():
        ref = source.feature_maps(x)
    for name, target, features in (
        ("FlexibleUNet.encoder", flex.encoder, lambda: flex.encoder(x)),
        ("BackboneUNet.encoder", unet.encoder, lambda: unet.encoder.feature_maps(x)),
    ):
        report = load_encoder(target, path, expected_normalization=NORM)
        assert report.ok and report.missing == [] and report.unused == [] and report.mismatched == [], (name, report)
        assert len(report.loaded) == len(header["state_dict"])
        target.eval()
        with torch.no_grad():
            got = features()
        assert len(got) == len(ref) == 5, name
        for r, g in zip(ref, got):
            assert r.shape == g.shape and _rel_err(g, r) <= 1e-5, (name, r.shape, _rel_err(g, r))
    flex.eval(), unet.eval()
    with torch.no_grad():
        assert flex(x).shape == unet(x).shape == (2, 2, *ROI)


def _check_vit_handoff(source, path: str, qkv_bias: bool = False) -> None:
    """``path`` loads whole into ``UNETR(...).vit`` (3D) and gives the same tokens and hidden states."""
    header = read_encoder(path)
    assert header["arch"] == "vit" and header["spatial_dims"] == 3
    net = UNETR(in_channels=1, out_channels=2, img_size=ROI, feature_size=8, hidden_size=VIT["hidden_size"],
                mlp_dim=VIT["mlp_dim"], num_heads=VIT["num_heads"], proj_type="conv", spatial_dims=3, qkv_bias=qkv_bias)
    report = load_encoder(net.vit, path, target_arch_params={"img_size": list(ROI)})
    assert report.ok and report.missing == [] and report.unused == [] and report.mismatched == [], report
    source.eval(), net.eval()
    x = torch.randn(2, 1, *ROI, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref, got = source.trunk(x), net.vit(x)
    assert _rel_err(got[0], ref[0]) <= 1e-5
    assert len(got[1]) == len(ref[1]) == VIT["num_layers"]
    for r, g in zip(ref[1], got[1]):
        assert _rel_err(g, r) <= 1e-5


def test_simclr_3d_resnet_handoff(tmp_path):
    torch.manual_seed(0)
    model = SimCLR(build_backbone("resnet10", spatial_dims=3, in_channels=1), projection_dims=[32, 16])
    before = {k: v.clone() for k, v in model.backbone.trunk.state_dict().items()}
    losses = _pretrain(model, NTXentLoss(temperature=0.1), model.parameters(), VolumeViewAugment(ROI, normalization=NORM))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(before[k], v) for k, v in model.backbone.trunk.state_dict().items())
    path = str(tmp_path / "encoder.pt")
    export_encoder(model.backbone, path, method="simclr", normalization=NORM)
    _check_resnet_handoff(model.backbone, path, "resnet10")


def test_byol_3d_target_handoff(tmp_path):
    """BYOL hands off its target (EMA) trunk: that one, not the online trunk, is what loads."""
    torch.manual_seed(1)
    model = BYOL(build_backbone("resnet10", spatial_dims=3, in_channels=1), projection_dims=[32, 16], prediction_dims=[32, 16])
    _pretrain(model, BYOLLoss(), model.online_parameters(), AsymmetricVolumeAugment(ROI, normalization=NORM))
    with torch.no_grad():
        model.pair.target.backbone.trunk.conv1.weight.mul_(0.5)  # as an EMA would: target != online
    target = model.exported_backbone("target")
    path = str(tmp_path / "encoder.pt")
    export_encoder(target, path, method="byol", normalization=NORM)
    _check_resnet_handoff(target, path, "resnet10")
    saved = read_encoder(path)["state_dict"]["conv1.weight"]
    assert torch.equal(saved, target.trunk.conv1.weight) and not torch.equal(saved, model.backbone.trunk.conv1.weight)


def test_barlow_twins_3d_resnet_handoff(tmp_path):
    from monai_ssl_ext.losses import BarlowTwinsCrossCorrelationLoss
    from monai_ssl_ext.networks import BarlowTwins

    torch.manual_seed(2)
    model = BarlowTwins(build_backbone("resnet10", spatial_dims=3, in_channels=1), projection_dims=[32, 32])
    assert model.zeroed_blocks > 0  # MONAI's 3D residual blocks start as the identity too
    _pretrain(model, BarlowTwinsCrossCorrelationLoss(), model.parameters(), AsymmetricVolumeAugment(ROI, normalization=NORM))
    path = str(tmp_path / "encoder.pt")
    export_encoder(model.backbone, path, method="barlow_twins", normalization=NORM)
    _check_resnet_handoff(model.backbone, path, "resnet10")


def test_mocov3_3d_vit_handoff_into_unetr(tmp_path):
    """MoCo v3 with a 3D ViT (sin-cos position embedding over the 3D patch grid, frozen patch
    embedding) hands its base trunk to UNETR."""
    from monai_ssl_ext.losses import MoCoV3Loss
    from monai_ssl_ext.networks import MoCoV3

    torch.manual_seed(3)
    backbone = build_backbone("vit", spatial_dims=3, in_channels=1, **VIT)
    model = MoCoV3(backbone, projection_dims=[32, 16], prediction_dims=[32, 16], projector_layers=3,
                   predictor_last_batch_norm=True, stop_grad_patch_embed=True, vit_init=True)
    views = AsymmetricVolumeAugment(ROI, normalization=NORM)
    losses = _pretrain(model, MoCoV3Loss(temperature=0.2), model.online_parameters(), views)
    assert all(torch.isfinite(torch.tensor(losses)))
    path = str(tmp_path / "encoder.pt")
    export_encoder(model.exported_backbone(), path, method="mocov3", normalization=NORM)
    _check_vit_handoff(model.backbone, path)


def test_mae_3d_vit_handoff_into_unetr(tmp_path):
    """MAE in 3D as mae_hyperkvasir's train_3d.json builds it (fixed sin-cos position table, qkv bias,
    no class token, MONAI's LayerNorm eps) hands its encoder to ``UNETR(qkv_bias=True).vit``."""
    from monai_ssl_ext.losses import MAELoss
    from monai_ssl_ext.networks import MAE

    torch.manual_seed(4)
    backbone = build_backbone("vit", spatial_dims=3, in_channels=1, **VIT, qkv_bias=True, pos_embed_type="sincos",
                              cls_token=False, layer_norm_eps=1e-5)
    model = MAE(backbone, decoder_hidden_size=48, decoder_num_layers=1, decoder_num_heads=4, mask_ratio=0.75)
    view = VolumeViewAugment(ROI, scale=(0.2, 1.0), jitter_prob=0.0, normalization=NORM)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        x = torch.stack([view(torch.rand(1, 40, 36, 34)) for _ in range(2)])
        loss = MAELoss(norm_pix_loss=True)(*model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = str(tmp_path / "encoder.pt")
    export_encoder(model.backbone, path, method="mae", normalization=NORM)
    _check_vit_handoff(model.backbone, path, qkv_bias=True)


def test_encoder_of_a_3d_bundle_run_loads_into_flexibleunet(demo_data, tmp_path):
    """simclr_cholec's train_3d.json (smoke settings: 3D resnet10 on the demo CT volumes) exports
    the trunk it trained; the file fills the 3D FlexibleUNet encoder, which computes the trained
    trunk's features."""
    sys.path.insert(0, str(ROOT / "tests"))
    from monai_ssl_ext.workflow import run_bundle, smoke_settings

    bundle = ROOT / "bundles" / "simclr_cholec"
    configs = ["train.json", "train_3d.json"]
    data = demo_data(smoke_settings(bundle, configs)["demo_data"])
    res = run_bundle(bundle, configs, {"bundle_root": str(tmp_path), "dataset_dir": data}, smoke=True)
    assert res.losses and all(torch.isfinite(torch.tensor(res.losses)))
    trained = res.parser.get_parsed_content("network_def").backbone
    arch = res.parser.get_parsed_content("backbone")
    assert trained.spatial_dims == 3 and trained.trunk.conv1.weight.dim() == 5
    _check_resnet_handoff(trained.cpu(), str(Path(res.output_dir) / "models" / "encoder.pt"), arch)
