"""The encoder hand-off: one file (two layouts), one weight-spec syntax, one key-mapping loader.

``encoder.pt`` (written by pretraining bundles and converters) comes in two layouts.

Format 1, one trunk (what :func:`export_encoder` writes)::

    {"format": 1, "arch": "efficientnet-b0", "spatial_dims": 2, "in_channels": 3, "arch_params": {},
     "feature_dim": 1280, "first_conv": "_conv_stem.weight",
     "normalization": {"mean": [...], "std": [...]},   # what the pretraining inputs were
     "method": "simclr", "package_version": "0.2.0", "epoch": 12, "iteration": 480,
     "state_dict": {...trunk keys only...}}

Format 2, one or more named trunks (what :func:`export_encoders` writes)::

    {"format": 2,
     "trunks": {"encoder": {"arch": "efficientnet-b0", "spatial_dims": 2, "in_channels": 3,
                            "arch_params": {}, "feature_dim": 1280, "first_conv": "_conv_stem.weight",
                            "state_dict": {...trunk keys only...}},
                ...},                                   # e.g. "slice_encoder", "slice_transformer"
     "normalization": {"mean": [...], "std": [...]},    # what the pretraining inputs were
     "method": "simclr", "package_version": "0.2.0", "epoch": 12, "iteration": 480, ...}

Each trunk entry records what is needed to rebuild the trunk (``arch``, ``spatial_dims``,
``in_channels``, ``arch_params``) and to check and adapt it (``feature_dim``, ``first_conv``).
A format-1 file reads as one trunk named ``"encoder"``.

A *trunk view* is what loaders work with: the file-level fields with one trunk's fields on top and
``"trunk"`` set to its name (``view["arch"]``, ``view["state_dict"]``, ``view["method"]``); a
format-1 file is a trunk view as it stands. :func:`read_encoder` returns one; ``trunk=`` picks it
(it may be left out when the file holds one trunk).

Weight spec (``pretrained_encoder`` in finetuning bundles, ``init_weights`` in pretraining ones):
a path to an ``encoder.pt``; ``timm/<model-name>`` (ImageNet weights that timm downloads, or finds
in the Hugging Face cache); or null (random initialisation).

:func:`load_encoder` maps the source trunk's keys onto a downstream trunk (the key maps of the
trunk-family registry, :mod:`monai_ssl_ext.networks.families`) and raises unless every downstream
tensor is filled and every source tensor is used (apart from the family's ``ignore_missing``), and
unless the architecture parameters that no tensor shape shows (a ViT's ``num_heads``, its patch
grid, strides, the stem max-pool, ...) agree with the header (:func:`check_architecture`), so a
hand-off never fails silently.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from . import __version__
from .io import atomic_save
from .networks.backbones import Backbone, build_backbone, trunk_family
from .networks.families import (TIMM_PREFIX, _tuple, conv_signature, family_of_arch, first_conv_key, map_keys,
                                 map_tensor, unused_by_design)

__all__ = [
    "DEFAULT_TRUNK",
    "EncoderLoadError",
    "LoadReport",
    "export_encoder",
    "export_encoders",
    "encoder_payload",
    "encoders_payload",
    "read_encoder",
    "read_encoder_file",
    "select_trunk",
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
    "check_normalization",
    "check_intensity_window",
    "timm_spec_model",
]

logger = logging.getLogger("monai_ssl_ext.encoders")

FORMAT_SINGLE = 1  # one trunk, flat (export_encoder)
FORMAT_MULTI = 2  # named trunks (export_encoders)
READABLE_FORMATS = (FORMAT_SINGLE, FORMAT_MULTI)
DEFAULT_TRUNK = "encoder"
# what a trunk entry holds: enough to rebuild the trunk (arch, spatial_dims, in_channels,
# arch_params) and to check and adapt it (feature_dim, first_conv)
TRUNK_FIELDS = ("arch", "spatial_dims", "in_channels", "arch_params", "feature_dim", "first_conv", "state_dict")
TRUNK_REQUIRED = ("arch", "spatial_dims", "in_channels", "first_conv", "state_dict")
FILE_REQUIRED = ("format", "normalization", "method")
HEADER_KEYS = ("format", "arch", "spatial_dims", "in_channels", "first_conv", "normalization", "method")  # format 1


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

# ---- the file format -------------------------------------------------------------------------

def trunk_entry(backbone: Backbone) -> dict:
    """A trunk entry of an encoder file: header fields and the trunk's weights (CPU copies)."""
    if not isinstance(backbone, Backbone):
        raise TypeError(f"expected a monai_ssl_ext Backbone, got {type(backbone).__name__}")
    return {
        "arch": backbone.arch,
        "spatial_dims": backbone.spatial_dims,
        "in_channels": backbone.in_channels,
        "arch_params": dict(backbone.arch_params),
        "feature_dim": backbone.feature_dim,
        "first_conv": backbone.first_conv,
        "state_dict": {k: v.detach().cpu().clone() for k, v in backbone.trunk.state_dict().items()},
    }


