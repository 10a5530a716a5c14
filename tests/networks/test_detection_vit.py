"""The ViT-B polyp detector (``ViTDetFasterRCNN``): hand-off of an exported timm ViT trunk (zero missing / unused,
the trunk's own features when the windows cover the grid and the class token is kept), window attention against a
window-by-window computation, and the centre-padding transform's box geometry (both ways)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_ssl_ext.encoders import export_encoder, load_encoder
from monai_ssl_ext.networks import ViTDetFasterRCNN, build_backbone
from monai_ssl_ext.networks.detection import CentrePadTransform, ViTDetBackbone

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _randomise(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_vit_handoff_and_features(tmp_path):
    trunk = build_backbone("timm/test_vit")  # patch 16, 64 wide, 6 blocks, 160 px, class token
    _randomise(trunk.trunk)
    path = str(tmp_path / "encoder.pt")
    export_encoder(trunk, path, method="test", normalization=NORM)

    det = ViTDetFasterRCNN(build_backbone("timm/test_vit"), min_size=64, max_size=64, window_size=2, global_blocks=(1, 3))
    report = load_encoder(det.encoder, path, expected_normalization=NORM)
    assert report.ok and report.missing == [] and report.unused == [] and len(report.loaded) == len(trunk.trunk.state_dict())
    assert not det.encoder.trunk.cls_token.requires_grad  # ViTDet does not use it: no gradient (DDP)

    # with the class token kept and one window covering the 10 x 10 grid, the detector's trunk is the trunk itself
    check = ViTDetBackbone(det.encoder, window_size=16, global_blocks=(), use_prefix_tokens=True).eval()
    trunk.eval()
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        ours, grid = check.tokens(x)
        ref = trunk.trunk.forward_features(x)
    assert grid == (10, 10) and ours.shape == ref.shape
    assert ((ours - ref).abs().max() / ref.abs().max()).item() <= 1e-5
    # the detector's own pyramid: strides 4, 8, 16, 32, 64 of the padded 64 x 64 input
    det.eval()
    with torch.no_grad():
        maps = det.backbone(torch.rand(1, 3, 64, 64))
    assert [tuple(m.shape[-2:]) for m in maps.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert all(m.shape[1] == 256 for m in maps.values())


def test_window_attention_is_attention_within_each_window():
    vit = build_backbone("timm/test_vit")
    _randomise(vit.trunk, 1)
    bb = ViTDetBackbone(vit, window_size=2, global_blocks=()).eval()
    blk = vit.trunk.blocks[0]
    b, gh, gw, c = 2, 4, 6, vit.trunk.embed_dim
    t = torch.randn(b, gh * gw, c)
    with torch.no_grad():
        got = bb._windowed(blk, t, gh, gw, 0)
        h = blk.norm1(t).view(b, gh, gw, c)
        attn = torch.zeros_like(h)
        for i in range(0, gh, 2):
            for j in range(0, gw, 2):  # each 2 x 2 window attends only to itself
                win = h[:, i : i + 2, j : j + 2].reshape(b, 4, c)
                attn[:, i : i + 2, j : j + 2] = blk.attn(win).reshape(b, 2, 2, c)
        expected = t + attn.reshape(b, gh * gw, c)
        expected = expected + blk.mlp(blk.norm2(expected))
        glob = blk(t)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, glob, atol=1e-4)  # and that is not global attention


def test_centre_pad_geometry():
    mean, std = NORM["mean"], NORM["std"]
    tf = CentrePadTransform(64, mean, std)
    small = torch.rand(3, 30, 50)
    big = torch.rand(3, 151, 90)  # odd height above 64: pad to 152, halve to 76 x 45, halve again to 38 x 23 (odd: pad)
    boxes = [torch.tensor([[2.0, 3.0, 20.0, 25.0]]), torch.tensor([[10.0, 40.0, 80.0, 150.0]])]
    images, targets = tf([small, big], [{"boxes": b.clone(), "labels": torch.ones(1, dtype=torch.int64)} for b in boxes])
    assert images.tensors.shape == (2, 3, 64, 64) and images.image_sizes == [(64, 64), (64, 64)]
    (s0, l0, t0), (s1, l1, t1) = tf.geometry
    assert (s0, l0, t0) == (1.0, 7, 17)  # (64 - 50) // 2, (64 - 30) // 2
    assert s1 == 0.25 and (l1, t1) == ((64 - 23) // 2, (64 - 38) // 2)
    norm = (small - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(images.tensors[0, :, 17:47, 7:57], norm)
    black = -torch.tensor(mean) / torch.tensor(std)
    torch.testing.assert_close(images.tensors[0, :, 0, 0], black)
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[9.0, 20.0, 27.0, 42.0]]))
    torch.testing.assert_close(targets[1]["boxes"], boxes[1] * 0.25 + torch.tensor([l1, t1, l1, t1]))
    # detections come back in the input image's pixels
    tf.eval()
    preds = [{"boxes": t["boxes"].clone(), "scores": torch.ones(1), "labels": torch.ones(1)} for t in targets]
    back = tf.postprocess(preds, images.image_sizes, [(30, 50), (151, 90)])
    torch.testing.assert_close(back[0]["boxes"], boxes[0])
    torch.testing.assert_close(back[1]["boxes"], boxes[1])


def test_frozen_vit():
    det = ViTDetFasterRCNN(build_backbone("timm/test_vit"), min_size=64, max_size=64, window_size=2, global_blocks=(1,), frozen=True)
    assert not any(p.requires_grad for p in det.encoder.parameters())
    det.train()
    assert not det.encoder.training and det.rpn.training
    with pytest.raises(ValueError, match="global_blocks"):
        ViTDetFasterRCNN("timm/test_vit", global_blocks=(2, 11))
    with pytest.raises(ValueError, match="must be equal"):
        ViTDetFasterRCNN("timm/test_vit", min_size=800, max_size=1333)
    with pytest.raises(ValueError, match="trainable_backbone_layers"):
        ViTDetFasterRCNN("timm/test_vit", trainable_backbone_layers=3)
