"""DPT decoder for ViT trunks (gie_polyp_segmentation train_vit.json; reusable by the depth bundle): shapes,
the source's structure, gradients to every parameter, token extraction, and the hand-off from an exported ViT."""

from __future__ import annotations

import pytest
import torch

from monai_ssl_ext.encoders import export_encoder, load_encoder
from monai_ssl_ext.networks import DPTDecoder, DPTSegmentationHead, ViTDPT, build_backbone, vit_token_maps

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.mark.parametrize("grid", [(14, 14), (10, 12), (7, 9)])
def test_decoder_api_shapes(grid):
    """Four (B, C, gh, gw) maps in, one (B, fusion_channels, 8 gh, 8 gw) map out (112 x 112 for 224 px)."""
    torch.manual_seed(0)
    dec = DPTDecoder(in_channels=48, reassemble_channels=(8, 16, 24, 32), fusion_channels=16).eval()
    maps = [torch.randn(2, 48, *grid) for _ in range(4)]
    with torch.no_grad():
        out = dec(maps)
    assert out.shape == (2, 16, 8 * grid[0], 8 * grid[1]) and dec.out_channels == 16
    head = DPTSegmentationHead(16, 1).eval()
    with torch.no_grad():
        assert head(out).shape == (2, 1, 16 * grid[0], 16 * grid[1])


def test_source_structure():
    """ViT-B defaults: reassemble to 96/192/384/768 by (convT k4 s4, convT k2 s2, identity, conv s2), 3x3 convs
    to 256 without bias, fusion with BN, head conv-BN-ReLU-Dropout(0.1)-conv1x1 and x2 upsampling."""
    dec = DPTDecoder()
    assert [r[0].out_channels for r in dec.reassemble] == [96, 192, 384, 768]
    assert (dec.reassemble[0][1].kernel_size, dec.reassemble[0][1].stride) == ((4, 4), (4, 4))
    assert (dec.reassemble[1][1].kernel_size, dec.reassemble[1][1].stride) == ((2, 2), (2, 2))
    assert len(dec.reassemble[2]) == 1 and dec.reassemble[3][1].stride == (2, 2)
    assert all(p.out_channels == 256 and p.bias is None and p.kernel_size == (3, 3) for p in dec.project)
    assert isinstance(dec.fusion[0].rcu2.bn1, torch.nn.BatchNorm2d)
    assert dec.fusion[3].rcu1 is None  # the source's never-called unit is left out
    head = DPTSegmentationHead()
    assert [type(m).__name__ for m in head] == ["Conv2d", "BatchNorm2d", "ReLU", "Dropout", "Conv2d", "Upsample"]
    assert head[3].p == 0.1 and head[4].out_channels == 1 and head[5].scale_factor == 2
    with torch.no_grad():
        out = dec([torch.randn(1, 768, 14, 14) for _ in range(4)])
    assert out.shape == (1, 256, 112, 112)


def _tiny_timm():
    return build_backbone("timm/test_vit")  # 6 blocks, width 64, patch 16, 160 px


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = ViTDPT(_tiny_timm(), blocks=(0, 2, 3, 5), reassemble_channels=(8, 16, 24, 32), decoder_channels=16).train()
    out = net(torch.randn(2, 3, 160, 160))
    assert out.shape == (2, 1, 160, 160)
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, missing
    # only what no forward uses is excluded: the final norm (block 5 is the last block and is decoded)
    assert net.unused == ["norm.weight", "norm.bias"]
    net2 = ViTDPT(_tiny_timm(), blocks=(0, 1, 2, 3), reassemble_channels=(8, 16, 24, 32), decoder_channels=16)
    assert {n.split(".")[1] for n in net2.unused if n.startswith("blocks.")} == {"4", "5"}


def test_frozen_encoder():
    net = ViTDPT(_tiny_timm(), blocks=(0, 2, 3, 5), reassemble_channels=(8, 16, 24, 32), decoder_channels=16,
                 frozen=True).train()
    assert not net.backbone.training
    net(torch.randn(1, 3, 160, 160)).sum().backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert all(p.grad is not None for p in net.decoder.parameters())


def test_token_maps_are_the_block_outputs():
    """vit_token_maps = the tokens right after the chosen blocks, class token dropped, as a grid (checked against a
    manual pass through the timm blocks)."""
    torch.manual_seed(0)
    bb = _tiny_timm().eval()
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        maps = vit_token_maps(bb, x, (1, 4))
        t = bb.trunk
        h = t.norm_pre(t._pos_embed(t.patch_embed(x)))
        manual = []
        for i, blk in enumerate(t.blocks):
            h = blk(h)
            if i in (1, 4):
                manual.append(h[:, t.num_prefix_tokens:].transpose(1, 2).reshape(1, -1, 10, 10))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(maps, manual))
    with pytest.raises(ValueError, match="blocks"):
        vit_token_maps(bb, x, (2, 5, 8, 11))


def test_monai_vit_trunk():
    bb = build_backbone("vit", img_size=64, patch_size=16, hidden_size=48, mlp_dim=96, num_layers=4, num_heads=4,
                        cls_token=True)
    net = ViTDPT(bb, blocks=(0, 1, 2, 3), reassemble_channels=(8, 16, 24, 32), decoder_channels=16).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 1, 64, 64)
        maps = vit_token_maps(bb, torch.randn(1, 3, 64, 64), (0, 3))
    assert [m.shape for m in maps] == [(1, 48, 4, 4)] * 2


def test_handoff_from_exported_vit(tmp_path):
    """A ViT exported as encoder.pt loads into ViTDPT's encoder with nothing missing or unused, and the encoder then
    reproduces the exported trunk's token maps (eval mode, max relative error <= 1e-5)."""
    torch.manual_seed(1)
    source = _tiny_timm()
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="test", normalization=NORM)
    torch.manual_seed(2)
    net = ViTDPT(_tiny_timm(), blocks=(0, 2, 3, 5), reassemble_channels=(8, 16, 24, 32), decoder_channels=16)
    report = load_encoder(net.encoder, str(path), expected_normalization=NORM)
    assert report.ok and not report.missing and not report.unused and not report.mismatched
    x = torch.randn(2, 3, 160, 160)
    net.eval()
    with torch.no_grad():
        got = vit_token_maps(net.encoder, x, net.blocks)
        want = vit_token_maps(source.eval(), x, net.blocks)
    for g, w in zip(got, want):
        assert (g - w).abs().max() / w.abs().max() <= 1e-5
