"""Convert the BYOL ImageNet ResNet-50 checkpoint of yaox12/BYOL-PyTorch into an ``encoder.pt``.

Usage::

    python scripts/convert_byol_imagenet.py --checkpoint resnet50_byol_imagenet2012.pth.tar \\
        --out models/byol_imagenet_resnet50.pt [--key target_backbone] [--by_order False]

The released checkpoint (Google Drive link in the BYOL-PyTorch README, 300 epochs, batch 4096) is a dict
that keeps the legacy codebase's modules separately: ``online_backbone``, ``online_projection``,
``predictor`` and the target network (``target_backbone``, ...). Each backbone entry is a torchvision
ResNet-50 state dict without ``fc`` (318 tensors) whose keys carry DistributedDataParallel's ``module.``
prefix. SSL-MedSeg (``models/pretrained_models.py``) takes ``target_backbone`` with ``module.`` stripped
(the default here); BYOL-PyTorch's own ``utils/load_and_convert.py`` takes ``online_backbone`` (``--key
online_backbone``).

Key mapping: the trunk-family registry's map for foreign ``torchvision`` checkpoints
(``monai_ssl_ext.networks.families``; the ``timm`` and ``monai-resnet`` families hold it): torchvision's
ResNet-50 keys are timm's ``resnet50`` keys (same names, shapes and order), so after stripping ``module.``
and dropping ``fc.*`` the tensors load strictly into ``build_backbone("timm/resnet50").trunk``. The README
warns that the legacy parameter names are "slightly different" from torchvision's; if they do not match,
the conversion stops and lists them, and ``--by_order True`` maps the tensors by position instead (what
``load_and_convert.py`` does; ``families.map_keys_by_order``), checking every shape.

The result is written with :func:`monai_ssl_ext.encoders.export_encoder`: arch ``timm/resnet50``, 3 input
channels, method ``byol-imagenet``, ImageNet normalisation (what BYOL trained with). Finetuning or
hierarchical pretraining on 1-channel images loads it with the 3→1 sum of the stem filters, e.g.
``pretrained_backbone(arch="timm/resnet50", weights=<out>, in_channels=1)``.
"""

from __future__ import annotations

import os
import sys

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_KEY = "target_backbone"


class CheckpointFormatError(ValueError):
    """The checkpoint is not the BYOL-PyTorch format this script expects."""


def _load(checkpoint: str) -> dict:
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"BYOL checkpoint not found: {checkpoint}")
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled objects that weights_only refuses
        raise CheckpointFormatError(
            f"cannot read {checkpoint} with torch.load(weights_only=True): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(payload, dict):
        raise CheckpointFormatError(f"{checkpoint}: expected a dict of state dicts, got {type(payload).__name__}")
    return payload


def backbone_state(checkpoint: str, key: str = DEFAULT_KEY) -> dict[str, torch.Tensor]:
    """The backbone state dict under ``key``, as saved (keys with their ``module.`` prefixes)."""
    payload = _load(checkpoint)
    if key not in payload:
        available = sorted(str(k) for k in payload)
        raise CheckpointFormatError(
            f"{checkpoint} has no top-level key {key!r} (keys: {available}); pass --key with one of them "
            f"(BYOL-PyTorch releases 'online_backbone' and 'target_backbone')"
        )
    state = payload[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()) or not state:
        raise CheckpointFormatError(f"{checkpoint}[{key!r}] is not a non-empty state dict of tensors")
    return {str(k): v for k, v in state.items()}


def map_to_trunk(state: dict[str, torch.Tensor], trunk: torch.nn.Module, by_order: bool = False,
                 source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Map ``state`` onto ``trunk``'s keys with the registry's ``torchvision`` key map (``module.``
    stripped, ``fc.*`` dropped): by name (default) or, over the tensors that map keeps, by position
    (``by_order``), checking shapes. ``num_batches_tracked`` counters missing from the source are set to 0."""
    from monai_ssl_ext.networks.families import TORCHVISION, family_of_module, map_keys, map_keys_by_order

    dst = trunk.state_dict()
    named = map_keys(TORCHVISION, list(state), family_of_module(trunk), list(dst))
    seen: dict[str, str] = {}
    for s_key, d_key in named.items():
        if d_key in seen:
            raise CheckpointFormatError(f"{source}: {seen[d_key]} and {s_key} both map to {d_key!r}")
        seen[d_key] = s_key
    if by_order:
        try:
            pairs = map_keys_by_order(list(named), list(dst))
        except ValueError as e:
            raise CheckpointFormatError(f"{source}: {e}") from None
        mapped = {}
        for s_key, d_key in pairs.items():
            tensor = state[s_key]
            if tensor.shape != dst[d_key].shape or tensor.is_floating_point() != dst[d_key].is_floating_point():
                raise CheckpointFormatError(
                    f"{source}: by order, {s_key} {tuple(tensor.shape)} {tensor.dtype} would go to {d_key} "
                    f"{tuple(dst[d_key].shape)} {dst[d_key].dtype}"
                )
            mapped[d_key] = tensor
    else:
        missing = [k for k in dst if k not in seen and not k.endswith("num_batches_tracked")]
        unexpected = [d for d in seen if d not in dst]
        if missing or unexpected:
            raise CheckpointFormatError(
                f"{source} does not match the trunk's keys: {len(missing)} missing {missing[:5]}, "
                f"{len(unexpected)} unexpected {unexpected[:5]}. If the names differ but the tensors are in "
                "torchvision order, pass --by_order True"
            )
        mapped = {d_key: state[s_key] for d_key, s_key in seen.items()}
        for k, tensor in mapped.items():
            if tensor.shape != dst[k].shape:
                raise CheckpointFormatError(
                    f"{source}: {k} has shape {tuple(tensor.shape)}, the trunk {tuple(dst[k].shape)}"
                )
    for k in dst:
        if k.endswith("num_batches_tracked") and k not in mapped:
            mapped[k] = torch.zeros_like(dst[k])
    return mapped


def convert(checkpoint: str, out: str, key: str = DEFAULT_KEY, by_order: bool = False,
            arch: str = "timm/resnet50") -> dict:
    """Convert ``checkpoint[key]`` into ``out`` (an ``encoder.pt``); returns a summary."""
    from monai_ssl_ext.encoders import export_encoder
    from monai_ssl_ext.networks import build_backbone

    state = backbone_state(checkpoint, key)
    backbone = build_backbone(arch, in_channels=3)
    mapped = map_to_trunk(state, backbone.trunk, by_order=by_order, source=f"{checkpoint}[{key!r}]")
    backbone.trunk.load_state_dict(mapped, strict=True)
    export_encoder(
        backbone, out, method="byol-imagenet",
        normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        source=os.path.basename(checkpoint), source_key=key,
    )
    return {"out": out, "arch": arch, "tensors": len(mapped), "source_key": key, "by_order": bool(by_order)}


def main(checkpoint: str, out: str, key: str = DEFAULT_KEY, by_order: bool = False, arch: str = "timm/resnet50"):
    """CLI entry point: see the module docstring."""
    summary = convert(checkpoint, out, key=key, by_order=by_order, arch=arch)
    print(f"{checkpoint}[{key!r}] -> {out}: {summary['tensors']} tensors, arch {arch}")


if __name__ == "__main__":
    import fire

    try:
        fire.Fire(main)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
