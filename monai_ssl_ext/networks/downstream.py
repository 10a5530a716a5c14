"""Downstream networks around a pretrained trunk: the linear probe of the SimCLR surgical-video
recipe (frozen trunk + ``nn.Linear``) and the input normalisation to finetune a trunk with.

* :class:`LinearProbe` -- ``classifier(backbone(x))`` where ``backbone`` is a
  :class:`~monai_ssl_ext.networks.backbones.Backbone` (pooled trunk features, never a projection
  head: the source's EfficientNet probe saw the SimCLR projection output). The trunk is frozen:
  no gradients, and it stays in eval mode when the probe is put in training mode, so BatchNorm
  running statistics are not updated.
* :func:`encoder_normalization` -- the input normalisation to finetune with: the one recorded in
  the encoder header (what pretraining used), else the config's.
* :class:`FinetuneNet` -- what every finetuning network with the glossary's ``frozen`` shares (the
  SSL4GIE classification, segmentation, detection and depth networks).

The probe bundle's other pieces live where they belong and are re-exported from
:mod:`monai_ssl_ext.networks` under their old names (configs use
``monai_ssl_ext.networks.probe_datalist`` / ``stack_from_engine``):
:func:`monai_ssl_ext.data.probe_datalist`, :func:`monai_ssl_ext.handlers.evaluation.stack_from_engine`,
:class:`~monai_ssl_ext.handlers.evaluation.BestCheckpointLoader`,
:class:`~monai_ssl_ext.handlers.evaluation.ClassificationReport` and
:class:`~monai_ssl_ext.handlers.run_signature.RunSignature`.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .backbones import Backbone

__all__ = ["FinetuneNet", "LinearProbe", "encoder_normalization"]

logger = logging.getLogger("monai_ssl_ext.downstream")


class FinetuneNet(nn.Module):
    """Base of the finetuning networks around a pretrained trunk (:attr:`encoder`, by default ``self.backbone``)
    with the glossary's ``frozen``: a subclass sets ``self.frozen`` (and turns the encoder's ``requires_grad``
    off when it is true); a frozen encoder then stays in eval mode when the network is put in training mode (its
    batch-norm statistics do not move), and the optimizer gets :meth:`trainable_parameters`."""

    frozen: bool = False

    @property
    def encoder(self) -> nn.Module:
        """The trunk the pretrained encoder loads into."""
        return self.backbone

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that train (all but the encoder's when ``frozen``)."""
        return [p for p in self.parameters() if p.requires_grad]


class LinearProbe(nn.Module):
    """A linear classifier on a frozen encoder: ``classifier(backbone(x))``.

    Args:
        backbone: the pretrained trunk; ``backbone(x)`` gives pooled ``(B, feature_dim)`` features.
        num_classes: number of output classes.

    The backbone's parameters get ``requires_grad=False``, its forward runs under
    ``torch.no_grad()``, and :meth:`train` leaves it in eval mode (BatchNorm uses and keeps its
    running statistics, dropout is off). Only ``classifier`` is trainable: give the optimizer
    ``probe.classifier.parameters()`` (or :meth:`trainable_parameters`).
    """

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise TypeError(f"LinearProbe: backbone must be a monai_ssl_ext Backbone, got {type(backbone).__name__}")
        if int(num_classes) < 1:
            raise ValueError(f"LinearProbe: num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.classifier = nn.Linear(backbone.feature_dim, int(num_classes))
        self.backbone.eval()

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.eval()  # frozen: no BatchNorm statistic updates, no dropout
        return self

    def trainable_parameters(self):
        return self.classifier.parameters()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features ``(B, feature_dim)``, without gradients."""
        if self.backbone.training:  # someone called backbone.train() directly
            self.backbone.eval()
        with torch.no_grad():
            return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def encoder_normalization(backbone: nn.Module, normalization: dict | None = None, channels: int | None = None) -> dict:
    """The input normalisation ``{"mean": [...], "std": [...]}`` for finetuning ``backbone``.

    When the backbone was loaded from an encoder file or timm weights
    (:func:`~monai_ssl_ext.encoders.pretrained_backbone` keeps the header in
    ``backbone.load_report``) and the header records a normalisation, that one is used, so the
    finetuning inputs match the pretraining inputs; a different ``normalization`` from the config
    is reported as a warning. Otherwise (random trunk, or an encoder exported without one) the
    config's ``normalization`` is used. A single mean/std is repeated to ``channels`` channels.
    """
    report = getattr(backbone, "load_report", None)
    header = (getattr(report, "header", None) or {}).get("normalization") or {}
    if header.get("mean") and header.get("std"):
        chosen = {"mean": [float(v) for v in header["mean"]], "std": [float(v) for v in header["std"]]}
        from ..encoders import same_normalization  # encoders imports this package

        if normalization and not same_normalization(chosen, normalization):
            logger.warning(
                f"the config's normalization {normalization} differs from the encoder header's {chosen} "
                f"({getattr(report, 'source', '?')}): using the header's, as in pretraining"
            )
        else:
            logger.info(f"input normalization from the encoder header: {chosen}")
    elif normalization:
        chosen = {"mean": [float(v) for v in normalization["mean"]], "std": [float(v) for v in normalization["std"]]}
        logger.info(f"input normalization from the config (no encoder header): {chosen}")
    else:
        raise ValueError(
            "no input normalization: the encoder header records none and the config's `normalization` is null"
        )
    if channels is not None:
        for k in ("mean", "std"):
            if len(chosen[k]) == 1 and channels > 1:
                chosen[k] = chosen[k] * int(channels)
            elif len(chosen[k]) != channels:
                raise ValueError(f"normalization {k} has {len(chosen[k])} values for {channels} input channels")
    return chosen
