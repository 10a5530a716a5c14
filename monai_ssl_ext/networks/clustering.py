"""Clustering SSL wrappers: SwAV and DeepCluster-v2 (Caron et al., NeurIPS 2020, facebookresearch/swav).

Both put a projection MLP and L2-normalisation after the trunk, ``z = normalize(g(f(x)))`` (``feat → 2048 → 128``,
Linear-BN-ReLU-Linear: swav's ``projection_head``), and score ``z`` against prototypes. What differs is where the
targets come from: SwAV codes the batch itself with Sinkhorn (:class:`~monai_ssl_ext.losses.SwAVLoss`), optionally
with a queue of past embeddings; DeepCluster-v2 clusters a memory bank of every item's last embeddings with
spherical k-means once per epoch, sets the prototypes to the centroids, and uses the clusters as targets
(:class:`~monai_ssl_ext.losses.DeepClusterV2Loss`). Their state (queues; memory bank, assignments, centroids) is
held as buffers of submodules, so it is saved with the network and resumes with it.

Distributed runs keep that state the same on every rank: the embeddings and dataset indices of all ranks are
gathered (no gradient) before they are stored, as :mod:`monai_ssl_ext.handlers.ssl_state` requires.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_no_grad, get_rank, get_world_size
from ..handlers.ssl_state import FeatureQueue, KMeansState, MemoryBank
from .backbones import Backbone
from .heads import MLPHead, Prototypes
from .initialisation import unit_init_residual
from .initialisation import zero_init_residual as zero_init_residual_  # the argument of the same name hides it
from .ssl import forward_by_size

__all__ = ["SwAV", "DeepClusterV2"]


class _ClusteringMethod(nn.Module):
    """Trunk + projection MLP (none for empty ``projection_dims``) + unit embeddings, shared by SwAV and
    DeepCluster-v2. The trunk is any module with a ``feature_dim`` whose forward gives ``B x feature_dim``.

    A trunk without loaded weights (no ``load_report``) starts with its residual branches as the recipe's ResNet:
    swav's ``resnet50`` and VISSL's trunk keep PyTorch's BatchNorm init (``zero_init_residual=False``), while timm's
    ResNet zeroes the last BN of every block; :func:`~monai_ssl_ext.networks.initialisation.unit_init_residual`
    undoes that (``zero_init_residual=True`` zeroes them instead)."""

    def __init__(self, backbone: Backbone, projection_dims: Sequence[int], projection_batch_norm: bool = True,
                 zero_init_residual: bool = False):
        super().__init__()
        dims = [int(d) for d in projection_dims]
        self.backbone = backbone
        # no projection_dims: the trunk's features are the embedding (the joint 2D-3D method's volume features)
        self.projector = (MLPHead([backbone.feature_dim, *dims], batch_norm=bool(projection_batch_norm)) if dims
                          else nn.Identity())
        self.dim = dims[-1] if dims else int(backbone.feature_dim)
        # a fresh Backbone (no weights loaded): the recipe's initialisation; other trunks (e.g. the joint method's
        # volume model around a loaded slice encoder) are left as they are
        if isinstance(backbone, Backbone) and getattr(backbone, "load_report", None) is None:
            (zero_init_residual_ if zero_init_residual else unit_init_residual)(backbone)

    def embed_views(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """Unit embeddings of all views, concatenated in view order (one trunk batch per run of equal sizes)."""
        return F.normalize(self.projector(forward_by_size(self.backbone, views, concat=True)), dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_views([x])


class SwAV(_ClusteringMethod):
    """SwAV: ``forward(*views)`` returns ``(scores, queue_scores)``, the input of
    :class:`~monai_ssl_ext.losses.SwAVLoss`: one ``B x K`` tensor of prototype scores per view, and the prototype
    scores of each ``crops_for_assign`` crop's queue (None while the queues are off or not yet full).

    In training mode the prototypes are first scaled to unit length (swav does it at the start of every iteration).
    With ``queue_length > 0`` there is one :class:`~monai_ssl_ext.handlers.FeatureQueue` of ``queue_length`` rows
    per crop of ``crops_for_assign`` (the global number of rows: swav's 3840 for a global batch of 256, kept as
    ``queue_length / W`` rows per rank there). :attr:`use_queue` switches them on (the
    :class:`~monai_ssl_ext.handlers.QueueStart` handler does at the configured epoch); each training step then
    scores the queue (rank ``r`` takes rows ``r, r + W, ...``, so the ranks together score it once) before the
    batch's embeddings, gathered over the ranks, are pushed in; its scores are used once the queue is full.

    Args:
        backbone: the trunk (exported after pretraining).
        projection_dims: hidden and output sizes of the projection MLP (``[2048, 128]``).
        n_prototypes: number of prototypes (3000).
        queue_length: rows of each queue (0: no queue).
        crops_for_assign: the views that get codes (``[0, 1]``), as in the loss.
        projection_batch_norm: BatchNorm after the hidden projection layer (swav's and VISSL's ``swav_head``).
        zero_init_residual: zero the residual branches of a fresh trunk (see :class:`_ClusteringMethod`).
    """

    def __init__(self, backbone: Backbone, projection_dims: Sequence[int] = (2048, 128), n_prototypes: int = 3000,
                 queue_length: int = 0, crops_for_assign: Sequence[int] = (0, 1), projection_batch_norm: bool = True,
                 zero_init_residual: bool = False):
        super().__init__(backbone, projection_dims, projection_batch_norm, zero_init_residual)
        self.prototypes = Prototypes(self.dim, int(n_prototypes))
        self.crops_for_assign = [int(c) for c in crops_for_assign]
        self.queues = (nn.ModuleList(FeatureQueue(int(queue_length), self.dim) for _ in self.crops_for_assign)
                       if int(queue_length) > 0 else None)
        self.use_queue = False

    def forward(self, *views: torch.Tensor):
        if self.training:
            self.prototypes.normalize_()
        z = self.embed_views(views)
        scores = self.prototypes(z)
        sizes = [v.shape[0] for v in views]
        queue_scores = None
        if self.training and self.use_queue and self.queues is not None:
            z_views = z.split(sizes)
            queue_scores = []
            world, rank = get_world_size(), get_rank()
            with torch.no_grad():
                for queue, crop in zip(self.queues, self.crops_for_assign):
                    queue_scores.append(self.prototypes(queue.features()[rank::world]) if queue.full else None)
                    queue.enqueue(gather_no_grad(z_views[crop]))
            if any(q is None for q in queue_scores):
                queue_scores = None
        return tuple(scores.split(sizes)), queue_scores


class DeepClusterV2(_ClusteringMethod):
    """DeepCluster-v2: ``forward(*views, index=...)`` returns ``(scores, assignments)``, the input of
    :class:`~monai_ssl_ext.losses.DeepClusterV2Loss`: per head the ``(V * B) x K_h`` prototype scores of all views,
    and the ``H x B`` clusters of the batch's items (``index``: their dataset indices) from the last clustering.
    In training mode the embeddings of the ``crops_for_assign`` views (gathered over the ranks with the indices)
    then replace the items' rows of the memory bank.

    :meth:`cluster` runs the per-epoch spherical k-means (head ``h`` on the memory of crop ``h mod len(crops)``),
    stores the assignments in the bank and copies each head's centroids into its prototypes; the
    :class:`~monai_ssl_ext.handlers.ClusterMemory` handler calls it at every epoch start, after filling the bank by
    one pass over the data before the first epoch (swav's ``init_memory``).

    The prototypes are not trained (swav's ``freeze_prototypes_niters`` defaults to 1e10 for DeepCluster-v2): they
    do not require gradients unless ``train_prototypes`` (the joint 2D-3D method trains them after a freeze).

    Args:
        backbone: the trunk (exported after pretraining).
        dataset_size: number of training items (the bank's rows; items carry their index in the batch).
        projection_dims: hidden and output sizes of the projection MLP (``[2048, 128]``).
        n_prototypes: clusters per head (``[3000, 3000, 3000]``).
        crops_for_assign: views stored in the memory bank (``[0, 1]``).
        kmeans_iters: k-means iterations per clustering (10).
        train_prototypes: let the optimizer train the prototypes between clusterings.
        projection_batch_norm: BatchNorm after the hidden projection layer (swav's ``resnet50`` has it; VISSL's
            ``deepclusterv2_2crops`` head, an ``mlp`` with ``use_bn`` False, does not).
        zero_init_residual: zero the residual branches of a fresh trunk (see :class:`_ClusteringMethod`).
    """

    def __init__(self, backbone: Backbone, dataset_size: int, projection_dims: Sequence[int] = (2048, 128),
                 n_prototypes: Sequence[int] = (3000, 3000, 3000), crops_for_assign: Sequence[int] = (0, 1),
                 kmeans_iters: int = 10, train_prototypes: bool = False, projection_batch_norm: bool = True,
                 zero_init_residual: bool = False):
        super().__init__(backbone, projection_dims, projection_batch_norm, zero_init_residual)
        ks = [int(k) for k in n_prototypes]
        if int(dataset_size) < max(ks):
            raise ValueError(f"DeepClusterV2: {max(ks)} clusters (n_prototypes {ks}) but only {int(dataset_size)} "
                             "training items (dataset_size): k-means needs at least as many items as clusters; "
                             "reduce n_prototypes or add data")
        self.crops_for_assign = [int(c) for c in crops_for_assign]
        self.prototypes = Prototypes(self.dim, ks)
        self.prototypes.requires_grad_(bool(train_prototypes))
        self.memory = MemoryBank(int(dataset_size), self.dim, n_views=len(self.crops_for_assign), n_heads=len(ks))
        self.kmeans = KMeansState(ks, self.dim, n_iters=int(kmeans_iters))

    def forward(self, *views: torch.Tensor, index: torch.Tensor):
        z = self.embed_views(views)
        scores = self.prototypes(z)
        assignments = self.memory.lookup(index)
        if self.training:
            z_views = z.detach().split([v.shape[0] for v in views])
            self.remember(index, [z_views[c] for c in self.crops_for_assign])
        return scores, assignments

    @torch.no_grad()
    def remember(self, index: torch.Tensor, embeddings: Sequence[torch.Tensor]) -> None:
        """Store the embeddings of the ``crops_for_assign`` views (``embeddings``: one ``B x dim`` tensor per crop of
        ``crops_for_assign``, in that order) of the items ``index``, gathered over the ranks; rows with a negative
        index are padding and are not stored."""
        if len(embeddings) != len(self.crops_for_assign):
            raise ValueError(f"remember: {len(embeddings)} embeddings for crops_for_assign {self.crops_for_assign}")
        index = gather_no_grad(torch.as_tensor(index, device=embeddings[0].device).long().flatten())
        keep = index >= 0  # negative: padding rows of a rank with fewer items (ClusterMemory's filling pass)
        for slot, z in enumerate(embeddings):
            self.memory.update(index[keep], gather_no_grad(z)[keep], view=slot)

    @torch.no_grad()
    def cluster(self, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """k-means over the items stored since the last clustering (every head; the items of the last epoch, as
        swav and VISSL cluster the current memory), centroids into the prototypes, and every stored item assigned
        to its nearest centroid (items not visited in the last epoch, e.g. with an ``epoch_length`` shorter than
        the data, keep a target instead of dropping out of the loss); returns each head's cluster sizes. When
        fewer fresh items than clusters were stored, every stored item is clustered."""
        seen = self.memory.seen.clone()
        if not bool(seen.any()):
            raise RuntimeError("DeepClusterV2.cluster: the memory bank is empty (fill it first: ClusterMemory)")
        rows = self.memory.fresh.clone()
        if int(rows.sum()) < max(self.kmeans.n_clusters):
            rows = seen
        n_views = len(self.crops_for_assign)
        heads = range(len(self.kmeans.n_clusters))
        self.kmeans.fit([self.memory.features[h % n_views][rows] for h in heads], generator=generator)
        assignments = torch.full_like(self.memory.assignments, self.memory.ignore_index)
        found = [self.kmeans.assign(self.memory.features[h % n_views][seen], head=h) for h in heads]
        assignments[:, seen] = torch.stack(found)
        self.memory.set_assignments(assignments)
        for head, centroids in zip(self.prototypes.heads, self.kmeans.centroids):
            head.weight.copy_(centroids)
        self.memory.clear_fresh()
        return [torch.bincount(a, minlength=k) for a, k in zip(found, self.kmeans.n_clusters)]