def export_encoders(
    trunks: Mapping[str, Backbone], path: str, method: str, normalization: dict | None = None,
    intensity_window: dict | None = None, **extra
) -> dict:
    """Write several named trunks to one ``encoder.pt`` (format 2, atomically); returns the file
    payload. ``extra`` (epoch, iteration, source, ...) goes into the file-level header."""
    payload = encoders_payload(trunks, method, normalization, intensity_window, **extra)
    atomic_save(payload, path)
    return payload


def encoders_payload(
    trunks: Mapping[str, Backbone], method: str, normalization: dict | None = None,
    intensity_window: dict | None = None, **extra
) -> dict:
    """What :func:`export_encoders` writes (format 2). The weights are CPU copies: a snapshot that a
    background write may save while training changes the trunks."""
    if not isinstance(trunks, Mapping) or not trunks:
        raise ValueError(f"export_encoders: expected a non-empty {{name: Backbone}} mapping, got {trunks!r}")
    bad = [n for n in trunks if not isinstance(n, str) or not n]
    if bad:
        raise ValueError(f"export_encoders: trunk names must be non-empty strings, got {bad}")
    reserved = sorted(set(extra) & {"format", "trunks", "trunk", *TRUNK_FIELDS})
    if reserved:
        raise ValueError(f"export_encoders: {reserved} are header fields the exporter writes itself")
    return {
        "format": FORMAT_MULTI,
        "trunks": {name: trunk_entry(backbone) for name, backbone in trunks.items()},
        "normalization": check_normalization(normalization),
        **({"intensity_window": check_intensity_window(intensity_window)} if intensity_window else {}),
        "method": method,
        "package_version": __version__,
        **extra,
    }


def export_encoder(
    backbone: Backbone, path: str, method: str, normalization: dict | None = None,
    intensity_window: dict | None = None, **extra
) -> dict:
    """Write ``backbone.trunk``'s weights and header to ``path`` (atomically) as a format-1 file (one
    trunk; it reads as the trunk named ``"encoder"``); returns the payload. Several trunks:
    :func:`export_encoders`."""
    payload = encoder_payload(backbone, method, normalization, intensity_window, **extra)
    atomic_save(payload, path)
    return payload


def encoder_payload(
    backbone: Backbone, method: str, normalization: dict | None = None,
    intensity_window: dict | None = None, **extra
) -> dict:
    """What :func:`export_encoder` writes (format 1). The weights are CPU copies: a snapshot that a
    background write may save while training changes the trunk."""
    entry = trunk_entry(backbone)
    reserved = sorted(set(extra) & {"format", "trunks", "trunk", *TRUNK_FIELDS})
    if reserved:
        raise ValueError(f"export_encoder: {reserved} are header fields the exporter writes itself")
    return {
        "format": FORMAT_SINGLE,
        **{k: v for k, v in entry.items() if k != "state_dict"},
        "normalization": check_normalization(normalization),
        **({"intensity_window": check_intensity_window(intensity_window)} if intensity_window else {}),
        "method": method,
        "package_version": __version__,
        **extra,
        "state_dict": entry["state_dict"],
    }


def _upgrade(payload: dict, source: str) -> dict:
    """A format-1 payload as a format-2 one (one trunk named ``"encoder"``)."""
    missing = [k for k in HEADER_KEYS if k not in payload]
    if missing:
        raise EncoderLoadError(f"{source}: encoder header lacks {missing}")
    trunk = {k: payload[k] for k in TRUNK_FIELDS if k in payload}
    rest = {k: v for k, v in payload.items() if k not in TRUNK_FIELDS}
    return {**rest, "trunks": {DEFAULT_TRUNK: trunk}}


def check_normalization(normalization: dict | None) -> dict:
    """``normalization`` is the ``{mean, std}`` of the map applied to inputs (or empty)."""
    norm = dict(normalization or {})
    if norm and set(norm) != {"mean", "std"}:
        hint = " (a CT intensity window goes in `intensity_window`)" if set(norm) & set(WINDOW_KEYS) else ""
        raise ValueError(f"normalization must be {{'mean': [...], 'std': [...]}}, got keys {sorted(norm)}{hint}")
    return norm


