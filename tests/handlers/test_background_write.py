"""Epoch-end checkpoints are written on a background thread: what would be wrong is a file holding the state of a
later step (the write raced the optimizer), a failed write that nobody hears of, an older write landing over a newer
one, or a run that returns before its last checkpoint is on disk."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Engine

from monai_ssl_ext.handlers import ResumableCheckpoint
from monai_ssl_ext.io import BackgroundWriter, atomic_save, snapshot


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


def _trainer(model, optimizer):
    def step(engine, batch):
        optimizer.zero_grad()
        loss = model(batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    return Engine(step)


def test_run_returns_with_the_last_epoch_on_disk_and_sync_save_wins(tmp_path, monkeypatch):
    import time

    import monai_ssl_ext.handlers.checkpoint as checkpoint

    def slow_save(obj, path):  # a slow disk: without the wait at the end, the run would return first
        time.sleep(0.3)
        atomic_save(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_save", slow_save)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = _trainer(model, optimizer)
    ckpt = ResumableCheckpoint(str(tmp_path), {"network": model, "optimizer": optimizer}, resume=False)
    ckpt.attach(trainer)
    trainer.run([torch.randn(3, 4) for _ in range(5)], max_epochs=3)
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
