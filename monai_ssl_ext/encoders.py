"""The encoder hand-off: one file format, one weight-spec syntax, one key-mapping loader.

``encoder.pt`` (written by pretraining bundles)::

    {"format": 1, "arch": "efficientnet-b0", "spatial_dims": 2, "in_channels": 3,
     "feature_dim": 1280, "first_conv": "_conv_stem.weight",
     "normalization": {"mean": [...], "std": [...]},   # what the pretraining inputs were
     "method": "simclr", "package_version": "0.1.0", "epoch": 12,
     "state_dict": {...trunk keys only...}}

Weight spec (``pretrained_encoder`` in finetuning bundles, ``init_weights`` in pretraining ones):
a path to an ``encoder.pt``; ``timm:<model-name>`` (ImageNet weights that timm downloads, or finds
in the Hugging Face cache); or null (random initialisation).

:func:`load_encoder` maps the source trunk's keys onto a downstream trunk and raises unless every
downstream tensor is filled and every source tensor is used (apart from the per-family ignore
list), and unless the architecture parameters that no tensor shape shows (a ViT's ``num_heads``,
its patch grid, strides, the stem max-pool, ...) agree with the header (:func:`check_architecture`),
so a hand-off never fails silently.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from . import __version__
from .io import atomic_save
from .networks.backbones import TIMM_PREFIX, Backbone, build_backbone

__all__ = [
    "EncoderLoadError",
    "LoadReport",
    "export_encoder",
    "read_encoder",
    "is_random_init",
    "is_baseline_init",
    "encoder_learning_rate",
    "resolve_weight_spec",
    "map_encoder_keys",
    "load_encoder",
    "convert_input_channels",
    "check_architecture",
    "pretrained_backbone",
    "same_normalization",
]

logger = logging.getLogger("monai_ssl_ext.encoders")

FORMAT_VERSION = 1
HEADER_KEYS = ("format", "arch", "spatial_dims", "in_channels", "first_conv", "normalization", "method")

# Downstream tensors that no trunk provides and no downstream forward uses: MONAI's EfficientNet
# encoder keeps the ImageNet classifier ``_fc`` that FlexibleUNet never calls.
IGNORE_MISSING = {"monai-efficientnet": (r"^_fc\.",)}


class EncoderLoadError(RuntimeError):
    """The encoder file is unreadable or does not fit the downstream trunk."""


@dataclass
class LoadReport:
    """What :func:`load_encoder` did."""

    source: str
    arch: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)
    header: dict = field(default_factory=dict)
    arch_checked: list[str] = field(default_factory=list)
    arch_mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unused or self.mismatched or self.arch_mismatches)

    def summary(self) -> str:
        text = (
            f"encoder {self.source} ({self.arch}): loaded {len(self.loaded)} tensors, "
            f"missing {len(self.missing)}, unused {len(self.unused)}, shape mismatches {len(self.mismatched)}, "
            f"ignored {len(self.ignored)}"
        )
        if self.converted:
            text += f", input channels converted: {', '.join(self.converted)}"
        return text

    def params(self) -> dict:
        """Flat dict for experiment tracking."""
        out = {k: v for k, v in self.header.items() if k != "state_dict"}
        out.update(source=self.source, loaded=len(self.loaded), ignored=len(self.ignored))
        return out


def export_encoder(
    backbone: Backbone, path: str, method: str, normalization: dict | None = None, **extra
) -> dict:
    """Write ``backbone.trunk``'s weights and header to ``path`` (atomically); returns the payload."""
    state = {k: v.detach().cpu().clone() for k, v in backbone.trunk.state_dict().items()}
    payload = {
        "format": FORMAT_VERSION,
        "arch": backbone.arch,
        "spatial_dims": backbone.spatial_dims,
        "in_channels": backbone.in_channels,
        "feature_dim": backbone.feature_dim,
        "first_conv": backbone.first_conv,
        "arch_params": dict(backbone.arch_params),
        "normalization": dict(normalization or {}),
        "method": method,
        "package_version": __version__,
        **extra,
        "state_dict": state,
    }
    atomic_save(payload, path)
    return payload


