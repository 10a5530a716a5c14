"""Resumable training: one ``checkpoint_last.pt`` written atomically at epoch ends and loaded
(``weights_only=True``) when the same command starts again.

When the run starts (before its first iteration) the checkpoint folder is probed for writing and
temp files that killed writers left behind are removed; a checkpoint that does not fit the
configured objects fails with one message naming the file, the state and the first mismatching
tensors."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..distributed import get_rank
from ..io import BackgroundWriter, atomic_save, check_writable, remove_stale_temps, snapshot
from ..seeding import transform_generators
from ..utils import as_bool
from .data_position import DataPosition, RecordedLoader

__all__ = ["RNGState", "ResumableCheckpoint", "ResumeError"]

SHOW_MISMATCHES = 5  # tensors listed in a resume error (the rest are counted)


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
            "transforms": [_np_state(r.get_state()) for r in transform_generators(self.transform)],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        # checked first: a refused state changes no generator
        gens = transform_generators(self.transform)
        if len(gens) != len(state["transforms"]):
            raise RuntimeError(
                f"checkpoint has {len(state['transforms'])} transform random states, the pipeline has {len(gens)}: "
                "the transforms changed since the checkpoint was written"
            )
        torch.set_rng_state(state["torch"])
        np.random.set_state(_np_restore(state["numpy"]))
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
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


class ResumeError(RuntimeError):
    """The checkpoint of a resumed run cannot be read or does not fit the configured objects."""


def _shape(value) -> str:
    if isinstance(value, torch.Tensor):
        return str(list(value.shape))
    return type(value).__name__


def _module_mismatches(module: torch.nn.Module, state) -> list[str]:
    """The tensors by which ``state`` differs from ``module``'s own state dict, in the module's
    order: other shapes and tensors missing from the checkpoint, then tensors the module lacks."""
    if not isinstance(state, dict):
        return [f"the checkpoint holds a {type(state).__name__}, not a state dict"]
    own = module.state_dict()
    lines = []
    for name, value in own.items():
        if name not in state:
            lines.append(f"{name}: not in the checkpoint (model shape {_shape(value)})")
        elif isinstance(value, torch.Tensor) and (
            not isinstance(state[name], torch.Tensor) or state[name].shape != value.shape
        ):
            lines.append(f"size mismatch for {name}: checkpoint shape {_shape(state[name])}, "
                         f"model shape {_shape(value)}")
    lines += [f"{name}: in the checkpoint (shape {_shape(value)}), not in the model"
              for name, value in state.items() if name not in own]
    return lines


# per-parameter optimizer buffers shaped like their parameter (SGD/LARS, Adam(W), RMSprop, ...)
_PARAM_SHAPED = {"momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "grad_avg",
                 "acc_delta", "sum", "ax", "prev", "exp_inf"}


def _optimizer_mismatches(optimizer: torch.optim.Optimizer, state, names: dict[int, str]) -> list[str]:
    """Why ``state`` cannot be applied to ``optimizer``: other parameter groups, or buffers shaped
    unlike the parameters (which ``load_state_dict`` does not check: the first step would fail)."""
    if not isinstance(state, dict) or "param_groups" not in state:
        return ["the checkpoint holds no optimizer state dict"]
    groups, saved = optimizer.param_groups, state["param_groups"]
    if len(groups) != len(saved):
        return [f"{len(saved)} parameter groups in the checkpoint, {len(groups)} in the optimizer"]
    lines = [f"parameter group {i}: {len(s['params'])} parameters in the checkpoint, "
             f"{len(g['params'])} in the optimizer"
             for i, (g, s) in enumerate(zip(groups, saved)) if len(g["params"]) != len(s["params"])]
    if lines:
        return lines
    buffers = state.get("state", {})
    for g, s in zip(groups, saved):
        for param, index in zip(g["params"], s["params"]):
            for key, value in buffers.get(index, {}).items():
                if key in _PARAM_SHAPED and isinstance(value, torch.Tensor) and value.shape != param.shape:
                    name = names.get(id(param), f"parameter {index}")
                    lines.append(f"size mismatch for {name} ({key}): checkpoint shape {_shape(value)}, "
                                 f"model shape {_shape(param)}")
                    break
    return lines


def _error_lines(error: BaseException, limit: int = 300) -> list[str]:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()] or [type(error).__name__]
    return [ln if len(ln) <= limit else ln[:limit] + " ..." for ln in lines]


def _amp_scaler(engine: Engine):
    """The engine's enabled AMP ``GradScaler`` (MONAI trainers set ``engine.scaler`` with ``amp``), else None."""
    scaler = getattr(engine, "scaler", None)
    return scaler if scaler is not None and getattr(scaler, "is_enabled", lambda: False)() else None


