"""MAE: masked-autoencoder pretraining of a ViT encoder (He et al., "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022, https://arxiv.org/abs/2111.06377), as run by facebookresearch/mae (``models_mae.py``,
``main_pretrain.py``), which SSL4GIE (source C) used unchanged on Hyperkvasir-unlabelled; 2D and 3D.

The encoder is a ``vit`` :class:`~monai_ssl_ext.networks.Backbone` (MONAI's ``ViT``, no head), so the exported
``encoder.pt`` is an ordinary ``vit`` trunk: it loads key for key into ``ViT`` / ``UNETR.vit`` and, through the
trunk registry's key map, into timm's ``VisionTransformer`` (``timm/vit_base_patch16_224``). The MAE recipe's
encoder is ``build_backbone("vit", img_size=224, patch_size=16, hidden_size=768, mlp_dim=3072, num_layers=12,
num_heads=12, qkv_bias=True, pos_embed_type="sincos", cls_token=True, layer_norm_eps=1e-6)``: ViT-B/16 with a class
token, qkv bias, fixed 2D sin-cos position embeddings and LayerNorm eps 1e-6, the MAE code's
``mae_vit_base_patch16`` encoder (timm blocks). The decoder (mask token, its own fixed sin-cos table, transformer
blocks, a linear patch predictor) lives here and is not exported.

Why not MONAI's ``MaskedAutoEncoderViT``: it always has a class token, its LayerNorms have eps 1e-5 (MAE: 1e-6),
its final encoder norm is ``blocks.<L>`` (``norm`` in ``ViT``), its masking cannot be switched off for features,
its encoder and decoder are one module (no trunk to export without the decoder), its default sizes are not MAE's
(``mlp_dim`` 512, decoder 384 / 4 blocks / MLP 512) and it initialises differently. Its masking (a uniformly random
subset per sample) and token layout are the same as here; this module keeps its algorithm and MONAI's blocks.

Pieces (each as in ``models_mae.py``):

* :func:`random_masking`: per sample, argsort of uniform noise; the first ``int(N (1 - mask_ratio))`` tokens of the
  shuffle are kept; ``mask`` is 1 for removed patches, 0 for kept ones, in patch order.
* encoder: patch embedding + fixed position table, masking, class token (no position embedding: the zero slot of
  MAE's table), blocks, final norm.
* decoder: ``Linear(hidden → d)``, mask tokens in the removed places (unshuffle), + fixed sin-cos table of width d
  (class token: zero slot), ``decoder_num_layers`` transformer blocks (qkv bias, MLP 4d), LayerNorm,
  ``Linear(d → prod(patch) · C)``; the class token's output is dropped.
* :func:`patchify`: the target, ``(B, N, prod(patch) · C)``, patches in row-major grid order (the order of the
  patch tokens), the values of a patch in ``(p_1, ..., p_n, C)`` order (MAE's ``'nchpwq->nhwpqc'``).

The loss (per-patch normalised pixels, MSE on the removed patches) is :class:`~monai_ssl_ext.losses.MAELoss`:
``forward(x)`` returns ``(pred, target, mask)`` with ``target`` the raw patches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import TransformerBlock
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from monai.utils import ensure_tuple_rep
from torch import nn

from .backbones import Backbone
from .families import freeze_unused_vit_norms, set_layer_norm_eps

__all__ = ["MAE", "patchify", "unpatchify", "random_masking", "sincos_table"]

logger = logging.getLogger(__name__)


def _patch(patch_size: int | Sequence[int], n: int) -> tuple[int, ...]:
    return tuple(int(p) for p in ensure_tuple_rep(patch_size, n))


def patchify(images: torch.Tensor, patch_size: int | Sequence[int]) -> torch.Tensor:
    """``(B, C, *spatial)`` → ``(B, N, prod(patch) · C)``: patch ``i`` is grid cell ``i`` in row-major order (the
    order of a ViT's patch tokens), its values in ``(p_1, ..., p_n, C)`` order (MAE's ``patchify`` in 2D)."""
    b, c, *spatial = images.shape
    p = _patch(patch_size, len(spatial))
    if len(spatial) != len(p) or any(s % q for s, q in zip(spatial, p)):
        raise ValueError(f"patchify: spatial size {tuple(spatial)} is not divisible by patch size {p}")
    grid = [s // q for s, q in zip(spatial, p)]
    n = len(spatial)
    x = images.reshape(b, c, *[v for g, q in zip(grid, p) for v in (g, q)])
    # (B, C, g1, p1, g2, p2, ...) -> (B, g1, g2, ..., p1, p2, ..., C)
    x = x.permute(0, *range(2, 2 + 2 * n, 2), *range(3, 3 + 2 * n, 2), 1)
    return x.reshape(b, math.prod(grid), math.prod(p) * c)


def unpatchify(patches: torch.Tensor, patch_size: int | Sequence[int], spatial_size: Sequence[int]) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``(B, N, prod(patch) · C)`` → ``(B, C, *spatial_size)``."""
    n = len(spatial_size)
    p = _patch(patch_size, n)
    grid = [int(s) // q for s, q in zip(spatial_size, p)]
    b, tokens, dim = patches.shape
    c = dim // math.prod(p)
    if tokens != math.prod(grid) or dim != c * math.prod(p) or any(g * q != int(s) for g, q, s in zip(grid, p, spatial_size)):
        raise ValueError(f"unpatchify: {tuple(patches.shape)} does not hold {tuple(spatial_size)} in patches of {p}")
    x = patches.reshape(b, *grid, *p, c)
    # (B, g1, ..., gn, p1, ..., pn, C) -> (B, C, g1, p1, g2, p2, ...)
    order = [0, 2 * n + 1] + [v for i in range(n) for v in (1 + i, 1 + n + i)]
    return x.permute(*order).reshape(b, c, *[g * q for g, q in zip(grid, p)])


def random_masking(tokens: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking: argsort of uniform noise ``(B, N)`` (small is kept), the first
    ``int(N (1 - mask_ratio))`` tokens of each shuffle kept.

    Returns ``(kept, mask, ids_restore)``: the kept tokens ``(B, keep, D)`` in shuffle order, ``mask`` ``(B, N)``
    (1: removed, 0: kept; float, in patch order) and the permutation that restores patch order."""
    b, n, d = tokens.shape
    keep = int(n * (1 - mask_ratio))
    if not 0 < keep < n:
        raise ValueError(f"random_masking: mask_ratio {mask_ratio} keeps {keep} of {n} patches (need 1 .. {n - 1})")
    noise = torch.rand(b, n, device=tokens.device)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    kept = tokens.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
    mask = torch.ones(b, n, device=tokens.device, dtype=tokens.dtype)
    mask[:, :keep] = 0
    return kept, mask.gather(1, ids_restore), ids_restore


def sincos_table(grid: Sequence[int], dim: int) -> torch.Tensor:
    """Fixed sin-cos position table ``(1, prod(grid), dim)`` for a 2D or 3D patch grid, MONAI's
    ``build_sincos_position_embedding`` (in 2D: ``[sin(c w), cos(c w), sin(r w), cos(r w)]`` for the token at row
    ``r``, column ``c``, ``w_t = 10000^(-t / (dim / 4))``: MAE's ``get_2d_sincos_pos_embed``). When ``dim`` is not a
    multiple of ``2 · len(grid)`` (4 in 2D, 6 in 3D), the table of the largest such width is zero-padded (a 3D
    decoder of width 512: 510 + 2)."""
    n = len(grid)
    step = 2 * n
    width = dim - dim % step
    if width <= 0:
        raise ValueError(f"sincos_table: dim {dim} is too small for a {n}D grid (need at least {step})")
    table = build_sincos_position_embedding(list(grid), width, n).detach()
    if width < dim:
        table = torch.cat([table, table.new_zeros(1, table.shape[1], dim - width)], dim=-1)
    return table


class MAE(nn.Module):
    """Masked autoencoder (He et al. 2022) around a ``vit`` :class:`~monai_ssl_ext.networks.Backbone`; see the
    module docstring.

    ``forward(x)`` returns ``(pred, target, mask)``: the decoder's prediction of every patch ``(B, N, P)``, the
    patches of ``x`` (:func:`patchify`, ``P = prod(patch) · C``) and the mask ``(B, N)`` (1: removed), the input of
    :class:`~monai_ssl_ext.losses.MAELoss` (``SSLTrainer(view_keys=["image"])``). The backbone alone
    (``mae.backbone(x)``: the class token after the final norm, no masking) gives features for a kNN monitor or a
    probe, and is what ``EncoderExport`` writes.

    Args:
        backbone: the encoder, ``build_backbone("vit", ...)`` / ``pretrained_backbone("vit", ...)`` with
            ``img_size`` and ``patch_size`` (inputs must have that size: the position table is fixed).
        decoder_hidden_size: decoder width (MAE: 512).
        decoder_num_layers: decoder transformer blocks (MAE: 8).
        decoder_num_heads: decoder attention heads (MAE: 16).
        decoder_mlp_dim: decoder MLP width (MAE: ``4 · decoder_hidden_size``; None for that).
        mask_ratio: fraction of patches removed per sample (MAE: 0.75).
        init_weights: initialise as ``models_mae.py`` does: Xavier-uniform Linear weights and zero biases, LayerNorms
            1 / 0, the patch-embedding convolution Xavier-uniform as a Linear, class and mask tokens N(0, 0.02). The
            encoder is left alone when it was loaded from weights (``pretrained_backbone`` with a weight spec).
    """

    def __init__(
        self,
        backbone: Backbone,
        decoder_hidden_size: int = 512,
        decoder_num_layers: int = 8,
        decoder_num_heads: int = 16,
        decoder_mlp_dim: int | None = None,
        mask_ratio: float = 0.75,
        init_weights: bool = True,
    ):
        super().__init__()
        if not isinstance(backbone, Backbone) or backbone.family != "monai-vit":
            got = getattr(backbone, "arch", type(backbone).__name__)
            raise TypeError(f"MAE needs a 'vit' Backbone (build_backbone('vit', ...)), got {got!r}")
        if not 0 < float(mask_ratio) < 1:
            raise ValueError(f"MAE: mask_ratio must be in (0, 1), got {mask_ratio}")
        dims = backbone.spatial_dims
        params = backbone.arch_params
        self.patch_size = _patch(params["patch_size"], dims)
        self.img_size = _patch(params["img_size"], dims)
        if any(i % p for i, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"MAE: img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        self.grid = tuple(i // p for i, p in zip(self.img_size, self.patch_size))
        if str(params.get("pos_embed_type", "learnable")).lower() != "sincos":
            logger.warning("MAE: the encoder's position embedding is %r; MAE uses a fixed sin-cos table "
                           "(pos_embed_type='sincos')", params.get("pos_embed_type"))
        self.backbone = backbone
        self.mask_ratio = float(mask_ratio)
        trunk = backbone.trunk
        self.n_prefix = 1 if isinstance(getattr(trunk, "cls_token", None), torch.Tensor) else 0
        n_patches = math.prod(self.grid)
        if not 0 < int(n_patches * (1 - self.mask_ratio)) < n_patches:
            raise ValueError(f"MAE: mask_ratio {mask_ratio} keeps no patch or every patch of {n_patches}")

        hidden, dec = backbone.feature_dim, int(decoder_hidden_size)
        eps = float(params.get("layer_norm_eps", 1e-5))
        self.decoder_embed = nn.Linear(hidden, dec)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec))
        self.decoder_pos_embed = nn.Parameter(sincos_table(self.grid, dec), requires_grad=False)
        mlp = int(decoder_mlp_dim) if decoder_mlp_dim else 4 * dec
        self.decoder_blocks = nn.ModuleList(
            [TransformerBlock(dec, mlp, int(decoder_num_heads), qkv_bias=True) for _ in range(int(decoder_num_layers))]
        )
        self.decoder_norm = nn.LayerNorm(dec, eps=eps)
        self.decoder_pred = nn.Linear(dec, math.prod(self.patch_size) * backbone.in_channels)
        set_layer_norm_eps(self.decoder_blocks, eps)
        freeze_unused_vit_norms(self.decoder_blocks)  # DDP-safe without find_unused_parameters
        if init_weights:
            self.init_weights(encoder=getattr(backbone, "load_report", None) is None)

    @torch.no_grad()
    def init_weights(self, encoder: bool = True) -> None:
        """``models_mae.py``'s ``initialize_weights`` (see the class docstring) for the decoder, and for the
        encoder when ``encoder`` (the fixed position tables are not touched)."""
        modules = [self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred]
        trunk = self.backbone.trunk
        if encoder:
            modules.append(trunk)
            proj = trunk.patch_embedding.patch_embeddings
            if isinstance(proj, nn.modules.conv._ConvNd):
                nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
            if self.n_prefix:
                nn.init.normal_(trunk.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in modules:
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 + len(self.img_size) or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"MAE: expected inputs (B, {self.backbone.in_channels}, *{self.img_size}) (the encoder's "
                             f"img_size), got {tuple(x.shape)}")

    def forward_encoder(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(latent, mask, ids_restore)``: the encoder's output on the kept patches (class token first), after the
        final norm, and the masking (:func:`random_masking`)."""
        trunk = self.backbone.trunk
        tokens = trunk.patch_embedding(x)  # patch tokens + the fixed position table
        tokens, mask, ids_restore = random_masking(tokens, self.mask_ratio)
        if self.n_prefix:
            tokens = torch.cat([trunk.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in trunk.blocks:
            tokens = block(tokens)
        return trunk.norm(tokens), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """The prediction of every patch, ``(B, N, prod(patch) · C)``, in patch order."""
        y = self.decoder_embed(latent)
        prefix, visible = y[:, : self.n_prefix], y[:, self.n_prefix :]
        b, n = ids_restore.shape
        full = torch.cat([visible, self.mask_token.expand(b, n - visible.shape[1], -1).to(y.dtype)], dim=1)
        full = full.gather(1, ids_restore[..., None].expand(-1, -1, y.shape[-1]))  # back to patch order
        y = torch.cat([prefix, full + self.decoder_pos_embed], dim=1)
        for block in self.decoder_blocks:
            y = block(y)
        return self.decoder_pred(self.decoder_norm(y))[:, self.n_prefix :]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(pred, target, mask)`` for :class:`~monai_ssl_ext.losses.MAELoss`."""
        self._check(x)
        latent, mask, ids_restore = self.forward_encoder(x)
        return self.forward_decoder(latent, ids_restore), patchify(x, self.patch_size), mask
