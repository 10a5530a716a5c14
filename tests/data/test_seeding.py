"""Seeded training loaders: an item's views depend on the pass and its position, not on the workers.

The properties that would be wrong: views that change with ``num_workers`` or with what persistent
workers drew before, views repeated between passes or between items, a resume (restored torch
generator) that draws other views, the main process's randomness disturbed by the reseeding, and
a distributed sampler that MONAI no longer reshuffles per epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, RandGaussianNoised
from torch.utils.data import DistributedSampler

from conftest import ROOT, read_bundle_config
from monai_ssl_ext.handlers.data_position import DataPosition
from monai_ssl_ext.seeding import (SeededDistributedSampler, SeededItems, augmenting_loader, item_seed,
                                   transform_generators)
from monai_ssl_ext.transforms import MultiViewd, ViewAugment
from monai_ssl_ext.workflow import run_bundle


def _dataset(n: int = 12, same: bool = False) -> Dataset:
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (3, 20, 20), dtype=np.uint8)
    items = [{"image": first.copy() if same else rng.integers(0, 256, (3, 20, 20), dtype=np.uint8), "id": i}
             for i in range(n)]
    transform = Compose([
        # torch's global generator (torchvision v2) and a MONAI RandomState (the noise)
        MultiViewd(keys="image", transform=ViewAugment(size=8, mean=(0.5,), std=(0.5,)), n_views=2),
        RandGaussianNoised(keys=["image", "image_2"], prob=1.0, std=0.1),
    ])
    return Dataset(items, transform=transform)


def _passes(loader, n_passes: int = 2) -> list[list[dict]]:
    return [[{k: v.clone() for k, v in batch.items()} for batch in loader] for _ in range(n_passes)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("image", "image_2", "id"))


@pytest.mark.parametrize("persistent", [True, False])
def test_views_and_main_generator_are_the_same_for_any_worker_count(persistent):
    runs = {}
    for workers in (0, 2):
        torch.manual_seed(0)
        loader = augmenting_loader(_dataset(), batch_size=4, num_workers=workers, persistent_workers=persistent)
        runs[workers] = _passes(loader), torch.rand(4)
    (passes0, after0), (passes2, after2) = runs[0], runs[2]
    for a, b in zip(passes0, passes2):
        assert _same(a, b)
    # the reseeding happened in the workers or was undone in the main process: the step's randomness is alike
    assert torch.equal(after0, after2)
    # each pass draws new views (and a new order)
    assert not _same(passes0[0], passes0[1])


def test_views_differ_between_items_and_views():
    torch.manual_seed(0)
    batch = next(iter(augmenting_loader(_dataset(same=True), batch_size=6, num_workers=0)))
    flat = batch["image"].flatten(1)
    assert torch.cdist(flat, flat).triu(1)[torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)].min() > 0
    assert not torch.equal(batch["image"], batch["image_2"])


def test_restored_generator_redraws_a_pass_with_persistent_workers():
    loader = augmenting_loader(_dataset(), batch_size=4, num_workers=2, persistent_workers=True)
    torch.manual_seed(3)
    _passes(loader, 1)  # the workers' own generators move on
    state = torch.get_rng_state()
    second = _passes(loader, 1)[0]
    _passes(loader, 1)
    torch.set_rng_state(state)
    assert _same(_passes(loader, 1)[0], second)


def test_data_position_resumes_mid_pass_with_persistent_workers():
    """A checkpoint written after 2 batches and loaded into a fresh loader continues with the
    uninterrupted pass's third batch (order and views)."""
    torch.manual_seed(5)
    position = DataPosition()
    loader = augmenting_loader(_dataset(), batch_size=3, num_workers=2)
    it = position.passes(loader)
    head = [next(it), next(it)]
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in position.state_dict().items()}
    rng = torch.get_rng_state()
    tail = [{k: v.clone() for k, v in b.items()} for b in it]
    assert len(head) + len(tail) == 4

    torch.manual_seed(99)  # the resumed process starts elsewhere
    resumed = DataPosition()
    resumed.load_state_dict(state, after_replay=lambda: torch.set_rng_state(rng))
    again = list(resumed.passes(augmenting_loader(_dataset(), batch_size=3, num_workers=2)))
    assert _same(again, tail)


def test_distributed_sampler_stays_a_distributed_sampler_and_splits_the_data():
    data = _dataset(10)
    ranks = [SeededDistributedSampler(data, num_replicas=2, rank=r, shuffle=True, seed=1) for r in range(2)]
    assert all(isinstance(s, DistributedSampler) for s in ranks)  # MONAI calls set_epoch on these
    torch.manual_seed(0)
    first = [[i for i, _ in s] for s in ranks]
    assert sorted(first[0] + first[1]) == list(range(10))
    for s in ranks:
        s.set_epoch(1)
    assert [[i for i, _ in s] for s in ranks] != first
    with pytest.raises(ValueError, match="seeded sampler"):
        augmenting_loader(data, sampler=DistributedSampler(data, num_replicas=2, rank=0), shuffle=False)
    with pytest.raises(ValueError, match="not both"):
        augmenting_loader(data, sampler=ranks[0], shuffle=True)


