"""The MAE model (He et al. 2022, facebookresearch/mae ``models_mae.py``) in 2D and 3D: patch order and
orientation against hand-written loops, the masking (exact count, per sample, the mask marks removed patches, the
encoder sees only the kept ones), the fixed sin-cos tables against MAE's formula, the decoder's output, the
initialisation, and the exported trunk (no decoder, no mask token)."""

from __future__ import annotations

import math

import pytest
import torch

from monai_ssl_ext.encoders import export_encoder, read_encoder
from monai_ssl_ext.losses import MAELoss
from monai_ssl_ext.networks import MAE, build_backbone, patchify, unpatchify
from monai_ssl_ext.networks.mae import random_masking, sincos_table

VIT_2D = dict(img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=4, qkv_bias=True,
              pos_embed_type="sincos", cls_token=True, layer_norm_eps=1e-6)
VIT_3D = dict(img_size=(16, 24, 8), patch_size=(8, 8, 4), hidden_size=24, mlp_dim=48, num_layers=2, num_heads=4,
              pos_embed_type="sincos")
DECODER = dict(decoder_hidden_size=16, decoder_num_layers=1, decoder_num_heads=4)


def _mae_2d(**kw) -> MAE:
    torch.manual_seed(0)
    return MAE(build_backbone("vit", spatial_dims=2, in_channels=3, **VIT_2D), **{**DECODER, **kw})


def _mae_3d(**kw) -> MAE:
    torch.manual_seed(0)
    return MAE(build_backbone("vit", spatial_dims=3, in_channels=2, **VIT_3D), **{**DECODER, **kw})


# ---- patchify: order and orientation, written out -------------------------------------------------


