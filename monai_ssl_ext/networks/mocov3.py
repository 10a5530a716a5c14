"""MoCo v3: a base encoder (backbone, projector, predictor) and a momentum encoder (EMA of backbone and projector).

Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021
(https://arxiv.org/abs/2104.02057), as run by facebookresearch/moco-v3 (``moco/builder.py``, ``vits.py``), which
SSL4GIE (source C) used unchanged to pretrain on Hyperkvasir-unlabelled.

* ``f_q`` = backbone → projector (``pair.online``), then the predictor; ``f_k`` = the momentum copy of backbone →
  projector (``pair.target``, a :class:`~monai_ssl_ext.networks.MomentumPair` updated by
  :class:`~monai_ssl_ext.handlers.EMATargetUpdate` with moco-v3's ``--moco-m 0.99 --moco-m-cos`` schedule).
* Heads as moco-v3's ``_build_mlp``: ``Linear(no bias) → BN → ReLU`` per hidden layer, the last ``Linear(no bias)``
  followed by ``BN(affine=False)``; projector 2 layers for ResNets (``MoCo_ResNet``), 3 for ViTs (``MoCo_ViT``);
  predictor 2 layers, with the last BN for ViTs and without it for ResNets.
* The ViT trunk options of ``vits.VisionTransformerMoCo``: ``--stop-grad-conv1`` (a frozen random patch embedding,
  :func:`freeze_patch_embedding`) and its initialisation (:func:`init_vit_as_mocov3`: fixed 2D sin-cos position
  embedding, Xavier-uniform weights with Q, K, V treated separately, zero biases, class token N(0, 1e-6)), for timm
  ``VisionTransformer`` and MONAI ``ViT`` trunks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

from .backbones import Backbone
from .heads import MLPHead
from .initialisation import zero_init_residual as _zero_init_residual  # the argument of the same name hides it
from .momentum import MomentumPair, MomentumPredictorMethod

__all__ = ["MoCoV3", "sincos_position_embedding", "vit_parts", "freeze_patch_embedding", "init_vit_as_mocov3"]

logger = logging.getLogger(__name__)


def sincos_position_embedding(grid_size: Sequence[int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed sin-cos position embedding of a patch grid, shape ``(prod(grid_size), dim)``, tokens in row-major order.

    For every grid axis ``a`` (in order) with token coordinate ``c_a``, the block ``[sin(c_a * w), cos(c_a * w)]``
    with ``w_t = temperature ** (-t / p)``, ``t = 0 .. p-1``, ``p = dim / (2 * n_axes)``; the blocks are concatenated
    in axis order. On a square 2D grid this is moco-v3's ``build_2d_sincos_position_embedding`` (its first half
    encodes the row, the second the column).
    """
    grid_size = [int(g) for g in grid_size]
    n = len(grid_size)
    if n < 1 or dim % (2 * n) != 0:
        raise ValueError(f"sincos_position_embedding: dim {dim} must be divisible by {2 * n} for a {n}D grid")
    p = dim // (2 * n)
    omega = 1.0 / temperature ** (torch.arange(p, dtype=torch.float64) / p)
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid_size], indexing="ij")
    blocks = []
    for c in coords:
        angles = c.flatten()[:, None] * omega[None, :]
        blocks += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(blocks, dim=1).float()