def test_item_seed_and_plain_index():
    assert item_seed(7, 0) != item_seed(7, 1) != item_seed(8, 1)
    assert item_seed(7, 3) == item_seed(7, 3)
    items = SeededItems(_dataset(4))
    assert len(transform_generators(items.dataset.transform)) >= 1
    torch.manual_seed(0)
    a = items[(2, 11)]
    b = items[(2, 11)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image_2"], b["image_2"])
    assert not torch.equal(items[(2, 12)]["image"], a["image"])
    assert items[1]["id"] == 1  # a plain index (e.g. the clustering fill pass) reads the item as it is


# ------------------------------------------------------------------ a finetuning bundle's training loader

ACDC = "unet_acdc"  # random resized crop, flip and brightness/contrast on every training slice


def _bundle_loader(demo_data, tmp_path, workers: int, **overrides):
    """``train#dataloader`` of unet_acdc's train.json + smoke.json on the demo data (2 slices a batch)."""
    parser = read_bundle_config(ROOT / "bundles" / ACDC / "configs", ["train.json", "smoke.json"],
                                {"bundle_root": str(tmp_path), "dataset_dir": demo_data("acdc"),
                                 "num_workers": workers, **overrides})
    return parser.get_parsed_content("train#dataloader")


def _bundle_passes(loader, n_passes: int = 2) -> list[list[dict]]:
    return [[{k: batch[k].detach().clone() for k in ("image", "label")} for batch in loader] for _ in range(n_passes)]


def _same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("image", "label"))


def test_finetuning_bundle_batches_are_the_same_for_any_worker_count(demo_data, tmp_path):
    """unet_acdc's training batches (order and augmentation) are a function of torch's generator:
    the same with 0 workers and 2 persistent ones, pass after pass, and drawn again on resume. A
    plain DataLoader over the same dataset (the control) gives other batches with workers."""
    runs = {}
    for workers in (0, 2):
        torch.manual_seed(0)
        loader = _bundle_loader(demo_data, tmp_path, workers)
        assert loader.num_workers == workers and loader.persistent_workers == (workers > 0)
        runs[workers] = _bundle_passes(loader, 2), torch.get_rng_state()
    (passes0, rng0), (passes2, rng2) = runs[0], runs[2]
    assert len(passes0[0]) == len(loader) > 1
    for a, b in zip(passes0, passes2):
        assert _same_batches(a, b)
    assert torch.equal(rng0, rng2)  # the loading left torch's generator alike
    assert not _same_batches(passes0[0], passes0[1])

    # resume: persistent workers that already served passes draw the same passes from the same generator,
    # and a restored generator draws a pass again
    torch.manual_seed(0)
    assert _same_batches(_bundle_passes(loader, 1)[0], passes2[0])
    state = torch.get_rng_state()
    assert _same_batches(_bundle_passes(loader, 1)[0], passes2[1])
    _bundle_passes(loader, 1)
    torch.set_rng_state(state)
    assert _same_batches(_bundle_passes(loader, 1)[0], passes2[1])

    # the control: the bundle's previous plain DataLoader draws its augmentations in the workers
    plain = {}
    for workers in (0, 2):
        torch.manual_seed(0)
        plain[workers] = _bundle_passes(DataLoader(loader.dataset.dataset, batch_size=loader.batch_size, shuffle=True,
                                                   num_workers=workers), 1)[0]
    assert not _same_batches(plain[0], plain[2])


def test_finetuning_bundle_augmentation_changes_between_passes(demo_data, tmp_path):
    """In a fixed order (shuffle off), every slice gets another augmentation in the next pass."""
    torch.manual_seed(0)
    first, second = _bundle_passes(_bundle_loader(demo_data, tmp_path, 2, **{"train#dataloader#shuffle": False}), 2)
    assert len(first) == len(second) > 1
    for a, b in zip(first, second):
        for k in range(a["image"].shape[0]):
            assert not torch.equal(a["image"][k], b["image"][k])


def test_finetuning_bundle_resumes_mid_pass_with_persistent_workers(demo_data, tmp_path):
    """unet_acdc trained 2 epochs of 2 iterations (one 16-batch pass goes on across both) with 2
    persistent workers, and stopped after the first epoch (same settings, learning-rate schedule
    included) then resumed: the resumed epoch's losses and the final weights are the uninterrupted
    run's (no validation: it only costs time here)."""

    def run(root: Path, **stop) -> list[float]:
        return run_bundle(ROOT / "bundles" / ACDC, ["train.json"], {"bundle_root": str(root),
                          "dataset_dir": demo_data("acdc"), "epochs": 2, "num_workers": 2, "val_interval": 100,
                          **stop}, smoke=True).losses

    whole = run(tmp_path / "a")
    first = run(tmp_path / "b", **{"train#trainer#max_epochs": 1})
    resumed = run(tmp_path / "b")
    assert len(whole) == 4 and first == whole[:2]
    assert resumed == whole[2:]
    ckpt = Path("runs") / ACDC / "models" / "checkpoint_last.pt"
    a, b = (torch.load(tmp_path / r / ckpt, map_location="cpu", weights_only=True) for r in ("a", "b"))
    assert a["engine"] == b["engine"] and a["engine"]["epoch"] == 2
    assert all(torch.equal(a["network"][k], b["network"][k]) for k in a["network"])
