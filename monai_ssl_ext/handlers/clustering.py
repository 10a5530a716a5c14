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
from torch.utils.data import DistributedSampler

from ..distributed import get_rank, get_world_size
from ..engines.steps import optimizer_steps

__all__ = ["FreezePrototypes", "QueueStart", "ClusterMemory"]

logger = logging.getLogger(__name__)


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
    views through the network in training mode, without gradients); the pass visits every item once, in order,
    each rank a :class:`~torch.utils.data.DistributedSampler` share.

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
        """One pass over the training dataset storing the embeddings of every item."""
        train = engine.data_loader
        dataset = train.dataset
        if len(dataset) != self.model.memory.size:
            raise ValueError(f"ClusterMemory: the memory bank has {self.model.memory.size} rows but the training "
                             f"dataset has {len(dataset)} items (set the wrapper's dataset_size to its length)")
        sampler = DistributedSampler(dataset, shuffle=False) if get_world_size() > 1 else None
        loader = DataLoader(dataset, batch_size=train.batch_size, shuffle=False, sampler=sampler,
                            num_workers=train.num_workers if self.num_workers is None else int(self.num_workers))
        was_training = self.model.training
        self.model.train()  # as swav's init_memory (batch statistics)
        with torch.no_grad():
            for batch in loader:
                if self.index_key not in batch:
                    raise KeyError(f"ClusterMemory: the batch has no {self.index_key!r} (dataset indices); keys are "
                                   f"{sorted(batch)}: give the datalist indices with monai_ssl_ext.data.with_index")
                views = engine.prepare_batch.views(batch, engine.state.device)
                crops = self.model.crops_for_assign
                self.model.remember(batch[self.index_key], [self.model.embed(views[c]) for c in crops])
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
