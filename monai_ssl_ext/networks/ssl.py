"""SSL model wrappers: a backbone plus heads; ``forward`` takes the views and returns what the
method's loss takes, so the SSL trainer stays method-agnostic.

Views of different sizes (multi-crop: :class:`~monai_ssl_ext.transforms.MultiCropd`) go through a
trunk with :func:`forward_by_size`: each run of consecutive views of equal size is one batch (as
SwAV's and DINO's multi-crop wrappers do), and the outputs come back in view order."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .backbones import Backbone
from .heads import MLPHead
from .momentum import MomentumPair, MomentumPredictorMethod

__all__ = ["SimCLR", "BYOL", "size_groups", "forward_by_size"]


def size_groups(views: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: the runs of consecutive views with the same per-sample shape
    (``view.shape[1:]``: channels and spatial size), e.g. 2 global + 6 local crops give
    ``[(0, 2), (2, 8)]``. Views of one size that are not consecutive form separate runs (order them
    global first, local after, as :class:`~monai_ssl_ext.transforms.MultiCropd` does)."""
    if not views:
        raise ValueError("no views given")
    groups, start = [], 0
    for i in range(1, len(views) + 1):
        if i == len(views) or views[i].shape[1:] != views[start].shape[1:]:
            groups.append((start, i))
            start = i
    return groups


def forward_by_size(
    module: Callable[[torch.Tensor], torch.Tensor], views: Sequence[torch.Tensor], concat: bool = False
) -> list[torch.Tensor] | torch.Tensor:
    """``module`` applied to ``views``, one batch per run of equal-size views (:func:`size_groups`):
    ``module(cat(views[start:stop]))`` for each run.

    Returns one output per view, in view order, or with ``concat=True`` their concatenation along
    the batch dimension (the views' outputs one after the other, without a copy when all views have
    one size). With equal sizes this is ``module(cat(views))`` (batch-norm statistics over all
    views, as in SimCLR); views may have different batch sizes."""
    outputs = []
    for start, stop in size_groups(views):
        group = list(views[start:stop])
        outputs.append(module(torch.cat(group) if len(group) > 1 else group[0]))
    joined = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return joined if concat else list(joined.split([v.shape[0] for v in views]))


