"""Small helpers that keep Python out of bundle configs, each checked on values written here."""

from __future__ import annotations

import pytest

from monai_ssl_ext.data import image_items
from monai_ssl_ext.encoders import arch_if_random
from monai_ssl_ext.utils import epoch_milestones


def test_epoch_milestones():
    assert epoch_milestones([0.6, 0.8], 100) == [60, 80]
    assert epoch_milestones([0.6, 0.8], 2) == [1, 2]  # 1.2 -> 1, 1.6 -> 2
    assert epoch_milestones([0.01], 10) == [1]  # never epoch 0


def test_image_items_from_datalist_or_paths():
    datalist = [{"image": "a.png", "label": "a_mask.png"}, {"image": "b.png", "label": "b_mask.png"}]
    assert image_items(datalist) == [{"image": "a.png"}, {"image": "b.png"}]
    assert image_items(["a.png", "b.png"]) == [{"image": "a.png"}, {"image": "b.png"}]


@pytest.mark.parametrize("spec,expected", [(None, "resnet18"), ("random", "resnet18"),
                                           ("runs/x/encoder.pt", None), ("timm/resnet18", None)])
def test_arch_if_random(spec, expected):
    assert arch_if_random("resnet18", spec) == expected


def test_weight_decay_param_groups_as_maes_add_weight_decay():
    """MAE's ``optim_factory.add_weight_decay`` (timm 0.3.2): no decay for 1-D tensors and ``.bias``; frozen
    tensors (the fixed sin-cos tables, MONAI's unused cross-attention norms) left out; here checked on the MAE
    model name by name, then by what AdamW does with the groups."""
    import torch

    from monai_ssl_ext.networks import MAE, build_backbone
    from monai_ssl_ext.utils import weight_decay_param_groups

    torch.manual_seed(0)
    mae = MAE(build_backbone("vit", spatial_dims=2, in_channels=3, img_size=16, patch_size=8, hidden_size=16,
                             mlp_dim=32, num_layers=1, num_heads=2, qkv_bias=True, pos_embed_type="sincos",
                             cls_token=True), decoder_hidden_size=8, decoder_num_layers=1, decoder_num_heads=2)
    names = {id(p): n for n, p in mae.named_parameters()}
    groups = weight_decay_param_groups(mae, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    decayed = {names[id(p)] for p in groups[0]["params"]}
    skipped = {names[id(p)] for p in groups[1]["params"]}
    expected_decay = {"backbone.trunk.cls_token", "mask_token", "decoder_embed.weight", "decoder_pred.weight",
                      "backbone.trunk.patch_embedding.patch_embeddings.weight", "backbone.trunk.blocks.0.attn.qkv.weight",
                      "backbone.trunk.blocks.0.attn.out_proj.weight", "backbone.trunk.blocks.0.mlp.linear1.weight",
                      "backbone.trunk.blocks.0.mlp.linear2.weight", "decoder_blocks.0.attn.qkv.weight",
                      "decoder_blocks.0.attn.out_proj.weight", "decoder_blocks.0.mlp.linear1.weight",
                      "decoder_blocks.0.mlp.linear2.weight"}
    assert decayed == expected_decay
    assert all(n.endswith(".bias") or n.endswith("norm1.weight") or n.endswith("norm2.weight")
               or n.endswith("norm.weight") for n in skipped), skipped
    frozen = {n for n, p in mae.named_parameters() if not p.requires_grad}
    assert decayed | skipped == {n for n, _ in mae.named_parameters()} - frozen
    assert "decoder_pos_embed" in frozen and "backbone.trunk.patch_embedding.position_embeddings" in frozen
    assert not (decayed | skipped) & frozen
    # the later convention: tokens exempt, by name
    groups = weight_decay_param_groups(mae, 0.05, no_decay=["cls_token", "mask_token"])
    assert {names[id(p)] for p in groups[0]["params"]} == expected_decay - {"backbone.trunk.cls_token", "mask_token"}
    # AdamW on the groups: with zero gradients only the decayed tensors shrink, by lr * wd
    opt = torch.optim.AdamW(weight_decay_param_groups(mae, 0.5), lr=0.1)
    before = {n: p.detach().clone() for n, p in mae.named_parameters()}
    for p in mae.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in mae.named_parameters():
        factor = 1 - 0.1 * 0.5 if n in expected_decay else 1.0
        assert torch.allclose(p.detach(), before[n] * factor), n


def test_cpu_workers_caps_at_usable_cpus(caplog, monkeypatch):
    import logging

    from monai_ssl_ext import utils

    monkeypatch.setattr(utils, "usable_cpus", lambda: 2)
    monkeypatch.setattr(utils, "_CAPPED", set())
    with caplog.at_level(logging.INFO, logger="monai_ssl_ext"):
        assert utils.cpu_workers(8) == 2
        assert utils.cpu_workers(8) == 2
    assert [r.getMessage() for r in caplog.records].count("num_workers 8 capped at 2, the CPUs this process may use") == 1
    assert utils.cpu_workers(0) == 0 and utils.cpu_workers(2) == 2 and utils.cpu_workers(1) == 1