def read_encoder(path: str) -> dict:
    """Load and validate an ``encoder.pt`` (``weights_only=True``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"encoder file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, pickled objects ...
        raise EncoderLoadError(f"cannot read encoder file {path}: {type(e).__name__}: {e}") from e
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise EncoderLoadError(f"{path} is not an encoder file: no 'state_dict' (expected the monai-ssl-ext format)")
    missing = [k for k in HEADER_KEYS if k not in payload]
    if missing:
        raise EncoderLoadError(f"{path}: encoder header lacks {missing}")
    if payload["format"] != FORMAT_VERSION:
        raise EncoderLoadError(f"{path}: encoder format {payload['format']} is not supported (expected {FORMAT_VERSION})")
    return payload


def _timm_payload(model_name: str) -> dict:
    """ImageNet weights through timm's own loading path (``pretrained=True``)."""
    import timm

    if not timm.is_model(model_name):
        raise ValueError(f"weight spec 'timm:{model_name}': timm has no model named {model_name!r}")
    try:
        model = timm.create_model(model_name, pretrained=True, num_classes=0)
    except Exception as e:
        raise EncoderLoadError(
            f"weight spec 'timm:{model_name}': timm could not load pretrained weights ({type(e).__name__}: {e}). "
            "They are downloaded from the Hugging Face hub: go online once, or put them in the HF cache."
        ) from e
    cfg = model.pretrained_cfg
    first_conv = cfg.get("first_conv", "conv1")
    first_conv = first_conv[0] if isinstance(first_conv, (list, tuple)) else first_conv
    return {
        "format": FORMAT_VERSION,
        "arch": TIMM_PREFIX + model_name,
        "spatial_dims": 2,
        "in_channels": model.pretrained_cfg.get("input_size", (3,))[0],
        "feature_dim": model.num_features,
        "first_conv": f"{first_conv}.weight",
        "normalization": {"mean": list(cfg.get("mean", ())), "std": list(cfg.get("std", ()))},
        "method": f"timm:{cfg.get('tag') or 'pretrained'}",
        "state_dict": model.state_dict(),
    }


def is_random_init(spec) -> bool:
    """True for the weight specs that mean random initialisation: null, "", "none", "null",
    "random" (the strings, because MONAI's CLI cannot pass a None override)."""
    return spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none", "null", "random"))


def is_baseline_init(spec) -> bool:
    """True for the comparison baselines of a finetuning run: random initialisation or supervised
    ImageNet weights (``timm:<name>``); False for a self-supervised ``encoder.pt``."""
    return is_random_init(spec) or (isinstance(spec, str) and spec.strip().startswith("timm:"))


def encoder_learning_rate(spec, ssl_lr: float, baseline_lr: float) -> float:
    """The encoder's learning rate in source A's tool segmentation (SPEC A.4): a loaded
    self-supervised encoder trains at ``ssl_lr`` (1e-5, ``generate_param_groups``) under a decoder
    at ``baseline_lr`` (1e-4); the random and ImageNet baselines train every parameter at
    ``baseline_lr`` (``--exp imagenet``: Adam 1e-4 on all params)."""
    return float(baseline_lr if is_baseline_init(spec) else ssl_lr)


def resolve_weight_spec(spec: str | None) -> tuple[str, dict] | None:
    """Weight spec → ``(source description, payload)``; ``None`` for random initialisation."""
    if is_random_init(spec):
        return None
    if not isinstance(spec, str):
        raise ValueError(f"weight spec must be a path, 'timm:<model-name>' or null, got {spec!r}")
    if spec.startswith("timm:"):
        return spec, _timm_payload(spec[len("timm:") :])
    return spec, read_encoder(spec)


# ---- key maps --------------------------------------------------------------------------------

