"""unet_mmwhs: a format-2 encoder file's slice encoder (a test export, and a joint_ssl_3d run's) loads whole
into the bundle's U-Net (3 channels, or 1 with the RGB filters summed) and computes the pretrained features; the
recipe's metrics count false positives and group slices into volumes by name; volume inference sees what training
saw."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.exceptions import NotComputableError
from monai.data import MetaTensor

from conftest import ROOT, read_bundle_config
from monai_ssl_ext.encoders import EncoderLoadError, export_encoders
from monai_ssl_ext.mmwhs import SliceScore, VolumeScore, slice_volume_output
from monai_ssl_ext.networks import build_backbone
from monai_ssl_ext.workflow import run_bundle

BUNDLE = ROOT / "bundles" / "unet_mmwhs"
GREY = {"mean": [0.449], "std": [0.226]}


def test_slice_encoder_of_a_format2_file_loads_whole_and_reproduces_features(tmp_path):
    torch.manual_seed(0)
    slice_encoder = build_backbone("timm/resnet50", spatial_dims=2, in_channels=3)
    other = build_backbone("timm/resnet18", spatial_dims=2, in_channels=3)
    for m in slice_encoder.modules():  # non-trivial BN statistics, so eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = str(tmp_path / "encoder.pt")
    rgb_norm = {"mean": GREY["mean"] * 3, "std": GREY["std"] * 3}  # grey slices replicated to RGB
    export_encoders({"slice_encoder": slice_encoder, "slice_transformer": other}, path, "joint_ssl", rgb_norm)

    # the source's 1-channel net (RGB filters summed), with channel-equal statistics: exact
    overrides = {"pretrained_encoder": path, "backbone": "timm/resnet50", "normalization": GREY, "in_channels": 1}
    with pytest.raises(RuntimeError) as e:  # two trunks: the name is needed (MONAI wraps the loader's error)
        read_bundle_config(BUNDLE / "configs", ["train.json"], overrides).get_parsed_content("encoder_report")
    assert isinstance(e.value.__cause__, EncoderLoadError) and "slice_encoder" in str(e.value.__cause__)
    parser = read_bundle_config(BUNDLE / "configs", ["train.json"], {**overrides, "pretrained_trunk": "slice_encoder"})
    report = parser.get_parsed_content("encoder_report")
    net = parser.get_parsed_content("network_def")
    assert report.missing == [] and report.unused == [] and report.mismatched == []
    assert len(report.loaded) == len(slice_encoder.trunk.state_dict())
    assert len(report.converted) == 1 and "3→1" in report.converted[0]
    assert net.backbone.in_channels == 1

    grey = torch.rand(2, 1, 64, 64)  # a prepared slice / 255
    x1 = (grey - GREY["mean"][0]) / GREY["std"][0]
    x3 = (grey.repeat(1, 3, 1, 1) - torch.tensor(rgb_norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        rgb_norm["std"]).view(1, 3, 1, 1)
    slice_encoder.eval(), net.eval()
    with torch.no_grad():
        ref_maps = slice_encoder.feature_maps(x3)
        got_maps = net.backbone.feature_maps(x1)
        assert torch.allclose(net.backbone(x1), slice_encoder(x3), atol=1e-5, rtol=0)
    for r, g in zip(ref_maps, got_maps, strict=True):
        assert torch.allclose(g, r, atol=1e-5, rtol=0)
    # in_channels 3: the grey slice replicated and normalised per channel exactly as in pretraining, no conversion
    parser3 = read_bundle_config(BUNDLE / "configs", ["train.json"], {
        **overrides, "pretrained_trunk": "slice_encoder", "in_channels": 3, "normalization": rgb_norm})
    report3, net3 = parser3.get_parsed_content("encoder_report"), parser3.get_parsed_content("network_def").eval()
    assert report3.converted == [] and report3.missing == [] and report3.unused == []
    to_input = parser3.get_parsed_content("grey_to_channels"), parser3.get_parsed_content("normalize")
    x = grey[0]
    for t in to_input:
        x = t({"image": x})["image"]
    assert x.shape == (3, 64, 64) and torch.allclose(torch.as_tensor(x), x3[0], atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(net3.backbone(torch.as_tensor(x)[None]), slice_encoder(x3[:1]), atol=1e-5, rtol=0)
    with torch.no_grad():  # and it is not the random trunk
        fresh = read_bundle_config(BUNDLE / "configs", ["train.json"], {"backbone": "timm/resnet50", "in_channels": 1})
        random_trunk = fresh.get_parsed_content("network_def").eval().backbone
        assert not torch.allclose(random_trunk(x1), slice_encoder(x3), atol=1e-3)


def _onehot(label: np.ndarray, n: int = 8) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(label).long(), n).permute(2, 0, 1).float()


def _item(pred: np.ndarray, label: np.ndarray, name: str) -> dict:
    label_t = MetaTensor(_onehot(label), meta={"filename_or_obj": f"/d/ct/labels/{name}"})
    return {"pred": _onehot(pred), "label": label_t}


def _score(metric, items) -> float:
    metric.reset()
    metric.update(slice_volume_output(items))
    return metric.compute()


def test_false_positive_lowers_the_scores_and_absent_slices_do_not_count():
    la = np.zeros((4, 4), int)
    la[:2, :2] = 2  # 4 LA pixels
    half = np.zeros((4, 4), int)
    half[:2, :1] = 2  # 2 of them predicted
    empty = np.zeros((4, 4), int)
    fp = empty.copy()
    fp[3, 3] = 2  # one LA pixel predicted where there is none
    items = [_item(half, la, "v1_frame_0.png"), _item(empty, empty, "v1_frame_1.png")]
    dice, iou = SliceScore("dice"), SliceScore("iou")
    # slice 0: TP 2, FN 2 -> Dice 4/6, IoU 2/4; slice 1: LA absent from both -> not a perfect 1, left out
    assert _score(dice, items) == pytest.approx(4 / 6)
    assert _score(iou, items) == pytest.approx(0.5)
    with_fp = [items[0], _item(fp, empty, "v1_frame_1.png")]
    assert _score(dice, with_fp) == pytest.approx((4 / 6 + 0) / 2)  # the false positive scores 0
    assert _score(iou, with_fp) == pytest.approx(0.25)
    vol = VolumeScore("iou")
    assert _score(vol, items) == pytest.approx(2 / 4)
    assert _score(vol, with_fp) == pytest.approx(2 / 5)  # pooled: TP 2, FN 2, FP 1
    with pytest.raises(NotComputableError):  # a class absent everywhere has no score (not 1)
        _score(SliceScore("dice"), [_item(empty, empty, "v1_frame_0.png")])
    mean_dice = SliceScore("dice", class_index=None)  # foreground mean: only classes present count
    assert _score(mean_dice, items) == pytest.approx(4 / 6)


def test_volume_iou_groups_slices_by_volume_name():
    a = np.zeros((4, 4), int)
    a[:2, :] = 2  # 8 LA pixels
    b = np.zeros((4, 4), int)
    b[:1, :] = 2  # 4 LA pixels
    empty = np.zeros((4, 4), int)
    items = [
        _item(a, a, "ct_train_1002_frame_0.png"),      # v1: TP 8
        _item(empty, b, "ct_train_1002_frame_1.png"),  # v1: FN 4
        _item(b, b, "ct_train_1010_frame_0.png"),      # v2: TP 4
        _item(a, b, "ct_train_1010_frame_10.png"),     # v2: TP 4, FP 4
    ]
    preds, labels, volumes = slice_volume_output(items)
    assert volumes == ["ct_train_1002", "ct_train_1002", "ct_train_1010", "ct_train_1010"]
    vol = VolumeScore("iou")
    v1, v2 = 8 / 12, 8 / 12
    assert _score(vol, items) == pytest.approx((v1 + v2) / 2)
    v2 = 8 / (8 + 4)
    assert vol.per_volume["ct_train_1010"][2].item() == pytest.approx(v2)
    # the same slices all named as one volume pool everything: TP 16, FN 4, FP 4
    one = [_item(*(np.argmax(x["pred"].numpy(), 0), np.argmax(x["label"].numpy(), 0)), f"v_frame_{i}.png")
           for i, x in enumerate(items)]
    assert _score(VolumeScore("iou"), one) == pytest.approx(16 / 24)
    # per slice: 1, 0, 1, 0.5 -> the slice mean differs from the volume score
    assert _score(SliceScore("iou"), items) == pytest.approx(2.5 / 4)


def test_volume_inference_matches_the_slice_pipeline(demo_data, tmp_path):
    """inference.json (raw NIfTI, MMWHSIntensityd, 3D resize, slice inferer, inverted) against the
    training path (prepared PNG slices, 2D resize), slice by slice, with the same weights."""
    from monai.transforms import Resize

    from monai_ssl_ext.transforms import LoadPictured

    data = demo_data("mmwhs")
    overrides = {"bundle_root": str(tmp_path), "dataset_dir": data}
    trained = run_bundle(BUNDLE, ["train.json"], overrides, smoke=True)
    res = run_bundle(BUNDLE, ["train.json", "inference.json"], overrides, smoke=True)
    parser = res["parser"]
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(Path(trained["output_dir"]) / "models" / "model.pt", weights_only=True))
    size = parser.get_parsed_content("image_size")
    to_input = [parser.get_parsed_content("grey_to_channels"), parser.get_parsed_content("normalize")]
    (item,) = parser.get_parsed_content("inference_datalist")
    src = nib.load(item["image"])
    out = nib.load(Path(res["output_dir"]) / "predictions" / "ct_train_1002_image_seg.nii.gz")
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)
    pred = np.asarray(out.dataobj)
    load, agree = LoadPictured("image"), []
    for d in range(src.shape[2]):
        png = Path(data) / "ct" / "images" / f"ct_train_1002_frame_{d}.png"
        img = load({"image": str(png)})["image"].as_tensor().float() / 255.0
        x = Resize([size, size], mode="nearest")(img)
        for t in to_input:  # the training path's grey -> channels and normalisation
            x = t({"image": x})["image"]
        with torch.no_grad():
            small = net(torch.as_tensor(x)[None]).argmax(1).float()
        expected = Resize(src.shape[:2], mode="nearest")(small).numpy()[0]
        agree.append((pred[..., d] == expected).mean())
    assert np.mean(agree) > 0.99, agree
    assert len(np.unique(pred)) > 1  # not a constant map (which any orientation would reproduce)


def _ddp_items():
    """Six slices of two volumes with varied LA predictions (rank r gets items r, r + 2, r + 4: every
    volume is split over both ranks, and rank 1 has no slice of ``ct_train_1002_frame_0``)."""
    rng = np.random.default_rng(7)
    items = []
    for k in range(6):
        label = (rng.random((6, 6)) < 0.3).astype(int) * 2
        pred = np.where(rng.random((6, 6)) < 0.8, label, 2 - label)
        items.append(_item(pred, label, f"ct_train_{1002 + k % 2}_frame_{k}.png"))
    return items


def _gathered(metric, mine, monkeypatch, others: list | None = None, sent: list | None = None) -> float:
    """``metric`` over ``mine`` as one rank of two: ignite's all_gather returns what this rank sends
    followed by ``others`` (what the other rank sent); ``sent`` records what this rank sends."""
    import ignite.distributed as idist

    def all_gather(payload):
        if sent is not None:
            sent.append(payload)
        return [payload, *(others or [])]

    monkeypatch.setattr(idist, "get_world_size", lambda: 2)
    monkeypatch.setattr(idist, "all_gather", all_gather)
    metric.reset()
    metric.update(slice_volume_output(mine))
    return metric.compute()


def test_scores_gather_over_ranks_like_one_process(monkeypatch):
    """Under DDP each rank sees some slices of a volume (DistributedSampler): the per-volume counts
    and the per-slice scores of both ranks are merged before scoring."""
    items = _ddp_items()
    rank0, rank1 = items[0::2], items[1::2]
    for make in (lambda: VolumeScore("iou"), lambda: SliceScore("dice"), lambda: SliceScore("iou", None)):
        expected = _score(make(), items)
        with monkeypatch.context() as m:
            sent: list = []
            _gathered(make(), rank1, m, sent=sent)  # what rank 1 sends
            got = _gathered(make(), rank0, m, others=sent)
        assert got == pytest.approx(expected)
        assert _score(make(), rank0) != pytest.approx(expected)  # one rank alone scores differently


def test_joint_ssl_3d_slice_encoder_hands_off_to_unet_mmwhs(demo_data, tmp_path):
    """The chain joint_ssl_3d -> unet_mmwhs: the slice encoder its run exports (format 2, beside the slice
    transformer) loads whole into the U-Net encoder, which computes the trained encoder's features (eval mode)."""
    data = demo_data("ssl_slices")
    joint = run_bundle(ROOT / "bundles" / "joint_ssl_3d", ["train.json"],
                       {"bundle_root": str(tmp_path / "joint"), "dataset_dir": data}, smoke=True)
    path = Path(joint["output_dir"]) / "models" / "encoder.pt"
    trained = joint["parser"].get_parsed_content("network_def").backbone.slice_encoder.eval()
    parser = read_bundle_config(BUNDLE / "configs", ["train.json"], {
        "pretrained_encoder": str(path), "pretrained_trunk": "slice_encoder", "backbone": trained.arch})
    report = parser.get_parsed_content("encoder_report")
    assert report.missing == [] and report.unused == [] and report.mismatched == [] and report.converted == []
    net = parser.get_parsed_content("network_def").eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(net.backbone(x), trained(x), atol=1e-5, rtol=0)
        for got, ref in zip(net.backbone.feature_maps(x), trained.feature_maps(x), strict=True):
            assert torch.allclose(got, ref, atol=1e-5, rtol=0)
