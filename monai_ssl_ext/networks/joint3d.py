"""The joint 2D-3D image-volume SSL method (Nguyen et al., AAAI 2023; SPEC E.2-E.4): a 2D slice encoder, a
transformer over slices, and the two pretraining stages that use them.

A volume ``B x C x D x H x W`` (MONAI channel-first, ``D`` slices; ``C`` = 3 after the grey volume is repeated to 3
channels, as the source does) is read as ``B * D`` slices of ``C x H x W``:

1. **slice encoder** (intra, :func:`multiscale_features`): a 2D ResNet :class:`~monai_ssl_ext.networks.Backbone`
   (``timm/resnet50`` by default) whose per-slice feature is the concatenation of the L2-normalised global-average
   pooled outputs of ``layer1`` .. ``layer4`` and of the trunk's final pooled feature (the source's ``forward_2D``):
   256 + 512 + 1024 + 2048 + 2048 = **5888**-d for ResNet-50 (64 + 128 + 256 + 512 + 512 = 1472 for ResNet-18). For a
   ResNet the final pooled feature *is* the pooled ``layer4`` output, so the last block repeats the fourth, as in the
   source;
2. **slice transformer** (inter, :class:`SliceTransformer`): ``projection`` ``Linear(5888, 640)`` per slice (the
   source's ``ConvTranspose1d(5888, 640, kernel_size=1)`` over the slice axis is exactly a per-slice linear map), a
   learnable ``mask_token`` in R^640, fixed sine-cosine slice positions, then ``num_layers`` = 4 post-LN
   ``nn.TransformerEncoderLayer`` (d 640, FFN 720, GELU, dropout 0.1) attending over the **slices**;
3. **volume model** (:class:`JointVolumeEncoder`): slice encoder -> transformer tokens -> **mean over slices**, a
   ``feature_dim = 640`` trunk; :class:`~monai_ssl_ext.networks.DeepClusterV2` / :class:`~monai_ssl_ext.networks.SwAV`
   with ``projection_dims=[]`` L2-normalise it and score it against the prototypes (the source's ``ResNet_Trans``).

Stage (a), mask-embedding pretraining (:class:`MaskedSliceEmbedding`, :class:`MaskedSliceLoss`): the slice encoder is
frozen (eval mode, no gradient), ``ceil(mask_ratio * D)`` random slices of each volume have their embedding replaced
by the mask token, and a decoder ``Linear(640, 5888)`` predicts, from the transformer's output at the masked slices,
the frozen encoder's multi-scale features of those slices.

Differences from the source, on purpose (``bundles/joint_ssl_3d/docs/README.md`` lists them):

* **Attention.** The source's ``EncoderLayer`` uses ``DeformableAttention1D(dim=n_frames=64)`` from
  ``deformable-attention==0.0.18`` (a single-author package, unmaintained), called on ``B x 64 x 640`` tokens: it
  treats the 640 *features* as the sequence and the 64 slices as channels, so it attends along the feature axis and
  only works for exactly 64 slices. Here torch's standard multi-head self-attention attends over the slices
  (8 heads, the deformable layer's default head count), which works for any number of slices. Standard attention is
  permutation-equivariant, so slice order enters through fixed sine-cosine positions added after masking (the
  source's feature-axis attention sees slice order as its channel order and has no position encoding). The source
  applies dropout after each residual LayerNorm; ``nn.TransformerEncoderLayer`` applies it before the residual sum.
* **What stage (a) trains and reconstructs.** The source loads the 2D weights with ``strict=False``, so the
  5888 -> 640 ``deconv`` stays random, and trains only transformer, mask token and a ``Linear(640, 640)`` decoder with
  an MSE over *all* slices (visible ones included) against that random projection, divided by ``int(0.1 * D)``. The
  paper describes reconstructing the masked slice embeddings with a learned projection. Here the projection trains;
  since a trained projection would make its own output a collapsible target (shrink it and the loss goes to 0), the
  target is the *frozen encoder's* 5888-d multi-scale feature of each masked slice (no trainable parameter touches
  it), the decoder is ``Linear(640, 5888)``, and the loss is the mean squared error over the masked slices' features
  only (the source's ``MSE`` restricted to the masked slices, without its division by ``int(0.1 * D)``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone
from .families import get_family

__all__ = [
    "SLICE_TRANSFORMER_ARCH",
    "SLICE_TRANSFORMER_DEFAULTS",
    "SliceTransformer",
    "JointVolumeEncoder",
    "MaskedSliceEmbedding",
    "MaskedSliceLoss",
    "multiscale_dim",
    "multiscale_features",
    "random_slice_mask",
    "n_masked_slices",
    "sincos_slice_positions",
    "volume_slices",
    "joint_volume_encoder",
    "joint_ssl_network",
    "trainable_parameters",
]

logger = logging.getLogger("monai_ssl_ext.joint3d")

SLICE_TRANSFORMER_ARCH = "slice-transformer"
#: architecture parameters of the slice transformer (recorded whole in the encoder header)
SLICE_TRANSFORMER_DEFAULTS = dict(get_family(SLICE_TRANSFORMER_ARCH).arch_params)  # its trunk-family entry's
STAGES = 4  # layer1 .. layer4


# ---- the slice encoder's multi-scale features ------------------------------------------------------------------

def _check_slice_encoder(backbone: Backbone) -> nn.Module:
    trunk = backbone.trunk if isinstance(backbone, Backbone) else backbone
    info = getattr(trunk, "feature_info", None)
    if not hasattr(trunk, "forward_intermediates") or not hasattr(trunk, "forward_head") or info is None \
            or len(info) < STAGES:
        name = getattr(backbone, "arch", type(trunk).__name__)
        raise ValueError(f"slice encoder {name!r}: the joint 2D-3D method needs a timm ResNet trunk "
                         "(timm/resnet18, timm/resnet50, ...: forward_intermediates over layer1..layer4)")
    return trunk


def multiscale_dim(backbone: Backbone) -> int:
    """Size of :func:`multiscale_features`: the channels of the last four stages plus the pooled feature (5888 for
    ResNet-50, 1472 for ResNet-18); read from the trunk's ``feature_info`` (no forward, works on the meta device)."""
    trunk = _check_slice_encoder(backbone)
    return int(sum(int(f["num_chs"]) for f in list(trunk.feature_info)[-STAGES:]) + int(trunk.num_features))


