"""Resume: a training run killed (SIGKILL) after a checkpoint is resumed by the same command and
ends with the same weights as an uninterrupted run (CPU, fixed seed); the random state is stored
so that ``torch.load(..., weights_only=True)`` reads it."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from killed_runs import assert_same_state, ckpt_epoch, finish, kill_after_checkpoint, start, train_losses

BUNDLE = ROOT / "bundles" / "simclr_cholec"
CKPT = Path("runs") / "simclr_cholec" / "models" / "checkpoint_last.pt"
ENCODER = CKPT.parent / "encoder.pt"
BEST = CKPT.parent / "model_best_val_loss.pt"
EPOCHS = 6


def _small_dataset(demo: str, out: Path, n_train: int = 8, n_val: int = 4) -> Path:
    """A dataset folder whose CSVs list a few demo frames (absolute paths)."""
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        rows = Path(demo, f"{split}.csv").read_text().splitlines()[1:]
        rows = rows[:: max(1, len(rows) // n)][:n]  # spread over the videos
        lines = ["path,label"] + [f"{os.path.join(demo, r.split(',')[0])},{r.split(',')[1]}" for r in rows]
        (out / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return out


def _command(override: Path, data: Path, root: Path) -> list[str]:
    cfg = BUNDLE / "configs"
    files = [str(cfg / "train.json"), str(cfg / "smoke.json"), str(override)]
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr(files),
            "--dataset_dir", str(data), "--bundle_root", str(root)]


@pytest.mark.parametrize("epoch_length,n_train", [(None, 8), (2, 12)], ids=["whole_epochs", "epoch_shorter_than_data"])
def test_sigkill_then_resume_matches_uninterrupted(demo_data, tmp_path, epoch_length, n_train):
    """Whole epochs (8 frames, 2 batches = one epoch), and the harness's epoch_length 2 over 12
    frames (3 batches a pass): a data pass then goes on across epochs, and the resumed run must
    rebuild it (same shuffle, used batches skipped) to draw the uninterrupted run's batches."""
    data = _small_dataset(demo_data("cholec"), tmp_path / "data", n_train=n_train)
    override = tmp_path / "resume.json"
    # validation every epoch (it draws random augmentations too), the smoke sizes (batch 4, 32 px,
    # no workers)
    override.write_text(json.dumps({"epochs": EPOCHS, "epoch_length": epoch_length, "val_interval": 1}))
    root_a, root_b = tmp_path / "a", tmp_path / "b"

    # A (uninterrupted) runs beside B: one core each
    proc_a, log_a = start(_command(override, data, root_a), tmp_path / "a.log")
    proc_b, log_b = start(_command(override, data, root_b), tmp_path / "b1.log")
    kill_after_checkpoint(proc_b, log_b, tmp_path / "b1.log", root_b / CKPT)
    killed_at = ckpt_epoch(root_b / CKPT)  # weights_only=True: the RNG state loads too
    assert killed_at is not None and 1 <= killed_at < EPOCHS, f"kill did not land mid-run (checkpoint epoch {killed_at})"

    # B again, the very same command: it resumes from the checkpoint (A is still running)
    proc_b2, log_b2 = start(_command(override, data, root_b), tmp_path / "b2.log")
    out_b2 = finish(proc_b2, log_b2, tmp_path / "b2.log")
    out_a = finish(proc_a, log_a, tmp_path / "a.log")
    assert f"resumed from {root_b / CKPT} at epoch {killed_at}" in out_b2, out_b2[-4000:]
    assert f"Epoch: {killed_at}/{EPOCHS}," not in out_b2, "the resumed run repeated a finished epoch"
    assert f"Epoch: {killed_at + 1}/{EPOCHS}, Iter: 1/" in out_b2
    assert "resumed from" not in out_a
    # the resumed run's losses are the uninterrupted run's (same batches, same augmentations)
    assert train_losses(out_b2) == train_losses(out_a)[killed_at * 2 :]

    ck_a = torch.load(root_a / CKPT, map_location="cpu", weights_only=True)
    ck_b = torch.load(root_b / CKPT, map_location="cpu", weights_only=True)
    assert ck_a["engine"] == ck_b["engine"]
    assert ck_a["engine"]["epoch"] == EPOCHS and ck_a["engine"]["iteration"] == EPOCHS * 2
    assert_same_state(ck_a["network"], ck_b["network"], "network")
    assert_same_state(ck_a["optimizer"]["state"], ck_b["optimizer"]["state"], "optimizer")
    assert ck_a["lr_scheduler"] == ck_b["lr_scheduler"]
    enc_a = torch.load(root_a / ENCODER, map_location="cpu", weights_only=True)
    enc_b = torch.load(root_b / ENCODER, map_location="cpu", weights_only=True)
    assert_same_state(enc_a["state_dict"], enc_b["state_dict"], "encoder")
    # the best-model record and file: the same value, epoch and weights as the uninterrupted run
    assert ck_a["best"]["best_metric_epoch"] == ck_b["best"]["best_metric_epoch"]
    assert ck_a["best"]["best_metric"] == pytest.approx(ck_b["best"]["best_metric"], rel=0, abs=0)
    assert ck_a["best"]["saved"] == ck_b["best"]["saved"] and len(ck_a["best"]["saved"]) == 1
    best_a = torch.load(root_a / BEST, map_location="cpu", weights_only=True)
    best_b = torch.load(root_b / BEST, map_location="cpu", weights_only=True)
    assert_same_state(best_a, best_b, "best model")
    # the random state at the end is the same as well
    assert torch.equal(ck_a["rng"]["torch"], ck_b["rng"]["torch"])
    assert all(torch.equal(x["keys"], y["keys"]) for x, y in zip(ck_a["rng"]["transforms"], ck_b["rng"]["transforms"]))