def _family(arch: str) -> str:
    if arch.startswith(TIMM_PREFIX):
        name = arch[len(TIMM_PREFIX) :]
        if re.match(r"^tf_efficientnet_(b\d|l2)", name):
            return "timm-tf-efficientnet"
        return "timm"
    if arch == "vit":
        return "monai-vit"
    if arch.startswith("efficientnet"):
        return "monai-efficientnet"
    if re.match(r"^resnet\d+$", arch):
        return "monai-resnet"
    return arch


def _target_family(target: nn.Module) -> str:
    from monai.networks.nets import ViT
    from monai.networks.nets.efficientnet import EfficientNet
    from monai.networks.nets.resnet import ResNet

    if isinstance(target, Backbone):
        return _family(target.arch)
    if isinstance(target, ViT):
        return "monai-vit"
    if isinstance(target, EfficientNet):
        return "monai-efficientnet"
    if isinstance(target, ResNet):
        return "monai-resnet"
    return type(target).__name__


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


# (source family, target family) → key map; identity when absent.
KEY_MAPS: dict[tuple[str, str], Callable[[list[str], list[str]], dict[str, str]]] = {
    ("timm-tf-efficientnet", "monai-efficientnet"): _map_tf_efficientnet,
}


def map_encoder_keys(src_arch: str, src_keys: list[str], target: nn.Module) -> dict[str, str]:
    """Source-trunk key → downstream-trunk key, for the pair of families involved."""
    dst_keys = list(target.state_dict())
    fn = KEY_MAPS.get((_family(src_arch), _target_family(target)))
    if fn is not None:
        return fn(src_keys, dst_keys)
    return {k: k for k in src_keys}