class ResumableCheckpoint:
    """Save ``save_dict`` (plus the engine's progress) to ``<ckpt_dir>/<filename>`` every
    ``interval`` epochs and after the last, atomically (write then rename), rank 0 only; on start, if the file exists,
    load it with ``weights_only=True`` and continue from its epoch.

    At the start, before the first iteration, rank 0 removes the ``<filename>.tmp<pid>`` files of
    writers that were killed and probes the folder for writing: a read-only ``ckpt_dir`` fails
    then, naming it, not after an epoch of training. A checkpoint that does not fit the configured
    objects (another model size, optimizer groups, transforms ...) raises :class:`ResumeError`
    naming the file, the state and the first mismatching tensors, and how to start over
    (``--resume false``).

    The checkpoint also records where the training data pass stands (:class:`DataPosition`): with an
    ``epoch_length`` shorter than the data loader, a pass goes on across epochs, and a resumed run
    rebuilds it (same shuffle, the used batches skipped) and then restores the random states, so
    it draws the very batches and augmentations the uninterrupted run draws.

    With ``best_saver`` (the validation ``CheckpointSaver`` that keeps the best model) the record of
    the best model goes into the checkpoint too: its score and file name, and with ``evaluator``
    the evaluator's ``best_metric`` / ``best_metric_epoch``. Without it a resumed run forgot the
    best score, and its first validation replaced the best model even when it was worse.

    With AMP the trainer's ``GradScaler`` (``engine.scaler``, enabled) is saved and restored too: a
    resumed run goes on with the loss scale it had, not from 2^16 with a few skipped steps.

    Args:
        ckpt_dir: folder of the checkpoint.
        save_dict: objects with ``state_dict``/``load_state_dict`` (network, optimizer, scheduler,
            :class:`RNGState`, EMA target, …).
        interval: epochs between saves; the last epoch of the run is saved too.
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
        for reserved in ("engine", "best", "data_position", "amp_scaler"):
            if reserved in self.save_dict:
                raise ValueError(f"ResumableCheckpoint: '{reserved}' is reserved (trainer progress / best model / "
                                 "data position / AMP scaler)")
        self.position = DataPosition()
        self.best = None if best_saver is None else _best_checkpoint(best_saver)
        self.evaluator = evaluator
        self.interval = int(interval)
        self.resume = as_bool(resume, "resume")
        self.logger = logging.getLogger("monai_ssl_ext.ResumableCheckpoint")
        self.writer = BackgroundWriter("monai_ssl_ext.ResumableCheckpoint")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.STARTED, self._register_save)
        engine.add_event_handler(Events.COMPLETED, self.wait)

    def start(self, engine: Engine) -> None:
        """Before the first iteration: (rank 0, which writes) remove the temp files killed writes
        left, check that the checkpoint can be written; then load it when resuming, and record the
        data passes from here on."""
        if get_rank() == 0:
            remove_stale_temps(self.path, self.logger)
            check_writable(self.path, "checkpoint",
                           hint="make the folder writable or set another `ckpt_dir` (nothing was trained)")
        self.writer.wait()  # a write left by an earlier run of this handler lands before anything is read
        if self.resume:
            self.load(engine)
        if engine.state.dataloader is not None and not isinstance(engine.state.dataloader, RecordedLoader):
            engine.set_data(RecordedLoader(engine.state.dataloader, self.position))

    def _register_save(self, engine: Engine) -> None:
        """Register the epoch-end save when the run starts, after every handler of the list has
        attached: the checkpoint then holds the epoch's validation and best model whatever the
        handlers' order in the config."""
        if not engine.has_event_handler(self._save_every):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._save_every)

    def _save_every(self, engine: Engine) -> None:
        """Every ``interval`` epochs, on the background thread, and after the run's last epoch whatever the interval:
        the checkpoint of a finished run holds its final state (an epoch count that is not a multiple of the interval
        left it at the last multiple). The last epoch's is written at once, without the copy of the state that a
        background write needs: no step follows it, and the run waits for it anyway."""
        last = engine.state.epoch == engine.state.max_epochs
        if engine.state.epoch % self.interval == 0 or last:
            self.save(engine, background=not last)

    def wait(self, engine: Engine | None = None) -> None:
        """Wait for the epoch-end checkpoint being written (at the end of the run); raise if it failed."""
        self.writer.wait()

    def save(self, engine: Engine, background: bool = False) -> None:
        """Write the checkpoint now; with ``background`` (the epoch-end saves) a snapshot of the state is written
        by :class:`~monai_ssl_ext.io.BackgroundWriter` while training goes on (the run waits for it to end)."""
        if get_rank() != 0:
            return
        payload = {k: v.state_dict() for k, v in self.save_dict.items()}
        payload["engine"] = {"epoch": engine.state.epoch, "iteration": engine.state.iteration,
                             "epoch_length": engine.state.epoch_length}
        if self.best is not None or self.evaluator is not None:
            payload["best"] = self._best_state()
        payload["data_position"] = self.position.state_dict()
        scaler = _amp_scaler(engine)
        if scaler is not None:
            payload["amp_scaler"] = scaler.state_dict()
        if background:
            self.writer.submit(atomic_save, snapshot(payload), self.path)
        else:
            self.writer.wait()  # an older background write must not land after this one
            atomic_save(payload, self.path)

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

    def _start_over(self) -> str:
        return f"to start over, run with `--resume false` (the checkpoint is then replaced) or delete {self.path}"

    def _mismatch(self, key: str, obj, lines: list[str], cause: str = "") -> ResumeError:
        """One error for a state that does not fit: the file, the state, the first few
        mismatches (the rest counted) and how to start over."""
        shown = [f"  {ln}" for ln in lines[:SHOW_MISMATCHES]]
        if len(lines) > SHOW_MISMATCHES:
            shown.append(f"  ... and {len(lines) - SHOW_MISMATCHES} more")
        head = (f"cannot resume from checkpoint {self.path}: its '{key}' state does not fit this run's "
                f"{type(obj).__name__} (the configuration changed since the checkpoint was written){cause}:")
        return ResumeError("\n".join([head, *shown, self._start_over()]))

    def _apply(self, key: str, obj, state, names: dict[int, str]) -> None:
        if isinstance(obj, torch.optim.Optimizer):
            lines = _optimizer_mismatches(obj, state, names)
            if lines:
                raise self._mismatch(key, obj, lines)
        try:
            obj.load_state_dict(state)
        except Exception as e:
            lines = _module_mismatches(obj, state) if isinstance(obj, torch.nn.Module) else []
            cause = ""
            if not lines:
                lines, cause = _error_lines(e), f" ({type(e).__name__})"
            err = self._mismatch(key, obj, lines, cause)
            # the original message can list every tensor (hundreds of lines): chain only short ones
            raise err from (e if str(e).count("\n") < 2 * SHOW_MISMATCHES else None)

    def load(self, engine: Engine) -> None:
        if not os.path.isfile(self.path):
            return
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ResumeError(f"cannot read checkpoint {self.path} ({type(e).__name__}: {e}); "
                              f"{self._start_over()}") from e
        if not isinstance(payload, dict):
            raise ResumeError(f"checkpoint {self.path} holds a {type(payload).__name__}, not a resumable checkpoint; "
                              f"{self._start_over()}")
        progress = payload.get("engine", {})
        if progress.get("epoch_length") != engine.state.epoch_length:
            raise ResumeError(
                f"checkpoint {self.path} was written with epoch_length {progress.get('epoch_length')}, "
                f"this run uses {engine.state.epoch_length}: change `epoch_length` back; or {self._start_over()}"
            )
        missing = [k for k in self.save_dict if k not in payload]
        if missing:
            raise ResumeError(f"checkpoint {self.path} has no {', '.join(repr(k) for k in missing)} state "
                              f"(it holds {', '.join(repr(k) for k in payload)}); {self._start_over()}")
        names = {id(p): n for obj in self.save_dict.values() if isinstance(obj, torch.nn.Module)
                 for n, p in obj.named_parameters()}
        for k, obj in self.save_dict.items():
            self._apply(k, obj, payload[k], names)
        if self.best is not None or self.evaluator is not None:
            if "best" not in payload:
                raise ResumeError(f"checkpoint {self.path} has no best-model record (written by an older version); "
                                  f"{self._start_over()}")
            try:
                self._load_best_state(payload["best"])
            except Exception as e:
                raise ResumeError(f"cannot resume from checkpoint {self.path}: its best-model record does not fit "
                                  f"({type(e).__name__}: {e}); {self._start_over()}") from e
        scaler = _amp_scaler(engine)
        if scaler is not None and "amp_scaler" in payload:  # a checkpoint written without AMP keeps the fresh scale
            self._apply("amp_scaler", scaler, payload["amp_scaler"], names)
        if "data_position" in payload:  # rebuilt at the next pass; then the random states are restored again
            rng_states = [(k, obj) for k, obj in self.save_dict.items() if isinstance(obj, RNGState)]
            self.position.load_state_dict(
                payload["data_position"], after_replay=lambda: [obj.load_state_dict(payload[k]) for k, obj in rng_states])
        engine.state.epoch = progress["epoch"]
        engine.state.iteration = progress["iteration"]
        self.logger.info(f"resumed from {self.path} at epoch {engine.state.epoch} (iteration {engine.state.iteration})")
