"""Epoch-end checkpoints and encoder exports are written on a background thread: what would be wrong is a file
holding the state of a later step (the write raced the optimizer), a failed write that nobody hears of, an older write
landing over a newer one, or a run that returns before its last checkpoint or export is on disk."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Events

from monai_ssl_ext.handlers import EncoderExport, ResumableCheckpoint
from monai_ssl_ext.io import BackgroundWriter, atomic_save, snapshot
from tiny_training import tiny_backbone, tiny_trainer


def test_snapshot_is_written_not_the_changing_original(tmp_path):
    state = {"w": torch.zeros(1000), "nested": [{"b": torch.ones(3)}], "step": 1}
    writer = BackgroundWriter()
    writer.submit(atomic_save, snapshot(state), tmp_path / "c.pt")
    state["w"].add_(5.0)  # the next optimizer step, in place, while the write may still run
    state["nested"][0]["b"].mul_(0)
    writer.wait()
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    assert torch.equal(saved["w"], torch.zeros(1000)) and torch.equal(saved["nested"][0]["b"], torch.ones(3))
    assert saved["step"] == 1


def test_failed_write_is_logged_and_raised(tmp_path, caplog):
    def fail():
        raise OSError("disk full")

    writer = BackgroundWriter()
    with caplog.at_level(logging.ERROR):
        writer.submit(fail)
        with pytest.raises(OSError, match="disk full"):
            writer.wait()
    assert "disk full" in caplog.text
    writer.wait()  # raised once, then cleared


def test_run_returns_with_the_last_epoch_on_disk_and_sync_save_wins(tmp_path, monkeypatch):
    import time

    import monai_ssl_ext.handlers.checkpoint as checkpoint

    def slow_save(obj, path):  # a slow disk: without the wait at the end, the run would return first
        time.sleep(0.3)
        atomic_save(obj, path)

    copied = []

    def counting_snapshot(state):
        copied.append(state["engine"]["epoch"])
        return snapshot(state)

    monkeypatch.setattr(checkpoint, "atomic_save", slow_save)
    monkeypatch.setattr(checkpoint, "snapshot", counting_snapshot)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = ResumableCheckpoint(str(tmp_path), {"network": model, "optimizer": optimizer}, resume=False)
    trainer, _ = tiny_trainer(model, optimizer, [ckpt])
    trainer.run([torch.randn(3, 4) for _ in range(5)], max_epochs=3)
    # epochs 1 and 2 are written from a copy (training goes on); the last from the state itself (no step follows)
    assert copied == [1, 2]
    saved = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    assert saved["engine"]["epoch"] == 3 and saved["engine"]["iteration"] == 15
    for k, v in model.state_dict().items():
        assert torch.equal(saved["network"][k], v), k  # the final weights, not an earlier epoch's

    # a background save followed by a synchronous one: the file holds the newer state
    trainer.state.epoch = 7
    ckpt.save(trainer, background=True)
    with torch.no_grad():
        model.weight.fill_(3.0)
    trainer.state.epoch = 8
    ckpt.save(trainer)
    saved = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    assert saved["engine"]["epoch"] == 8 and torch.all(saved["network"]["weight"] == 3.0)


def _backbone_trainer(tmp_path, interval=1, before_export=None):
    """A trainer of a tiny ViT trunk (16-px one-channel batches) with an ``EncoderExport`` of it, attached after
    ``before_export(trainer, backbone)`` has added its handlers."""
    torch.manual_seed(0)
    backbone = tiny_backbone()
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.5)
    trainer, _ = tiny_trainer(backbone, optimizer)
    if before_export is not None:
        before_export(trainer, backbone)
    export = EncoderExport(backbone, str(tmp_path / "encoder.pt"), method="simclr", interval=interval)
    export.attach(trainer)
    return trainer, backbone, export


def _batches(n=3):
    return [torch.randn(2, 1, 16, 16) for _ in range(n)]


def test_epoch_export_holds_the_epochs_trunk_and_the_run_ends_with_the_last_on_disk(tmp_path, monkeypatch):
    import time

    import monai_ssl_ext.handlers.encoder_export as module
    from monai_ssl_ext.encoders import read_encoder

    at_epoch_end = {}
    written = []

    def slow_save(obj, path):  # a slow disk: the next epoch's steps run while the export is written
        time.sleep(0.3)
        atomic_save(obj, path)
        written.append(obj["epoch"])

    monkeypatch.setattr(module, "atomic_save", slow_save)
    seen_during_epoch_2 = []

    def record(trainer, backbone):  # runs before the export's handlers: the trunk as each epoch left it
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: at_epoch_end.update(
            {e.state.epoch: {k: v.clone() for k, v in backbone.trunk.state_dict().items()}}))
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen_during_epoch_2.append(list(written))
                                  if e.state.epoch == 2 else None)

    trainer, backbone, export = _backbone_trainer(tmp_path, before_export=record)
    trainer.run(_batches(), max_epochs=2)
    assert seen_during_epoch_2[0] == [], "epoch 2 should have started before epoch 1's export landed"
    assert written == [1, 2]  # the final export is the epoch-2 one, written once
    header = read_encoder(str(tmp_path / "encoder.pt"))
    assert header["epoch"] == 2
    for k, v in at_epoch_end[2].items():  # the last epoch's trunk, complete, when run() returns
        assert torch.equal(header["state_dict"][k], v), k

    # a background export that training overtakes still holds the trunk of its epoch
    trainer.state.epoch, trainer.state.iteration = 7, 21
    export.epoch_export(trainer)
    snapshot_weights = {k: v.clone() for k, v in backbone.trunk.state_dict().items()}
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(1.0)
    export.writer.wait()
    header = read_encoder(str(tmp_path / "encoder.pt"))
    assert header["epoch"] == 7
    for k, v in snapshot_weights.items():
        assert torch.equal(header["state_dict"][k], v), k


def test_failed_background_export_fails_the_run(tmp_path, monkeypatch, caplog):
    import monai_ssl_ext.handlers.encoder_export as module

    def full_disk(obj, path):
        raise OSError("No space left on device")

    monkeypatch.setattr(module, "atomic_save", full_disk)
    trainer, _, _ = _backbone_trainer(tmp_path)
    with caplog.at_level(logging.ERROR), pytest.raises(OSError, match="No space left"):
        trainer.run(_batches(), max_epochs=1)
    assert "No space left" in caplog.text
