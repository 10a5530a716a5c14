"""Trunk families: the one registry of the kinds of network an encoder trunk can be.

A *family* is everything the package knows about one kind of trunk, in one :class:`TrunkFamily`
entry: how to recognise it (from an ``arch`` name and from a downstream module), build it, pool it,
list its feature maps, name its first convolution, which of a downstream trunk's tensors no encoder
fills, how foreign checkpoints map onto it, and which architecture parameters no tensor shape
reveals. :func:`~monai_ssl_ext.networks.build_backbone`, :class:`~monai_ssl_ext.networks.Backbone`,
:func:`~monai_ssl_ext.encoders.load_encoder`, :func:`~monai_ssl_ext.encoders.check_architecture`,
:func:`~monai_ssl_ext.encoders.pretrained_backbone` and the checkpoint converters in ``scripts/``
read it; nothing else decides which family a trunk is.

Built-in families (first match wins, highest ``priority`` first):

=========================  ====================================================================
``monai-efficientnet``     ``efficientnet-b0`` … ``-b8``, ``-l2``: MONAI's FlexibleUNet encoder (2D/3D)
``monai-resnet``           ``resnet10`` … ``resnet200``: MONAI's FlexibleUNet encoder (2D/3D)
``monai-vit``              ``vit``: MONAI ``ViT`` without a classification head (2D/3D; sized by
                           ``arch_params``, with or without a class token); key map onto timm
                           ``VisionTransformer`` (``timm/vit_base_patch16_224`` ...)
``timm-tf-efficientnet``   ``timm/tf_efficientnet_b<N>`` / ``_l2``: timm, with a key map onto
                           ``monai-efficientnet`` (priority 1, before ``timm``)
``timm``                   ``timm/<model-name>``: any timm model (2D)
``slice-transformer``      ``slice-transformer``: the joint 2D-3D method's transformer over slice features
                           (``networks/joint3d.py``; sized by ``arch_params``, ``in_channels`` = feature size)
=========================  ====================================================================

Adding a family is one :func:`register_family` call (and one test that an exported trunk of it
computes the same features after :func:`~monai_ssl_ext.encoders.load_encoder`); see
``tests/networks/test_families.py`` for a complete toy entry.

Key maps (``maps_from`` / ``maps_to``) are ``fn(src_keys, dst_keys) -> {src_key: dst_key}``; a source
key left out of the result is unused (ignored when it is one of the source family's tensors that no
forward uses, its ``ignore_missing``). A target key may be a :class:`MappedKey`, which also converts
the tensor (e.g. a position-embedding table given the class-token slot the target has). The pair
(source, target) is looked up on the target's ``maps_from`` (by source family or foreign-format
name, e.g. :data:`TORCHVISION`), then on the source's ``maps_to``; without either the keys map to
themselves.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import nn

__all__ = [
    "TrunkFamily",
    "KeyMap",
    "MappedKey",
    "map_tensor",
    "unused_by_design",
    "TIMM_PREFIX",
    "TORCHVISION",
    "VIT_DEFAULTS",
    "register_family",
    "unregister_family",
    "get_family",
    "list_families",
    "family_of_arch",
    "family_of_module",
    "find_key_map",
    "map_keys",
    "map_keys_by_order",
    "conv_signature",
    "first_conv_key",
    "known_arch_names",
    "plain_arch_params",
    "freeze_unused_vit_norms",
    "set_layer_norm_eps",
    "monai_backbone_names",
]

KeyMap = Callable[[list[str], list[str]], dict[str, str]]

TIMM_PREFIX = "timm/"
TORCHVISION = "torchvision"  # foreign format: a torchvision state dict, possibly saved from DDP (``module.``)
_EMPTY: Mapping = MappingProxyType({})


def _never(module: nn.Module) -> bool:
    return False


def _spatial_dims(module: nn.Module) -> int | None:
    conv = next((m for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return len(conv.kernel_size) if conv is not None else None


def conv_signature(module: nn.Module) -> dict:
    """The shape-invariant parameters every trunk shows: ``spatial_dims`` (of its first convolution)."""
    dims = _spatial_dims(module)
    return {} if dims is None else {"spatial_dims": dims}


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class TrunkFamily:
    """One kind of trunk (see the module docstring).

    Args:
        name: unique family name (``"monai-resnet"``); also the key other entries' key maps use.
        matches_arch: ``arch`` name → whether this family builds it.
        build: ``build(arch, spatial_dims, in_channels, **arch_params) -> nn.Module``, the trunk
            (the module whose ``state_dict`` is the exported encoder).
        pool: ``pool(trunk, x)`` → pooled features ``(B, feature_dim)`` for SSL heads.
        feature_maps: ``feature_maps(trunk, x)`` → per-stage feature maps (a decoder's skips).
        feature_dim: ``feature_dim(trunk)`` → size of the pooled features.
        first_conv: state-dict key of the stem convolution (input-channel conversion), or
            ``first_conv(trunk) -> key``.
        matches_module: downstream module → whether it is a trunk of this family (a bare
            ``FlexibleUNet.encoder``, ``UNETR.vit``, a timm model ...).
        arch_params: the architecture parameters ``build`` takes, with their defaults (recorded
            whole in the encoder header); ``None``: the arch name says everything, none accepted.
        spatial_dims: the spatial dimensions it can be built with.
        ignore_missing: regexes of this family's tensors that no encoder fills and no forward of
            the trunk uses: a downstream tensor matching one may stay unfilled, a source tensor
            matching one may be left out by a key map; both are reported as ignored (MONAI
            EfficientNet's ImageNet classifier ``_fc``, MONAI ViT's ``norm_cross_attn`` LayerNorms
            that only cross attention uses, a downstream head).
        maps_from: source family or foreign-format name → key map onto this family.
        maps_to: target family name → key map from this family onto it.
        signature: ``signature(module) -> {name: value}``, the architecture parameters of a module of
            this family that no tensor shape reveals (compared by ``check_architecture``).
        header_signature: the same parameters from an encoder header (its ``arch_params``), when they
            can be computed without rebuilding the trunk; otherwise the header's trunk is rebuilt on
            the meta device and ``signature`` read off it.
        declared_params: parameters a module does not record but a caller may declare
            (``target_arch_params``, a Backbone's ``arch_params``): name → ``fn(value, signature)``,
            the comparable value (ViT ``img_size`` → its patch grid).
        arch_params_required: a header of this family can be rebuilt only with its ``arch_params``
            (defaults would describe another trunk).
        names: the arch names it accepts, for error messages (or a function returning them).
        priority: families are matched highest priority first, then in registration order.
    """

    name: str
    matches_arch: Callable[[str], bool]
    build: Callable[..., nn.Module]
    pool: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    feature_maps: Callable[[nn.Module, torch.Tensor], list]
    feature_dim: Callable[[nn.Module], int]
    first_conv: str | Callable[[nn.Module], str]
    matches_module: Callable[[nn.Module], bool] = _never
    arch_params: Mapping[str, object] | None = None
    spatial_dims: tuple[int, ...] = (2, 3)
    ignore_missing: tuple[str, ...] = ()
    maps_from: Mapping[str, KeyMap] = field(default_factory=dict)
    maps_to: Mapping[str, KeyMap] = field(default_factory=dict)
    signature: Callable[[nn.Module], dict] = conv_signature
    header_signature: Callable[[dict], dict] | None = None
    declared_params: Mapping[str, Callable[[object, dict], object]] = field(default_factory=dict)
    arch_params_required: bool = False
    names: str | Callable[[], str] = ""
    priority: int = 0


# ---- the registry ----------------------------------------------------------------------------

_REGISTRY: dict[str, TrunkFamily] = {}
_ORDER: list[TrunkFamily] = []


def _reorder() -> None:
    order = {name: i for i, name in enumerate(_REGISTRY)}
    _ORDER[:] = sorted(_REGISTRY.values(), key=lambda f: (-f.priority, order[f.name]))


def register_family(family: TrunkFamily, replace: bool = False) -> TrunkFamily:
    """Add ``family`` to the registry (``replace=True`` to overwrite an entry of the same name)."""
    if not isinstance(family, TrunkFamily):
        raise TypeError(f"register_family: expected a TrunkFamily, got {type(family).__name__}")
    if family.name in _REGISTRY and not replace:
        raise ValueError(f"trunk family {family.name!r} is already registered (pass replace=True)")
    _REGISTRY[family.name] = family
    _reorder()
    return family


def unregister_family(name: str) -> TrunkFamily:
    """Remove a family; returns its entry."""
    family = get_family(name)
    del _REGISTRY[name]
    _reorder()
    return family


def get_family(name: str) -> TrunkFamily:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no trunk family {name!r}; registered: {sorted(_REGISTRY)}") from None


def list_families() -> list[TrunkFamily]:
    """The registered families, in matching order."""
    return list(_ORDER)


def family_of_arch(arch: str) -> TrunkFamily | None:
    """The family that builds ``arch`` (None when no family does)."""
    if not isinstance(arch, str):
        return None
    return next((f for f in _ORDER if f.matches_arch(arch)), None)


def family_of_module(module: nn.Module) -> TrunkFamily | None:
    """The family a downstream module belongs to (None when none recognises it)."""
    return next((f for f in _ORDER if f.matches_module(module)), None)


def known_arch_names() -> str:
    """The arch names the registry accepts, for messages (in registration order)."""
    return "; ".join((f.names() if callable(f.names) else f.names) or f.name for f in _REGISTRY.values())


def first_conv_key(family: TrunkFamily, trunk: nn.Module) -> str:
    return family.first_conv(trunk) if callable(family.first_conv) else family.first_conv


def find_key_map(source: str | None, target: TrunkFamily | None) -> KeyMap | None:
    """The key map from ``source`` (a family or foreign-format name) onto ``target``, if any."""
    if source is None or target is None:
        return None
    if source in target.maps_from:
        return target.maps_from[source]
    src = _REGISTRY.get(source)
    if src is not None and target.name in src.maps_to:
        return src.maps_to[target.name]
    return None


def map_keys(source: str | None, src_keys: list[str], target: TrunkFamily | None, dst_keys: list[str]) -> dict[str, str]:
    """Source key → target key for the (source, target) pair (identity when no map is registered)."""
    fn = find_key_map(source, target)
    if fn is None:
        return {k: k for k in src_keys}
    return fn(list(src_keys), list(dst_keys))


class MappedKey(str):
    """A key map's target key whose tensor is converted on loading: ``MappedKey(key, convert)`` with
    ``convert(tensor, target) -> tensor`` (``target``: the downstream tensor it replaces, for its
    shape). It *is* the key (a ``str``), so maps, reports and lookups read it as one;
    :func:`map_tensor` applies the conversion."""

    convert: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __new__(cls, key: str, convert: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        obj = super().__new__(cls, key)
        obj.convert = convert
        return obj


def map_tensor(key: str, tensor: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``tensor`` as the target key ``key`` takes it: converted when the key map made it a
    :class:`MappedKey`, unchanged otherwise."""
    convert = getattr(key, "convert", None)
    return tensor if convert is None else convert(tensor, target)


def unused_by_design(family: TrunkFamily | None, key: str) -> bool:
    """Whether ``key`` is one of ``family``'s tensors that no forward uses (its ``ignore_missing``):
    such a source tensor that a key map leaves out is ignored, not unused."""
    return family is not None and any(re.search(p, key) for p in family.ignore_missing)


def map_keys_by_order(src_keys: list[str], dst_keys: list[str], skip: str = "num_batches_tracked") -> dict[str, str]:
    """Pair tensors by position (for checkpoints whose names differ but whose order is the
    target's); when the counts differ, target keys ending in ``skip`` (BN counters a source may not
    save) are left out. Raises ``ValueError`` when the counts still differ. Shapes are the caller's
    to check."""
    dst = list(dst_keys)
    if len(src_keys) != len(dst):
        dst = [k for k in dst_keys if not k.endswith(skip)]
    if len(src_keys) != len(dst):
        raise ValueError(
            f"{len(src_keys)} tensors but the trunk has {len(dst_keys)} ({len(dst)} without {skip}); "
            "cannot map by order"
        )
    return dict(zip(src_keys, dst))


def plain_arch_params(params: Mapping) -> dict:
    """Architecture parameters as plain Python values (lists for sequences, ``int``/``float`` for
    numbers), as the encoder header stores them."""

    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, numbers.Integral):
            return int(v)
        if isinstance(v, numbers.Real):
            return float(v)
        return v

    return {k: plain(v) for k, v in params.items()}


# ---- shared helpers --------------------------------------------------------------------------

def _tuple(value, n: int) -> tuple:
    from monai.utils import ensure_tuple_rep

    return tuple(int(v) for v in ensure_tuple_rep(value, n))


@dataclass(frozen=True)
class _Grid:
    """A ViT input size: compared by patch grid (``img_size // patch_size``), shown with the size."""

    grid: tuple
    img_size: tuple

    def __eq__(self, other) -> bool:
        return isinstance(other, _Grid) and self.grid == other.grid

    def __hash__(self) -> int:
        return hash(self.grid)

    def __repr__(self) -> str:
        return f"{self.img_size} (patch grid {self.grid})"


def _grid(img_size, patch_size: tuple) -> _Grid:
    img = _tuple(img_size, len(patch_size))
    return _Grid(tuple(i // p for i, p in zip(img, patch_size)), img)


def _resnet_fields(conv1, max_pool: bool, act: nn.Module) -> dict:
    return {"conv1_stride": tuple(conv1.stride), "max_pool": max_pool, "activation": type(act).__name__}


def _is_timm(module: nn.Module) -> bool:
    return type(module).__module__.startswith("timm.")


# ---- MONAI FlexibleUNet encoders -------------------------------------------------------------

def monai_backbone_names() -> list[str]:
    """Names of MONAI's FlexibleUNet encoders."""
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

    return sorted(FLEXUNET_BACKBONE.register_dict)


def _flexunet_entry(arch: str) -> dict | None:
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

    return FLEXUNET_BACKBONE.register_dict.get(arch)


def _flexunet_of(base: str) -> Callable[[str], bool]:
    def matches(arch: str) -> bool:
        entry = _flexunet_entry(arch)
        if entry is None:
            return False
        if base == "efficientnet":
            from monai.networks.nets.efficientnet import EfficientNet as cls
        else:
            from monai.networks.nets.resnet import ResNet as cls
        return issubclass(entry["type"], cls)

    return matches


def _build_flexunet(arch: str, spatial_dims: int, in_channels: int) -> nn.Module:
    entry = _flexunet_entry(arch)
    params = dict(entry["parameter"], spatial_dims=spatial_dims, in_channels=in_channels, pretrained=False)
    return entry["type"](**params)


def _build_monai_efficientnet(arch: str, spatial_dims: int, in_channels: int) -> nn.Module:
    trunk = _build_flexunet(arch, spatial_dims, in_channels)
    trunk._fc = nn.Identity()  # the ImageNet classifier is not part of the trunk
    return trunk


def _pool_monai_efficientnet(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # EfficientNetBN's classification path (stem, blocks, conv head, pooling, dropout) with the
    # classifier removed: the 1280-d feature torchvision's efficientnet_b0 gives.
    from monai.networks.nets.efficientnet import EfficientNetBN

    return EfficientNetBN.forward(trunk, x)


def _pool_monai_resnet(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from monai.networks.nets.resnet import ResNet

    return ResNet.forward(trunk, x)


def _is_monai_efficientnet(module: nn.Module) -> bool:
    from monai.networks.nets.efficientnet import EfficientNet

    return isinstance(module, EfficientNet)


def _is_monai_resnet(module: nn.Module) -> bool:
    from monai.networks.nets.resnet import ResNet

    return isinstance(module, ResNet)


def _monai_resnet_feature_dim(trunk: nn.Module) -> int:
    convs = [m for m in trunk.layer4.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return int(convs[-1].out_channels)


def _monai_resnet_signature(module: nn.Module) -> dict:
    sig = conv_signature(module)
    if isinstance(getattr(module, "conv1", None), nn.modules.conv._ConvNd):
        sig.update(_resnet_fields(module.conv1, not module.no_max_pool, module.act))
    return sig


def _map_torchvision(src_keys: list[str], dst_keys: list[str]) -> dict[str, str]:
    """A torchvision ResNet state dict (keys as timm's and MONAI's ResNets name them), possibly saved
    from ``DistributedDataParallel`` (``module.`` prefixes): prefixes stripped, classifier ``fc``
    dropped."""
    out = {}
    for key in src_keys:
        name = key
        while name.startswith("module."):
            name = name[len("module.") :]
        if not name.startswith("fc."):
            out[key] = name
    return out


# ---- MONAI ViT -------------------------------------------------------------------------------

VIT_DEFAULTS = {
    "img_size": 96, "patch_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12,
    "proj_type": "conv", "qkv_bias": False, "dropout_rate": 0.0,
    # MONAI ViT's own defaults; MAE's encoder (ViT-B/16): "sincos", True, 1e-6 (timm's and the MAE code's eps)
    "pos_embed_type": "learnable", "cls_token": False, "layer_norm_eps": 1e-5,
}


def freeze_unused_vit_norms(vit: nn.Module) -> list[str]:
    """MONAI's ``TransformerBlock`` always holds a ``norm_cross_attn`` LayerNorm that only cross
    attention uses; without cross attention it never gets a gradient, which makes
    ``DistributedDataParallel`` fail ("parameters that were not used"). Freeze those (they stay in
    the state dict and the export); returns the frozen parameter names."""
    frozen = []
    for name, block in vit.named_modules():
        if hasattr(block, "norm_cross_attn") and not getattr(block, "with_cross_attention", False):
            block.norm_cross_attn.requires_grad_(False)
            frozen += [f"{name}.norm_cross_attn.{p}" for p, _ in block.norm_cross_attn.named_parameters()]
    return frozen


def set_layer_norm_eps(module: nn.Module, eps: float) -> None:
    """Set the ``eps`` of every LayerNorm in ``module`` (MONAI's transformer blocks fix 1e-5; timm's
    ViTs and the MAE / MoCo v3 code use 1e-6)."""
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = float(eps)


def _build_vit(arch: str, spatial_dims: int, in_channels: int, cls_token: bool = False,
               layer_norm_eps: float = 1e-5, **params) -> nn.Module:
    """MONAI ``ViT`` as a trunk: no classification head; with ``cls_token`` a class token is
    prepended to the patch tokens (``ViT(classification=True)`` without its head: the forward then
    returns every token, the class token first, after the final norm); every LayerNorm's eps is
    ``layer_norm_eps``."""
    from monai.networks.nets import ViT

    from ..utils import as_bool

    cls_token = as_bool(cls_token, "cls_token")  # "false" from a command line is False
    trunk = ViT(in_channels=in_channels, spatial_dims=spatial_dims, classification=cls_token, **params)
    if cls_token:
        del trunk.classification_head  # a downstream classifier's head is its own, not the encoder's
    set_layer_norm_eps(trunk, layer_norm_eps)
    freeze_unused_vit_norms(trunk)
    return trunk


def _vit_prefix(trunk: nn.Module) -> int:
    """Tokens before the patch tokens in a MONAI ViT's output: 1 with a class token, else 0."""
    return 1 if isinstance(getattr(trunk, "cls_token", None), torch.Tensor) else 0


def _pool_vit(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The class token after the final norm when the trunk has one (MAE / MoCo v3 / SSL4GIE's
    ``out_token="cls"``), else the mean of the patch tokens after the final norm."""
    tokens = trunk(x)[0]
    return tokens[:, 0] if _vit_prefix(trunk) else tokens.mean(dim=1)


def _is_vit(module: nn.Module) -> bool:
    from monai.networks.blocks import PatchEmbeddingBlock

    return isinstance(getattr(module, "patch_embedding", None), PatchEmbeddingBlock) and hasattr(module, "blocks")


def _vit_feature_maps(trunk: nn.Module, x: torch.Tensor) -> list:
    """The patch tokens ``(B, N, hidden)`` of every block (UNETR's skips), then of the output after
    the final norm; a class token is left out, so each map reshapes to the patch grid."""
    tokens, hidden = trunk(x)
    n = _vit_prefix(trunk)
    return [h[:, n:] for h in (*hidden, tokens)]


def _vit_signature(vit: nn.Module) -> dict:
    """What a MONAI ViT trunk (ViT, UNETR.vit, ViTAutoEnc) records about its architecture."""
    pe = vit.patch_embedding
    proj = pe.patch_embeddings
    if isinstance(proj, nn.modules.conv._ConvNd):
        patch = tuple(int(k) for k in proj.kernel_size)
        in_channels = int(proj.in_channels)
    else:  # perceptron: Sequential(einops Rearrange with p1, p2[, p3], Linear)
        lengths = proj[0].axes_lengths
        patch = tuple(int(lengths[f"p{i}"]) for i in range(1, len(lengths) + 1))
        in_channels = int(pe.patch_dim) // int(torch.tensor(patch).prod())
    blocks = list(vit.blocks)
    heads = [int(b.attn.num_heads) for b in blocks]
    attn = blocks[0].attn if blocks else None
    qkv = getattr(attn, "qkv", None) if attn is not None else None
    if not isinstance(qkv, nn.Linear) and attn is not None:
        qkv = getattr(attn, "to_q", None)
    sig = {
        "spatial_dims": len(patch),
        "in_channels": in_channels,
        "patch_size": patch,
        "proj_type": str(pe.proj_type),
        "pos_embed_type": str(pe.pos_embed_type),
        "n_patches": int(pe.n_patches),
        "hidden_size": int(pe.position_embeddings.shape[-1]),
        "mlp_dim": int(blocks[0].mlp.linear1.out_features) if blocks else None,
        "num_layers": len(blocks),
        "num_heads": (heads[0] if len(set(heads)) == 1 else tuple(heads)) if heads else None,
        "qkv_bias": isinstance(qkv, nn.Linear) and qkv.bias is not None,
        "classification": hasattr(vit, "cls_token"),
    }
    return {k: v for k, v in sig.items() if v is not None}


@dataclass(frozen=True)
class _PosEmbed:
    """A ViT position-embedding type as an encoder header states it, compared with a target's: a
    fixed ``sincos`` table also fits a ``learnable`` embedding (it initialises it, as MAE's
    finetuning does: same function at load); otherwise the types must agree (a learned table would
    be frozen by a ``sincos`` target). The comparison is one-way: header == target."""

    kind: str

    def __eq__(self, other) -> bool:
        other = other.kind if isinstance(other, _PosEmbed) else other
        return self.kind == other or (self.kind == "sincos" and other == "learnable")

    def __hash__(self) -> int:
        return hash(self.kind)

    def __repr__(self) -> str:
        return repr(self.kind)


def _vit_header_signature(payload: dict) -> dict:
    """The parameters of :func:`_vit_signature` from an encoder header (its ``arch_params``, MONAI
    ViT's defaults for the ones it leaves out)."""
    import inspect

    from monai.networks.nets import ViT

    defaults = {
        k: p.default for k, p in inspect.signature(ViT.__init__).parameters.items() if p.default is not p.empty
    }
    p = {**defaults, **payload["arch_params"]}
    sd = int(payload["spatial_dims"])
    patch = _tuple(p["patch_size"], sd)
    grid = _grid(p["img_size"], patch)
    return {
        "spatial_dims": sd,
        "in_channels": int(payload["in_channels"]),
        "patch_size": patch,
        "proj_type": str(p["proj_type"]).lower(),
        "pos_embed_type": _PosEmbed(str(p["pos_embed_type"]).lower()),
        "n_patches": int(torch.tensor(grid.grid).prod()),
        "img_size": grid,
        "hidden_size": int(p["hidden_size"]),
        "mlp_dim": int(p["mlp_dim"] or p["hidden_size"]),
        "num_layers": int(p["num_layers"]),
        "num_heads": int(p["num_heads"]),
        "qkv_bias": bool(p["qkv_bias"]),
        "classification": bool(p.get("cls_token", False) or p.get("classification", False)),
    }


def _vit_declared_img_size(value, signature: dict):
    return _grid(value, signature["patch_size"])


_MONAI_VIT_TO_TIMM = (  # MONAI ViT tensor -> timm VisionTransformer tensor
    (re.compile(r"^patch_embedding\.patch_embeddings\."), "patch_embed.proj."),
    (re.compile(r"^blocks\.(\d+)\.attn\.out_proj\."), r"blocks.\1.attn.proj."),
    (re.compile(r"^blocks\.(\d+)\.mlp\.linear1\."), r"blocks.\1.mlp.fc1."),
    (re.compile(r"^blocks\.(\d+)\.mlp\.linear2\."), r"blocks.\1.mlp.fc2."),
)


def _with_prefix_slots(table: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MONAI's position table ``(1, N, D)`` covers the patches only: its class token gets no position
    embedding. timm's ``(1, P + N, D)`` has a slot per prefix token (the class token) first: a zero
    slot adds the same nothing (MAE's own table has a zero class-token slot). Only that one slot is
    added: a table of another patch grid (another image or patch size) is returned as it is, so the
    loader refuses its shape instead of loading patch positions into the wrong rows."""
    if target.shape[1] - table.shape[1] != 1:
        return table
    return torch.cat([table.new_zeros(table.shape[0], 1, table.shape[2]), table], dim=1)


def _map_monai_vit_to_timm(src_keys: list[str], dst_keys: list[str]) -> dict[str, str]:
    """MONAI ``ViT`` → timm ``VisionTransformer`` (``timm/vit_base_patch16_224`` and its kin): the
    same computation under other names when the ViT has timm's settings (class token, ``qkv_bias``,
    LayerNorm eps 1e-6, GELU MLP); the position table gains the class token's zero slot; MONAI's
    ``norm_cross_attn`` LayerNorms, which only cross attention uses, have no timm counterpart and are
    left out (ignored). What differs otherwise shows as missing / unused tensors (no class token, no
    qkv bias) or as architecture mismatches (eps, heads)."""
    out = {}
    for key in src_keys:
        if re.search(r"(^|\.)norm_cross_attn\.", key):
            continue
        if key == "patch_embedding.position_embeddings":
            out[key] = MappedKey("pos_embed", _with_prefix_slots)
            continue
        name = key
        for pattern, repl in _MONAI_VIT_TO_TIMM:
            name = pattern.sub(repl, name)
        out[key] = name
    return out


# ---- timm ------------------------------------------------------------------------------------

_TF_EFFNET = re.compile(r"^tf_efficientnet_(b\d|l2)")


def _timm_name(arch: str) -> str:
    return arch[len(TIMM_PREFIX) :]


def _timm_model_name(module: nn.Module) -> str:
    cfg = getattr(module, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture", "") if isinstance(cfg, Mapping) else getattr(cfg, "architecture", ""))


def _build_timm(arch: str, spatial_dims: int, in_channels: int) -> nn.Module:
    import timm

    model_name = _timm_name(arch)
    if not timm.is_model(model_name):
        raise ValueError(f"unknown backbone {arch!r}: timm has no model named {model_name!r}")
    return timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_channels)


def _timm_first_conv(trunk: nn.Module) -> str:
    first_conv = (getattr(trunk, "pretrained_cfg", None) or {}).get("first_conv", "conv1")
    if isinstance(first_conv, (list, tuple)):
        first_conv = first_conv[0]
    return f"{first_conv}.weight"


def _timm_feature_maps(trunk: nn.Module, x: torch.Tensor) -> list:
    return list(trunk.forward_intermediates(x, intermediates_only=True))


def _timm_signature(module: nn.Module) -> dict:
    sig = conv_signature(module)
    if type(module).__name__ == "ResNet" and isinstance(getattr(module, "conv1", None), nn.modules.conv._ConvNd):
        sig.update(_resnet_fields(module.conv1, not isinstance(module.maxpool, nn.Identity), module.act1))
    return sig


_TF_EFFNET_BLOCK = {  # timm block tensor → MONAI MBConvBlock tensor
    "conv_dw": "_depthwise_conv",
    "se.conv_reduce": "_se_reduce",
    "se.conv_expand": "_se_expand",
}
_TF_EFFNET_DS = {"conv_pw": "_project_conv", "bn1": "_bn1", "bn2": "_bn2"}  # first stage: no expansion
_TF_EFFNET_IR = {"conv_pw": "_expand_conv", "bn1": "_bn0", "bn2": "_bn1", "conv_pwl": "_project_conv", "bn3": "_bn2"}
_TF_EFFNET_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1"}


def _map_tf_efficientnet(src_keys: list[str], dst_keys: list[str]) -> dict[str, str]:
    """timm ``tf_efficientnet_bN`` → MONAI EfficientNet: timm numbers blocks per stage
    (``blocks.s.j``), MONAI globally (``_blocks.s.g``); tensor names differ by a fixed table."""
    dst_blocks = sorted(
        {tuple(map(int, m.groups())) for k in dst_keys if (m := re.match(r"^_blocks\.(\d+)\.(\d+)\.", k))}
    )
    src_blocks = sorted(
        {tuple(map(int, m.groups())) for k in src_keys if (m := re.match(r"^blocks\.(\d+)\.(\d+)\.", k))}
    )
    block_map = dict(zip(src_blocks, dst_blocks))
    mapping = {}
    for key in src_keys:
        m = re.match(r"^blocks\.(\d+)\.(\d+)\.(.+)\.(\w+)$", key)
        if m:
            stage, idx, module, tensor = int(m[1]), int(m[2]), m[3], m[4]
            if (stage, idx) not in block_map:
                continue
            table = {**_TF_EFFNET_BLOCK, **(_TF_EFFNET_DS if stage == 0 else _TF_EFFNET_IR)}
            if module in table:
                s, g = block_map[(stage, idx)]
                mapping[key] = f"_blocks.{s}.{g}.{table[module]}.{tensor}"
            continue
        module, _, tensor = key.rpartition(".")
        if module in _TF_EFFNET_TOP:
            mapping[key] = f"{_TF_EFFNET_TOP[module]}.{tensor}"
    return mapping


# ---- the built-in entries --------------------------------------------------------------------

register_family(TrunkFamily(
    name="monai-efficientnet",
    matches_arch=_flexunet_of("efficientnet"),
    matches_module=_is_monai_efficientnet,
    build=_build_monai_efficientnet,
    pool=_pool_monai_efficientnet,
    feature_maps=lambda trunk, x: list(trunk(x)),
    feature_dim=lambda trunk: int(trunk._conv_head.out_channels),
    first_conv="_conv_stem.weight",
    ignore_missing=(r"^_fc\.",),  # FlexibleUNet's encoder keeps the ImageNet classifier it never calls
    names=lambda: f"MONAI FlexibleUNet encoders ({', '.join(n for n in monai_backbone_names() if n.startswith('eff'))})",
))

register_family(TrunkFamily(
    name="monai-resnet",
    matches_arch=_flexunet_of("resnet"),
    matches_module=_is_monai_resnet,
    build=_build_flexunet,
    pool=_pool_monai_resnet,
    feature_maps=lambda trunk, x: list(trunk(x)),
    feature_dim=_monai_resnet_feature_dim,
    first_conv="conv1.weight",
    maps_from={TORCHVISION: _map_torchvision},
    signature=_monai_resnet_signature,
    names=lambda: f"MONAI FlexibleUNet encoders ({', '.join(n for n in monai_backbone_names() if n.startswith('res'))})",
))

register_family(TrunkFamily(
    name="monai-vit",
    matches_arch=lambda arch: arch == "vit",
    matches_module=_is_vit,
    build=_build_vit,
    pool=_pool_vit,
    feature_maps=_vit_feature_maps,
    feature_dim=lambda trunk: int(trunk.norm.normalized_shape[-1]),
    first_conv="patch_embedding.patch_embeddings.weight",
    arch_params=MappingProxyType(VIT_DEFAULTS),
    # cross-attention norms no forward of ViT / UNETR uses; a ViT classifier's own head
    ignore_missing=(r"(^|\.)norm_cross_attn\.", r"^classification_head\."),
    maps_to={"timm": _map_monai_vit_to_timm},
    signature=_vit_signature,
    header_signature=_vit_header_signature,
    declared_params={"img_size": _vit_declared_img_size},
    arch_params_required=True,
    names="'vit' (MONAI ViT; sized by img_size, patch_size, hidden_size, ...)",
))

_TIMM = register_family(TrunkFamily(
    name="timm",
    matches_arch=lambda arch: arch.startswith(TIMM_PREFIX),
    matches_module=_is_timm,
    build=_build_timm,
    pool=lambda trunk, x: trunk(x),
    feature_maps=_timm_feature_maps,
    feature_dim=lambda trunk: int(trunk.num_features),
    first_conv=_timm_first_conv,
    spatial_dims=(2,),
    maps_from={TORCHVISION: _map_torchvision},
    signature=_timm_signature,
    names="'timm/<model-name>' (any timm model, 2D)",
))

register_family(TrunkFamily(
    name="timm-tf-efficientnet",
    matches_arch=lambda arch: arch.startswith(TIMM_PREFIX) and bool(_TF_EFFNET.match(_timm_name(arch))),
    matches_module=lambda m: _is_timm(m) and bool(_TF_EFFNET.match(_timm_model_name(m))),
    build=_TIMM.build,
    pool=_TIMM.pool,
    feature_maps=_TIMM.feature_maps,
    feature_dim=_TIMM.feature_dim,
    first_conv=_TIMM.first_conv,
    spatial_dims=(2,),
    maps_to={"monai-efficientnet": _map_tf_efficientnet},
    signature=_TIMM.signature,
    names="'timm/tf_efficientnet_b<N>' (loads into MONAI efficientnet-b<N>)",
    priority=1,
))


# ---- torchvision detection bodies ------------------------------------------------------------
# A downstream-only family: the ResNet body of torchvision's detection backbones
# (``BackboneWithFPN.body``, an ``IntermediateLayerGetter`` over conv1 / bn1 / relu / maxpool / layer1-4, as in
# ``fasterrcnn_resnet50_fpn``; see :mod:`.detection`). No encoder is exported under it (no arch name matches);
# timm ResNets (``timm/resnet50``) load into it key for key (no map: same tensor names, no ``fc``), torchvision
# state dicts through ``_map_torchvision``. Its ``layer4`` output is the trunk's final feature map.

def _is_torchvision_resnet_body(module: nn.Module) -> bool:
    from torchvision.models._utils import IntermediateLayerGetter

    return isinstance(module, IntermediateLayerGetter) and all(hasattr(module, n) for n in ("conv1", "bn1", "layer4"))


def _build_torchvision_resnet_body(arch: str, spatial_dims: int, in_channels: int) -> nn.Module:
    from .detection import resnet_fpn_backbone

    return resnet_fpn_backbone(arch.rpartition("/")[2]).body


def _torchvision_body_feature_maps(trunk: nn.Module, x: torch.Tensor) -> list:
    return list(trunk(x).values())


register_family(TrunkFamily(
    name="torchvision-resnet-body",
    matches_arch=lambda arch: False,
    matches_module=_is_torchvision_resnet_body,
    build=_build_torchvision_resnet_body,
    pool=lambda trunk, x: _torchvision_body_feature_maps(trunk, x)[-1].mean(dim=(2, 3)),
    feature_maps=_torchvision_body_feature_maps,
    feature_dim=_monai_resnet_feature_dim,
    first_conv="conv1.weight",
    spatial_dims=(2,),
    maps_from={TORCHVISION: _map_torchvision},
    signature=lambda m: {**conv_signature(m), **_resnet_fields(m.conv1, not isinstance(m.maxpool, nn.Identity), m.relu)},
    names="torchvision detection ResNet bodies (downstream only: BackboneWithFPN.body)",
))


# ---- the joint 2D-3D method's slice transformer ----------------------------------------------------------------
# The inter-slice trunk of joint_ssl_3d (networks/joint3d.py: SliceTransformer): slice features (B, D, in_dim) in,
# tokens (B, D, d_model) out. ``in_channels`` of its header is the slice-feature size (5888 for a ResNet-50 slice
# encoder), ``spatial_dims`` 1 (a sequence of slices); its sizes are ``arch_params`` (recorded whole, compared by name).

def _joint3d():
    from . import joint3d

    return joint3d


register_family(TrunkFamily(
    name="slice-transformer",
    matches_arch=lambda arch: arch == "slice-transformer",
    matches_module=lambda m: isinstance(m, _joint3d().SliceTransformer),
    build=lambda arch, spatial_dims, in_channels, **p: _joint3d().SliceTransformer(in_channels, **p),
    pool=lambda trunk, x: trunk(x).mean(dim=1),
    feature_maps=lambda trunk, x: [trunk(x)],
    feature_dim=lambda trunk: int(trunk.d_model),
    first_conv="projection.weight",
    arch_params=MappingProxyType({"d_model": 640, "ffn_dim": 720, "num_layers": 4, "num_heads": 8, "dropout": 0.1,
                                  "activation": "gelu"}),
    spatial_dims=(1,),
    signature=lambda m: _joint3d().slice_transformer_signature(m),
    header_signature=lambda payload: _joint3d().slice_transformer_header_signature(payload),
    arch_params_required=True,
    names="'slice-transformer' (joint 2D-3D SSL: transformer over slice features; sized by d_model, num_layers, ...)",
))