class SimCLR(nn.Module):
    """SimCLR (Chen et al., ICML 2020): a shared encoder f and projection head g; z = g(f(x)).

    Args:
        backbone: the encoder trunk (exported after pretraining).
        projection_dims: hidden and output sizes of g, after the backbone's feature size; the
            surgical recipe (source A) uses ``[512, 128]`` (feat → 4·128 → 128).
        dropout: dropout before g (source A keeps torchvision EfficientNet's Dropout(0.2); MONAI's
            EfficientNet trunk already applies its own dropout before pooling output).
    """

    def __init__(self, backbone: Backbone, projection_dims: Sequence[int] = (512, 128), dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.projector = MLPHead([backbone.feature_dim, *projection_dims], dropout=dropout)

    def forward(self, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One projection per view, in view order.

        The encoder runs once per run of equal-size views (:func:`forward_by_size`; with SimCLR's
        equal-size views: all views as one batch, BN statistics over both views, as in SimCLR), the
        projector once on all the features (as SwAV / DINO's multi-crop wrappers)."""
        z = self.projector(forward_by_size(self.backbone, views, concat=True))
        return tuple(z.split([v.shape[0] for v in views]))


# state-dict keys of BYOL before the momentum pair (0.2.0): old prefix -> new prefix
_BYOL_LEGACY_KEYS = {
    "backbone.": "pair.online.backbone.",
    "projector.": "pair.online.projector.",
    "target_backbone.": "pair.target.backbone.",
    "target_projector.": "pair.target.projector.",
}


def _load_legacy_byol_keys(module, state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook: rename the pre-pair keys (``backbone.*``, ``target_backbone.*`` ...)
    of checkpoints written by 0.2.0 to the pair's, unless the new key is there already."""
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        for old, new in _BYOL_LEGACY_KEYS.items():
            if rest.startswith(old) and prefix + new + rest[len(old):] not in state_dict:
                state_dict[prefix + new + rest[len(old):]] = state_dict.pop(key)
                break


class BYOL(MomentumPredictorMethod):
    """BYOL (Grill et al., NeurIPS 2020): an online network (encoder f, projector g, predictor q) regresses the
    projections of a target network (f', g') that is an exponential moving average of (f, g).

    ``forward(x0, x1)`` returns ``(p0, p1, z0, z1)`` with ``p_v = q(g(f(x_v)))`` and ``z_v = g'(f'(x_v))``, the
    input of :class:`~monai_ssl_ext.losses.BYOLLoss`. Each view goes through each network as its own batch (BN
    statistics per view, as in solo-learn, SSL-MedSeg's framework). The targets are computed under ``torch.no_grad()`` (stop-gradient;
    the loss detaches them again).

    The online (f, g) and target (f', g') networks are a :class:`~monai_ssl_ext.networks.MomentumPair`,
    ``self.pair``, built from ``{"backbone": f, "projector": g}``: the target is a submodule (saved in the state
    dict, moved by ``.to()``), its parameters do not require gradients, and
    :class:`~monai_ssl_ext.handlers.EMATargetUpdate` updates it::

        EMATargetUpdate(pair=byol.pair, base_momentum=0.99, final_momentum=1.0)

    Give the optimizer :meth:`online_parameters` (backbone, projector, predictor). The exported trunk is chosen by
    :meth:`exported_backbone` (``"target"``: f', what SSL-MedSeg transfers; ``"online"``: f).

    State-dict keys: ``pair.online.backbone.*``, ``pair.online.projector.*``, ``pair.target.backbone.*``,
    ``pair.target.projector.*``, ``predictor.*``. Checkpoints written before the pair (0.2.0: ``backbone.*``,
    ``projector.*``, ``target_backbone.*``, ``target_projector.*``) still load: their keys are renamed on loading.
    ``backbone``, ``projector``, ``target_backbone``, ``target_projector``, :meth:`online_modules` and
    :meth:`target_modules` remain as read-only names of the pair's parts.

    The target is initialised as a copy of the online backbone and projector at construction, so a backbone built
    with its weights already loaded (e.g. ``pretrained_backbone(...)`` for the hierarchical ImageNet → ACDC recipe,
    where SSL-MedSeg loads the same weights into ``backbone`` and ``momentum_backbone``) starts with an identical
    target. If weights are loaded into ``backbone`` after construction, call :meth:`reinit_target`.

    Args:
        backbone: the encoder trunk f (exported after pretraining; SSL-MedSeg transfers the target f').
        projection_dims: hidden and output sizes of g after the backbone's feature size
            (``feat → 4096 → 256``, Linear-BN-ReLU-Linear, as in BYOL and SSL-MedSeg).
        prediction_dims: hidden and output sizes of q after the projection size (``256 → 8192 → 256`` in
            SSL-MedSeg / solo-learn; BYOL's paper uses 4096). The output size must equal the projection size.
    """

    default_export = "target"  # f', what SSL-MedSeg transfers

    def __init__(
        self,
        backbone: Backbone,
        projection_dims: Sequence[int] = (4096, 256),
        prediction_dims: Sequence[int] = (8192, 256),
    ):
        super().__init__()
        projection_dims, prediction_dims = [int(d) for d in projection_dims], [int(d) for d in prediction_dims]
        if not projection_dims or not prediction_dims or prediction_dims[-1] != projection_dims[-1]:
            raise ValueError(
                f"BYOL: the predictor must map the projection back to its own size, got projection_dims "
                f"{projection_dims} and prediction_dims {prediction_dims}"
            )
        projector = MLPHead([backbone.feature_dim, *projection_dims], batch_norm=True)
        self.pair = MomentumPair({"backbone": backbone, "projector": projector})
        self.predictor = MLPHead([projection_dims[-1], *prediction_dims], batch_norm=True)
        self.register_load_state_dict_pre_hook(_load_legacy_byol_keys)

    def online_modules(self) -> nn.ModuleList:
        """``[backbone, projector]`` (kept for ``EMATargetUpdate(online=..., target=...)``; prefer ``pair``)."""
        return nn.ModuleList([self.backbone, self.projector])

    def target_modules(self) -> nn.ModuleList:
        """``[target_backbone, target_projector]`` (kept for ``EMATargetUpdate(online=..., target=...)``)."""
        return nn.ModuleList([self.target_backbone, self.target_projector])
