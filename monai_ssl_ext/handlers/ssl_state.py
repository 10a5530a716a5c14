"""State that SSL methods carry across iterations and epochs, kept so that a resumed run continues with it: a
feature queue (SwAV, MoCo v2), a memory bank of per-sample features and cluster assignments (DeepCluster-v2) and
k-means centroids (DeepCluster-v2's prototypes).

All three are ``nn.Module``\\ s whose whole state is registered buffers (tensors only), so they are:

* saved with the network when a wrapper holds them as submodules (``state_dict`` keys ``<name>.queue`` ...), moved
  by ``.to()``; or
* given to :class:`~monai_ssl_ext.handlers.ResumableCheckpoint` as their own ``save_dict`` entries
  (``"save_dict": {"network": ..., "memory_bank": "@memory_bank"}``), since every module has
  ``state_dict`` / ``load_state_dict``; a standalone one is put on the training device with ``.to(@device)``.

Either way the checkpoint loads with ``torch.load(..., weights_only=True)``, and a resumed run finds the queue, its
pointer, the bank and the centroids of the epoch it resumes from. They have no parameters: the optimizer never
sees them. Every update runs under ``torch.no_grad()`` and stores detached copies.

Distributed runs: :class:`ResumableCheckpoint` writes rank 0's state, so these hold the same content on every rank:
enqueue / store features gathered over the ranks (with their dataset indices), as SwAV's and DeepCluster-v2's
distributed code does (and as ``DistributedDataParallel`` assumes for buffers, which it broadcasts from rank 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..distributed import get_rank, get_world_size

__all__ = ["FeatureQueue", "MemoryBank", "KMeansState"]

_INITS = ("zeros", "random")


def _initial(shape: tuple[int, ...], init: str) -> torch.Tensor:
    """Zeros, or random unit rows (MoCo's queue, solo-learn's DeepCluster-v2 bank; torch's global generator)."""
    if init not in _INITS:
        raise ValueError(f"init must be one of {_INITS}, got {init!r}")
    return torch.zeros(shape) if init == "zeros" else F.normalize(torch.randn(shape), dim=-1)


def _rows(name: str, features: torch.Tensor, dim: int) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[1] != dim:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"{name}: expected features of shape (batch, {dim}), got {shape}")
    return features.detach()


