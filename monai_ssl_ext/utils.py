"""Small helpers for config values."""

from __future__ import annotations

__all__ = ["as_bool", "cpu_workers", "close_distributed", "ddp_module", "encoder_param_groups", "epoch_milestones", "finetune_param_groups", "image_meta", "init_distributed",
           "log_on_rank_zero", "non_encoder_params", "sync_batchnorm", "weight_decay_param_groups"]


def as_bool(value, key: str = "flag") -> bool:
    """Config/CLI flag → bool: ``--freeze true`` arrives as the string "true" (fire parses only
    ``True``/``False``), and a non-empty string is truthy in Python."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off", "none", "null", ""):
            return False
        raise ValueError(f"config `{key}` must be true or false, got {value!r}")
    return bool(value)


def encoder_param_groups(network, encoder_lr: float, encoder: str = "encoder") -> list[dict]:
    """Optimizer parameter groups: ``network.<encoder>`` at ``encoder_lr``, every other parameter
    in a second group at the optimizer's ``lr`` (MONAI's ``generate_param_groups`` with a
    ``select`` match, so a config needs no lambda)."""
    from monai.optimizers import generate_param_groups

    if not hasattr(network, encoder):
        raise AttributeError(f"{type(network).__name__} has no sub-module {encoder!r}")
    return generate_param_groups(network=network, layer_matches=[lambda m: getattr(m, encoder)],
                                 match_types=["select"], lr_values=[encoder_lr], include_others=True)


def non_encoder_params(network, encoder: str = "encoder") -> list:
    """The parameters of ``network`` outside ``network.<encoder>`` (a frozen-encoder optimizer)."""
    prefix = f"{encoder}."
    return [p for n, p in network.named_parameters() if not n.startswith(prefix)]


def image_meta(batch, key: str = "image") -> list[dict]:
    """``MetricsSaver(batch_transform=...)``: the meta dict of ``key`` of every item of a
    decollated batch (file names for the per-image metric rows)."""
    return [item[key].meta for item in batch]


def init_distributed() -> bool:
    """Join the ``torchrun`` process group once (NCCL on GPUs, gloo on CPUs); True when initialised."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.is_initialized()


def finetune_param_groups(network, freeze: bool, learning_rate: float, encoder_learning_rate: float,
                          frozen_learning_rate: float, encoder: str = "encoder") -> list[dict]:
    """Optimizer parameter groups of a finetuning run (source A, SPEC A.4): with a frozen encoder one
    group of the other parameters at ``frozen_learning_rate``; otherwise the encoder at
    ``encoder_learning_rate`` and the rest at ``learning_rate``."""
    if as_bool(freeze, "freeze"):
        return [{"params": non_encoder_params(network, encoder), "lr": float(frozen_learning_rate)}]
    groups = encoder_param_groups(network, encoder_learning_rate, encoder)
    for group in groups:
        group.setdefault("lr", float(learning_rate))
    return groups


def epoch_milestones(fractions, epochs: int) -> list[int]:
    """Scheduler milestones at fractions of the run (``[0.6, 0.8]`` of 100 epochs: ``[60, 80]``),
    each at least epoch 1."""
    return [max(1, int(round(float(f) * int(epochs)))) for f in fractions]


def log_on_rank_zero(*engines) -> int:
    """Under ``torchrun``, keep the INFO lines (per-iteration stats, epoch summaries) of ``engines``
    and of MONAI's ``StatsHandler`` on rank 0; other ranks log warnings and errors only. Call it
    after the engines (and their StatsHandlers, which reset their logger) are built. Returns the
    level set on this rank."""
    import logging

    from .distributed import get_rank

    level = logging.INFO if get_rank() == 0 else logging.WARNING
    for engine in engines:
        engine.logger.setLevel(level)
    logging.getLogger("monai.handlers.StatsHandler").setLevel(level)
    return level


def close_distributed() -> None:
    """Leave the process group at the end of a ``torchrun`` run: wait for every rank (rank 0 may
    still be writing checkpoints), then destroy the group, so no rank tears down its
    communication threads while another still talks to it."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def sync_batchnorm(network):
    """``network`` with its BatchNorm layers synchronised across processes when on GPUs (DDP);
    unchanged on CPUs, where ``SyncBatchNorm`` does not run."""
    import torch

    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(network) if torch.cuda.is_available() else network


def ddp_module(network, device, sync_bn: bool = False, channels_last: bool = False):
    """The module a multi-GPU config wraps in ``DistributedDataParallel``: ``network`` with synchronised BatchNorm
    (:func:`sync_batchnorm`, with ``sync_bn``), stored channels-last (with ``channels_last``, the trainer's id) and on
    ``device``. The layout is set before the wrap: DDP lays out its gradient buckets with the parameters' strides
    when it is built, and a layout changed later (by the trainer) makes it copy every gradient between the two
    layouts at each step (correct, slower)."""
    from .memory_format import network_to_channels_last

    if sync_bn:
        network = sync_batchnorm(network)
    if channels_last:
        network = network_to_channels_last(network)
    return network.to(device)


def weight_decay_param_groups(network, weight_decay: float, no_decay: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """Optimizer parameter groups with weight decay on weights only, as timm 0.3.2's ``add_weight_decay`` that
    MAE's ``main_pretrain.py`` uses (MoCo v3 does not: its AdamW decays every parameter): no decay for 1-D parameters (biases, norm weights)
    and names ending in ``.bias``, nor for names matching one of the ``no_decay`` regexes (e.g.
    ``["cls_token", "mask_token"]``: the later timm convention; MAE's pretraining code decays its tokens);
    parameters that do not require gradients (fixed position tables, frozen norms) are left out.

    Returns ``[{"params": decayed, "weight_decay": weight_decay}, {"params": not_decayed, "weight_decay": 0.0}]``
    (empty groups dropped)."""
    import re

    patterns = [re.compile(p) for p in ([no_decay] if isinstance(no_decay, str) else no_decay)]
    decay, skip = [], []
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or any(p.search(name) for p in patterns):
            skip.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": skip, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    import os

    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # macOS, Windows
        return max(os.cpu_count() or 1, 1)


def cpu_workers(num_workers: int) -> int:
    """``num_workers`` DataLoader workers, at most :func:`usable_cpus`: a published worker count (8 for a GPU node)
    on a 2-core machine starts 8 workers that fight over 2 cores and makes torch warn about it, which the user can
    do nothing about but override ``num_workers``. Logs the cap (once per value) instead. 0 stays 0."""
    import logging

    n, cpus = int(num_workers), usable_cpus()
    if n <= cpus:
        return n
    if (n, cpus) not in _CAPPED:
        _CAPPED.add((n, cpus))
        logging.getLogger("monai_ssl_ext").info(f"num_workers {n} capped at {cpus}, the CPUs this process may use")
    return cpus


_CAPPED: set = set()