def convert_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a stem convolution to ``in_channels``: to 1 channel by summing the input filters
    (timm's ``adapt_input_conv``, used by SSL-MedSeg for 3→1), otherwise by repeating the filters
    and rescaling so that the response to a constant image is unchanged."""
    c = weight.shape[1]
    if c == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // c)
    return weight.repeat(1, reps, *([1] * (weight.dim() - 2)))[:, :in_channels] * (c / in_channels)


# ---- architecture check ----------------------------------------------------------------------
#
# Tensor shapes catch most differences between the encoder's trunk and the downstream one, but not
# all: a ViT with 8 heads has the same tensors as one with 12 (the qkv projection is hidden×3·hidden
# either way), a ResNet without its stem max-pool the same as one with it, a convolution with
# stride 1 the same as one with stride 2. Such a trunk loads whole and computes other features, so
# load_encoder compares these shape-invariant parameters too: the encoder side from the header
# (ViT: its ``arch_params``; other trunks: the trunk the header's arch builds, made on the meta
# device), the target side read off the module.
#
# Checked, by name:
#   MONAI ViT (ViT, UNETR.vit, ViTAutoEnc): spatial_dims, in_channels, patch_size, proj_type,
#       pos_embed_type, number of patches, patch grid (img_size // patch_size: when the target says
#       its img_size, i.e. a Backbone or ``target_arch_params``), hidden_size, mlp_dim, num_layers,
#       num_heads, qkv_bias, classification;
#   ResNet (MONAI's and timm's): spatial_dims, conv1 stride, stem max-pool, activation;
#   other trunks (EfficientNet, timm models): spatial_dims.
# Checked for every tensor the key map pairs (all families): the owning module's stride, dilation
#   and groups (convolutions; padding too within one implementation), eps (norm layers),
#   num_groups (GroupNorm), and num_heads on the attention module above a projection; for two
#   trunks of the same class, every parameterless layer of the same name (activations, pooling,
#   padding, rearrangements; dropout and identities excepted).

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


def _tuple(value, n: int) -> tuple:
    from monai.utils import ensure_tuple_rep

    return tuple(int(v) for v in ensure_tuple_rep(value, n))


def _grid(img_size, patch_size: tuple) -> _Grid:
    img = _tuple(img_size, len(patch_size))
    return _Grid(tuple(i // p for i, p in zip(img, patch_size)), img)


def _is_vit(module: nn.Module) -> bool:
    from monai.networks.blocks import PatchEmbeddingBlock

    return isinstance(getattr(module, "patch_embedding", None), PatchEmbeddingBlock) and hasattr(module, "blocks")


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
    return {
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


def _vit_header_signature(payload: dict) -> dict:
    """The same parameters as :func:`_vit_signature`, from an encoder header (its ``arch_params``,
    MONAI ViT's defaults for the ones it leaves out)."""
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
        "pos_embed_type": str(p["pos_embed_type"]).lower(),
        "n_patches": int(torch.tensor(grid.grid).prod()),
        "img_size": grid,
        "hidden_size": int(p["hidden_size"]),
        "mlp_dim": int(p["mlp_dim"] or p["hidden_size"]),
        "num_layers": int(p["num_layers"]),
        "num_heads": int(p["num_heads"]),
        "qkv_bias": bool(p["qkv_bias"]),
        "classification": bool(p.get("classification", False)),
    }


def _spatial_dims(module: nn.Module) -> int | None:
    conv = next((m for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return len(conv.kernel_size) if conv is not None else None


def _signature(module: nn.Module) -> dict:
    """Named shape-invariant parameters of a trunk (see the comment above)."""
    if _is_vit(module):
        return _vit_signature(module)
    from monai.networks.nets.resnet import ResNet

    sig = {"spatial_dims": _spatial_dims(module)}
    timm_resnet = type(module).__name__ == "ResNet" and type(module).__module__.startswith("timm.")
    if isinstance(module, ResNet) and isinstance(module.conv1, nn.modules.conv._ConvNd):
        sig.update(conv1_stride=tuple(module.conv1.stride), max_pool=not module.no_max_pool,
                   activation=type(module.act).__name__)
    elif timm_resnet and isinstance(getattr(module, "conv1", None), nn.modules.conv._ConvNd):
        sig.update(conv1_stride=tuple(module.conv1.stride), max_pool=not isinstance(module.maxpool, nn.Identity),
                   activation=type(module.act1).__name__)
    return {k: v for k, v in sig.items() if v is not None}


def _rebuild_source(payload: dict, source: str) -> nn.Module | None:
    """The trunk the header describes, on the meta device (no memory, no weights); None when the
    header cannot be rebuilt here (then only the named header parameters and the shapes are checked)."""
    arch = payload["arch"]
    arch_params = payload.get("arch_params")
    if _family(arch) == "monai-vit" and arch_params is None:
        return None  # sizes unknown: defaults would not be this encoder's
    try:
        with torch.device("meta"):
            return build_backbone(
                arch, spatial_dims=int(payload["spatial_dims"]), in_channels=int(payload["in_channels"]),
                **dict(arch_params or {}),
            ).trunk
    except Exception as e:
        logger.warning(
            f"encoder {source}: cannot rebuild arch {arch!r} to compare its layer settings "
            f"({type(e).__name__}: {e}); comparing header parameters and tensor shapes only"
        )
        return None


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)), abs(float(b)))
    return a == b


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _module_settings(src: nn.Module, dst: nn.Module, same_trunk: bool) -> list[tuple[str, object, object]]:
    out = []
    if isinstance(src, nn.modules.conv._ConvNd) and isinstance(dst, nn.modules.conv._ConvNd):
        names = ["stride", "dilation", "groups"]
        if same_trunk and type(src) is type(dst):
            # only within one implementation: timm's "same" convolutions pad in the conv (or in
            # forward), MONAI's EfficientNet in a separate padding layer
            names += ["padding", "padding_mode"]
        out += [(n, getattr(src, n), getattr(dst, n)) for n in names]
    elif isinstance(src, _NORMS) and isinstance(dst, _NORMS):
        out.append(("eps", src.eps, dst.eps))
        if isinstance(src, nn.GroupNorm) and isinstance(dst, nn.GroupNorm):
            out.append(("num_groups", src.num_groups, dst.num_groups))
    return out


def _leaf_repr(module: nn.Module) -> str:
    return re.sub(r",?\s*inplace=(True|False)", "", repr(module))


