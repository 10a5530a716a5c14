"""vitautoenc_ct: the reconstruction + contrastive loss, the ViTAutoEnc wrapper, the pretraining views
(in-/out-painting, local shuffle, independent views), the best-by-lowest-L1 checkpoint and the
encoder hand-off to ``UNETR.vit``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.losses import ContrastiveLoss
from monai.networks.nets import UNETR, ViTAutoEnc

import monai_ssl_ext  # noqa: F401  (short _target_ names)
from conftest import ROOT, load_script
from monai_ssl_ext.encoders import export_encoder, load_encoder, pretrained_backbone
from monai_ssl_ext.losses import ReconContrastiveLoss, ReconL1Loss
from monai_ssl_ext.networks import ViTAutoEncoderSSL, build_backbone

BUNDLE = ROOT / "bundles" / "vitautoenc_ct"
ROI = (96, 96, 96)  # the published crop: the view transforms scale their holes to it (at 32^3 an
# out-painting hole of up to 64 voxels can keep the whole crop)
TINY = {"img_size": 32, "patch_size": 16, "hidden_size": 48, "mlp_dim": 96, "num_layers": 12, "num_heads": 4}


def _parser(tmp_path, dataset_dir=None) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "smoke.json")])
    parser["bundle_root"] = str(tmp_path)
    if dataset_dir is not None:
        parser["dataset_dir"] = str(dataset_dir)
    return parser


# ------------------------------------------------------------------------------------------ loss


def _oracle(r1, r2, gt, tau):
    r = F.l1_loss(r1, gt)
    c = ContrastiveLoss(temperature=tau)(r1.flatten(1), r2.flatten(1))
    return r + c * r


@pytest.mark.parametrize("batch", [1, 3])
def test_loss_matches_monai_contrastive_oracle(batch):
    g = torch.Generator().manual_seed(batch)
    shape = (batch, 1, 6, 5, 4)
    gt = torch.rand(shape, generator=g, dtype=torch.float64)
    a = torch.rand(shape, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.rand(shape, generator=g, dtype=torch.float64).requires_grad_()
    loss = ReconContrastiveLoss(temperature=0.05)
    assert loss.contrastive.temperature == 0.05 and ReconContrastiveLoss().contrastive.temperature == 0.05
    ours = loss(a, b, gt)
    ga, gb = torch.autograd.grad(ours, (a, b))
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ref = _oracle(a2, b2, gt, 0.05)
    ra, rb = torch.autograd.grad(ref, (a2, b2))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-9)  # MONAI builds its masks in float32
    torch.testing.assert_close(ga, ra, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(gb, rb, rtol=1e-5, atol=1e-9)
    # the validation loss is the L1 term alone
    torch.testing.assert_close(ReconL1Loss()(a, b, gt), F.l1_loss(a, gt))


def test_loss_finite_at_readme_temperature():
    """τ = 0.005 (the README value) overflows MONAI's exp(s/τ) in float32; ours stays finite."""
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(4, 1, 8, 8, 8, generator=g)
    a = torch.rand(4, 1, 8, 8, 8, generator=g).requires_grad_()
    b = (a.detach() + 0.01 * torch.randn(4, 1, 8, 8, 8, generator=g)).requires_grad_()
    value = ReconContrastiveLoss(temperature=0.005)(a, b, gt)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    assert not torch.isfinite(ContrastiveLoss(temperature=0.005)(a.detach().flatten(1), b.detach().flatten(1)))
    with pytest.raises(ValueError, match="same shape"):
        ReconContrastiveLoss()(a, b[:2], gt)


# -------------------------------------------------------------------------------------- network


