"""Training-loop pieces of the clustering SSL methods (swav's ``main_swav.py`` / ``main_deepclusterv2.py``):

* :class:`FreezePrototypes` -- no prototype update for the first iterations (swav: 313);
* :class:`QueueStart` -- switch SwAV's feature queues on from an epoch (swav: 15);
* :class:`ClusterMemory` -- DeepCluster-v2's memory bank filled by one pass before training and clustered at
  every epoch start (prototypes set to the centroids).
"""

from __future__ import annotations

import logging

import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.engines.utils import IterationEvents
from torch.utils.data import Subset

from ..distributed import get_rank, get_world_size
from ..engines.steps import optimizer_steps

__all__ = ["FreezePrototypes", "QueueStart", "ClusterMemory", "fill_batches"]

logger = logging.getLogger(__name__)


def fill_batches(n_items: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The batches of dataset indices of rank ``rank`` in the memory-filling pass: items ``rank, rank + W, ...``
    (every item on exactly one rank, none repeated), padded with -1 to ``ceil(n / W)`` on every rank and cut into
    batches of ``batch_size``, a last batch shorter than 2 merged into the one before (training-mode BatchNorm
    needs 2 items); every rank gets the same batch sizes (the embeddings are gathered)."""
    per_rank = -(-int(n_items) // int(world))
    own = list(range(rank, n_items, world))
    own += [-1] * (per_rank - len(own))
    chunks = [own[i:i + batch_size] for i in range(0, per_rank, batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        last = chunks.pop()
        chunks[-1] = chunks[-1] + last
    return chunks


def _valid_positions(chunks: list[list[int]]) -> list[list[int]]:
    """Positions of the chunks' valid (non-negative) indices in the flat Subset of valid indices."""
    out, pos = [], 0
    for chunk in chunks:
        valid = sum(i >= 0 for i in chunk)
        out.append(list(range(pos, pos + valid)))
        pos += valid
    return out


class FreezePrototypes:
    """Drop the gradients of ``prototypes`` (any module) after ``backward()`` while fewer than ``iterations``
    optimizer steps were taken, so the first ``iterations`` steps leave them unchanged (no gradient, no momentum,
    no weight decay): swav's ``freeze_prototypes_niters`` (313 for SwAV, the joint 2D-3D method's clustering).

    Args:
        prototypes: the module whose parameters are frozen (the wrapper's ``prototypes``).
        iterations: number of optimizer steps without prototype updates (0: never frozen).
    """

    def __init__(self, prototypes: torch.nn.Module, iterations: int = 313):
        if int(iterations) < 0:
            raise ValueError(f"FreezePrototypes: iterations must be >= 0, got {iterations}")
        self.prototypes, self.iterations = prototypes, int(iterations)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        # optimizer_steps counts this iteration's step: steps 1..iterations are frozen (swav: iteration < niters)
        if optimizer_steps(engine) <= self.iterations:
            for p in self.prototypes.parameters():
                p.grad = None


class QueueStart:
    """Turn the SwAV wrapper's queues on (``model.use_queue``) from 0-based epoch ``start_epoch`` on (swav's
    ``epoch_queue_starts``, 15), at every epoch start, so a resumed run finds the same setting.

    Args:
        model: the :class:`~monai_ssl_ext.networks.SwAV` wrapper (not a DDP wrapper around it).
        start_epoch: first epoch (0-based) that uses the queue; None: never.
    """

    def __init__(self, model: torch.nn.Module, start_epoch: int | None = 15):
        self.model, self.start_epoch = model, None if start_epoch is None else int(start_epoch)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        on = self.start_epoch is not None and getattr(self.model, "queues", None) is not None
        self.model.use_queue = on and engine.state.epoch - 1 >= self.start_epoch


class ClusterMemory:
    """DeepCluster-v2's per-epoch clustering: at every epoch start ``model.cluster()`` (spherical k-means of the
    memory bank, prototypes set to the centroids), with a generator seeded by ``seed`` and the epoch (the same
    clustering after a resume, on every rank).

    Before the first clustering of a run whose bank is empty (not a resumed one: the bank is in the checkpoint) the
    bank is filled by one pass over the training dataset (swav's ``init_memory``: the augmented ``crops_for_assign``
    views through the network in training mode, without gradients); the pass visits every item exactly once, in
    order, each rank its share (:func:`fill_batches`).

    Args:
        model: the :class:`~monai_ssl_ext.networks.DeepClusterV2` wrapper (not a DDP wrapper around it).
        seed: base seed of the k-means draws.
        index_key: the batch key of the dataset indices.
        num_workers: workers of the filling pass (None: those of the training loader).
    """

    def __init__(self, model: torch.nn.Module, seed: int = 0, index_key: str = "index", num_workers: int | None = None):
        self.model, self.seed, self.index_key = model, int(seed), index_key
        self.num_workers = num_workers

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def fill(self, engine: Engine) -> None:
        """One pass over the training dataset storing the embeddings of every item once."""
        train = engine.data_loader
        dataset = train.dataset
        if len(dataset) != self.model.memory.size:
            raise ValueError(f"ClusterMemory: the memory bank has {self.model.memory.size} rows but the training "
                             f"dataset has {len(dataset)} items (set the wrapper's dataset_size to its length)")
        chunks = fill_batches(len(dataset), train.batch_size, get_rank(), get_world_size())
        loader = DataLoader(Subset(dataset, [i for chunk in chunks for i in chunk if i >= 0]),
                            batch_sampler=_valid_positions(chunks), collate_fn=train.collate_fn,
                            num_workers=train.num_workers if self.num_workers is None else int(self.num_workers))
        was_training = self.model.training
        self.model.train()  # as swav's init_memory (batch statistics)
        crops = self.model.crops_for_assign
        with torch.no_grad():
            for chunk, batch in zip(chunks, loader):
                if self.index_key not in batch:
                    raise KeyError(f"ClusterMemory: the batch has no {self.index_key!r} (dataset indices); keys are "
                                   f"{sorted(batch)}: give the datalist indices with monai_ssl_ext.data.with_index")
                views = engine.prepare_batch.views(batch, engine.state.device)
                n = views[0].shape[0]
                # one item alone cannot go through training-mode BatchNorm: run it twice, keep one
                embeddings = [self.model.embed(views[c] if n > 1 else views[c].repeat(2, *[1] * (views[c].ndim - 1)))[:n]
                              for c in crops]
                index = torch.as_tensor(batch[self.index_key]).long().flatten()
                pad = len(chunk) - n  # ranks with fewer items pad to the same batch size (negative index: dropped)
                if pad:
                    index = torch.cat([index, index.new_full((pad,), -1)])
                    embeddings = [torch.cat([z, z.new_zeros(pad, z.shape[1])]) for z in embeddings]
                self.model.remember(index, embeddings)
        self.model.train(was_training)
        if get_rank() == 0:
            logger.info(f"ClusterMemory: memory bank filled with {int(self.model.memory.seen.sum())} items")

    def __call__(self, engine: Engine) -> None:
        if int(self.model.kmeans.fits) == 0 and not bool(self.model.memory.seen.any()):
            self.fill(engine)
        generator = torch.Generator().manual_seed(self.seed * 100003 + engine.state.epoch)
        sizes = self.model.cluster(generator)
        if get_rank() == 0:
            filled = ", ".join(f"{int((s > 0).sum())}/{s.numel()}" for s in sizes)
            logger.info(f"ClusterMemory: epoch {engine.state.epoch} clustered {int(self.model.memory.seen.sum())} "
                        f"items (non-empty clusters per head: {filled})")