def _is_leaf_without_state(module: nn.Module) -> bool:
    return not (
        any(True for _ in module.children())
        or any(True for _ in module.parameters(recurse=False))
        or any(True for _ in module.buffers(recurse=False))
    )


def _layer_mismatches(src: nn.Module, dst: nn.Module, mapping: dict[str, str]) -> list[str]:
    """Shape-invariant settings of the layers the key map pairs, encoder (rebuilt) vs target."""
    src_mods, dst_mods = dict(src.named_modules()), dict(dst.named_modules())
    found: dict[str, str] = {}
    same_trunk = type(src) is type(dst) and all(s == d for s, d in mapping.items())
    pairs = {(s.rpartition(".")[0], d.rpartition(".")[0]) for s, d in mapping.items()}
    for s_owner, d_owner in sorted(pairs):
        sm, dm = src_mods.get(s_owner), dst_mods.get(d_owner)
        if sm is None or dm is None:
            continue
        for name, a, b in _module_settings(sm, dm, same_trunk):
            if not _same(a, b):
                found.setdefault(f"{d_owner}.{name}", f"encoder {a}, target {b}")
        # attention heads live on the module above the projection (MONAI SABlock, timm Attention)
        s_parent, d_parent = src_mods.get(s_owner.rpartition(".")[0]), dst_mods.get(d_owner.rpartition(".")[0])
        a, b = getattr(s_parent, "num_heads", None), getattr(d_parent, "num_heads", None)
        if isinstance(a, int) and isinstance(b, int) and a != b:
            found.setdefault(f"{d_owner.rpartition('.')[0]}.num_heads", f"encoder {a}, target {b}")
    if same_trunk:
        for name, sm in src_mods.items():
            dm = dst_mods.get(name)
            if dm is None or not _is_leaf_without_state(sm) or not _is_leaf_without_state(dm):
                continue
            if isinstance(sm, nn.Identity) or "drop" in type(sm).__name__.lower():
                continue  # dropout / drop-path rates are a finetuning choice, not the trunk's function
            if _leaf_repr(sm) != _leaf_repr(dm):
                found.setdefault(name, f"encoder {_leaf_repr(sm)}, target {_leaf_repr(dm)}")
    return [f"{k}: {v}" for k, v in found.items()]


def check_architecture(
    target: nn.Module,
    payload: dict,
    source: str = "<payload>",
    mapping: dict[str, str] | None = None,
    convert_channels: bool = False,
    target_arch_params: dict | None = None,
) -> tuple[list[str], list[str]]:
    """Compare the shape-invariant architecture parameters of an encoder (its header) with those of
    a downstream trunk. Returns ``(mismatches, checked)``: one readable line per difference
    (parameter, encoder header value, target value) and the names of the parameters compared."""
    module = target.trunk if isinstance(target, Backbone) else target
    target_sig = _signature(module)
    if isinstance(target, Backbone):
        target_sig["spatial_dims"] = target.spatial_dims
        if "img_size" in target.arch_params and "patch_size" in target_sig:
            target_sig["img_size"] = _grid(target.arch_params["img_size"], target_sig["patch_size"])
    for key, value in (target_arch_params or {}).items():
        if key == "img_size" and "patch_size" in target_sig:
            value = _grid(value, target_sig["patch_size"])
        elif key not in target_sig:
            raise ValueError(
                f"target_arch_params: {key!r} is not a parameter checked for {type(module).__name__} "
                f"(checked: {sorted([*target_sig, *(['img_size'] if 'patch_size' in target_sig else [])])})"
            )
        elif isinstance(target_sig[key], tuple) and not isinstance(value, tuple):
            value = _tuple(value, len(target_sig[key]))
        if key in target_sig and not _same(target_sig[key], value):
            raise ValueError(
                f"target_arch_params says {key}={value!r} but {type(module).__name__} has {target_sig[key]!r}"
            )
        target_sig[key] = value

    rebuilt = _rebuild_source(payload, source)
    if _family(payload["arch"]) == "monai-vit" and payload.get("arch_params") is not None:
        header_sig = _vit_header_signature(payload)
    elif rebuilt is not None:
        header_sig = _signature(rebuilt)
        header_sig["spatial_dims"] = int(payload["spatial_dims"])
    else:
        header_sig = {"spatial_dims": int(payload["spatial_dims"])}
    if convert_channels:
        header_sig.pop("in_channels", None)  # the stem is converted, see convert_input_channels

    checked = [k for k in header_sig if k in target_sig]
    mismatches = []
    for key in checked:
        a, b = header_sig[key], target_sig[key]
        if not _same(a, b):
            line = f"{key}: encoder header {a!r}, target {b!r}"
            if key == "in_channels":
                line += " (pass convert_channels=True to adapt the stem)"
            mismatches.append(line)
    if mismatches and mismatches[0].startswith("spatial_dims:"):
        return mismatches, checked  # everything else differs in shape anyway
    if rebuilt is not None:
        if mapping is None:
            mapping = map_encoder_keys(payload["arch"], list(payload["state_dict"]), target)
        layer = _layer_mismatches(rebuilt, module, mapping)
        named = {m.split(":", 1)[0] for m in mismatches}
        if named & {"num_heads"}:  # the per-block lines repeat it
            layer = [m for m in layer if "num_heads" not in m and "rearrange" not in m]
        mismatches += layer
        checked.append("layer settings")
    return mismatches, checked


