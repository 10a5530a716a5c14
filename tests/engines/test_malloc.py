"""glibc keeps freed memory for reuse once :func:`monai_ssl_ext.malloc.retain_freed_memory` has run, and the SSL
trainer calls it before training.

What would be wrong: a setting that glibc ignores, so every step's activations still fault in fresh pages (the
bundle-vs-plain gap measured in ``bench``); a trainer that never applies it. The reference is the kernel's own count
of minor page faults (``getrusage``), taken in a fresh process because the setting is process-wide."""

from __future__ import annotations

import subprocess
import sys

import pytest

from monai_ssl_ext.malloc import has_glibc

pytestmark = pytest.mark.skipif(not has_glibc(), reason="mallopt is glibc's")

_FAULTS = """
import resource, sys, torch
from monai_ssl_ext.malloc import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
for _ in range(5):  # the first steps: the allocator settles (glibc's adaptive threshold, alignment slack)
    torch.empty(64 * 2**20, dtype=torch.uint8).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(15):  # the steps after: a step's activations, 64 MiB allocated, written, freed, allocated again
    torch.empty(64 * 2**20, dtype=torch.uint8).fill_(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_freed_memory_is_reused_without_new_page_faults():
    default, retained = _faults("default"), _faults("retain")
    # by default each of the 15 counted allocations is a fresh mapping, faulted in page by page (15 x 16384 pages of
    # 4 KiB, fewer where the kernel backs them with huge pages); retained, they reuse memory the first steps faulted
    # in. Counted from the 6th allocation on: which of the first few fault (one or two, by alignment slack) varies
    # between machines, the steady state does not
    assert retained * 5 < default, (retained, default)
    assert retained < 64 * 2**20 // 4096, retained  # fewer than one allocation's pages over 15 steps


def test_the_ssl_trainer_applies_it_before_its_run(monkeypatch):
    import torch

    import monai_ssl_ext.engines.ssl_trainer as ssl_trainer

    class Pair(torch.nn.Module):  # network(*views) -> one output per view
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

        def forward(self, a, b):
            return self.linear(a), self.linear(b)

    calls = []
    monkeypatch.setattr(ssl_trainer, "retain_freed_memory", lambda: calls.append("retain"))
    network = Pair()
    data = [{"image": torch.randn(2, 2), "image_2": torch.randn(2, 2)}]
    for flag, expected in ((True, ["retain"]), (False, [])):
        calls.clear()
        trainer = ssl_trainer.SSLTrainer("cpu", 1, data, network, torch.optim.SGD(network.parameters(), lr=0.1),
                                         lambda a, b: (a - b).pow(2).mean(), retain_freed_memory=flag)
        trainer.run()
        assert calls == expected and trainer.state.iteration == 1