@pytest.mark.parametrize("dims,img,patch", [(3, 32, 16), (2, 16, 4), (3, 18, 9)])
def test_wrapper_reproduces_vitautoenc(dims, img, patch):
    torch.manual_seed(0)
    size = {"hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 4}
    ref = ViTAutoEnc(in_channels=1, img_size=img, patch_size=patch, spatial_dims=dims, proj_type="conv", **size).eval()
    backbone = build_backbone("vit", spatial_dims=dims, in_channels=1, img_size=img, patch_size=patch, **size)
    net = ViTAutoEncoderSSL(backbone).eval()
    src = ref.state_dict()
    mapped = {(k if k.startswith("conv3d_transpose") else f"backbone.trunk.{k}"): v for k, v in src.items()}
    assert set(mapped) == set(net.state_dict())
    net.load_state_dict(mapped, strict=True)
    x = torch.rand(2, 1, *([img] * dims))
    with torch.no_grad():
        expected = ref(x)[0]
        got = net.reconstruct(x)
        r1, r2, gt = net(x, x.flip(0), x)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r1, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r2, expected.flip(0), rtol=1e-5, atol=1e-6)
    assert gt is x


def test_wrapper_rejects_bad_inputs():
    with pytest.raises(ValueError, match="square"):
        ViTAutoEncoderSSL(build_backbone("vit", spatial_dims=3, in_channels=1, img_size=16, patch_size=8,
                                         hidden_size=24, mlp_dim=48, num_layers=1, num_heads=2))
    with pytest.raises(TypeError, match="vit"):
        ViTAutoEncoderSSL(build_backbone("resnet10", spatial_dims=3, in_channels=1))


# ----------------------------------------------------------------------------------- transforms


def _view_parts(tmp_path):
    parser = _parser(tmp_path)
    onehot = parser.get_parsed_content("view_transform#transforms#0#transforms")
    shuffle = parser.get_parsed_content("view_transform#transforms#1")
    return onehot[0], onehot[1], shuffle


def _hole_mask(shape, coords):
    mask = np.zeros(shape, dtype=bool)
    for h in coords:
        mask[h] = True
    return mask


