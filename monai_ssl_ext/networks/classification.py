"""Image classification around a pretrained trunk (SSL4GIE's Hyperkvasir task, ``Classification/``).

* :class:`BackboneClassifier` -- ``Linear(feature_dim, C)`` on the trunk's pooled features (ResNet-50: 2048, the
  global average pool; ViT-B: 768, the class token after the final norm), finetuned whole or with the trunk
  ``frozen``. The input normalisation is part of the network (buffers saved with its weights), so evaluation and
  inference apply exactly the normalisation the model was trained with.
* :func:`class_weights` -- the class-weighted cross-entropy's weights ``w_c = N / (C * N_c)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .backbones import Backbone
from .downstream import FinetuneNet, encoder_normalization

__all__ = ["BackboneClassifier", "class_weights"]


class BackboneClassifier(FinetuneNet):
    """``classifier(backbone((x - mean) / std))``: a linear classification head on a pretrained trunk.

    Args:
        backbone: the trunk (:class:`~monai_ssl_ext.networks.backbones.Backbone`, e.g. from ``build_backbone`` or
            ``pretrained_backbone``); ``backbone(x)`` gives pooled ``(B, feature_dim)`` features.
        num_classes: number of classes (>= 2).
        frozen: keep the trunk fixed, as the source's ``--frozen``: no gradients (its forward runs under
            ``torch.no_grad()``), and it stays in eval mode when the classifier is put in training mode (BatchNorm
            keeps its running statistics). Only ``classifier`` trains (:meth:`trainable_parameters`).
        normalization: ``{"mean": [...], "std": [...]}`` of the inputs (the config's); the encoder header's wins when
            the trunk was loaded with one (:func:`~monai_ssl_ext.networks.encoder_normalization`, which logs a
            difference). Inputs are pictures scaled to [0, 1]; the chosen map is stored as the buffers
            ``input_mean`` / ``input_std`` and saved with the weights.
    """

    def __init__(self, backbone: Backbone, num_classes: int, frozen: bool = False,
                 normalization: Mapping | None = None):
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise TypeError(f"BackboneClassifier: backbone must be a monai_ssl_ext Backbone, got {type(backbone).__name__}")
        if isinstance(num_classes, bool) or int(num_classes) < 2:
            raise ValueError(f"BackboneClassifier: num_classes must be >= 2, got {num_classes!r}")
        if not isinstance(frozen, bool):
            raise TypeError(f"BackboneClassifier: frozen must be a bool, got {frozen!r} (config id `frozen`)")
        norm = encoder_normalization(backbone, dict(normalization) if normalization else None, backbone.in_channels)
        self.backbone = backbone
        self.frozen = frozen
        self.classifier = nn.Linear(backbone.feature_dim, int(num_classes))
        shape = (1, backbone.in_channels) + (1,) * backbone.spatial_dims
        self.register_buffer("input_mean", torch.tensor(norm["mean"], dtype=torch.float32).reshape(shape))
        self.register_buffer("input_std", torch.tensor(norm["std"], dtype=torch.float32).reshape(shape))
        if frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    @property
    def normalization(self) -> dict:
        """The input normalisation applied in :meth:`forward` (the loaded one after a checkpoint load)."""
        return {"mean": self.input_mean.flatten().tolist(), "std": self.input_std.flatten().tolist()}

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features ``(B, feature_dim)`` of [0, 1] pictures ``x`` (normalised here)."""
        x = self.normalize(x)
        if not self.frozen:
            return self.backbone(x)
        if self.backbone.training:  # someone called backbone.train() directly
            self.backbone.eval()
        with torch.no_grad():
            return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def class_weights(items: Sequence, num_classes: int, label_key: str = "label") -> torch.Tensor:
    """Weights of SSL4GIE's class-weighted cross-entropy, ``w_c = N / (C * N_c)`` (``N`` items, ``N_c`` of class
    ``c``; balanced classes give 1), from the labels of ``items`` (dicts with ``label_key``, or plain labels) --
    the training list (the source counted every image, test included). Returns a float32 ``(C,)`` tensor.

    Raises:
        ValueError: a label outside ``[0, num_classes)``, or a class without items (its weight would be infinite;
            the message names the class index).
    """
    labels = [int(it[label_key]) if isinstance(it, Mapping) else int(it) for it in items]
    if not labels:
        raise ValueError("class_weights: no items.")
    bad = sorted({v for v in labels if not 0 <= v < num_classes})
    if bad:
        raise ValueError(f"class_weights: labels outside [0, {num_classes}): {bad[:5]}.")
    counts = torch.bincount(torch.tensor(labels), minlength=num_classes)
    empty = [c for c in range(num_classes) if counts[c] == 0]
    if empty:
        raise ValueError(f"class_weights: class(es) {empty} have no training items (counts {counts.tolist()}).")
    return (len(labels) / (num_classes * counts.to(torch.float64))).to(torch.float32)
