"""The opt-in progress bar (config id progress_bar): on, tqdm shows iteration and loss and the per-iteration
StatsHandler lines are dropped (per-epoch lines stay); off, nothing is attached and the log is unchanged."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Engine, Events

from monai_ssl_ext.handlers import RunProgress


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _run(enabled: bool, name: str):
    """A trainer-like engine with a StatsHandler (its own MONAI logger, read here by a handler on it) and a
    per-epoch metric; returns the StatsHandler's log lines."""
    from monai.handlers import StatsHandler

    engine = Engine(lambda e, batch: [{"loss": torch.tensor(0.5 + batch)}])
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: e.state.metrics.update(knn_acc=0.75))
    stats = StatsHandler(name=name, tag_name="train_loss", output_transform=lambda out: out[0]["loss"].item())
    stats.attach(engine)
    lines = _Lines()
    stats.logger.addHandler(lines)
    stats.logger.setLevel(logging.INFO)
    RunProgress(enabled).attach(engine)
    engine.run([0.0, 1.0, 2.0], max_epochs=2)
    return lines.lines


def test_bar_on_drops_iteration_lines_and_shows_the_loss(capsys):
    lines = _run(True, "progress_on")
    assert not any("train_loss" in line for line in lines)
    assert sum("Metrics -- knn_acc: 0.7500" in line for line in lines) == 2, lines  # per-epoch lines stay
    err = capsys.readouterr().err
    assert "[3/3]" in err and "loss=2.5" in err


def test_bar_off_attaches_nothing(capsys):
    lines = _run(False, "progress_off")
    assert sum("train_loss" in line for line in lines) == 6
    assert "loss=" not in capsys.readouterr().err


def test_bad_value_names_the_config_key():
    with pytest.raises(ValueError, match="progress_bar"):
        RunProgress("sometimes")