# ---- RNGState -----------------------------------------------------------------------------------


def _draw(transform) -> list:
    out = transform({"image": torch.ones(1, 8, 8)})
    return [torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)],
            out["image"].flatten().tolist()]


def test_rng_state_round_trip(tmp_path):
    from monai.transforms import Compose, RandGaussianNoised, RandScaleIntensityd

    from monai_ssl_ext.handlers import ResumableCheckpoint, RNGState

    transform = Compose([RandGaussianNoised(keys="image", prob=1.0), RandScaleIntensityd(keys="image", factors=0.5, prob=0.5)])
    transform.set_random_state(seed=3)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    _draw(transform)  # move away from the seeds
    rng = RNGState(transform)
    saved = rng.state_dict()
    assert len(saved["transforms"]) >= 3  # Compose's own generator and the transforms'
    first = _draw(transform)
    rng.load_state_dict(saved)
    assert _draw(transform) == first

    # through a checkpoint file: a plain weights_only load, then the restore
    class _Engine:
        class state:
            epoch, iteration, epoch_length = 3, 30, 10

    ckpt = ResumableCheckpoint(str(tmp_path), {"rng": RNGState(transform)})
    rng.load_state_dict(saved)
    ckpt.save(_Engine)
    second = _draw(transform)
    assert second == first
    payload = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert payload["engine"] == {"epoch": 3, "iteration": 30, "epoch_length": 10}
    _draw(transform)
    RNGState(transform).load_state_dict(payload["rng"])
    assert _draw(transform) == first

    # a transform chain that changed since the checkpoint is refused
    with pytest.raises(RuntimeError, match="transform random states"):
        RNGState(Compose([RandGaussianNoised(keys="image")])).load_state_dict(payload["rng"])


# ---- the best-model record -------------------------------------------------------------------


def _scripted_run(ckpt_dir: Path, epochs: int, scores: list[float], resume: bool):
    """SupervisedTrainer + validation every epoch whose key metric is ``scores[epoch - 1]``; the
    best model goes to ``model.pt`` (MONAI CheckpointSaver), progress to ``checkpoint_last.pt``."""
    from ignite.engine import Events
    from ignite.metrics import Metric
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import CheckpointSaver, ValidationHandler

    from monai_ssl_ext.handlers import ResumableCheckpoint

    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    data = [{"image": torch.randn(2, 2), "label": torch.randn(2, 1)} for _ in range(2)]
    epoch = {"now": 0}

    class Scripted(Metric):
        def reset(self):
            pass

        def update(self, output):
            pass

        def compute(self):
            return scores[epoch["now"] - 1]

    saver = CheckpointSaver(str(ckpt_dir), {"model": net}, save_key_metric=True, key_metric_filename="model.pt")
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=data[:1], network=net,
                                    key_val_metric={"val_score": Scripted()}, val_handlers=[saver])
    resumable = ResumableCheckpoint(str(ckpt_dir), {"network": net, "optimizer": opt}, resume=resume,
                                    best_saver=saver, evaluator=evaluator)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=data, network=net,
                                optimizer=opt, loss_function=torch.nn.MSELoss(),
                                train_handlers=[resumable, ValidationHandler(1, evaluator)])
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epoch.update(now=e.state.epoch))
    weights = {}
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: weights.update({e.state.epoch: net.weight.detach().clone()}))
    trainer.run()
    return evaluator, weights