def _patchify_loops_2d(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Patch i = grid cell (i // w, i % w); its values for pixel rows r, columns c, channels ch in that nesting
    (MAE's ``'nchpwq->nhwpqc'``)."""
    b, c, hh, ww = x.shape
    h, w = hh // ph, ww // pw
    out = torch.empty(b, h * w, ph * pw * c, dtype=x.dtype)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                values = [x[n, ch, i * ph + r, j * pw + q] for r in range(ph) for q in range(pw) for ch in range(c)]
                out[n, i * w + j] = torch.stack(values)
    return out


def _patchify_loops_3d(x: torch.Tensor, p: tuple) -> torch.Tensor:
    b, c, *s = x.shape
    g = [si // pi for si, pi in zip(s, p)]
    out = torch.empty(b, math.prod(g), math.prod(p) * c, dtype=x.dtype)
    for n in range(b):
        for i in range(g[0]):
            for j in range(g[1]):
                for k in range(g[2]):
                    values = [x[n, ch, i * p[0] + u, j * p[1] + v, k * p[2] + t]
                              for u in range(p[0]) for v in range(p[1]) for t in range(p[2]) for ch in range(c)]
                    out[n, (i * g[1] + j) * g[2] + k] = torch.stack(values)
    return out


def test_patchify_2d_matches_the_loops_and_inverts():
    x = torch.randn(2, 3, 8, 12)  # not square: rows and columns cannot be swapped unnoticed
    got = patchify(x, (4, 4))
    assert got.shape == (2, 6, 48) and torch.equal(got, _patchify_loops_2d(x, 4, 4))
    assert torch.equal(patchify(x, (2, 3)), _patchify_loops_2d(x, 2, 3))  # anisotropic patches
    assert torch.equal(unpatchify(got, 4, (8, 12)), x)
    p = torch.randn(2, 6, 48)
    assert torch.equal(patchify(unpatchify(p, 4, (8, 12)), 4), p)


def test_patchify_3d_matches_the_loops_and_inverts():
    x = torch.randn(1, 2, 4, 6, 6)
    p = (2, 3, 1)
    got = patchify(x, p)
    assert got.shape == (1, 2 * 2 * 6, 12) and torch.equal(got, _patchify_loops_3d(x, p))
    assert torch.equal(unpatchify(got, p, (4, 6, 6)), x)


def test_patch_index_covers_the_claimed_region():
    """In a 8×12 picture cut into 4×4 patches (a 2×3 grid, row-major), a bright pixel at (row 2, column 5,
    channel 1) is in patch (2 // 4) * 3 + 5 // 4 = 1 at value ((2 % 4) * 4 + 5 % 4) * 3 + 1 = 28, and one at
    (row 7, column 0, channel 0) in patch 3 at value (3 * 4 + 0) * 3 = 36."""
    x = torch.zeros(1, 3, 8, 12)
    x[0, 1, 2, 5] = 1.0
    x[0, 0, 7, 0] = 2.0
    patches = patchify(x, 4)
    assert torch.nonzero(patches).tolist() == [[0, 1, 28], [0, 3, 36]]
    assert patches[0, 1, 28] == 1.0 and patches[0, 3, 36] == 2.0


def test_patch_order_is_the_token_order_of_the_encoder():
    """The loss's target patch i is what the encoder's patch token i sees: a picture that is non-zero only in
    patch k gives a non-zero (bias-free) patch-embedding token only at k, 2D and 3D."""
    for mae, shape in ((_mae_2d(), (1, 3, 32, 32)), (_mae_3d(), (1, 2, 16, 24, 8))):
        conv = mae.backbone.trunk.patch_embedding.patch_embeddings
        with torch.no_grad():
            conv.bias.zero_()
            for k in (0, 3, mae.grid[-1] + 1, math.prod(mae.grid) - 1):
                patches = torch.zeros(1, math.prod(mae.grid), math.prod(mae.patch_size) * shape[1])
                patches[0, k] = torch.rand(patches.shape[-1]) + 0.1
                image = unpatchify(patches, mae.patch_size, shape[2:])
                tokens = conv(image).flatten(2).transpose(1, 2)
                assert torch.nonzero(tokens.abs().sum(-1))[:, 1].tolist() == [k]


# ---- masking -------------------------------------------------------------------------------------


def test_random_masking_keeps_the_exact_count_per_sample_and_marks_removed_patches():
    b, n, d = 4, 196, 3
    tokens = torch.arange(b * n, dtype=torch.float64).reshape(b, n, 1).repeat(1, 1, d)  # token id in every dim
    torch.manual_seed(1)
    kept, mask, ids_restore = random_masking(tokens, 0.75)
    assert kept.shape == (b, 49, d) and mask.shape == (b, n)
    assert torch.equal(mask.sum(1), torch.full((b,), 147.0, dtype=torch.float64))
    for i in range(b):
        kept_ids = {int(v) - i * n for v in kept[i, :, 0]}
        removed = {j for j in range(n) if mask[i, j] == 1}
        assert len(kept_ids) == 49 and kept_ids.isdisjoint(removed) and kept_ids | removed == set(range(n))
        # ids_restore puts the shuffle back in patch order: mask 0 exactly where a kept token lands
        assert torch.equal(torch.argsort(ids_restore[i])[:49].sort().values, torch.tensor(sorted(kept_ids)))
    assert len({tuple(m.tolist()) for m in mask}) == b  # each sample its own mask
    with pytest.raises(ValueError, match="keeps 0 of 4"):
        random_masking(tokens[:, :4], 0.9)


def test_masking_ratio_over_many_draws_is_uniform():
    """Every patch is removed with probability 0.75 (the noise argsort is a uniform random subset)."""
    torch.manual_seed(2)
    _, mask, _ = random_masking(torch.zeros(4000, 16, 1), 0.75)
    freq = mask.mean(0)
    assert torch.all((freq - 0.75).abs() < 4 * math.sqrt(0.75 * 0.25 / 4000))


def test_the_encoder_sees_only_the_kept_patches():
    """With the same mask, changing removed patches leaves the prediction unchanged; changing a kept one does not."""
    mae = _mae_2d().eval()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(3)
    pred, target, mask = mae(x)
    patches = patchify(x, 8)
    noisy_removed = patches + 5.0 * mask[..., None]
    torch.manual_seed(3)
    pred2, _, mask2 = mae(unpatchify(noisy_removed, 8, (32, 32)))
    assert torch.equal(mask2, mask) and torch.allclose(pred2, pred, atol=1e-6)
    noisy_kept = patches + 5.0 * (1 - mask[..., None])
    torch.manual_seed(3)
    pred3, _, _ = mae(unpatchify(noisy_kept, 8, (32, 32)))
    assert (pred3 - pred).abs().max() > 1e-3
    assert torch.equal(target, patches)


# ---- the model: shapes, tables, init, export -----------------------------------------------------


@pytest.mark.parametrize("dims", [2, 3])
def test_forward_shapes_and_mask(dims):
    mae = _mae_2d() if dims == 2 else _mae_3d()
    shape = (3, 3, 32, 32) if dims == 2 else (3, 2, 16, 24, 8)
    x = torch.randn(*shape)
    pred, target, mask = mae(x)
    n = math.prod(mae.grid)
    p = math.prod(mae.patch_size) * shape[1]
    assert pred.shape == target.shape == (3, n, p) and mask.shape == (3, n)
    assert torch.equal(target, patchify(x, mae.patch_size))
    assert torch.equal(mask.sum(1), torch.full((3,), float(n - int(n * 0.25))))
    assert mae.n_prefix == (1 if dims == 2 else 0)
    loss = MAELoss()(pred, target, mask)
    loss.backward()
    # every trained parameter gets a gradient (DDP without find_unused_parameters); fixed tables stay fixed
    trained = [name for name, prm in mae.named_parameters() if prm.requires_grad]
    assert [name for name, prm in mae.named_parameters() if prm.requires_grad and prm.grad is None] == []
    assert "decoder_pos_embed" not in trained and "backbone.trunk.patch_embedding.position_embeddings" not in trained
    assert not any("norm_cross_attn" in name for name in trained)


def _mae_2d_sincos(h: int, w: int, dim: int) -> torch.Tensor:
    """MAE's ``get_2d_sincos_pos_embed`` (util/pos_embed.py), written out: for the token at row r, column c
    (row-major), ``[sin(c w_t), cos(c w_t), sin(r w_t), cos(r w_t)]``, ``w_t = 1 / 10000^(t / (dim / 4))``."""
    q = dim // 4
    rows = []
    for r in range(h):
        for c in range(w):
            omega = [1.0 / 10000 ** (t / q) for t in range(q)]
            rows.append([math.sin(c * o) for o in omega] + [math.cos(c * o) for o in omega]
                        + [math.sin(r * o) for o in omega] + [math.cos(r * o) for o in omega])
    return torch.tensor(rows, dtype=torch.float64)[None]


def test_fixed_position_tables_are_mae_sincos():
    mae = MAE(build_backbone("vit", spatial_dims=2, in_channels=3, **dict(VIT_2D, img_size=(16, 24))), **DECODER)
    assert mae.grid == (2, 3)
    enc = mae.backbone.trunk.patch_embedding.position_embeddings
    assert not enc.requires_grad and not mae.decoder_pos_embed.requires_grad
    assert torch.allclose(enc.double(), _mae_2d_sincos(2, 3, 32), atol=1e-6)
    assert torch.allclose(mae.decoder_pos_embed.double(), _mae_2d_sincos(2, 3, 16), atol=1e-6)
    # a width the grid does not divide (512 in 3D): the largest table that fits, zero-padded
    from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

    table = sincos_table((2, 3, 2), 20)
    assert table.shape == (1, 12, 20) and torch.count_nonzero(table[..., 18:]) == 0
    assert torch.equal(table[..., :18], build_sincos_position_embedding([2, 3, 2], 18, 3).detach())


def test_initialisation_is_maes():
    mae = _mae_2d()
    for module in [mae.decoder_embed, mae.decoder_pred, mae.backbone.trunk.blocks[0].attn.qkv,
                   mae.backbone.trunk.blocks[1].mlp.linear1, mae.decoder_blocks[0].attn.out_proj]:
        bound = math.sqrt(6.0 / sum(module.weight.shape))  # Xavier-uniform
        assert module.weight.abs().max() <= bound and module.weight.abs().max() > 0.8 * bound
        assert module.bias is None or torch.count_nonzero(module.bias) == 0
    conv = mae.backbone.trunk.patch_embedding.patch_embeddings.weight
    assert conv.abs().max() <= math.sqrt(6.0 / (conv.shape[0] + conv[0].numel()))
    for token in (mae.mask_token, mae.backbone.trunk.cls_token):
        assert 0.005 < float(token.detach().std()) < 0.05
    assert all(float(m.eps) == 1e-6 for m in mae.modules() if isinstance(m, torch.nn.LayerNorm))


def test_a_loaded_encoder_keeps_its_weights(tmp_path):
    from monai_ssl_ext.encoders import pretrained_backbone

    source = _mae_2d().backbone
    path = tmp_path / "encoder.pt"
    export_encoder(source, str(path), method="mae")
    loaded = pretrained_backbone("vit", str(path), spatial_dims=2, in_channels=3)
    mae = MAE(loaded, **DECODER)
    for (name, a), b in zip(source.trunk.state_dict().items(), mae.backbone.trunk.state_dict().values()):
        assert torch.equal(a, b), name


def test_exported_trunk_has_no_decoder_and_features_need_no_masking(tmp_path):
    mae = _mae_2d().eval()
    path = tmp_path / "encoder.pt"
    export_encoder(mae.backbone, str(path), method="mae")
    payload = read_encoder(str(path))
    keys = set(payload["state_dict"])
    assert keys == set(mae.backbone.trunk.state_dict())
    assert "cls_token" in keys and not any("decoder" in k or "mask_token" in k for k in keys)
    assert payload["arch"] == "vit" and payload["arch_params"]["cls_token"] is True
    assert {k.split(".")[0] for k in mae.state_dict()} == {"backbone", "mask_token", "decoder_embed",
                                                          "decoder_pos_embed", "decoder_blocks", "decoder_norm",
                                                          "decoder_pred"}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens, _ = mae.backbone.trunk(x)
        assert tokens.shape == (2, 17, 32)  # every patch and the class token: no masking
        assert torch.equal(mae.backbone(x), tokens[:, 0])  # pooled feature: the class token after the norm


def test_tiny_mae_learns_to_reconstruct():
    """End to end: a few AdamW steps on one batch halve the reconstruction loss of the removed patches (new
    random masks every step, so the model must fill in patches it has not seen at that step)."""
    mae = _mae_2d()
    x = torch.rand(2, 3, 32, 32)
    opt = torch.optim.AdamW(mae.parameters(), lr=5e-3)
    losses = []
    for _ in range(15):
        loss = MAELoss(norm_pix_loss=False)(*mae(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_bad_arguments_are_named():
    backbone = build_backbone("vit", spatial_dims=2, in_channels=3, **VIT_2D)
    with pytest.raises(TypeError, match="needs a 'vit' Backbone"):
        MAE(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
        MAE(backbone, mask_ratio=1.0)
    with pytest.raises(ValueError, match="keeps no patch"):
        MAE(backbone, mask_ratio=0.99, **DECODER)
    with pytest.raises(ValueError, match=r"expected inputs \(B, 3, \*\(32, 32\)\)"):
        MAE(backbone, **DECODER)(torch.randn(1, 3, 64, 64))


def test_monai_masked_autoencoder_is_not_the_recipe():
    """Why MAE here does not wrap MONAI's ``MaskedAutoEncoderViT`` (a documented assertion, not a reference):
    its masking is the same in kind (exactly ``int(N · 0.25)`` kept per sample, mask 1 = removed), but its
    LayerNorm eps is 1e-5 (MAE: 1e-6), its defaults are not MAE's (MLP 512, decoder 384-d / 4 blocks / MLP 512),
    its final encoder norm is ``blocks.<L>`` (``norm`` in ``ViT``), it always has a class token, and masking cannot
    be switched off for features."""
    from monai.networks.nets import MaskedAutoEncoderViT

    net = MaskedAutoEncoderViT(in_channels=3, img_size=32, patch_size=8, hidden_size=48, num_layers=2, num_heads=4,
                               spatial_dims=2)
    keys = set(net.state_dict())
    assert "blocks.2.weight" in keys and not any(k.startswith("norm.") for k in keys) and "cls_token" in keys
    assert {m.eps for m in net.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
    assert net.blocks[0].mlp.linear1.out_features == 512 and net.decoder_embed.out_features == 384
    assert len(net.decoder_blocks) == 5  # 4 blocks + the final LayerNorm
    torch.manual_seed(0)
    pred, mask = net(torch.randn(3, 3, 32, 32))
    assert pred.shape == (3, 16, 192) and torch.equal(mask.sum(1), torch.full((3,), 12, dtype=mask.dtype))
    with pytest.raises(ValueError, match="masking_ratio"):
        MaskedAutoEncoderViT(in_channels=3, img_size=32, patch_size=8, masking_ratio=0.0, spatial_dims=2)
