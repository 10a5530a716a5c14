"""Training loaders whose augmentations depend on the item and the pass, not on the workers.

A ``DataLoader``'s augmentations draw from generators that live in its worker processes (or in
the main process with ``num_workers=0``): the views an item gets depend on how many workers there
are, which worker loads it and — with persistent workers, which keep their generators from one
pass to the next — on every pass before. A resumed run could then not redraw the views of the
uninterrupted run, so workers had to be restarted at every epoch (two process start-ups per epoch).

Here the sampler hands each item a seed with its index. The seeds of a pass come from one draw of
torch's global generator in the main process when the pass starts (the generator that also orders
the pass, and that checkpoints record through :class:`~monai_ssl_ext.handlers.DataPosition`), and
:class:`SeededItems` reseeds every generator the transforms use — torch's, numpy's and Python's
global ones and the ``RandomState`` of each MONAI ``Randomizable`` — from the item's seed before
transforming it. An item's views are therefore a function of (the pass's draw, the position in the
pass):

* the same for any ``num_workers``, persistent or not;
* different between passes and between positions;
* drawn again exactly when torch's global generator state is restored (resume).

:func:`augmenting_loader` builds such a loader with persistent workers; it is the training loader
of every SSL bundle.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from monai.data import DataLoader
from torch.utils.data import Dataset, DistributedSampler, RandomSampler, SequentialSampler, get_worker_info

__all__ = ["SeededDistributedSampler", "SeededItems", "SeededRandomSampler", "SeededSequentialSampler",
           "augmenting_loader", "item_seed", "transform_generators"]


def transform_generators(obj, seen=None, depth=0) -> list[np.random.RandomState]:
    """Every ``numpy.random.RandomState`` reachable from a transform chain (MONAI's Randomizable
    transforms keep one each in ``.R``), in a fixed order."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 12 or isinstance(obj, (str, bytes, int, float, torch.Tensor, np.ndarray)):
        return []
    seen.add(id(obj))
    if isinstance(obj, np.random.RandomState):
        return [obj]
    if isinstance(obj, (list, tuple)):
        items = list(obj)
    elif isinstance(obj, dict):
        items = list(obj.values())
    elif hasattr(obj, "__dict__"):
        items = list(vars(obj).values())
    else:
        return []
    out = []
    for item in items:
        out.extend(transform_generators(item, seen, depth + 1))
    return out


def item_seed(pass_seed: int, position: int) -> int:
    """The seed of the item at ``position`` of a pass whose draw was ``pass_seed``: 32 bits of
    numpy's ``SeedSequence((pass_seed, position))``, so neighbouring positions get unrelated seeds."""
    return int(np.random.SeedSequence((int(pass_seed), int(position))).generate_state(1)[0])


def _pass_seed() -> int:
    """One draw of torch's global generator (non-negative 63 bits), as DataLoader draws its base seed."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


class _Seeded:
    """Mixin for a sampler: yields ``(index, seed)`` instead of ``index``."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())  # draws the order first, as the plain sampler would
        base = _pass_seed()
        for position, index in enumerate(indices):
            yield int(index), item_seed(base, position)


class SeededRandomSampler(_Seeded, RandomSampler):
    """``RandomSampler`` (same arguments) whose items carry a seed (see the module docstring)."""


class SeededSequentialSampler(_Seeded, SequentialSampler):
    """``SequentialSampler`` whose items carry a seed: the order is fixed, the views still change per pass."""


class SeededDistributedSampler(_Seeded, DistributedSampler):
    """``DistributedSampler`` (same arguments; still one for MONAI's per-epoch ``set_epoch``) whose
    items carry a seed; each rank draws its seeds from its own torch generator."""


class SeededItems(Dataset):
    """``dataset[index]`` with every random generator of its transform reseeded from the seed the
    sampler gave (``dataset[(index, seed)]``); a plain ``index`` reads the item without reseeding.

    In a worker process the global generators are simply reseeded; in the main process
    (``num_workers=0``) they are restored afterwards, so the training step's randomness (dropout,
    masking) is the same with and without workers.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self._generators: list[np.random.RandomState] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        if name in ("dataset", "_generators"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _reseed(self, seed: int) -> None:
        torch.default_generator.manual_seed(seed)  # CPU only: CUDA generators stay as they are
        np.random.seed(seed)
        random.seed(seed)
        if self._generators is None:
            self._generators = transform_generators(getattr(self.dataset, "transform", None))
        for k, g in enumerate(self._generators):
            g.seed(item_seed(seed, k))

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        if get_worker_info() is not None:
            self._reseed(seed)
            return self.dataset[index]
        saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
        try:
            self._reseed(seed)
            return self.dataset[index]
        finally:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


def augmenting_loader(
    dataset,
    batch_size: int = 1,
    shuffle: bool = True,
    sampler: _Seeded | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    persistent_workers: bool = True,
    prefetch_factor: int | None = None,
    **kwargs,
) -> DataLoader:
    """The training loader of the SSL bundles: a MONAI ``DataLoader`` over :class:`SeededItems`
    with a seeded sampler, workers kept between passes (``persistent_workers``, when there are
    workers) and ``prefetch_factor`` batches prefetched per worker (None: torch's 2).

    Args:
        dataset: the training dataset (its ``transform`` is reseeded per item).
        batch_size, shuffle, num_workers, drop_last: as ``DataLoader``.
        sampler: a :class:`SeededDistributedSampler` for multi-GPU runs (then ``shuffle`` is false);
            None: a :class:`SeededRandomSampler` (``shuffle``) or :class:`SeededSequentialSampler`.
        persistent_workers: keep the workers between passes (only with ``num_workers > 0``).
        prefetch_factor: batches loaded in advance by each worker.
        kwargs: any other ``DataLoader`` argument (``collate_fn``, ``pin_memory``, ...).
    """
    if sampler is None:
        sampler = SeededRandomSampler(dataset) if shuffle else SeededSequentialSampler(dataset)
    elif not isinstance(sampler, _Seeded):
        raise ValueError(
            f"augmenting_loader: sampler must be a seeded sampler (SeededDistributedSampler, SeededRandomSampler), "
            f"got {type(sampler).__name__}: a plain sampler gives the items no seed"
        )
    elif shuffle:
        raise ValueError("augmenting_loader: give either a sampler or shuffle=true, not both (set shuffle to false)")
    # the loader's own base-seed draws (every pass without persistent workers, once with them) come from a private
    # generator, so torch's global generator advances alike for any num_workers (the workers' seeds are not used)
    kwargs.setdefault("generator", torch.Generator())
    workers = int(num_workers)
    if workers > 0:
        kwargs["persistent_workers"] = bool(persistent_workers)
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = int(prefetch_factor)
    return DataLoader(SeededItems(dataset), batch_size=int(batch_size), sampler=sampler, num_workers=workers,
                      drop_last=bool(drop_last), **kwargs)