def test_inpainting_changes_only_the_holes(tmp_path):
    inpaint, _, _ = _view_parts(tmp_path)
    assert inpaint.dropout_holes and inpaint.fill_value is None
    for seed in range(3):
        inpaint.set_random_state(seed)
        x = torch.rand(1, *ROI, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1
        y = inpaint(x.clone()).numpy()
        mask = _hole_mask(x.shape, inpaint.hole_coords)
        assert 0 < mask.sum() < mask.size
        xn = x.numpy()
        np.testing.assert_array_equal(y[~mask], xn[~mask])
        # the fill (fill_value None) is uniform noise in the image's [min, max]
        assert (y[mask] != xn[mask]).mean() > 0.99
        assert y[mask].min() >= xn.min() - 1e-6 and y[mask].max() <= xn.max() + 1e-6


def test_outpainting_keeps_only_the_holes(tmp_path):
    _, outpaint, _ = _view_parts(tmp_path)
    assert not outpaint.dropout_holes
    for seed in range(3):
        outpaint.set_random_state(seed)
        x = torch.rand(1, *ROI, generator=torch.Generator().manual_seed(10 + seed)) * 0.8 + 0.1
        y = outpaint(x.clone()).numpy()
        mask = _hole_mask(x.shape, outpaint.hole_coords)
        assert 0 < mask.sum()
        xn = x.numpy()
        np.testing.assert_array_equal(y[mask], xn[mask])
        if (~mask).any():
            assert (y[~mask] != xn[~mask]).mean() > 0.99
            assert y[~mask].min() >= xn.min() - 1e-6 and y[~mask].max() <= xn.max() + 1e-6


def test_shuffle_permutes_within_patches(tmp_path):
    _, _, shuffle = _view_parts(tmp_path)
    assert shuffle.prob == 0.8 and shuffle.holes == 10
    shuffle.prob = 1.0
    checked = 0
    for seed in range(4):
        shuffle.set_random_state(seed)
        x = torch.arange(32**3, dtype=torch.float32).reshape(1, 32, 32, 32)  # all values distinct
        y = shuffle(x.clone()).numpy()
        xn = x.numpy()
        mask = _hole_mask(x.shape, shuffle.hole_coords)
        np.testing.assert_array_equal(y[~mask], xn[~mask])
        np.testing.assert_array_equal(np.sort(y.ravel()), np.sort(xn.ravel()))  # multiset preserved overall
        assert (y[mask] != xn[mask]).mean() > 0.5
        for i, h in enumerate(shuffle.hole_coords):  # every patch that overlaps no other keeps its values
            others = _hole_mask(x.shape, [c for j, c in enumerate(shuffle.hole_coords) if j != i])
            if not others[h].any():
                np.testing.assert_array_equal(np.sort(y[h].ravel()), np.sort(xn[h].ravel()))
                checked += 1
    assert checked > 0


def test_views_independent_and_gt_is_the_crop(tmp_path):
    parser = _parser(tmp_path)
    multiview = parser.get_parsed_content("preprocessing").transforms[-2]
    assert type(multiview).__name__ == "MultiViewd" and multiview.original_key == "gt_image"
    assert parser.get_parsed_content("roi_size") != list(ROI)  # smoke settings; the published roi is checked below
    assert json.loads((BUNDLE / "configs" / "train.json").read_text())["roi_size"] == list(ROI)
    crop = torch.rand(1, *ROI, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        out = multiview({"image": crop})
        torch.testing.assert_close(out["gt_image"], crop, rtol=0, atol=0)
        a, b = out["image"], out["image_2"]
        assert not torch.equal(a, crop) and not torch.equal(b, crop) and not torch.equal(a, b)
    torch.testing.assert_close(out["gt_image"], crop, rtol=0, atol=0)


def test_pipeline_on_demo_volumes(tmp_path):
    data = tmp_path / "tcia"
    info = load_script("make_demo_data").tcia(out_dir=str(data))
    split = json.loads((data / "dataset_split.json").read_text())
    assert set(split) == {"training", "validation"} and info["training"] == len(split["training"])
    assert split["training"][0] == {"image": "data/volume-covid19-A-0001.nii.gz"}
    parser = _parser(tmp_path, data)
    ds = parser.get_parsed_content("train#dataset")
    samples = ds[0]
    assert isinstance(samples, list) and len(samples) == parser.get_parsed_content("num_samples")
    for s in samples:
        assert set(s) == {"image", "image_2", "gt_image"}
        for k in s:
            assert tuple(s[k].shape) == (1, 32, 32, 32)
        gt = s["gt_image"]
        assert 0 <= float(gt.min()) and float(gt.max()) <= 1 and float(gt.std()) > 0.05  # windowed CT, not empty
        assert not torch.equal(s["image"], s["image_2"])
        assert not torch.equal(s["image"], gt) and not torch.equal(s["image_2"], gt)


# ----------------------------------------------------------------------------------- checkpoint


def test_best_checkpoint_keeps_lowest_val_l1(tmp_path):
    """MONAI's CheckpointSaver keeps the highest score unless key_metric_negative_sign; the source
    never updated its best loss. Feed 3 validation rounds and check the file holds the lowest."""
    from ignite.engine import Engine, Events

    parser = _parser(tmp_path)
    saver = [h for h in parser.get_parsed_content("validate#handlers") if type(h).__name__ == "CheckpointSaver"][0]
    network = parser.get_parsed_content("network")
    values = [0.5, 0.2, 0.4, 0.3]
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _validated(e):
        with torch.no_grad():
            for p in network.parameters():
                p.fill_(float(e.state.epoch))
        e.state.metrics = {"val_l1": values[e.state.epoch - 1]}
        e.state.key_metric_name = "val_l1"

    saver.attach(engine)
    engine.run([0], max_epochs=len(values))
    state = torch.load(tmp_path / "runs" / "vitautoenc_ct" / "models" / "model_best_val_l1.pt", weights_only=True)
    marker = next(iter(state.values())).flatten()[0].item()
    assert marker == 1 + int(np.argmin(values))


# ------------------------------------------------------------------------------------- hand-off


def test_encoder_export_loads_into_unetr_vit(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone("vit", spatial_dims=3, in_channels=1, proj_type="conv", **TINY)
    net = ViTAutoEncoderSSL(backbone)
    with torch.no_grad():  # move away from the init so that a silent non-load would show
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "encoder.pt"
    norm = {"a_min": -57, "a_max": 164, "b_min": 0.0, "b_max": 1.0, "clip": True}
    export_encoder(backbone, str(path), method="vitautoenc", intensity_window=norm)
    payload = torch.load(path, weights_only=True)
    assert payload["arch"] == "vit" and payload["intensity_window"] == norm and payload["normalization"] == {}
    assert not any(k.startswith("conv3d_transpose") for k in payload["state_dict"])

    unetr = UNETR(in_channels=1, out_channels=14, img_size=32, feature_size=16, hidden_size=48, mlp_dim=96,
                  num_heads=4, proj_type="conv", norm_name="instance", res_block=True, dropout_rate=0.0)
    report = load_encoder(unetr.vit, str(path), expected_intensity_window=norm)
    assert report.missing == [] and report.unused == [] and report.mismatched == []
    assert "intensity_window_warning" not in report.header
    x = torch.rand(2, 1, 32, 32, 32)
    backbone.eval(), unetr.eval()
    with torch.no_grad():
        tok_ref, hid_ref = backbone.trunk(x)
        tok, hid = unetr.vit(x)
    assert len(hid) == len(hid_ref) == 12
    for a, b in zip([tok, *hid], [tok_ref, *hid_ref]):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-5

    rebuilt = pretrained_backbone(None, weights=str(path), spatial_dims=3, in_channels=1)  # arch_params from the header
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.trunk.eval()(x)[0], tok_ref, rtol=1e-5, atol=1e-6)


def test_every_trainable_parameter_gets_a_gradient():
    """DistributedDataParallel (multi_gpu_train.json) fails on trainable parameters without gradients;
    MONAI's unused ``norm_cross_attn`` LayerNorms are frozen by the wrapper."""
    backbone = build_backbone("vit", spatial_dims=3, in_channels=1, proj_type="conv", **TINY)
    net = ViTAutoEncoderSSL(backbone)
    x = torch.rand(2, 1, 32, 32, 32)
    ReconContrastiveLoss()(*net(x, x.flip(0), x)).backward()
    assert [k for k, p in net.named_parameters() if p.requires_grad and p.grad is None] == []
    frozen = [k for k, p in net.named_parameters() if not p.requires_grad]
    assert frozen and all("norm_cross_attn" in k for k in frozen)


def test_init_weights_start_from_an_encoder(tmp_path):
    """``init_weights`` (weight spec) builds the ViT from the file's header and loads it strictly."""
    import json as _json

    from monai.bundle import ConfigParser

    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks import build_backbone

    cfg = Path(__file__).resolve().parents[2] / "bundles" / "vitautoenc_ct" / "configs"
    smoke = _json.loads((cfg / "smoke.json").read_text())
    source = build_backbone("vit", spatial_dims=3, in_channels=1, img_size=smoke["roi_size"], patch_size=16,
                            hidden_size=smoke["hidden_size"], mlp_dim=smoke["mlp_dim"], num_layers=12,
                            num_heads=smoke["num_heads"], proj_type="conv")
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="vitautoenc")
    parser = ConfigParser()
    parser.read_config([str(cfg / "train.json"), str(cfg / "smoke.json")])
    parser["init_weights"] = str(path)
    parser["bundle_root"] = str(tmp_path)
    net = parser.get_parsed_content("network_def")
    assert net.backbone.load_report.ok
    for k, v in source.trunk.state_dict().items():
        assert torch.equal(net.backbone.trunk.state_dict()[k], v), k