def multiscale_features(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    """Per-slice features ``(N, multiscale_dim)`` of 2D slices ``x`` ``(N, C, H, W)``: the L2-normalised global
    average pool of ``layer1`` .. ``layer4`` and the L2-normalised final pooled feature, concatenated (the source's
    ``ResNet.forward_2D``); one pass through the trunk."""
    trunk = _check_slice_encoder(backbone)
    final, maps = trunk.forward_intermediates(x, indices=STAGES, intermediates_only=False)
    pooled = [F.normalize(m.mean(dim=(2, 3)), dim=1) for m in maps]
    pooled.append(F.normalize(trunk.forward_head(final), dim=1))
    return torch.cat(pooled, dim=1)


def volume_slices(x: torch.Tensor) -> torch.Tensor:
    """``B x C x D x H x W`` volumes as ``(B * D) x C x H x W`` slices (volume-major: volume ``b``'s slice ``d`` is
    row ``b * D + d``)."""
    if x.ndim != 5:
        raise ValueError(f"joint 2D-3D model: expected volumes B x C x D x H x W, got shape {tuple(x.shape)}")
    b, c, d, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)


# ---- the slice transformer ---------------------------------------------------------------------------------

def sincos_slice_positions(n: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed sine-cosine positions ``(n, dim)`` (Vaswani et al. 2017): ``sin(p / 10000^(2i/dim))`` in column
    ``2i``, ``cos`` in column ``2i + 1``."""
    pos = torch.arange(n, dtype=torch.float64, device=device)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
    table = torch.zeros(n, dim, dtype=torch.float64, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table.to(dtype or torch.get_default_dtype())


class SliceTransformer(nn.Module):
    """The inter-slice trunk: per-slice ``projection`` (``in_dim -> d_model``), ``mask_token`` for masked slices,
    fixed sine-cosine slice positions, ``num_layers`` post-LN ``nn.TransformerEncoderLayer`` over the slices.

    ``forward(features, mask=None)``: ``features`` ``(B, D, in_dim)`` (the slice encoder's multi-scale features),
    ``mask`` ``(B, D)`` bool (True: replace that slice's embedding by the mask token); returns the tokens
    ``(B, D, d_model)``. Exported as the ``slice_transformer`` trunk of the encoder file (family
    ``slice-transformer``, ``in_channels`` = ``in_dim``).
    """

    def __init__(self, in_dim: int, d_model: int = 640, ffn_dim: int = 720, num_layers: int = 4, num_heads: int = 8,
                 dropout: float = 0.1, activation: str = "gelu"):
        super().__init__()
        for name, v in (("in_dim", in_dim), ("d_model", d_model), ("ffn_dim", ffn_dim), ("num_layers", num_layers),
                        ("num_heads", num_heads)):
            if int(v) < 1:
                raise ValueError(f"SliceTransformer: {name} must be >= 1, got {v}")
        if int(d_model) % int(num_heads):
            raise ValueError(f"SliceTransformer: d_model {d_model} is not divisible by num_heads {num_heads}")
        self.in_dim, self.d_model, self.ffn_dim = int(in_dim), int(d_model), int(ffn_dim)
        self.num_layers, self.num_heads, self.activation = int(num_layers), int(num_heads), str(activation)
        self.projection = nn.Linear(self.in_dim, self.d_model)
        self.mask_token = nn.Parameter(torch.randn(self.d_model))  # the source's torch.randn(d_model)
        layer = nn.TransformerEncoderLayer(self.d_model, self.num_heads, self.ffn_dim, float(dropout), self.activation,
                                           batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, self.num_layers, enable_nested_tensor=False)

    def embed(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected slice embeddings ``(B, D, d_model)``, masked slices replaced by the mask token, positions added."""
        if features.ndim != 3 or features.shape[-1] != self.in_dim:
            raise ValueError(f"SliceTransformer: expected features B x D x {self.in_dim}, got {tuple(features.shape)}")
        e = self.projection(features)
        if mask is not None:
            if mask.shape != e.shape[:2]:
                raise ValueError(f"SliceTransformer: mask {tuple(mask.shape)} does not match B x D "
                                 f"{tuple(e.shape[:2])}")
            e = torch.where(mask[..., None].to(torch.bool), self.mask_token.to(e.dtype).expand_as(e), e)
        return e + sincos_slice_positions(e.shape[1], self.d_model, e.device, e.dtype)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(self.embed(features, mask))


def slice_transformer_signature(module: nn.Module) -> dict:
    """The architecture parameters of a :class:`SliceTransformer` that tensor shapes do not all show (heads,
    activation) or that are compared by name for a clear message (layers, sizes)."""
    return {"in_dim": module.in_dim, "d_model": module.d_model, "ffn_dim": module.ffn_dim,
            "num_layers": len(module.encoder.layers), "num_heads": int(module.encoder.layers[0].self_attn.num_heads),
            "activation": module.activation, "norm_first": bool(module.encoder.layers[0].norm_first)}


def slice_transformer_header_signature(payload: dict) -> dict:
    """:func:`slice_transformer_signature` from an encoder header (its ``arch_params`` and ``in_channels``)."""
    p = {**SLICE_TRANSFORMER_DEFAULTS, **(payload.get("arch_params") or {})}
    return {"in_dim": int(payload["in_channels"]), "d_model": int(p["d_model"]), "ffn_dim": int(p["ffn_dim"]),
            "num_layers": int(p["num_layers"]), "num_heads": int(p["num_heads"]), "activation": str(p["activation"]),
            "norm_first": False}


# ---- the volume model (stage b) and the mask model (stage a) ---------------------------------------------------

class JointVolumeEncoder(nn.Module):
    """Slice encoder -> slice transformer -> mean over slices: ``forward(x)`` maps volumes ``B x C x D x H x W`` to
    ``B x feature_dim`` (``feature_dim = d_model``, 640), the trunk a :class:`~monai_ssl_ext.networks.DeepClusterV2`
    / :class:`~monai_ssl_ext.networks.SwAV` with ``projection_dims=[]`` normalises and scores.

    Args:
        slice_encoder: the 2D ResNet :class:`Backbone` (exported as ``slice_encoder``).
        slice_transformer: a :class:`Backbone` of family ``slice-transformer`` whose ``in_channels`` is the slice
            encoder's :func:`multiscale_dim` (exported as ``slice_transformer``).
    """

    def __init__(self, slice_encoder: Backbone, slice_transformer: Backbone):
        super().__init__()
        if not isinstance(slice_encoder, Backbone) or not isinstance(slice_transformer, Backbone):
            raise TypeError("JointVolumeEncoder: slice_encoder and slice_transformer must be monai_ssl_ext Backbones")
        dim = multiscale_dim(slice_encoder)
        if not isinstance(slice_transformer.trunk, SliceTransformer) or slice_transformer.trunk.in_dim != dim:
            takes = getattr(slice_transformer.trunk, "in_dim", "?")
            raise ValueError(f"JointVolumeEncoder: the slice transformer takes {takes}-d slice features but the slice "
                             f"encoder {slice_encoder.arch} gives {dim}")
        self.slice_encoder, self.slice_transformer = slice_encoder, slice_transformer
        self.feature_dim = int(slice_transformer.trunk.d_model)
        self.load_reports: dict = {}

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-scale slice features ``(B, D, multiscale_dim)`` of volumes ``x``."""
        if x.ndim == 5 and x.shape[1] != self.slice_encoder.in_channels:
            raise ValueError(f"joint 2D-3D model: volumes have {x.shape[1]} channels but the slice encoder takes "
                             f"{self.slice_encoder.in_channels} (repeat the grey volume: RepeatChanneld, in_channels)")
        b, d = x.shape[0], x.shape[2]
        return multiscale_features(self.slice_encoder, volume_slices(x)).reshape(b, d, -1)

    def tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.slice_transformer.trunk(self.slice_features(x), mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x).mean(dim=1)


def n_masked_slices(n_slices: int, mask_ratio: float) -> int:
    """``ceil(n_slices * mask_ratio)``, the source's ``MaskGenerator`` count (7 of 64 slices at 0.1)."""
    ratio = _check_mask_ratio(mask_ratio)
    return max(1, int(math.ceil(int(n_slices) * ratio - 1e-9)))


def _check_mask_ratio(mask_ratio) -> float:
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0.0 < float(mask_ratio) < 1.0:
        raise ValueError(f"mask_ratio must be a fraction of the slices in (0, 1), got {mask_ratio!r} "
                         "(the source declared --mask_ratio type=int, so any override crashed)")
    return float(mask_ratio)


def random_slice_mask(batch: int, n_slices: int, mask_ratio: float, device=None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """``(batch, n_slices)`` bool: exactly :func:`n_masked_slices` random slices per volume are True."""
    k = n_masked_slices(n_slices, mask_ratio)
    order = torch.rand(batch, n_slices, generator=generator, device=device).argsort(dim=1)
    mask = torch.zeros(batch, n_slices, dtype=torch.bool, device=device)
    return mask.scatter_(1, order[:, :k], True)


class MaskedSliceEmbedding(nn.Module):
    """Stage (a): masked slice-embedding prediction with a frozen slice encoder.

    ``forward(*views)`` (each ``B x C x D x H x W``; the views are trained on together, as the source does) returns
    ``(prediction, target, mask)``: ``mask`` ``(V*B, D)`` marks the ``ceil(mask_ratio * D)`` masked slices of each
    volume, ``target`` ``(V*B, D, multiscale_dim)`` the frozen encoder's features (no gradient), ``prediction`` the
    decoder's output at every slice; :class:`MaskedSliceLoss` scores the masked ones.

    The slice encoder stays in eval mode (batch-norm running statistics) and gets no gradient, whatever ``train()``
    is called with; :func:`trainable_parameters` leaves it out of the optimizer.

    Args:
        backbone: the :class:`JointVolumeEncoder` (its ``slice_encoder`` is frozen here).
        mask_ratio: fraction of slices masked per volume (0.1).
    """

    def __init__(self, backbone: JointVolumeEncoder, mask_ratio: float = 0.1):
        super().__init__()
        if not isinstance(backbone, JointVolumeEncoder):
            raise TypeError(f"MaskedSliceEmbedding: backbone must be a JointVolumeEncoder, "
                            f"got {type(backbone).__name__}")
        self.backbone = backbone
        self.mask_ratio = _check_mask_ratio(mask_ratio)
        self.backbone.slice_encoder.requires_grad_(False)
        self.backbone.slice_encoder.eval()
        trunk = backbone.slice_transformer.trunk
        self.decoder = nn.Linear(trunk.d_model, trunk.in_dim)
        # default init, as the source's decoder (its init_weights is never called); not zero: LARS scales each step
        # by the weight norm, so a zero weight would keep the size of its first plain-SGD step

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.slice_encoder.eval()  # frozen: batch-norm running statistics, as the source's intra.eval()
        return self

    def forward(self, *views: torch.Tensor):
        x = torch.cat(views) if len(views) > 1 else views[0]
        with torch.no_grad():
            target = self.backbone.slice_features(x)
        mask = random_slice_mask(x.shape[0], x.shape[2], self.mask_ratio, device=x.device)
        prediction = self.decoder(self.backbone.slice_transformer.trunk(target, mask))
        return prediction, target, mask


class MaskedSliceLoss(nn.Module):
    """Mean squared error over the masked slices only:
    ``sum_{b,d: mask} ||prediction[b, d] - target[b, d]||^2 / (#mask * F)`` (``forward(prediction, target, mask)``,
    the outputs of :class:`MaskedSliceEmbedding`; ``F`` the feature size). The target is not differentiated.

    A mean, not a sum over the 5888 features: LARS leaves parameters of zero norm (the transformer's zero-initialised
    biases) unadapted, so their first steps are plain SGD on the raw gradient, whose size follows the loss's scale;
    with a sum they overshoot (measured: the loss fell, then rose above its start and stayed)."""

    def forward(self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if prediction.shape != target.shape or mask.shape != prediction.shape[:2]:
            raise ValueError(f"MaskedSliceLoss: prediction {tuple(prediction.shape)}, target {tuple(target.shape)} "
                             f"and mask {tuple(mask.shape)} do not match")
        m = mask.to(torch.bool)
        if not bool(m.any()):
            raise ValueError("MaskedSliceLoss: no slice is masked")
        diff = prediction.float()[m] - target.detach().float()[m]
        return diff.pow(2).mean()


# ---- builders the bundle configs call ---------------------------------------------------------------------------

def _weights_trunk(spec, name: str) -> str | None:
    """``name`` when the encoder file of ``spec`` holds a trunk of that name, else None (its only trunk)."""
    from ..encoders import is_random_init, read_encoder_file, timm_spec_model

    if is_random_init(spec) or timm_spec_model(spec, warn=False) is not None:
        return None
    return name if name in read_encoder_file(spec)["trunks"] else None


def joint_volume_encoder(backbone: str = "timm/resnet50", init_weights: str | None = None,
                         init_transformer: str | None = None, in_channels: int = 3, weights_later: bool = False,
                         **transformer_params) -> JointVolumeEncoder:
    """The :class:`JointVolumeEncoder` of the bundle configs.

    Args:
        backbone: the slice encoder's arch (a timm ResNet).
        init_weights: weight spec of the slice encoder: the stage-1 ``encoder.pt`` (swav_slices /
            deepclusterv2_slices), a joint encoder file (its ``slice_encoder`` trunk), ``timm/<name>`` or null (random,
            logged as a warning: stage (a) then freezes a random encoder).
        init_transformer: weight spec of the slice transformer (the stage-(a) ``encoder.pt``, its
            ``slice_transformer`` trunk; its architecture parameters must equal ``transformer_params``) or null.
        in_channels: slice channels (3: the grey slice repeated).
        weights_later: the weights are loaded after construction (an inference config's architecture-only
            ``network_def``, :func:`monai_ssl_ext.sharing.with_trunks`): no warning about random initialisation.
        transformer_params: :data:`SLICE_TRANSFORMER_DEFAULTS` overrides (``d_model``, ``num_layers`` ...).
    """
    from ..encoders import is_random_init, pretrained_backbone
    from .initialisation import unit_init_residual

    unknown = set(transformer_params) - set(SLICE_TRANSFORMER_DEFAULTS)
    if unknown:
        raise ValueError(f"joint_volume_encoder: unknown transformer parameters {sorted(unknown)}; "
                         f"known: {sorted(SLICE_TRANSFORMER_DEFAULTS)}")
    if is_random_init(init_weights) and not weights_later:
        logger.warning("joint 2D-3D: slice encoder %s randomly initialised (init_weights is null): give the stage-1 "
                       "encoder.pt of swav_slices / deepclusterv2_slices for a real run", backbone)
    encoder = pretrained_backbone(backbone, init_weights, spatial_dims=2, in_channels=in_channels,
                                  trunk=_weights_trunk(init_weights, "slice_encoder"))
    if is_random_init(init_weights):
        unit_init_residual(encoder)  # the source's ResNet keeps PyTorch's BatchNorm init (timm zeroes the last BN)
    params = {**SLICE_TRANSFORMER_DEFAULTS, **transformer_params}
    if is_random_init(init_transformer):
        if not weights_later:
            logger.info("joint 2D-3D: slice transformer randomly initialised (init_transformer is null)")
        trunk_name = None
    else:
        trunk_name = _weights_trunk(init_transformer, "slice_transformer")
    transformer = pretrained_backbone(SLICE_TRANSFORMER_ARCH, init_transformer, spatial_dims=1,
                                      in_channels=multiscale_dim(encoder), trunk=trunk_name, **params)
    model = JointVolumeEncoder(encoder, transformer)
    model.load_reports = {k: getattr(b, "load_report", None) for k, b in
                          (("slice_encoder", encoder), ("slice_transformer", transformer))}
    return model


def joint_ssl_network(method: str, backbone: JointVolumeEncoder, n_prototypes: Sequence[int] | int = (4, 4, 4),
                      dataset_size: int | None = None, kmeans_iters: int = 10, queue_length: int = 0,
                      mask_ratio: float = 0.1) -> nn.Module:
    """The network of one stage, by ``method``: ``"deepclusterv2"`` (stage b: :class:`DeepClusterV2` with
    ``projection_dims=[]``, trainable prototypes, memory bank of ``dataset_size`` volumes), ``"swav"`` (stage b:
    :class:`SwAV`, ``projection_dims=[]``, one prototype head) or ``"mask"`` (stage a: :class:`MaskedSliceEmbedding`).
    The arguments another method does not use are ignored."""
    from .clustering import DeepClusterV2, SwAV

    if method in ("deepclusterv2", "swav"):  # stage (b) never masks: the token is carried for the export only
        backbone.slice_transformer.trunk.mask_token.requires_grad_(False)
    if method == "deepclusterv2":
        if dataset_size is None:
            raise ValueError("joint_ssl_network: deepclusterv2 needs dataset_size (the memory bank's rows)")
        ks = [int(n_prototypes)] if isinstance(n_prototypes, int) else [int(k) for k in n_prototypes]
        return DeepClusterV2(backbone, int(dataset_size), projection_dims=[], n_prototypes=ks,
                             kmeans_iters=kmeans_iters, train_prototypes=True)
    if method == "swav":
        ks = [n_prototypes] if isinstance(n_prototypes, int) else list(n_prototypes)
        if len(ks) != 1:
            raise ValueError(f"joint_ssl_network: swav has one prototype head, n_prototypes={n_prototypes!r}")
        return SwAV(backbone, projection_dims=[], n_prototypes=int(ks[0]), queue_length=int(queue_length))
    if method == "mask":
        return MaskedSliceEmbedding(backbone, mask_ratio)
    raise ValueError(f"joint_ssl_network: method must be 'deepclusterv2', 'swav' or 'mask', got {method!r}")


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters that require a gradient (stage (a): not the frozen slice encoder)."""
    return [p for p in module.parameters() if p.requires_grad]