class FeatureQueue(nn.Module):
    """A first-in first-out queue of the last ``size`` feature vectors (rows of a ``size × dim`` tensor), written as a
    ring: :meth:`enqueue` writes a batch at the pointer and moves it on, overwriting the oldest rows.

    Buffers (in ``state_dict``): ``queue`` (``size × dim``), ``ptr`` (the next row to write, 0-d int64) and
    ``count`` (rows written so far, at most ``size``, 0-d int64).

    SwAV keeps one queue per crop used for the codes (a ``ModuleList`` of these; 3840 rows for batch 256, used once
    full: :attr:`full`); MoCo v2 one of 65536 keys, started random (``init="random"``, counted as full).

    Args:
        size: number of rows ``K``.
        dim: feature size ``D``.
        init: ``"zeros"`` (empty queue) or ``"random"`` (unit random rows, counted as written).
    """

    def __init__(self, size: int, dim: int, init: str = "zeros"):
        super().__init__()
        size, dim = int(size), int(dim)
        if size < 1 or dim < 1:
            raise ValueError(f"FeatureQueue: size and dim must be >= 1, got {size}, {dim}")
        self.size, self.dim = size, dim
        self.register_buffer("queue", _initial((size, dim), init))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.tensor(size if init == "random" else 0, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"

    @property
    def full(self) -> bool:
        """Whether every row has been written."""
        return int(self.count) >= self.size

    def features(self) -> torch.Tensor:
        """The written rows (all ``size`` once full; in storage order, which is not the arrival order once the ring
        wrapped). A view of the buffer: copy it (e.g. ``torch.cat``) before enqueueing if it is still needed."""
        return self.queue if self.full else self.queue[: int(self.count)]

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor) -> None:
        """Append a batch (``B × dim``; detached, cast to the queue's dtype); with ``B > size`` only its last ``size``
        rows are kept."""
        x = _rows("FeatureQueue.enqueue", features, self.dim).to(self.queue)
        b = x.shape[0]
        if b == 0:
            return
        ptr = int(self.ptr)
        kept = x[-self.size:]
        start = (ptr + b - kept.shape[0]) % self.size
        index = (start + torch.arange(kept.shape[0], device=self.queue.device)) % self.size
        self.queue.index_copy_(0, index, kept)
        self.ptr.fill_((ptr + b) % self.size)
        self.count.fill_(min(int(self.count) + b, self.size))

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the queue (zeros, pointer and count 0)."""
        self.queue.zero_()
        self.ptr.zero_()
        self.count.zero_()


class MemoryBank(nn.Module):
    """Per-sample memory over a dataset of ``size`` items: the last features of each item for ``n_views`` crops and
    its cluster assignment for ``n_heads`` clusterings (DeepCluster-v2's ``local_memory_embeddings`` /
    ``assignments``), written by dataset index.

    Buffers (in ``state_dict``): ``features`` (``n_views × size × dim``), ``assignments`` (``n_heads × size``,
    int64, ``ignore_index`` until assigned: the loss ignores those samples, as DeepCluster-v2 does before its first
    clustering), ``seen`` (``size``, bool: items whose features were ever written) and ``fresh`` (``size``, bool:
    written since the last :meth:`clear_fresh`).

    Args:
        size: number of dataset items ``N`` (the dataset's length, not ImageNet's: see SPEC E.1's quirk).
        dim: feature size ``D``.
        n_views: crops stored per item (DeepCluster-v2: ``crops_for_assign`` [0, 1] → 2).
        n_heads: clusterings (DeepCluster-v2: 3 heads of 3000 prototypes).
        init: ``"zeros"`` or ``"random"`` unit rows (solo-learn starts the bank random).
        ignore_index: the assignment of never-clustered items (``-100``, ``cross_entropy``'s default, as the
            official DeepCluster-v2; solo-learn uses ``-1``).
    """

    def __init__(self, size: int, dim: int, n_views: int = 1, n_heads: int = 1, init: str = "zeros",
                 ignore_index: int = -100):
        super().__init__()
        size, dim, n_views, n_heads = int(size), int(dim), int(n_views), int(n_heads)
        if min(size, dim, n_views, n_heads) < 1:
            raise ValueError(f"MemoryBank: size, dim, n_views and n_heads must be >= 1, got {size}, {dim}, "
                             f"{n_views}, {n_heads}")
        self.size, self.dim, self.n_views, self.n_heads = size, dim, n_views, n_heads
        self.ignore_index = int(ignore_index)
        self.register_buffer("features", _initial((n_views, size, dim), init))
        self.register_buffer("assignments", torch.full((n_heads, size), self.ignore_index, dtype=torch.long))
        self.register_buffer("seen", torch.zeros(size, dtype=torch.bool))
        self.register_buffer("fresh", torch.zeros(size, dtype=torch.bool))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, n_views={self.n_views}, n_heads={self.n_heads}"

    def _index(self, index) -> torch.Tensor:
        index = torch.as_tensor(index, device=self.features.device).long().flatten()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.size):
            raise IndexError(f"MemoryBank: dataset indices must be in [0, {self.size}), got "
                             f"[{int(index.min())}, {int(index.max())}] (is `size` the dataset's length?)")
        return index

    @torch.no_grad()
    def update(self, index, features: torch.Tensor, view: int = 0) -> None:
        """Store ``features`` (``B × dim``; detached) of the items ``index`` (``B`` dataset indices) for crop ``view``."""
        index = self._index(index)
        x = _rows("MemoryBank.update", features, self.dim).to(self.features)
        if x.shape[0] != index.numel():
            raise ValueError(f"MemoryBank.update: {index.numel()} indices for {x.shape[0]} feature rows")
        if not 0 <= view < self.n_views:
            raise IndexError(f"MemoryBank.update: view {view} out of range for n_views={self.n_views}")
        self.features[view].index_copy_(0, index, x)
        self.seen[index] = True
        self.fresh[index] = True

    @torch.no_grad()
    def clear_fresh(self) -> None:
        """Start a new round of :attr:`fresh` (items written since the last call): DeepCluster-v2 clusters the items
        of the last epoch only."""
        self.fresh.zero_()

    @torch.no_grad()
    def set_assignments(self, assignments: torch.Tensor | Sequence[torch.Tensor], head: int | None = None) -> None:
        """Replace the assignments: of every head (``n_heads × size``, or a sequence of ``n_heads`` vectors), or of
        one ``head`` (a ``size`` vector), e.g. the output of :meth:`KMeansState.fit`."""
        if head is not None:
            if not 0 <= head < self.n_heads:
                raise IndexError(f"MemoryBank.set_assignments: head {head} out of range for n_heads={self.n_heads}")
            target, value = self.assignments[head], torch.as_tensor(assignments)
        else:
            target = self.assignments
            value = torch.stack(list(assignments)) if not isinstance(assignments, torch.Tensor) else assignments
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"MemoryBank.set_assignments: expected shape {tuple(target.shape)}, got {tuple(value.shape)}")
        target.copy_(value)

    def lookup(self, index) -> torch.Tensor:
        """The assignments of the items ``index``: ``n_heads × B`` (the targets of DeepCluster-v2's loss)."""
        return self.assignments[:, self._index(index)]


class KMeansState(nn.Module):
    """Centroids of ``len(n_clusters)`` spherical k-means clusterings (DeepCluster-v2's per-epoch clustering, whose
    centroids become the prototypes) and :meth:`fit`, the clustering itself on one process.

    Buffers (in ``state_dict``): ``centroids_0``, ``centroids_1``, … (``K_j × dim``, unit rows once fitted) and
    ``fits`` (completed clusterings, 0-d int64).

    :meth:`fit` follows ``main_deepclusterv2.py`` (``cluster_memory``): centroids start as random distinct memory
    rows; then ``n_iters`` times an E-step (assignment = argmax of the dot product) and an M-step (mean of each
    non-empty cluster, empty ones keep their centroid, all L2-normalised); a last E-step gives the assignments.
    Features are expected L2-normalised. The draws come from ``generator`` (default torch's global one, which
    :class:`~monai_ssl_ext.handlers.RNGState` saves).

    Across processes (an initialised process group of ``W > 1`` ranks, ``distributed=True``) every rank holds the
    same (gathered) features, as :class:`MemoryBank` does; rank ``r`` runs the E-step on rows ``r, r + W, ...``,
    the M-step's per-cluster sums and counts are all-reduced (as the official code), the initial centroids are
    rank 0's draw, broadcast, and the assignments are put together on every rank: the result is one process's
    clustering of all rows (up to the float summation order).

    Args:
        n_clusters: clusters per head, e.g. ``[3000, 3000, 3000]`` (one int: one head).
        dim: feature size.
        n_iters: k-means iterations (DeepCluster-v2: 10).
        distributed: share the clustering over the ranks of an initialised process group (see above).
    """

    def __init__(self, n_clusters: int | Sequence[int], dim: int, n_iters: int = 10, distributed: bool = True):
        super().__init__()
        ks = [int(n_clusters)] if isinstance(n_clusters, int) else [int(k) for k in n_clusters]
        if not ks or min(ks) < 1 or int(dim) < 1 or int(n_iters) < 0:
            raise ValueError(f"KMeansState: need n_clusters >= 1, dim >= 1, n_iters >= 0, got {n_clusters}, {dim}, "
                             f"{n_iters}")
        self.n_clusters, self.dim, self.n_iters = ks, int(dim), int(n_iters)
        self.distributed = bool(distributed)
        for j, k in enumerate(ks):
            self.register_buffer(f"centroids_{j}", torch.zeros(k, self.dim))
        self.register_buffer("fits", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"n_clusters={self.n_clusters}, dim={self.dim}, n_iters={self.n_iters}"

    @property
    def centroids(self) -> list[torch.Tensor]:
        """The centroid buffers, one ``K_j × dim`` tensor per head."""
        return [getattr(self, f"centroids_{j}") for j in range(len(self.n_clusters))]

    def assign(self, features: torch.Tensor, head: int = 0) -> torch.Tensor:
        """Nearest centroid (largest dot product) of each row of ``features`` for ``head``."""
        return (_rows("KMeansState.assign", features, self.dim) @ self.centroids[head].to(features).T).argmax(dim=1)

    @torch.no_grad()
    def fit(self, features: torch.Tensor | Sequence[torch.Tensor], generator: torch.Generator | None = None
            ) -> list[torch.Tensor]:
        """Cluster ``features`` (``N × dim``, one tensor for every head, or one per head, e.g. DeepCluster-v2's head
        ``j`` on the memory of crop ``j mod n_views``), store the centroids and return each head's assignments
        (``N`` int64)."""
        heads = len(self.n_clusters)
        per_head = [features] * heads if isinstance(features, torch.Tensor) else list(features)
        if len(per_head) != heads:
            raise ValueError(f"KMeansState.fit: {len(per_head)} feature sets for {heads} heads")
        world = get_world_size() if self.distributed else 1
        rank = get_rank() if world > 1 else 0
        out = []
        for j, (x, k, c_buf) in enumerate(zip(per_head, self.n_clusters, self.centroids)):
            x = _rows("KMeansState.fit", x, self.dim).float()
            if x.shape[0] < k:
                raise ValueError(f"KMeansState.fit: head {j} has {k} clusters but only {x.shape[0]} samples")
            start = torch.randperm(x.shape[0], generator=generator)[:k].to(x.device)
            c = x[start].clone()
            if world > 1:
                dist.broadcast(c, 0)
            local = x[rank::world]
            for n_iter in range(self.n_iters + 1):
                assignment = (local @ c.T).argmax(dim=1)
                if n_iter == self.n_iters:
                    break
                sums = torch.zeros_like(c).index_add_(0, assignment, local)
                counts = torch.bincount(assignment, minlength=k).to(c)
                if world > 1:
                    dist.all_reduce(sums)
                    dist.all_reduce(counts)
                filled = counts > 0
                c[filled] = sums[filled] / counts[filled].unsqueeze(1)
                c = F.normalize(c, dim=1)
            if world > 1:  # every rank's rows' assignments, in row order
                full = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
                full[rank::world] = assignment
                dist.all_reduce(full)
                assignment = full
            c_buf.copy_(c)
            out.append(assignment)
        self.fits += 1
        return out