def load_encoder(
    target: nn.Module,
    spec: str | dict | None,
    convert_channels: bool = False,
    strict: bool = True,
    expected_normalization: dict | None = None,
    check_arch: bool = True,
    target_arch_params: dict | None = None,
) -> LoadReport | None:
    """Load a weight spec into a downstream trunk (e.g. ``FlexibleUNet.encoder`` or a
    :class:`~monai_ssl_ext.networks.backbones.Backbone`); returns and logs a :class:`LoadReport`.

    Args:
        target: the downstream trunk (a ``Backbone`` is loaded through its ``trunk``).
        spec: a weight spec (path, ``timm:<model-name>``, null) or an already-read payload.
        convert_channels: adapt the stem convolution when the input channel counts differ;
            otherwise such a difference is an error.
        strict: raise unless every downstream tensor is filled and every source tensor is used
            (apart from the per-family ignore list).
        expected_normalization: the finetuning pipeline's input normalisation; a difference from
            the encoder's header is logged as a warning (and recorded in the report).
        check_arch: compare the architecture parameters that tensor shapes do not reveal (ViT
            ``num_heads``, patch grid, strides, ...; see :func:`check_architecture`) and raise on a
            difference, whatever ``strict`` says: such a trunk loads whole and computes other features.
        target_arch_params: target parameters its module does not record, e.g.
            ``{"img_size": roi_size}`` for ``UNETR.vit`` (compared as the patch grid).
    """
    if isinstance(spec, dict):
        source, payload = "<payload>", spec
    else:
        resolved = resolve_weight_spec(spec)
        if resolved is None:
            logger.info("encoder: random initialisation (weight spec is null)")
            return None
        source, payload = resolved
    module = target.trunk if isinstance(target, Backbone) else target
    family = _target_family(target)
    src = payload["state_dict"]
    dst = module.state_dict()
    mapping = map_encoder_keys(payload["arch"], list(src), target)
    report = LoadReport(source=str(source), arch=payload["arch"], header={k: v for k, v in payload.items() if k != "state_dict"})
    first_conv_dst = mapping.get(payload.get("first_conv", ""))
    new_state = {}
    for s_key, tensor in src.items():
        d_key = mapping.get(s_key)
        if d_key is None or d_key not in dst:
            report.unused.append(s_key)
            continue
        if d_key == first_conv_dst and tensor.shape != dst[d_key].shape and convert_channels:
            tensor = convert_input_channels(tensor, dst[d_key].shape[1])
            report.converted.append(f"{s_key} {payload['in_channels']}→{dst[d_key].shape[1]}")
        if tensor.shape != dst[d_key].shape:
            report.mismatched.append(f"{s_key} {tuple(tensor.shape)} → {d_key} {tuple(dst[d_key].shape)}")
            continue
        new_state[d_key] = tensor
        report.loaded.append(d_key)
    ignore = [re.compile(p) for p in IGNORE_MISSING.get(family, ())]
    for d_key in dst:
        if d_key not in new_state:
            (report.ignored if any(p.search(d_key) for p in ignore) else report.missing).append(d_key)
    if expected_normalization is not None and payload.get("normalization") and not same_normalization(
        payload["normalization"], expected_normalization
    ):
        msg = (
            f"encoder {source} was pretrained with normalization {payload['normalization']} but the finetuning "
            f"pipeline uses {expected_normalization}: set the bundle's `normalization` to match"
        )
        report.header["normalization_warning"] = msg
        logger.warning(msg)
    if check_arch:
        report.arch_mismatches, report.arch_checked = check_architecture(
            target, payload, str(source), mapping, convert_channels, target_arch_params
        )
        if report.arch_mismatches:
            raise EncoderLoadError(_failure_message(report, payload, module))
    if strict and not report.ok:
        raise EncoderLoadError(_failure_message(report, payload, module))
    module.load_state_dict(new_state, strict=False)
    logger.info(report.summary())
    return report


