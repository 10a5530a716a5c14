"""Resumable training: one ``checkpoint_last.pt`` written atomically at epoch ends and loaded
(``weights_only=True``) when the same command starts again."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..distributed import get_rank
from ..utils import as_bool

__all__ = ["RNGState", "ResumableCheckpoint"]


def _random_states(obj, seen=None, depth=0) -> list[np.random.RandomState]:
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
        out.extend(_random_states(item, seen, depth + 1))
    return out


def _np_state(state) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _np_restore(d: dict):
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached_gaussian"])


class RNGState:
    """Checkpointable random state: torch (CPU and CUDA), numpy and Python global generators and
    the generators inside a transform chain, stored as tensors and plain numbers so that the
    checkpoint loads with ``weights_only=True``.

    Args:
        transform: the training transform chain whose random states should be kept (with
            ``num_workers=0`` they live in this process; workers are reseeded from torch).
    """

    def __init__(self, transform=None):
        self.transform = transform

    def state_dict(self) -> dict:
        py = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": _np_state(np.random.get_state()),
            "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
            "transforms": [_np_state(r.get_state()) for r in _random_states(self.transform)],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(_np_restore(state["numpy"]))
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
        gens = _random_states(self.transform)
        if len(gens) != len(state["transforms"]):
            raise RuntimeError(
                f"checkpoint has {len(state['transforms'])} transform random states, the pipeline has {len(gens)}: "
                "the transforms changed since the checkpoint was written"
            )
        for g, s in zip(gens, state["transforms"]):
            g.set_state(_np_restore(s))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _best_checkpoint(saver):
    """The ignite ``Checkpoint`` behind a MONAI ``CheckpointSaver``'s best-metric file (MONAI has
    no public accessor; this is the one place that reads it)."""
    best = getattr(saver, "_key_metric_checkpoint", None)
    if best is None:
        raise ValueError("ResumableCheckpoint: `best_saver` must be a MONAI CheckpointSaver with save_key_metric=true")
    return best


class ResumableCheckpoint:
    """Save ``save_dict`` (plus the engine's progress) to ``<ckpt_dir>/<filename>`` every
    ``interval`` epochs, atomically (write then rename), rank 0 only; on start, if the file exists,
    load it with ``weights_only=True`` and continue from its epoch.

    With ``best_saver`` (the validation ``CheckpointSaver`` that keeps the best model) the record of
    the best model goes into the checkpoint too: its score and file name, and with ``evaluator``
    the evaluator's ``best_metric`` / ``best_metric_epoch``. Without it a resumed run forgot the
    best score, and its first validation replaced the best model even when it was worse.

    Args:
        ckpt_dir: folder of the checkpoint.
        save_dict: objects with ``state_dict``/``load_state_dict`` (network, optimizer, scheduler,
            :class:`RNGState`, EMA target, …).
        interval: epochs between saves.
        filename: checkpoint file name.
        resume: load the checkpoint if present (set false to start over; the file is then replaced).
        best_saver: the ``CheckpointSaver`` (``save_key_metric=true``) whose best-model record must
            survive a resume; None where there is no validation.
        evaluator: the validation engine, whose ``best_metric`` / ``best_metric_epoch`` are kept.
    """

    def __init__(self, ckpt_dir: str, save_dict: dict, interval: int = 1, filename: str = "checkpoint_last.pt",
                 resume: bool = True, best_saver=None, evaluator=None):
        self.path = os.path.join(ckpt_dir, filename)
        self.save_dict = dict(save_dict)
        for reserved in ("engine", "best"):
            if reserved in self.save_dict:
                raise ValueError(f"ResumableCheckpoint: '{reserved}' is reserved (trainer progress / best model)")
        self.best = None if best_saver is None else _best_checkpoint(best_saver)
        self.evaluator = evaluator
        self.interval = int(interval)
        self.resume = as_bool(resume, "resume")
        self.logger = logging.getLogger("monai_ssl_ext.ResumableCheckpoint")

    def attach(self, engine: Engine) -> None:
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.STARTED, self._register_save)

    def _register_save(self, engine: Engine) -> None:
        """Register the epoch-end save when the run starts, after every handler of the list has
        attached: the checkpoint then holds the epoch's validation and best model whatever the
        handlers' order in the config."""
        if not engine.has_event_handler(self._save_every):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._save_every)

    def _save_every(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval == 0:
            self.save(engine)

    def save(self, engine: Engine) -> None:
        if get_rank() != 0:
            return
        payload = {k: v.state_dict() for k, v in self.save_dict.items()}
        payload["engine"] = {"epoch": engine.state.epoch, "iteration": engine.state.iteration,
                             "epoch_length": engine.state.epoch_length}
        if self.best is not None or self.evaluator is not None:
            payload["best"] = self._best_state()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = f"{self.path}.tmp{os.getpid()}"
        torch.save(payload, tmp)
        os.replace(tmp, self.path)

    def _best_state(self) -> dict:
        state: dict = {}
        if self.best is not None:
            state["saved"] = [{"priority": float(p), "filename": str(f)} for p, f in self.best.state_dict()["_saved"]]
        if self.evaluator is not None:
            state["best_metric"] = float(self.evaluator.state.best_metric)
            state["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)
        return state

    def _load_best_state(self, state: dict) -> None:
        if self.best is not None:
            saved = [(s["priority"], s["filename"]) for s in state.get("saved", [])]
            self.best.load_state_dict({"_saved": saved})
            handler = self.best.save_handler
            for _, name in saved:
                path = os.path.join(str(handler.dirname), getattr(handler, "filename", None) or name)
                if not os.path.isfile(path):
                    self.logger.warning(f"the best model {path} recorded in {self.path} is missing")
        if self.evaluator is not None and "best_metric" in state:
            self.evaluator.state.best_metric = state["best_metric"]
            self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]

    def load(self, engine: Engine) -> None:
        if not os.path.isfile(self.path):
            return
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise RuntimeError(f"cannot read checkpoint {self.path} ({type(e).__name__}: {e}); "
                               "delete it to start over") from e
        progress = payload.get("engine", {})
        if progress.get("epoch_length") != engine.state.epoch_length:
            raise RuntimeError(
                f"checkpoint {self.path} was written with epoch_length {progress.get('epoch_length')}, "
                f"this run uses {engine.state.epoch_length}: change `epoch_length` back or delete the checkpoint"
            )
        for k, obj in self.save_dict.items():
            if k not in payload:
                raise RuntimeError(f"checkpoint {self.path} has no '{k}' state")
            obj.load_state_dict(payload[k])
        if self.best is not None or self.evaluator is not None:
            if "best" not in payload:
                raise RuntimeError(f"checkpoint {self.path} has no best-model record (written by an older version): "
                                   "resume with --resume false, or delete it to start over")
            self._load_best_state(payload["best"])
        engine.state.epoch = progress["epoch"]
        engine.state.iteration = progress["iteration"]
        self.logger.info(f"resumed from {self.path} at epoch {engine.state.epoch} (iteration {engine.state.iteration})")
