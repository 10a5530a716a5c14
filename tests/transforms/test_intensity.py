"""RandBrightnessContrastd: Albumentations' RandomBrightnessContrast as a MONAI random dictionary transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, MetaTensor
from monai.transforms import Compose, Lambdad, RandomizableTransform

from monai_ssl_ext.handlers import RNGState
from monai_ssl_ext.transforms import RandBrightnessContrast, RandBrightnessContrastd

X = torch.tensor([[[0.0, 10.0, 40.0], [80.0, 100.0, 20.0]]])  # (1, 2, 3) raw intensities, max 100, mean 250/6


def expected_draw(seed: int, prob: float, c=(-0.2, 0.2), b=(-0.2, 0.2)):
    """The documented draw order: rand() < prob, then (if applied) uniform(contrast), uniform(brightness)."""
    rs = np.random.RandomState(seed)
    applied = rs.rand() < prob
    if not applied:
        return False, 1.0, 0.0
    alpha = 1.0 + rs.uniform(*c)
    beta = rs.uniform(*b)
    return True, alpha, beta


def _seed_where(prob, applied):
    for s in range(1000):
        if expected_draw(s, prob)[0] == applied:
            return s
    raise AssertionError


def test_is_monai_random_transform():
    t = RandBrightnessContrastd(keys="image")
    assert isinstance(t, RandomizableTransform)
    assert t.prob == 0.5 and t.brightness_limit == (-0.2, 0.2) and t.contrast_limit == (-0.2, 0.2)


def test_hand_checked_output_for_fixed_seed():
    seed = _seed_where(0.2, True)
    applied, alpha, beta = expected_draw(seed, 0.2)
    assert applied
    t = RandBrightnessContrastd(keys="image", prob=0.2).set_random_state(seed=seed)
    out = t({"image": X.clone()})["image"]
    assert (t.alpha, t.beta) == (pytest.approx(alpha), pytest.approx(beta))
    # out = clip(alpha x + beta max(x), 0, max(x)) element by element, max(x) = 100
    ref = [[[min(max(alpha * v + beta * 100.0, 0.0), 100.0) for v in row] for row in X[0].tolist()]]
    np.testing.assert_allclose(out.numpy(), np.array(ref), rtol=1e-6, atol=1e-5)

    # not applied: unchanged, and alpha/beta are not drawn (only the rand() for prob)
    seed = _seed_where(0.2, False)
    t = RandBrightnessContrastd(keys="image", prob=0.2).set_random_state(seed=seed)
    out = t({"image": X.clone()})["image"]
    assert torch.equal(out, X)
    rs = np.random.RandomState(seed)
    rs.rand()
    assert t.R.rand() == rs.rand()


def test_variants_by_hand():
    seed = 3
    _, alpha, beta = expected_draw(seed, 1.0, c=(0.1, 0.3), b=(0.05, 0.1))
    # fixed max_value (Albumentations uint8: 255) and no clipping
    t = RandBrightnessContrastd("image", brightness_limit=(0.05, 0.1), contrast_limit=(0.1, 0.3), prob=1.0,
                                max_value=255.0, clip=False).set_random_state(seed=seed)
    out = t({"image": X.clone()})["image"]
    np.testing.assert_allclose(out.numpy(), (alpha * X + beta * 255.0).numpy(), rtol=1e-6)
    # brightness_by_max=False: shift by beta * mean(alpha x) (Albumentations' float path), clip to [0, max(x)]
    t = RandBrightnessContrastd("image", brightness_limit=(0.05, 0.1), contrast_limit=(0.1, 0.3), prob=1.0,
                                brightness_by_max=False).set_random_state(seed=seed)
    out = t({"image": X.clone()})["image"]
    mean_scaled = alpha * 250.0 / 6
    ref = np.clip(alpha * X.numpy() + beta * mean_scaled, 0, 100.0)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6)


def test_source_uint16_behaviour_blacks_out_raw_mr():
    """SSL-MedSeg fed uint16 slices: max_value = 65535, so a brightness draw of -0.1 shifts by -6553.5 and the clip
    at 0 leaves an empty image (intensities here are at most 100)."""
    t = RandBrightnessContrastd("image", brightness_limit=(-0.1, -0.1), contrast_limit=0.0, prob=1.0,
                                max_value=65535.0)
    assert torch.count_nonzero(t({"image": X.clone()})["image"]) == 0
    # the default (per-image max) keeps the image: shift -0.1 * 100
    t = RandBrightnessContrastd("image", brightness_limit=(-0.1, -0.1), contrast_limit=0.0, prob=1.0)
    np.testing.assert_allclose(t({"image": X.clone()})["image"].numpy(), np.clip(X.numpy() - 10.0, 0, 100))


def test_one_draw_shared_by_all_keys():
    t = RandBrightnessContrastd(["image", "other"], prob=1.0).set_random_state(seed=7)
    d = t({"image": X.clone(), "other": 2 * X, "label": torch.ones(1, 2, 3)})
    # with max_value=None the map is homogeneous: f(2x) = 2 f(x) iff alpha and beta are the same
    torch.testing.assert_close(d["other"], 2 * d["image"])
    assert torch.equal(d["label"], torch.ones(1, 2, 3))


def test_parameter_ranges_and_probability():
    t = RandBrightnessContrastd("image", prob=1.0).set_random_state(seed=0)
    alphas, betas = [], []
    for _ in range(4000):
        t.randomize()
        alphas.append(t.alpha)
        betas.append(t.beta)
    alphas, betas = np.array(alphas), np.array(betas)
    assert alphas.min() >= 0.8 and alphas.max() <= 1.2 and betas.min() >= -0.2 and betas.max() <= 0.2
    assert alphas.min() < 0.81 and alphas.max() > 1.19 and betas.min() < -0.19 and betas.max() > 0.19
    # uniform: mean and variance (0.4^2 / 12) within ~5 standard errors
    n = len(alphas)
    assert abs(alphas.mean() - 1.0) < 5 * np.sqrt(0.4**2 / 12 / n)
    assert abs(betas.mean()) < 5 * np.sqrt(0.4**2 / 12 / n)
    assert betas.var() == pytest.approx(0.4**2 / 12, rel=0.1)
    assert abs(np.corrcoef(alphas, betas)[0, 1]) < 0.1

    t = RandBrightnessContrastd("image", prob=0.2).set_random_state(seed=1)
    applied = 0
    n = 5000
    for _ in range(n):
        out = t({"image": X})["image"]
        applied += int(t._do_transform)
        assert t._do_transform or torch.equal(out, X)
    assert abs(applied / n - 0.2) < 5 * np.sqrt(0.2 * 0.8 / n)


def test_not_frozen_by_cache_dataset():
    transform = Compose([
        Lambdad("image", lambda x: x * 1.0),  # deterministic: cached
        RandBrightnessContrastd("image", prob=1.0),
    ])
    transform.set_random_state(seed=0)
    ds = CacheDataset([{"image": X.clone()}], transform=transform, progress=False)
    first, second = ds[0]["image"], ds[0]["image"]
    assert not torch.equal(first, second)


def test_rng_state_checkpoint_restores_the_draws():
    transform = Compose([RandBrightnessContrastd("image", prob=0.5)])
    transform.set_random_state(seed=5)
    rng = RNGState(transform)
    state = rng.state_dict()
    assert len(state["transforms"]) >= 1
    before = [transform({"image": X.clone()})["image"] for _ in range(6)]
    rng.load_state_dict(state)
    after = [transform({"image": X.clone()})["image"] for _ in range(6)]
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, X) for a in before)


def test_metatensor_and_dtype():
    img = MetaTensor(X.clone(), meta={"filename_or_obj": "x.nii"})
    out = RandBrightnessContrastd("image", prob=1.0).set_random_state(seed=0)({"image": img})["image"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "x.nii"
    out = RandBrightnessContrastd("image", prob=1.0)({"image": X.numpy().astype(np.uint16)})["image"]
    assert out.dtype == torch.float32


def test_array_version_matches_dict_version():
    a = RandBrightnessContrast(prob=0.7).set_random_state(seed=11)
    d = RandBrightnessContrastd("image", prob=0.7).set_random_state(seed=11)
    for _ in range(20):
        torch.testing.assert_close(torch.as_tensor(a(X.clone())), torch.as_tensor(d({"image": X.clone()})["image"]))