def same_normalization(a: dict, b: dict) -> bool:
    """Equal ``mean``/``std`` lists (to 1e-6)."""
    try:
        return all(
            len(a[k]) == len(b[k]) and all(abs(float(x) - float(y)) < 1e-6 for x, y in zip(a[k], b[k]))
            for k in ("mean", "std")
        )
    except (KeyError, TypeError):
        return a == b


def _failure_message(report: LoadReport, payload: dict, module: nn.Module) -> str:
    def head(items):
        return ", ".join(items[:5]) + (f" … (+{len(items) - 5})" if len(items) > 5 else "")

    parts = [f"encoder {report.source} (arch {payload['arch']}) does not fit {type(module).__name__}:"]
    if report.arch_mismatches:
        parts.append(
            f"architecture parameters differ [{'; '.join(report.arch_mismatches[:8])}"
            + (f"; … (+{len(report.arch_mismatches) - 8})" if len(report.arch_mismatches) > 8 else "")
            + "]"
        )
    if report.missing:
        parts.append(f"{len(report.missing)} downstream tensors not filled [{head(report.missing)}]")
    if report.unused:
        parts.append(f"{len(report.unused)} encoder tensors unused [{head(report.unused)}]")
    if report.mismatched:
        parts.append(f"{len(report.mismatched)} shape mismatches [{head(report.mismatched)}]")
        if any("weight" in m for m in report.mismatched) and payload.get("in_channels"):
            parts.append("(different input channels? pass convert_channels=True)")
    return " ".join(parts)


def pretrained_backbone(
    arch: str | None = None, weights: str | None = None, spatial_dims: int = 2, in_channels: int = 3, **arch_params
) -> Backbone:
    """Build a :class:`Backbone` and load a weight spec into it (strictly, converting the stem
    convolution when the channel counts differ). ``arch=None`` takes the architecture from the
    encoder file's header; ``arch_params`` (ViT sizes) default to the header's."""
    resolved = resolve_weight_spec(weights)
    if arch is None:
        if resolved is None:
            raise ValueError("pretrained_backbone: give `arch` or an encoder file to take it from")
        arch = resolved[1]["arch"]
    header_params = dict(resolved[1].get("arch_params") or {}) if resolved is not None else {}
    params = {**header_params, **arch_params} if header_params or arch_params else {}
    backbone = build_backbone(arch, spatial_dims=spatial_dims, in_channels=in_channels, **params)
    if resolved is not None:
        source, payload = resolved
        report = load_encoder(backbone, payload, convert_channels=True)
        report.source = source
        backbone.load_report = report
    return backbone