def check_intensity_window(window: dict | None) -> dict:
    """``intensity_window``: the ``ScaleIntensityRange`` map ``{a_min, a_max, b_min, b_max, clip}``."""
    win = dict(window or {})
    if win and (not set(win) <= set(WINDOW_KEYS) or not {"a_min", "a_max"} <= set(win)):
        raise ValueError(f"intensity_window must have keys a_min, a_max (b_min, b_max, clip), got {sorted(win)}")
    return win


def _upgrade_window(payload: dict) -> dict:
    """Files written before ``intensity_window`` existed carry a CT window in ``normalization``."""
    norm = payload.get("normalization")
    if isinstance(norm, dict) and norm and set(norm) <= set(WINDOW_KEYS) and "intensity_window" not in payload:
        payload = {**payload, "normalization": {}, "intensity_window": dict(norm)}
    return payload


def _validate(payload, source: str) -> dict:
    payload = _upgrade_window(payload) if isinstance(payload, dict) else payload
    if not isinstance(payload, dict) or ("trunks" not in payload and "state_dict" not in payload):
        raise EncoderLoadError(
            f"{source} is not an encoder file: no 'trunks' (format 2) or 'state_dict' (format 1) "
            "(expected the monai-ssl-ext format)"
        )
    fmt = payload.get("format")
    if fmt not in READABLE_FORMATS:
        raise EncoderLoadError(
            f"{source}: encoder format {fmt!r} is not supported (this version reads formats {list(READABLE_FORMATS)})"
        )
    if fmt == 1:
        return _upgrade(payload, source)
    missing = [k for k in (*FILE_REQUIRED, "trunks") if k not in payload]
    if missing:
        raise EncoderLoadError(f"{source}: encoder header lacks {missing}")
    trunks = payload["trunks"]
    if not isinstance(trunks, dict) or not trunks:
        raise EncoderLoadError(f"{source}: 'trunks' must be a non-empty {{name: trunk}} dict")
    for name, entry in trunks.items():
        lacks = [k for k in TRUNK_REQUIRED if not isinstance(entry, dict) or k not in entry]
        if lacks:
            raise EncoderLoadError(f"{source}: trunk {name!r} lacks {lacks}")
    return payload


