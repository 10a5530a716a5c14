"""Run a bundle command in a subprocess, SIGKILL it once its first epoch-end checkpoint exists, and compare
checkpoints: the pieces of the kill-and-resume tests (tests/handlers/test_resume.py,
tests/bundles/test_clustering_resume.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT


def env() -> dict:
    # one intra-op thread in every run: the same kernels, the same summation order
    return dict(os.environ, HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1",
                MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def start(cmd: list[str], log: Path) -> tuple[subprocess.Popen, object]:
    f = open(log, "w")
    return subprocess.Popen(cmd, cwd=str(ROOT), env=env(), stdout=f, stderr=subprocess.STDOUT), f


def finish(proc: subprocess.Popen, f, log: Path, timeout: float = 120) -> str:
    """Wait for ``proc``; its log text (asserting a zero exit status)."""
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        f.close()
    text = log.read_text()
    assert proc.returncode == 0, f"{log.name} exited {proc.returncode}:\n{text[-4000:]}"
    return text


def kill_after_checkpoint(proc: subprocess.Popen, f, log: Path, ckpt: Path, timeout: float = 180) -> str:
    """SIGKILL ``proc`` as soon as ``ckpt`` exists (written atomically at an epoch end: once there it is
    complete); returns the log text, asserting the process was killed and did not finish."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and not ckpt.is_file():
            time.sleep(0.01)
        if proc.poll() is None and ckpt.is_file():
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        f.close()
    text = log.read_text()
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed (rc {proc.returncode}):\n{text[-4000:]}"
    assert "SSLTrainer - INFO - Engine run finished" not in text  # (an evaluator may have finished runs)
    return text


def train_losses(log: str) -> list[str]:
    return re.findall(r"Epoch: \d+/\d+, Iter: \d+/\d+ -- train_loss: (\S+)", log)


def ckpt_epoch(path: Path) -> int | None:
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True)["engine"]["epoch"])


def assert_same_state(a, b, what: str) -> None:
    """Nested dicts of tensors / values equal (tensors bit for bit)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{what}: different keys"
        for k in a:
            assert_same_state(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, what
        if not torch.equal(a, b):
            diff = (a.double() - b.double()).abs().max().item() if a.is_floating_point() else "n/a"
            pytest.fail(f"{what} differs between the uninterrupted and the resumed run (max abs diff {diff})")
    else:
        assert a == b, f"{what}: {a!r} != {b!r}"
