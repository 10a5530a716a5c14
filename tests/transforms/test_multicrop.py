"""Multi-crop views (MultiCropd: crop counts, sizes, keys; new crops at every read through a CacheDataset) and the
wrapper contract for views of different sizes (one backbone batch per run of equal-size views, outputs in view
order; SimCLR's equal-size case unchanged)."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.data import CacheDataset
from monai.transforms import Compose, RandomizableTrait

from monai_ssl_ext.networks import SimCLR, build_backbone
from monai_ssl_ext.networks.ssl import forward_by_size, size_groups
from monai_ssl_ext.transforms import MultiCropd, SimCLRAugment, view_keys

GLOBAL, LOCAL = 32, 16


def _multicrop(n_global=2, n_local=4) -> MultiCropd:
    return MultiCropd("image", SimCLRAugment(size=GLOBAL, scale=(0.14, 1.0)),
                      SimCLRAugment(size=LOCAL, scale=(0.05, 0.14)), n_global=n_global, n_local=n_local)


def test_multicrop_counts_sizes_and_keys():
    torch.manual_seed(0)
    image = torch.rand(3, 48, 48)
    before = image.clone()
    t = _multicrop()
    out = t({"image": image, "label": 2})
    keys = view_keys("image", 6)
    assert set(out) == set(keys) | {"label"} and out["label"] == 2
    assert t.global_keys() == ["image", "image_2"] and t.local_keys() == ["image_3", "image_4", "image_5", "image_6"]
    assert [tuple(out[k].shape) for k in keys] == [(3, GLOBAL, GLOBAL)] * 2 + [(3, LOCAL, LOCAL)] * 4
    for i, a in enumerate(keys):  # every crop drawn on its own
        for b in keys[i + 1:]:
            assert out[a].shape != out[b].shape or not torch.equal(out[a], out[b]), (a, b)
    assert torch.equal(image, before)  # the input is untouched
    assert isinstance(t, RandomizableTrait)

    # one transform per crop (asymmetric global views), no local crops
    marks = MultiCropd("image", [lambda x: x * 0 + 1, lambda x: x * 0 + 2], n_global=2, n_local=0)(
        {"image": torch.zeros(1, 4, 4)})
    assert set(marks) == {"image", "image_2"} and marks["image"].max() == 1 and marks["image_2"].max() == 2


def test_multicrop_argument_errors():
    aug = SimCLRAugment(size=8)
    with pytest.raises(ValueError, match="n_global must be >= 1"):
        MultiCropd("image", aug, aug, n_global=0)
    with pytest.raises(ValueError, match="need a local_transform"):
        MultiCropd("image", aug, None, n_global=2, n_local=6)
    with pytest.raises(ValueError, match="3 global transforms given for n_global=2"):
        MultiCropd("image", [aug, aug, aug], aug, n_global=2)
    with pytest.raises(ValueError, match="local count must be >= 0"):
        MultiCropd("image", aug, aug, n_local=-1)


def test_multicrop_new_crops_at_every_read_through_cache_dataset():
    torch.manual_seed(1)
    data = [{"image": torch.rand(3, 40, 40)} for _ in range(2)]
    ds = CacheDataset(data, transform=Compose([_multicrop()]), cache_rate=1.0, progress=False)
    first, second = ds[0], ds[0]
    for k in view_keys("image", 6):
        assert first[k].shape == second[k].shape
        assert not torch.equal(first[k], second[k]), k  # not cached: drawn anew
    assert torch.equal(ds._cache[0]["image"], data[0]["image"])  # the cache holds the input only


def test_size_groups_and_forward_by_size_keep_view_order():
    sizes = [32, 32, 16, 16, 16, 32]
    views = [torch.full((1 + i % 2, 1, s, s), float(i)) for i, s in enumerate(sizes)]  # batch sizes 1 and 2
    assert size_groups(views) == [(0, 2), (2, 5), (5, 6)]
    calls = []

    def module(x):
        calls.append(tuple(x.shape))
        return x.mean(dim=(1, 2, 3))[:, None] * torch.ones(1, 3)

    outs = forward_by_size(module, views)
    assert calls == [(3, 1, 32, 32), (4, 1, 16, 16), (2, 1, 32, 32)]  # one batch per run of equal sizes
    assert [tuple(o.shape) for o in outs] == [(v.shape[0], 3) for v in views]
    for i, o in enumerate(outs):
        assert torch.equal(o, torch.full_like(o, float(i)))  # in view order
    joined = forward_by_size(module, views, concat=True)
    assert torch.equal(joined, torch.cat(outs))
    with pytest.raises(ValueError):
        size_groups([])


def _simclr() -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(build_backbone("timm/test_resnet", in_channels=3), projection_dims=[32, 16]).train()


def test_simclr_multicrop_views_grouped_by_size():
    """2 x 32 px + 4 x 16 px views: the encoder runs once on the 2 global views and once on the 4 local ones (train
    mode, so batch-norm statistics are per group); the outputs come back per view, in order."""
    g = torch.Generator().manual_seed(2)
    views = [torch.randn(3, 3, GLOBAL, GLOBAL, generator=g) for _ in range(2)]
    views += [torch.randn(3, 3, LOCAL, LOCAL, generator=g) for _ in range(4)]
    model = _simclr()
    ref = copy.deepcopy(model)
    out = model(*views)
    assert len(out) == 6 and all(z.shape == (3, 16) for z in out)
    with torch.no_grad():
        per_group = [ref.projector(ref.backbone(torch.cat(views[:2]))), ref.projector(ref.backbone(torch.cat(views[2:])))]
    expected = list(per_group[0].chunk(2)) + list(per_group[1].chunk(4))
    for i, (got, want) in enumerate(zip(out, expected)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"view {i}")
    # the groups are batches: a local view forwarded alone has other BN statistics, hence another output
    with torch.no_grad():
        alone = ref.projector(ref.backbone(views[2]))
    assert not torch.allclose(out[2], alone, atol=1e-4)
    sum(z.sum() for z in out).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_simclr_equal_size_views_unchanged():
    """SimCLR's own case: all views one batch through the encoder and the projector, exactly as before."""
    g = torch.Generator().manual_seed(3)
    views = [torch.randn(4, 3, GLOBAL, GLOBAL, generator=g) for _ in range(2)]
    model = _simclr()
    ref = copy.deepcopy(model)
    got = model(*views)
    with torch.no_grad():
        want = ref.projector(ref.backbone(torch.cat(views))).chunk(2)  # the pre-multi-crop forward
    assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(got, want))