def read_encoder_file(path: str) -> dict:
    """Load and validate a whole ``encoder.pt`` (``weights_only=True``): the payload in the format-2
    layout, every trunk under ``"trunks"`` (a format-1 file comes back in that layout with one trunk
    named ``"encoder"``; its ``"format"`` stays 1)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"encoder file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, pickled objects ...
        raise EncoderLoadError(f"cannot read encoder file {path}: {type(e).__name__}: {e}") from e
    return _validate(payload, path)


def select_trunk(payload: dict, trunk: str | None = None, source: str = "<payload>") -> dict:
    """The trunk view of one trunk of an encoder payload (format 2, or 1): file fields, the trunk's
    fields on top, ``"trunk"``: its name. ``trunk=None`` takes the only trunk; a missing or ambiguous
    name is an error that lists the trunks. A payload that already is one trunk (a view, a format-1
    payload) is that trunk."""
    if "trunks" not in payload and "state_dict" in payload:  # one trunk's view (or a format-1 payload)
        name = payload.get("trunk", DEFAULT_TRUNK)
        if trunk is not None and trunk != name:
            raise EncoderLoadError(f"{source} has no trunk {trunk!r}; its trunks: [{name!r}]")
        return payload if "trunk" in payload else {**payload, "trunk": name}
    if "trunks" not in payload:
        payload = _validate(payload, source)
    trunks = payload["trunks"]
    if trunk is None:
        if len(trunks) != 1:
            raise EncoderLoadError(
                f"{source} holds {len(trunks)} trunks {sorted(trunks)}: pick one with trunk=<name>"
            )
        trunk = next(iter(trunks))
    elif trunk not in trunks:
        raise EncoderLoadError(f"{source} has no trunk {trunk!r}; its trunks: {sorted(trunks)}")
    rest = {k: v for k, v in payload.items() if k != "trunks"}
    return {**rest, **trunks[trunk], "trunk": trunk}


def read_encoder(path: str, trunk: str | None = None) -> dict:
    """Load and validate an ``encoder.pt`` (``weights_only=True``); returns the trunk view of
    ``trunk`` (the only one when None)."""
    return select_trunk(read_encoder_file(path), trunk, path)


def _timm_payload(model_name: str, spec: str | None = None) -> dict:
    """ImageNet weights through timm's own loading path (``pretrained=True``), as a one-trunk
    (format-1) payload."""
    import timm

    spec = spec or f"{TIMM_PREFIX}{model_name}"
    if not timm.is_model(model_name):
        raise ValueError(f"weight spec '{spec}': timm has no model named {model_name!r}")
    try:
        model = timm.create_model(model_name, pretrained=True, num_classes=0)
    except Exception as e:
        raise EncoderLoadError(
            f"weight spec '{spec}': timm could not load pretrained weights ({type(e).__name__}: {e}). "
            "They are downloaded from the Hugging Face hub: go online once, or put them in the HF cache."
        ) from e
    arch = TIMM_PREFIX + model_name
    family = family_of_arch(arch)
    cfg = model.pretrained_cfg
    return {
        "format": FORMAT_SINGLE,
        "arch": arch,
        "spatial_dims": 2,
        "in_channels": cfg.get("input_size", (3,))[0],
        "arch_params": {},
        "feature_dim": family.feature_dim(model),
        "first_conv": first_conv_key(family, model),
        "normalization": {"mean": list(cfg.get("mean", ())), "std": list(cfg.get("std", ()))},
        "method": f"timm:{cfg.get('tag') or 'pretrained'}",
        "state_dict": model.state_dict(),
    }


def is_random_init(spec) -> bool:
    """True for the weight specs that mean random initialisation: null, "", "none", "null",
    "random" (the strings, because MONAI's CLI cannot pass a None override)."""
    return spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none", "null", "random"))


DEPRECATED_TIMM_SPEC = "timm:"
WINDOW_KEYS = ("a_min", "a_max", "b_min", "b_max", "clip")


def timm_spec_model(spec, warn: bool = True) -> str | None:
    """The timm model name of an ImageNet weight spec, else None. The spec is spelled like the
    backbone, ``timm/<name>``; a path that exists on disk wins (a folder named ``timm``). The old
    spelling ``timm:<name>`` still works, with a deprecation warning."""
    if not isinstance(spec, str):
        return None
    text = spec.strip()
    if text.startswith(TIMM_PREFIX) and not os.path.exists(text):
        return text[len(TIMM_PREFIX):]
    if text.startswith(DEPRECATED_TIMM_SPEC):
        name = text[len(DEPRECATED_TIMM_SPEC):]
        if warn:
            msg = f"weight spec {text!r}: 'timm:<name>' is deprecated, spell it like the backbone: '{TIMM_PREFIX}{name}'"
            warnings.warn(msg, DeprecationWarning, stacklevel=3)
            logger.warning(msg)
        return name
    return None


def arch_if_random(backbone: str, spec) -> str | None:
    """``backbone`` when ``spec`` means random initialisation, else None: the architecture then
    comes from the encoder file's header (a probe or inference run on an exported encoder)."""
    return backbone if is_random_init(spec) else None


def is_baseline_init(spec) -> bool:
    """True for the comparison baselines of a finetuning run: random initialisation or supervised
    ImageNet weights (``timm/<name>``); False for a self-supervised ``encoder.pt``."""
    return is_random_init(spec) or timm_spec_model(spec, warn=False) is not None


def encoder_learning_rate(spec, ssl_lr: float, baseline_lr: float) -> float:
    """The encoder's learning rate in source A's tool segmentation (SPEC A.4): a loaded
    self-supervised encoder trains at ``ssl_lr`` (1e-5, ``generate_param_groups``) under a decoder
    at ``baseline_lr`` (1e-4); the random and ImageNet baselines train every parameter at
    ``baseline_lr`` (``--exp imagenet``: Adam 1e-4 on all params)."""
    return float(baseline_lr if is_baseline_init(spec) else ssl_lr)


def resolve_weight_spec(spec: str | None, trunk: str | None = None) -> tuple[str, dict] | None:
    """Weight spec → ``(source description, trunk view)``; ``None`` for random initialisation.
    ``trunk`` names the trunk of a file that holds several."""
    if is_random_init(spec):
        return None
    if not isinstance(spec, str):
        raise ValueError(f"weight spec must be a path, '{TIMM_PREFIX}<model-name>' or null, got {spec!r}")
    model = timm_spec_model(spec)
    if model is not None:
        return spec, select_trunk(_timm_payload(model, spec), trunk, spec)
    return spec, read_encoder(spec, trunk)


# ---- key maps (from the family registry) -----------------------------------------------------

def map_encoder_keys(src_arch: str, src_keys: list[str], target: nn.Module) -> dict[str, str]:
    """Source-trunk key → downstream-trunk key, for the pair of families involved (the registry's
    key map; identity when it has none)."""
    source = family_of_arch(src_arch)
    return map_keys(source.name if source else None, list(src_keys), trunk_family(target), list(target.state_dict()))


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
# (a family with a ``header_signature``, the ViT: its ``arch_params``; other trunks: the trunk the
# header's arch builds, made on the meta device), the target side read off the module. The named
# parameters are each family's ``signature`` in the registry (networks/families.py).
#
# Checked, by name (the built-in families):
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


def _signature(module: nn.Module, family=None) -> dict:
    """Named shape-invariant parameters of a trunk (its family's ``signature``; see the comment above)."""
    sig = (family.signature if family is not None else conv_signature)(module)
    return {k: v for k, v in sig.items() if v is not None}


def _rebuild_source(payload: dict, source: str) -> nn.Module | None:
    """The trunk the header describes, on the meta device (no memory, no weights); None when the
    header cannot be rebuilt here (then only the named header parameters and the shapes are checked)."""
    arch = payload["arch"]
    arch_params = payload.get("arch_params")
    family = family_of_arch(arch)
    if family is not None and family.arch_params_required and arch_params is None:
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
    (parameter, encoder header value, target value) and the names of the parameters compared.
    What is compared is each family's ``signature`` / ``header_signature`` / ``declared_params``
    (:mod:`monai_ssl_ext.networks.families`)."""
    payload = select_trunk(payload, None, source)
    module = target.trunk if isinstance(target, Backbone) else target
    dst_family = trunk_family(target)
    declared = dict(dst_family.declared_params) if dst_family is not None else {}
    target_sig = _signature(module, dst_family)
    if isinstance(target, Backbone):
        target_sig["spatial_dims"] = target.spatial_dims
        for key, fn in declared.items():
            if key in target.arch_params:
                target_sig[key] = fn(target.arch_params[key], target_sig)
    for key, value in (target_arch_params or {}).items():
        if key in declared:
            value = declared[key](value, target_sig)
        elif key not in target_sig:
            raise ValueError(
                f"target_arch_params: {key!r} is not a parameter checked for {type(module).__name__} "
                f"(checked: {sorted({*target_sig, *declared})})"
            )
        elif isinstance(target_sig[key], tuple) and not isinstance(value, tuple):
            value = _tuple(value, len(target_sig[key]))
        if key in target_sig and not _same(target_sig[key], value):
            raise ValueError(
                f"target_arch_params says {key}={value!r} but {type(module).__name__} has {target_sig[key]!r}"
            )
        target_sig[key] = value

    src_family = family_of_arch(payload["arch"])
    rebuilt = _rebuild_source(payload, source)
    if src_family is not None and src_family.header_signature is not None and payload.get("arch_params") is not None:
        header_sig = src_family.header_signature(payload)
    elif rebuilt is not None:
        header_sig = _signature(rebuilt, src_family)
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
    trunk: str | None = None,
    expected_intensity_window: dict | None = None,
    source: str | None = None,
) -> LoadReport | None:
    """Load a weight spec into a downstream trunk (e.g. ``FlexibleUNet.encoder`` or a
    :class:`~monai_ssl_ext.networks.backbones.Backbone`); returns and logs a :class:`LoadReport`.

    Args:
        target: the downstream trunk (a ``Backbone`` is loaded through its ``trunk``).
        spec: a weight spec (path, ``timm/<model-name>``, null) or an already-read payload (a whole
            file or a trunk view).
        convert_channels: adapt the stem convolution when the input channel counts differ;
            otherwise such a difference is an error.
        strict: raise unless every downstream tensor is filled and every source tensor is used
            (apart from the target family's ``ignore_missing``).
        expected_normalization: the finetuning pipeline's input normalisation; a difference from
            the encoder's header is logged as a warning (and recorded in the report).
        check_arch: compare the architecture parameters that tensor shapes do not reveal (ViT
            ``num_heads``, patch grid, strides, ...; see :func:`check_architecture`) and raise on a
            difference, whatever ``strict`` says: such a trunk loads whole and computes other features.
        target_arch_params: target parameters its module does not record, e.g.
            ``{"img_size": roi_size}`` for ``UNETR.vit`` (compared as the patch grid).
        trunk: which trunk of the encoder file to load (needed when it holds several; the error
            lists them).
        expected_intensity_window: the finetuning pipeline's CT window (``intensity_window``); a
            difference from the header's is logged as a warning (and recorded in the report).
        source: the file an already-read payload came from, named in errors and the report.
    """
    if isinstance(spec, dict):
        source = source or "<payload>"
        payload = select_trunk(spec, trunk, source)
    else:
        resolved = resolve_weight_spec(spec, trunk)
        if resolved is None:
            logger.info("encoder: random initialisation (weight spec is null)")
            return None
        source, payload = resolved
    module = target.trunk if isinstance(target, Backbone) else target
    family = trunk_family(target)
    src = payload["state_dict"]
    dst = module.state_dict()
    mapping = map_encoder_keys(payload["arch"], list(src), target)
    report = LoadReport(source=str(source), arch=payload["arch"], header={k: v for k, v in payload.items() if k != "state_dict"})
    first_conv_dst = mapping.get(payload.get("first_conv", ""))
    new_state = {}
    src_family = family_of_arch(payload["arch"])
    for s_key, tensor in src.items():
        d_key = mapping.get(s_key)
        if d_key is None or d_key not in dst:  # left out: unused, unless no forward of the source uses it
            (report.ignored if unused_by_design(src_family, s_key) else report.unused).append(s_key)
            continue
        tensor = map_tensor(d_key, tensor, dst[d_key])  # e.g. a position table given the target's class-token slot
        if d_key == first_conv_dst and tensor.shape != dst[d_key].shape and convert_channels:
            tensor = convert_input_channels(tensor, dst[d_key].shape[1])
            report.converted.append(f"{s_key} {payload['in_channels']}→{dst[d_key].shape[1]}")
        if tensor.shape != dst[d_key].shape:
            report.mismatched.append(f"{s_key} {tuple(tensor.shape)} → {d_key} {tuple(dst[d_key].shape)}")
            continue
        new_state[d_key] = tensor
        report.loaded.append(d_key)
    ignore = [re.compile(p) for p in (family.ignore_missing if family is not None else ())]
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
    window = payload.get("intensity_window")
    if expected_intensity_window is not None and window and not _same_window(window, expected_intensity_window):
        msg = (
            f"encoder {source} was pretrained with intensity window {window} but the finetuning "
            f"pipeline uses {expected_intensity_window}: set the bundle's `intensity_window` to match if that is not intended"
        )
        report.header["intensity_window_warning"] = msg
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


def _same_window(a: dict, b: dict) -> bool:
    defaults = {"b_min": None, "b_max": None, "clip": False}
    a, b = {**defaults, **a}, {**defaults, **b}
    return a.keys() == b.keys() and all(
        a[k] == b[k] if isinstance(a[k], (bool, type(None))) or isinstance(b[k], (bool, type(None)))
        else abs(float(a[k]) - float(b[k])) < 1e-6 for k in a)


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

    name = payload.get("trunk", DEFAULT_TRUNK)
    which = f"arch {payload['arch']}" + ("" if name == DEFAULT_TRUNK else f", trunk {name!r}")
    parts = [f"encoder {report.source} ({which}) does not fit {type(module).__name__}:"]
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
    arch: str | None = None,
    weights: str | None = None,
    spatial_dims: int = 2,
    in_channels: int = 3,
    trunk: str | None = None,
    **arch_params,
) -> Backbone:
    """Build a :class:`Backbone` and load a weight spec into it (strictly, converting the stem
    convolution when the channel counts differ). ``arch=None`` takes the architecture from the
    encoder file's header; ``arch_params`` (ViT sizes) default to the header's; ``trunk`` names the
    trunk of a file that holds several."""
    resolved = resolve_weight_spec(weights, trunk)
    if arch is None:
        if resolved is None:
            raise ValueError("pretrained_backbone: give `arch` or an encoder file to take it from")
        arch = resolved[1]["arch"]
    header_params = dict(resolved[1].get("arch_params") or {}) if resolved is not None else {}
    params = {**header_params, **arch_params} if header_params or arch_params else {}
    backbone = build_backbone(arch, spatial_dims=spatial_dims, in_channels=in_channels, **params)
    if resolved is not None:
        source, payload = resolved
        report = load_encoder(backbone, payload, convert_channels=True, source=source)
        backbone.load_report = report
    return backbone