def test_resume_keeps_the_best_model(tmp_path):
    """Killed after epoch 2 (best 0.9 there); the resumed epochs 3-4 score worse: model.pt must
    stay epoch 2's weights and the evaluator's best must stay 0.9 at epoch 2."""
    scores = [0.5, 0.9, 0.3, 0.2]
    _, first = _scripted_run(tmp_path, 2, scores, resume=True)
    payload = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert payload["best"]["best_metric"] == pytest.approx(0.9) and payload["best"]["best_metric_epoch"] == 2
    assert [s["priority"] for s in payload["best"]["saved"]] == [pytest.approx(0.9)]
    evaluator, second = _scripted_run(tmp_path, 4, scores, resume=True)
    assert sorted(second) == [3, 4]  # resumed after epoch 2
    best = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert torch.equal(best["weight"], first[2]), "a worse validation after the resume replaced the best model"
    assert not torch.equal(best["weight"], second[3])
    assert evaluator.state.best_metric == pytest.approx(0.9) and evaluator.state.best_metric_epoch == 2

    # and a better score after a resume does replace it
    evaluator, third = _scripted_run(tmp_path, 5, scores + [0.95], resume=True)
    best = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert torch.equal(best["weight"], third[5]) and evaluator.state.best_metric == pytest.approx(0.95)


def _amp_engine(ckpt_dir: Path, epochs: int):
    """A trainer-like engine with AMP's GradScaler (``engine.scaler``, as MONAI's trainers with ``amp``) whose
    scale halves every iteration (as after overflowing steps)."""
    from ignite.engine import Engine

    from monai_ssl_ext.handlers import ResumableCheckpoint

    net = torch.nn.Linear(2, 1)
    engine = Engine(lambda e, batch: e.scaler.update(new_scale=e.scaler.get_scale() / 2))
    engine.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    engine.scaler.scale(torch.ones(()))  # the scale tensor exists from the first scaled loss on
    ResumableCheckpoint(str(ckpt_dir), {"network": net}).attach(engine)
    engine.run([0, 1], max_epochs=epochs)
    return engine


def test_resume_restores_the_amp_loss_scale(tmp_path):
    """Killed after epoch 2 (4 halvings: scale 2^12); the resumed run starts from 2^12, not from a fresh 2^16."""
    assert _amp_engine(tmp_path, 2).scaler.get_scale() == 2.0**12
    payload = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert payload["amp_scaler"]["scale"] == 2.0**12
    resumed = _amp_engine(tmp_path, 3)  # one more epoch: two more halvings from the saved scale
    assert resumed.state.epoch == 3 and resumed.scaler.get_scale() == 2.0**10


@pytest.mark.parametrize("epochs, interval, saved", [(5, 2, [2, 4, 5]), (4, 2, [2, 4]), (3, 5, [3]), (3, 1, [1, 2, 3])])
def test_the_last_epoch_is_checkpointed_whatever_the_interval(tmp_path, epochs, interval, saved):
    """``checkpoint_interval`` N saves every N epochs and after the run's last epoch: a run of 5 epochs with N 2
    ends with the checkpoint of epoch 5 and its final weights (it held epoch 4 before the fix: a finished run's
    checkpoint one epoch behind its encoder, and a resume that trained the last epoch again)."""
    from ignite.engine import Engine, Events

    from monai_ssl_ext.handlers import ResumableCheckpoint

    net = torch.nn.Linear(2, 1)

    def step(engine, batch):
        with torch.no_grad():
            net.weight.add_(1.0)  # weights that change every iteration: epoch e ends with weight w0 + 2 e

    engine = Engine(step)
    checkpoint = ResumableCheckpoint(str(tmp_path), {"network": net}, interval=interval)
    checkpoint.attach(engine)
    written = []
    real_save = checkpoint.save

    def save(engine, background=False):
        written.append(engine.state.epoch)
        real_save(engine, background)

    checkpoint.save = save
    engine.run([0, 1], max_epochs=epochs)
    assert written == saved
    payload = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert payload["engine"]["epoch"] == epochs
    assert torch.equal(payload["network"]["weight"], net.weight.detach())
