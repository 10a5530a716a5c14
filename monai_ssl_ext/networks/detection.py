"""Faster R-CNN with a feature pyramid on a ResNet body: the detector of SSL4GIE's polyp detection
(source C, ``Object_detection/train_detection.py``: torchvision's ``fasterrcnn_resnet50_fpn(num_classes=2,
trainable_backbone_layers=5, image_mean/std=ImageNet)``, its ``backbone.body`` loaded strictly from the
pretrained ResNet-50 trunk).

:class:`ResNetFPNFasterRCNN` is torchvision's :class:`~torchvision.models.detection.FasterRCNN` around
torchvision's :class:`~torchvision.models.detection.backbone_utils.BackboneWithFPN` (body = the ResNet's stem and
``layer1``-``layer4`` as an ``IntermediateLayerGetter``, FPN with 256 channels on the four stages plus a max-pool
level), built the way ``fasterrcnn_resnet50_fpn`` builds it, with the choices that builder hides made explicit:

* ``frozen_batch_norm``: the source pins torchvision 0.10, whose ``resnet_fpn_backbone`` builds the body with
  ``FrozenBatchNorm2d`` whatever the weights (newer torchvision only does so when given pretrained weights), so
  all its runs -- ImageNet, self-supervised and random initialisation -- train with **frozen** batch-norm
  statistics and affine parameters (for the random run: the identity map of a fresh BatchNorm). Here the body always holds ``nn.BatchNorm2d`` (so an exported trunk loads key for key, BN counters
  included), and ``frozen_batch_norm=True`` keeps those layers in eval mode with no gradient, which computes
  exactly what ``FrozenBatchNorm2d`` computes (``(x - mean) / sqrt(var + eps) * w + b`` with fixed tensors).
* ``trainable_backbone_layers`` (0-5): as torchvision, the body's stages not in
  ``["layer4", "layer3", "layer2", "layer1", "conv1"][:k]`` (plus ``bn1`` when k = 5) get ``requires_grad=False``.
* ``frozen``: the whole body is fixed (no gradient, eval-mode BatchNorm); the FPN, RPN and box heads train.
* ``min_size`` / ``max_size``: torchvision's own resize inside the model (800 / 1333, the builder's defaults,
  which the source keeps: the data pipeline feeds native-size images).
* ``image_mean`` / ``image_std``: the normalisation the model applies to its ``[0, 1]`` inputs (the source:
  ImageNet statistics).

The body is ``model.backbone.body`` (also :attr:`ResNetFPNFasterRCNN.encoder`), the module
:func:`monai_ssl_ext.load_encoder` loads a ResNet trunk into (family ``torchvision-resnet-body`` in
:mod:`.families`: timm ResNets and torchvision state dicts map key for key; the body's ``layer4`` output equals the
exported trunk's final feature map).

:class:`ViTDetFasterRCNN` is the ViT-B/16 variant (SSL4GIE's ``vit_b`` detection): a timm ViT trunk used
ViTDet-style (:class:`ViTDetBackbone`: window attention, :class:`SimpleFeaturePyramid`) in torchvision's
``FasterRCNN``, images halved above and centre-padded to a fixed square (:class:`CentrePadTransform`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN

from .downstream import FinetuneNet

__all__ = ["ResNetFPNFasterRCNN", "resnet_body_names", "resnet_fpn_backbone", "torchvision_resnet_name"]

_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")
_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def resnet_body_names() -> tuple[str, ...]:
    """The torchvision ResNets a detector body can be (``resnet18`` ... ``resnet152``)."""
    return _RESNETS


def torchvision_resnet_name(backbone: str) -> str:
    """``resnet50`` or ``timm/resnet50`` (the trunk the pretraining bundles export: timm's plain ResNets have
    torchvision's modules and tensor names) → the torchvision ResNet name; anything else is refused."""
    name = str(backbone)
    name = name[len("timm/"):] if name.startswith("timm/") else name
    if name not in _RESNETS:
        raise ValueError(f"detector backbone must be a plain ResNet, one of {list(_RESNETS)} (or timm/<name>), "
                         f"got {backbone!r}")
    return name


def resnet_fpn_backbone(backbone: str = "resnet50", out_channels: int = 256) -> nn.Module:
    """torchvision ``BackboneWithFPN`` on a randomly initialised torchvision ResNet with ``nn.BatchNorm2d``:
    ``.body`` returns the outputs of ``layer1``-``layer4`` (keys ``"0"``-``"3"``), ``.fpn`` maps them to
    ``out_channels`` channels and adds a max-pool level (``"pool"``)."""
    import torchvision
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    name = torchvision_resnet_name(backbone)
    resnet = getattr(torchvision.models, name)(weights=None, norm_layer=nn.BatchNorm2d)
    stage_channels = [resnet.inplanes // 8 * 2**i for i in range(4)]  # 256..2048 (Bottleneck), 64..512 (BasicBlock)
    return BackboneWithFPN(
        resnet,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=stage_channels,
        out_channels=int(out_channels),
        extra_blocks=LastLevelMaxPool(),
    )


def _batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class ResNetFPNFasterRCNN(FasterRCNN):
    """torchvision Faster R-CNN + FPN on a ResNet body (see the module docstring).

    Args:
        backbone: ResNet of the body: ``timm/resnet50`` / ``resnet50`` (``resnet18`` ... ``resnet152``), built
            as torchvision's ResNet (the same tensors as timm's plain ResNets).
        num_classes: classes including the background (2: background, polyp).
        trainable_backbone_layers: body stages that train, 0-5 (torchvision's meaning; 5 = all).
        frozen_batch_norm: keep the body's BatchNorm layers fixed (``FrozenBatchNorm2d`` semantics).
        frozen: keep the whole body fixed (no gradient, eval-mode BatchNorm).
        image_mean, image_std: per-channel normalisation applied inside the model to ``[0, 1]`` inputs.
        min_size, max_size: torchvision's resize inside the model.
        fpn_channels: FPN channels (256).
        **kwargs: other :class:`~torchvision.models.detection.FasterRCNN` arguments (``rpn_batch_size_per_image``,
            ``box_detections_per_img``, ...).

    In train mode ``model(images, targets)`` returns torchvision's loss dict (``loss_classifier``,
    ``loss_box_reg``, ``loss_objectness``, ``loss_rpn_box_reg``); in eval mode ``model(images)`` returns one
    ``{"boxes" (N, 4) xyxy in input pixels, "scores", "labels"}`` dict per image.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 2,
        trainable_backbone_layers: int = 5,
        frozen_batch_norm: bool = False,
        frozen: bool = False,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        min_size: int = 800,
        max_size: int = 1333,
        fpn_channels: int = 256,
        **kwargs,
    ):
        from ..utils import as_bool

        k = int(trainable_backbone_layers)
        if not 0 <= k <= 5:
            raise ValueError(f"trainable_backbone_layers must be in 0..5, got {trainable_backbone_layers}")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes counts the background too: at least 2, got {num_classes}")
        super().__init__(
            resnet_fpn_backbone(backbone, fpn_channels), num_classes=int(num_classes),
            image_mean=[float(v) for v in image_mean], image_std=[float(v) for v in image_std],
            min_size=int(min_size), max_size=int(max_size), **kwargs,
        )
        self.arch = backbone
        self.trainable_backbone_layers = k
        self.frozen_batch_norm = as_bool(frozen_batch_norm, "frozen_batch_norm")
        self.frozen = as_bool(frozen, "frozen")
        self.set_trainable()

    @property
    def encoder(self) -> nn.Module:
        """The ResNet body (``backbone.body``) the pretrained trunk loads into."""
        return self.backbone.body

    def set_trainable(self) -> None:
        """Apply ``trainable_backbone_layers``, ``frozen_batch_norm`` and ``frozen`` to ``requires_grad``
        (call again after replacing the body's layers)."""
        body = self.backbone.body
        train = list(_TRAINABLE_ORDER[: self.trainable_backbone_layers])
        if self.trainable_backbone_layers == 5:
            train.append("bn1")
        for name, p in body.named_parameters():
            p.requires_grad_(not self.frozen and any(name.startswith(f"{layer}.") for layer in train))
        if self.frozen_batch_norm:
            for bn in _batch_norms(body):
                bn.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        body = self.backbone.body
        if self.frozen:
            body.eval()
        elif self.frozen_batch_norm:
            for bn in _batch_norms(body):
                bn.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that train (``requires_grad``), for the optimizer."""
        return [p for p in self.parameters() if p.requires_grad]


# ---- ViT-B: ViTDet-style detector (SSL4GIE's ViT-B detection) ---------------------------------------------------

__all__ += ["CentrePadTransform", "SimpleFeaturePyramid", "ViTDetBackbone", "ViTDetFasterRCNN"]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map (ViTDet's / ConvNeXt's)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (Li et al., ECCV 2022) from one stride-16 map: scale 4 (two 2x transposed
    convolutions, LayerNorm + GELU between), scale 2 (one), scale 1, scale 1/2 (max-pool), each then a 1x1 and a
    3x3 convolution to ``out_channels`` with LayerNorm, plus the extra ``"pool"`` level (stride-2 subsampling of the
    last one, as torchvision's ``LastLevelMaxPool``). Output keys ``"0"``-``"3"``, ``"pool"``: strides 4-64."""

    def __init__(self, in_channels: int, out_channels: int = 256):
        super().__init__()
        c = int(in_channels)
        ups = [
            nn.Sequential(nn.ConvTranspose2d(c, c // 2, 2, 2), LayerNorm2d(c // 2), nn.GELU(),
                          nn.ConvTranspose2d(c // 2, c // 4, 2, 2)),
            nn.ConvTranspose2d(c, c // 2, 2, 2),
            nn.Identity(),
            nn.MaxPool2d(2),
        ]
        dims = (c // 4, c // 2, c, c)
        self.stages = nn.ModuleList(
            nn.Sequential(up, nn.Conv2d(d, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                          nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels))
            for up, d in zip(ups, dims)
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from collections import OrderedDict

        out = OrderedDict((str(i), stage(x)) for i, stage in enumerate(self.stages))
        out["pool"] = torch.nn.functional.max_pool2d(out["3"], 1, 2, 0)
        return out


def _window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` → ``(B * nWindows, window * window, C)`` (zero-padded to multiples of ``window``)."""
    b, h, w, c = x.shape
    ph, pw = (-h) % window, (-w) % window
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c), (hp, wp)


def _window_unpartition(x: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int], b: int) -> torch.Tensor:
    hp, wp = padded
    x = x.view(b, hp // window, wp // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, -1)[:, : size[0], : size[1]]


class ViTDetBackbone(nn.Module):
    """A plain ViT trunk (timm ``VisionTransformer``: what ``timm/vit_base_patch16_224`` builds and what the MAE /
    MoCo v3 encoders load into) as a detection backbone, ViTDet-style: patch tokens only (the class token is not
    used), the position table resampled (bicubic) to the input's patch grid, window attention (``window_size``
    tokens square, zero-padded) in every block but ``global_blocks`` (global attention), the final norm, then
    :class:`SimpleFeaturePyramid`. ``use_prefix_tokens=True`` keeps the class token in every block (only sensible
    when the windows cover the whole grid: then it computes the trunk's own forward, for checking a hand-off)."""

    def __init__(self, vit: nn.Module, window_size: int = 16, global_blocks: Sequence[int] = (2, 5, 8, 11),
                 out_channels: int = 256, use_prefix_tokens: bool = False):
        super().__init__()
        trunk = getattr(vit, "trunk", vit)
        if not hasattr(trunk, "patch_embed") or not hasattr(trunk, "blocks"):
            raise TypeError(f"ViTDetBackbone needs a timm VisionTransformer trunk, got {type(trunk).__name__}")
        self.vit = vit
        self.window_size = int(window_size)
        self.global_blocks = {int(i) for i in global_blocks}
        bad = sorted(i for i in self.global_blocks if not 0 <= i < len(trunk.blocks))
        if bad:
            raise ValueError(f"global_blocks {bad} outside the trunk's {len(trunk.blocks)} blocks")
        self.use_prefix_tokens = bool(use_prefix_tokens)
        self.out_channels = int(out_channels)
        self.pyramid = SimpleFeaturePyramid(int(trunk.embed_dim), self.out_channels)
        # the class / register tokens get no gradient in ViTDet's forward: freeze them (DDP)
        for name in ("cls_token", "reg_token"):
            token = getattr(trunk, name, None)
            if isinstance(token, nn.Parameter) and not self.use_prefix_tokens:
                token.requires_grad_(False)

    @property
    def trunk(self) -> nn.Module:
        return getattr(self.vit, "trunk", self.vit)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens ``(B, H * W, C)`` after the final norm (prefix tokens first with ``use_prefix_tokens``)."""
        from timm.layers import resample_abs_pos_embed

        vit = self.trunk
        t = vit.patch_embed.proj(x)
        b, c, gh, gw = t.shape
        t = vit.patch_embed.norm(t.flatten(2).transpose(1, 2))
        n_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        pos = resample_abs_pos_embed(vit.pos_embed, new_size=[gh, gw], old_size=list(vit.patch_embed.grid_size),
                                     num_prefix_tokens=n_prefix)
        prefix = []
        if self.use_prefix_tokens:
            for name in ("cls_token", "reg_token"):
                token = getattr(vit, name, None)
                if token is not None:
                    prefix.append(token.expand(b, -1, -1))
        if vit.no_embed_class:
            t = torch.cat(prefix + [t + pos], dim=1)
        else:
            if prefix:
                t = torch.cat(prefix + [t], dim=1) + pos
            else:
                t = t + pos[:, n_prefix:]
        t = vit.norm_pre(vit.pos_drop(t))
        n = t.shape[1] - gh * gw
        for i, blk in enumerate(vit.blocks):
            if i in self.global_blocks or (gh <= self.window_size and gw <= self.window_size):  # one window: global
                t = blk(t)
            else:
                t = self._windowed(blk, t, gh, gw, n)
        return vit.norm(t), (gh, gw)

    def _windowed(self, blk: nn.Module, t: torch.Tensor, gh: int, gw: int, n_prefix: int) -> torch.Tensor:
        if n_prefix:
            raise ValueError("window attention with prefix tokens: set use_prefix_tokens=False")
        b, _, c = t.shape
        h = blk.norm1(t).view(b, gh, gw, c)
        windows, padded = _window_partition(h, self.window_size)
        attn = blk.attn(windows)
        attn = _window_unpartition(attn, self.window_size, padded, (gh, gw), b).reshape(b, gh * gw, c)
        t = t + blk.drop_path1(blk.ls1(attn))
        return t + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(t))))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        t, (gh, gw) = self.tokens(x)
        t = t[:, t.shape[1] - gh * gw :]
        return self.pyramid(t.transpose(1, 2).reshape(t.shape[0], -1, gh, gw))


class CentrePadTransform(nn.Module):
    """torchvision's ``GeneralizedRCNNTransform`` for SSL4GIE's ViT detector (``Object_detection/Data/dataset.py``
    with ``fixed_size=1024``): normalise, halve an image (bicubic, antialiased) while a side exceeds ``size``, then
    pad it centred to ``size`` x ``size`` with black (0 before normalisation), boxes scaled and shifted with it.
    Detections are mapped back to the input image's pixels (shift removed, scale undone, clipped)."""

    def __init__(self, size: int, image_mean: Sequence[float], image_std: Sequence[float]):
        super().__init__()
        from torchvision.models.detection.transform import GeneralizedRCNNTransform

        self.size = int(size)
        self._inner = GeneralizedRCNNTransform(self.size, self.size, list(image_mean), list(image_std), size_divisible=32)
        self.geometry: list[tuple[float, int, int]] = []

    def _black(self, image: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """A ``(C, h, w)`` canvas of black (0 before normalisation) in the normalised space of ``image``."""
        mean = torch.as_tensor(self._inner.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self._inner.image_std, dtype=image.dtype, device=image.device)
        return ((0.0 - mean) / std)[:, None, None].expand(-1, h, w).clone()

    def _fit(self, image: torch.Tensor, target: dict | None):
        scale = 1.0
        while image.shape[-2] > self.size or image.shape[-1] > self.size:
            h, w = image.shape[-2:]
            if h % 2 or w % 2:  # as the source: pad an odd side by one black row / column, then halve exactly
                padded = self._black(image, h + h % 2, w + w % 2)
                padded[:, :h, :w] = image
                image = padded
            image = torch.nn.functional.interpolate(image[None], size=(image.shape[-2] // 2, image.shape[-1] // 2),
                                                    mode="bicubic", antialias=True, align_corners=False)[0]
            scale /= 2
        h, w = image.shape[-2:]
        left, top = (self.size - w) // 2, (self.size - h) // 2
        canvas = self._black(image, self.size, self.size)
        canvas[:, top : top + h, left : left + w] = image
        if target is not None:
            target = dict(target)
            shift = torch.tensor([left, top, left, top], dtype=target["boxes"].dtype, device=target["boxes"].device)
            target["boxes"] = target["boxes"] * scale + shift
        self.geometry.append((scale, left, top))
        return canvas, target

    def forward(self, images, targets=None):
        from torchvision.models.detection.image_list import ImageList

        self.geometry = []
        out, new_targets = [], [] if targets is not None else None
        for i, image in enumerate(images):
            image, target = self._fit(self._inner.normalize(image), targets[i] if targets is not None else None)
            out.append(image)
            if new_targets is not None:
                new_targets.append(target)
        return ImageList(torch.stack(out), [(self.size, self.size)] * len(out)), new_targets

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training:
            return result
        for pred, (scale, left, top), (h, w) in zip(result, self.geometry, original_image_sizes):
            boxes = pred["boxes"] - torch.tensor([left, top, left, top], dtype=pred["boxes"].dtype, device=pred["boxes"].device)
            boxes = boxes / scale
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            pred["boxes"] = boxes
        return result


class ViTDetFasterRCNN(FinetuneNet, FasterRCNN):
    """SSL4GIE's ViT-B detector: torchvision ``FasterRCNN`` on :class:`ViTDetBackbone` (window attention 16 x 16
    tokens except in blocks 2, 5, 8, 11, simple feature pyramid to 256 channels), images halved above the fixed
    size and centre-padded to a square of that side (:class:`CentrePadTransform`; the source's
    ``transform.fixed_size=(1024, 1024)`` on its padded images).

    The arguments are :class:`ResNetFPNFasterRCNN`'s (so a config swaps the one for the other by ``_target_``),
    read for a ViT:

    Args:
        backbone: the ViT trunk: a timm ViT name (``timm/vit_base_patch16_224``, built by
            :func:`~monai_ssl_ext.networks.build_backbone`) or a built ``Backbone``; :attr:`encoder` is the
            ``Backbone`` that ``load_encoder`` fills.
        num_classes, image_mean, image_std, frozen: as :class:`ResNetFPNFasterRCNN`.
        trainable_backbone_layers: must be 5 (every block trains; ``frozen`` fixes the whole trunk).
        frozen_batch_norm: accepted and unused: a ViT trunk has no batch norm.
        min_size, max_size: the fixed square side; they must be equal (the source: 1024).
        window_size, global_blocks, fpn_channels: see :class:`ViTDetBackbone`.
        **kwargs: other ``FasterRCNN`` arguments.
    """

    def __init__(self, backbone="timm/vit_base_patch16_224", num_classes: int = 2, trainable_backbone_layers: int = 5,
                 frozen_batch_norm: bool = False, frozen: bool = False,
                 image_mean: Sequence[float] = (0.485, 0.456, 0.406), image_std: Sequence[float] = (0.229, 0.224, 0.225),
                 min_size: int = 1024, max_size: int = 1024, window_size: int = 16,
                 global_blocks: Sequence[int] = (2, 5, 8, 11), fpn_channels: int = 256, **kwargs):
        from ..utils import as_bool
        from .backbones import build_backbone

        if int(trainable_backbone_layers) != 5:
            raise ValueError(f"ViTDetFasterRCNN trains every ViT block (trainable_backbone_layers 5; use `frozen` to "
                             f"fix the trunk), got trainable_backbone_layers={trainable_backbone_layers}")
        if int(min_size) != int(max_size):
            raise ValueError(f"ViTDetFasterRCNN pads every image to one square: min_size ({min_size}) and max_size "
                             f"({max_size}) must be equal (the source: 1024)")
        vit = build_backbone(backbone) if isinstance(backbone, str) else backbone
        size = int(max_size)
        super().__init__(ViTDetBackbone(vit, window_size, global_blocks, fpn_channels), num_classes=int(num_classes),
                         min_size=size, max_size=size, image_mean=[float(v) for v in image_mean],
                         image_std=[float(v) for v in image_std], **kwargs)
        self.transform = CentrePadTransform(size, image_mean, image_std)
        self.frozen = as_bool(frozen, "frozen")
        if self.frozen:
            self.encoder.requires_grad_(False)

    @property
    def encoder(self) -> nn.Module:
        """The ViT trunk (a ``Backbone``) the pretrained encoder loads into."""
        return self.backbone.vit