def vit_parts(backbone: Backbone | nn.Module) -> dict | None:
    """The parts of a ViT trunk MoCo v3 treats specially, or None when the trunk is not a ViT:
    ``{"patch_embed": module, "pos_embed": parameter, "n_prefix": tokens before the patches (class token),
    "grid": patch grid, "cls_token": parameter or None}`` for a timm ``VisionTransformer`` (``patch_embed.proj``,
    ``pos_embed``, ``cls_token``) or a MONAI ``ViT`` (``patch_embedding.patch_embeddings``,
    ``patch_embedding.position_embeddings``; the grid from the Backbone's ``img_size`` / ``patch_size``)."""
    trunk = backbone.trunk if isinstance(backbone, Backbone) else backbone
    pe = getattr(trunk, "patch_embed", None)
    if pe is not None and isinstance(getattr(trunk, "pos_embed", None), nn.Parameter) and hasattr(pe, "grid_size"):
        grid = tuple(int(g) for g in pe.grid_size)
        return {"patch_embed": getattr(pe, "proj", pe), "pos_embed": trunk.pos_embed, "grid": grid,
                "n_prefix": trunk.pos_embed.shape[1] - math.prod(grid), "cls_token": getattr(trunk, "cls_token", None)}
    pe = getattr(trunk, "patch_embedding", None)
    if pe is not None and isinstance(getattr(pe, "position_embeddings", None), nn.Parameter):
        grid = None
        if isinstance(backbone, Backbone) and {"img_size", "patch_size"} <= set(backbone.arch_params):
            from monai.utils import ensure_tuple_rep

            img = ensure_tuple_rep(backbone.arch_params["img_size"], backbone.spatial_dims)
            patch = ensure_tuple_rep(backbone.arch_params["patch_size"], backbone.spatial_dims)
            grid = tuple(int(i) // int(p) for i, p in zip(img, patch))
        return {"patch_embed": pe.patch_embeddings, "pos_embed": pe.position_embeddings, "grid": grid,
                "n_prefix": 0, "cls_token": getattr(trunk, "cls_token", None)}
    return None


def _require_vit(backbone, option: str) -> dict:
    parts = vit_parts(backbone)
    if parts is None:
        arch = getattr(backbone, "arch", type(backbone).__name__)
        raise ValueError(f"MoCoV3: {option} needs a ViT trunk (timm VisionTransformer or MONAI 'vit'), got {arch!r}")
    return parts


def freeze_patch_embedding(backbone: Backbone | nn.Module) -> list[str]:
    """MoCo v3's ``--stop-grad-conv1``: the ViT patch-embedding projection keeps its random initialisation (its
    parameters stop requiring gradients). Returns the frozen parameter names (relative to the patch embedding)."""
    parts = _require_vit(backbone, "stop_grad_patch_embed")
    names = [name for name, _ in parts["patch_embed"].named_parameters()]
    parts["patch_embed"].requires_grad_(False)
    return names


@torch.no_grad()
def init_vit_as_mocov3(backbone: Backbone | nn.Module) -> None:
    """Initialise a ViT trunk as moco-v3's ``VisionTransformerMoCo``: the position embedding becomes the fixed
    sin-cos embedding (:func:`sincos_position_embedding`; zeros for the class token) and stops requiring gradients;
    every Linear weight is Xavier-uniform (a ``qkv`` Linear as three ``dim x dim`` matrices:
    ``U(-a, a)``, ``a = sqrt(6 / (out / 3 + in))``), every Linear bias zero; the patch-embedding projection is
    Xavier-uniform as a ``(C * prod(patch)) -> dim`` map, its bias zero; the class token ``N(0, 1e-6)``."""
    parts = _require_vit(backbone, "vit_init")
    trunk = backbone.trunk if isinstance(backbone, Backbone) else backbone
    pos = parts["pos_embed"]
    if parts["grid"] is None:
        raise ValueError("MoCoV3: vit_init on a MONAI ViT needs a Backbone built with img_size and patch_size")
    table = sincos_position_embedding(parts["grid"], pos.shape[-1])
    pos.zero_()
    pos[0, parts["n_prefix"]:] = table.to(pos)
    pos.requires_grad_(False)
    for name, m in trunk.named_modules():
        if isinstance(m, nn.Linear):
            if "qkv" in name:
                bound = math.sqrt(6.0 / float(m.weight.shape[0] // 3 + m.weight.shape[1]))
                nn.init.uniform_(m.weight, -bound, bound)
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    proj = parts["patch_embed"]
    if isinstance(proj, nn.modules.conv._ConvNd):
        fan_in = proj.in_channels * math.prod(proj.kernel_size)
        bound = math.sqrt(6.0 / float(fan_in + proj.out_channels))
        nn.init.uniform_(proj.weight, -bound, bound)
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)
    if isinstance(parts["cls_token"], nn.Parameter):
        nn.init.normal_(parts["cls_token"], std=1e-6)


class MoCoV3(MomentumPredictorMethod):
    """MoCo v3 (Chen, Xie, He 2021); see the module docstring.

    ``forward(x1, x2)`` returns ``(q1, q2, k1, k2)``: ``q_v = predictor(projector(backbone(x_v)))`` from the base
    encoder and ``k_v`` the momentum encoder's projection, computed under ``torch.no_grad()`` — the input of
    :class:`~monai_ssl_ext.losses.MoCoV3Loss`. Each view goes through each encoder as its own batch (batch-norm
    statistics per view, as moco-v3's ``forward``).

    The base (backbone, projector) and momentum encoders are ``self.pair``, a
    :class:`~monai_ssl_ext.networks.MomentumPair` built from ``{"backbone": ..., "projector": ...}``; update it with
    ``EMATargetUpdate(pair=mocov3.pair, base_momentum=0.99, final_momentum=1.0)`` (moco-v3's cosine momentum
    schedule) and give the optimizer :meth:`online_parameters`. MoCo v3's result is the *base* encoder's trunk
    (SSL4GIE loads ``module.base_encoder`` without its projector): :meth:`exported_backbone` defaults to
    ``"online"``.

    Args:
        backbone: the encoder trunk (e.g. ``timm/resnet50``, torchvision keys; ``timm/vit_base_patch16_224``).
        projection_dims: hidden and output sizes of the projector (moco-v3 ``--moco-mlp-dim 4096``,
            ``--moco-dim 256``).
        prediction_dims: hidden and output sizes of the predictor; the output size must equal the projection size.
        projector_layers: Linear layers of the projector: 2 (ResNet, ``MoCo_ResNet``) or 3 (ViT, ``MoCo_ViT``).
        predictor_last_batch_norm: ``BN(affine=False)`` after the predictor's last Linear (``MoCo_ViT``: True;
            ``MoCo_ResNet``: False).
        stop_grad_patch_embed: freeze the ViT patch embedding (moco-v3's ``--stop-grad-conv1``, used for ViTs).
        vit_init: initialise the ViT trunk as moco-v3's ``VisionTransformerMoCo`` (:func:`init_vit_as_mocov3`:
            fixed sin-cos position embedding and its weight initialisation). Skipped, with a warning, when weights
            were loaded into the backbone (``init_weights``).
        zero_init_residual: zero the last BN of every residual block (moco-v3's ResNet is torchvision's
            ``resnet50(zero_init_residual=True)``; timm's ResNet already starts so, MONAI's 2D / 3D ResNet does
            not). Skipped when weights were loaded into the backbone; a ViT has no such block.
    """

    def __init__(
        self,
        backbone: Backbone,
        projection_dims: Sequence[int] = (4096, 256),
        prediction_dims: Sequence[int] = (4096, 256),
        projector_layers: int = 2,
        predictor_last_batch_norm: bool = False,
        stop_grad_patch_embed: bool = False,
        vit_init: bool = False,
        zero_init_residual: bool = True,
    ):
        super().__init__()
        projection_dims, prediction_dims = [int(d) for d in projection_dims], [int(d) for d in prediction_dims]
        if len(projection_dims) != 2 or len(prediction_dims) != 2 or prediction_dims[-1] != projection_dims[-1]:
            raise ValueError(
                f"MoCoV3: projection_dims and prediction_dims are [hidden, output] with the same output size, got "
                f"projection_dims {projection_dims} and prediction_dims {prediction_dims}"
            )
        if int(projector_layers) < 2:
            raise ValueError(f"MoCoV3: projector_layers must be >= 2 (2 for ResNets, 3 for ViTs), got {projector_layers}")
        if vit_init:
            if getattr(backbone, "load_report", None) is not None:
                logger.warning("MoCoV3: weights were loaded into the backbone; the MoCo v3 ViT initialisation "
                               "(vit_init) is skipped")
            else:
                init_vit_as_mocov3(backbone)
        if zero_init_residual and getattr(backbone, "load_report", None) is None:
            _zero_init_residual(backbone)  # before the momentum copy: both encoders start alike
        if stop_grad_patch_embed:
            freeze_patch_embedding(backbone)
        hidden, out = projection_dims
        projector = MLPHead([backbone.feature_dim] + [hidden] * (int(projector_layers) - 1) + [out],
                            batch_norm=True, last_batch_norm=True, bias=False)
        self.pair = MomentumPair({"backbone": backbone, "projector": projector})
        self.predictor = MLPHead([out, *prediction_dims], batch_norm=True,
                                 last_batch_norm=bool(predictor_last_batch_norm), bias=False)
