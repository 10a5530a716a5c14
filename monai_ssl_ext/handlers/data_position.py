"""Where the training data loader stands, so that a resume continues with the very batches an
uninterrupted run would have drawn, at any ``epoch_length``.

Ignite keeps one pass over the data loader going across epochs when ``epoch_length`` is shorter
than the loader (a new pass, with a new shuffle, starts only when the old one is exhausted). A run
resumed from an epoch-end checkpoint used to start a fresh pass: other batches, other results.

:class:`DataPosition` records, for the pass in progress, the torch random state just before the
pass began (it decides the shuffle order and the workers' seeds), the distributed sampler's epoch,
and how many batches the pass has handed out. On resume the pass is rebuilt from that state and
fast-forwarded by loading and dropping the batches already used; the caller then restores the
checkpoint's random states, so the next batch, its augmentation and everything after it are the
uninterrupted run's.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch

__all__ = ["DataPosition", "RecordedLoader"]


def _sampler(loader):
    return getattr(loader, "sampler", None)


def _length(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


class DataPosition:
    """State of the data pass in progress (see the module docstring); ``state_dict`` holds only
    tensors and numbers, so a checkpoint with it loads with ``weights_only=True``."""

    def __init__(self) -> None:
        self.rng: torch.Tensor | None = None
        self.sampler_epoch = -1
        self.consumed = 0
        self._replay: dict | None = None
        self._after_replay: Callable[[], None] | None = None
        self.logger = logging.getLogger("monai_ssl_ext.DataPosition")

    def state_dict(self) -> dict:
        return {"rng": torch.get_rng_state() if self.rng is None else self.rng,
                "sampler_epoch": int(self.sampler_epoch), "consumed": int(self.consumed)}

    def load_state_dict(self, state: dict, after_replay: Callable[[], None] | None = None) -> None:
        """Rebuild the recorded pass when the data is next iterated; ``after_replay`` then restores
        the checkpoint's random states (the fast-forward draws from them)."""
        self._replay = {"rng": state["rng"], "sampler_epoch": int(state["sampler_epoch"]),
                        "consumed": int(state["consumed"])}
        self._after_replay = after_replay

    def passes(self, loader) -> Iterator:
        """One pass over ``loader``, recorded (or, after :meth:`load_state_dict`, rebuilt)."""
        replay, self._replay = self._replay, None
        length = _length(loader)
        if replay is not None and length is not None and replay["consumed"] >= length:
            replay = None  # the recorded pass was used up: a new one starts from the restored state
        sampler = _sampler(loader)
        current_epoch = getattr(sampler, "epoch", None)
        if replay is not None:
            before = torch.get_rng_state(), np.random.get_state(), random.getstate()
            torch.set_rng_state(replay["rng"])
            self.sampler_epoch = replay["sampler_epoch"]
            if self.sampler_epoch >= 0 and hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.sampler_epoch)
        else:
            self.sampler_epoch = -1 if current_epoch is None else int(current_epoch)
        self.rng = torch.get_rng_state()
        self.consumed = 0
        it = iter(loader)
        if replay is not None:
            for _ in range(replay["consumed"]):
                next(it)
            self.consumed = replay["consumed"]
            if current_epoch is not None and hasattr(sampler, "set_epoch"):
                sampler.set_epoch(current_epoch)
            torch.set_rng_state(before[0])  # the fast-forward's draws must not count
            np.random.set_state(before[1])
            random.setstate(before[2])
            if self._after_replay is not None:
                self._after_replay()
            self.logger.info(f"data pass rebuilt: skipped the {self.consumed} batches it had already given")
        for batch in it:
            self.consumed += 1
            yield batch


class RecordedLoader:
    """An iterable over ``loader`` whose passes go through :meth:`DataPosition.passes`; length and
    attributes (``sampler``, ``batch_size``, ...) are the loader's."""

    def __init__(self, loader, position: DataPosition) -> None:
        self.loader, self.position = loader, position

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        if name in ("loader", "position"):
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator:
        return self.position.passes(self.loader)
