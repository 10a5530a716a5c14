"""3D view augmentations (VolumeViewAugment, AsymmetricVolumeAugment): each step checked against
what it should compute, written here from its definition (crop box, trilinear resize, flips,
ColorJitter's brightness / contrast, a Gaussian's variance, solarize, normalisation), plus draw
rates, fresh views per read, and resume reproducibility through RNGState."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Compose

from monai_ssl_ext.handlers import RNGState
from monai_ssl_ext.transforms import AsymmetricVolumeAugment, MultiViewd, VolumeViewAugment

# every step but the one under test switched off
OFF = dict(scale=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0, blur_prob=0.0, solarize_prob=0.0)


def _only(**kw) -> VolumeViewAugment:
    roi = kw.pop("roi_size", 16)
    return VolumeViewAugment(roi, **{**OFF, **kw})


def test_shape_dtype_and_plain_tensor_output():
    torch.manual_seed(0)
    aug = VolumeViewAugment([16, 24, 8], blur_prob=0.5, solarize_prob=0.5, normalization={"mean": [0.5, 0.2], "std": [0.5, 0.1]})
    for x in (torch.rand(2, 30, 41, 12), MetaTensor(torch.rand(2, 9, 9, 9)), np.random.rand(2, 20, 20, 20).astype(np.float64)):
        y = aug(x)
        assert type(y) is torch.Tensor and y.dtype == torch.float32 and tuple(y.shape) == (2, 16, 24, 8)
        assert torch.isfinite(y).all()
    with pytest.raises(ValueError, match=r"channel-first \(C, D, H, W\)"):
        aug(torch.rand(30, 41, 12))


def test_crop_box_volume_fraction_aspect_and_bounds():
    """The box's volume fraction lies in `scale` (up to whole-voxel rounding), the draws span the
    range, every pair of relative sides is within max_aspect, and the box lies inside the volume —
    on a cube and on an anisotropic ACDC-like grid (10 slices of 200 x 200)."""
    torch.manual_seed(1)
    lo, hi, r = 0.08, 1.0, 4 / 3
    aug = VolumeViewAugment(16, scale=(lo, hi), max_aspect=r)
    for shape in [(200, 200, 200), (200, 200, 10)]:
        fractions, ratios = [], []
        for _ in range(400):
            start, size = aug.crop_box(shape)
            assert all(0 <= b and b + k <= n and k >= 1 for b, k, n in zip(start, size, shape))
            rel = [k / n for k, n in zip(size, shape)]
            fractions.append(math.prod(rel))
            ratios.append(max(rel) / min(rel))
        # rounding to whole voxels: one slice of 10 moves a side by up to 5 %
        tol = 1.2 if shape[2] == 10 else 1.02
        assert lo / tol <= min(fractions) and max(fractions) <= hi * tol, (min(fractions), max(fractions))
        assert min(fractions) < lo + 0.05 and max(fractions) > hi - 0.05  # the whole range is drawn
        if shape[2] == 200:
            assert max(ratios) <= r * 1.02 and max(ratios) > 1.15  # bounded, and not always a cube
    fixed = VolumeViewAugment(16, scale=(0.3, 0.3), max_aspect=1.0)
    assert fixed.crop_box((100, 100, 100))[1] == (round(100 * 0.3 ** (1 / 3)),) * 3


def test_view_is_the_box_resized_trilinearly():
    """With the other steps off, the view is the drawn box resized with trilinear interpolation
    (half-voxel centres, as F.interpolate(align_corners=False))."""
    torch.manual_seed(2)
    aug = VolumeViewAugment(16, scale=(0.2, 0.9), flip_prob=0.0, jitter_prob=0.0)
    x = torch.rand(1, 12, 14, 10)  # smaller than the ROI: every crop is enlarged (no anti-aliasing)
    for _ in range(5):
        y = aug(x)
        (b0, b1, b2), (k0, k1, k2) = aug.last_draw["crop_start"], aug.last_draw["crop_size"]
        box = x[:, b0:b0 + k0, b1:b1 + k1, b2:b2 + k2]
        ref = F.interpolate(box[None], size=(16, 16, 16), mode="trilinear", align_corners=False)[0]
        assert torch.allclose(y, ref, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_flips_act_on_the_axis_claimed(axis):
    """A volume bright in its first half along `axis`: flipping `axis` moves the bright half to
    the end; flipping the two other axes leaves it as it is."""
    n = 8
    x = torch.zeros(1, n, n, n)
    idx = [slice(None)] * 4
    idx[1 + axis] = slice(0, n // 2)
    x[tuple(idx)] = 1.0
    flipped = x.flip(1 + axis)
    assert not torch.equal(flipped, x)
    assert torch.equal(_only(roi_size=n, flip_prob=1.0, flip_axes=[axis])(x), flipped)
    others = [a for a in range(3) if a != axis]
    assert torch.equal(_only(roi_size=n, flip_prob=1.0, flip_axes=others)(x), x)
    torch.manual_seed(3)
    half = _only(roi_size=n, flip_prob=0.5, flip_axes=[axis])
    rate = sum(torch.equal(half(x), flipped) for _ in range(400)) / 400
    assert abs(rate - 0.5) < 0.08


def test_two_reads_differ_and_multiview_views_differ():
    torch.manual_seed(4)
    x = torch.rand(1, 20, 20, 20)
    aug = VolumeViewAugment(12)
    assert not torch.equal(aug(x), aug(x))
    out = MultiViewd("image", AsymmetricVolumeAugment(12), n_views=2)({"image": x})
    assert out["image"].shape == out["image_2"].shape == (1, 12, 12, 12)
    assert not torch.equal(out["image"], out["image_2"])


def test_brightness_and_contrast_follow_colorjitter():
    """brightness: x * f; contrast: f * x + (1 - f) * mean(x) per channel, f ~ U[1 - b, 1 + b];
    the factor is read back from the output and must span its range."""
    torch.manual_seed(5)
    x = torch.rand(2, 8, 8, 8) * torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)
    bright = _only(roi_size=8, jitter_prob=1.0, brightness=0.4, contrast=0.0, value_range=None)
    contrast = _only(roi_size=8, jitter_prob=1.0, brightness=0.0, contrast=0.3, value_range=None)
    fb, fc = [], []
    for _ in range(200):
        y = bright(x)
        f = float(y.sum() / x.sum())
        assert torch.allclose(y, f * x, atol=1e-5)
        fb.append(f)
        y = contrast(x)
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        f = float((y - m).std() / (x - m).std())
        assert torch.allclose(y, f * (x - m) + m, atol=1e-5)
        fc.append(f)
    assert 0.6 <= min(fb) < 0.65 and 1.35 < max(fb) <= 1.4
    assert 0.7 <= min(fc) < 0.75 and 1.25 < max(fc) <= 1.3
    # clipped to value_range after each step, as torchvision's float path
    clipped = _only(roi_size=8, jitter_prob=1.0, brightness=1.0, contrast=0.0, value_range=(0.0, 1.0))
    assert all(float(clipped(torch.full((1, 8, 8, 8), 0.9)).max()) <= 1.0 for _ in range(50))


def test_jitter_rate():
    torch.manual_seed(6)
    x = torch.rand(1, 8, 8, 8)
    aug = _only(roi_size=8, jitter_prob=0.8, brightness=0.4, contrast=0.4, value_range=None)
    rate = sum(not torch.equal(aug(x), x) for _ in range(400)) / 400
    assert abs(rate - 0.8) < 0.07


def test_blur_is_a_normalised_gaussian_of_the_drawn_sigma():
    """An impulse blurred with sigma s keeps its mass, is separable, and has variance s^2 + 1/12
    along each axis (a Gaussian integrated over unit voxels)."""
    x = torch.zeros(1, 33, 33, 33)
    x[0, 16, 16, 16] = 1.0
    for s in (0.8, 1.5):
        y = _only(roi_size=33, blur_prob=1.0, blur_sigma=(s, s))(x)[0]
        assert abs(float(y.sum()) - 1.0) < 1e-5
        pos = torch.arange(33.0) - 16
        for axis in range(3):
            marginal = y.sum(dim=[a for a in range(3) if a != axis])
            var = float((marginal * pos**2).sum())
            assert abs(var - (s * s + 1 / 12)) < 0.01 * s * s, (s, axis, var)
        g = y[:, 16, 16] / y[:, 16, 16].sum()
        assert torch.allclose(y, torch.einsum("i,j,k->ijk", g, g, g) * float(y.sum()), atol=1e-7)


def test_solarize_inverts_above_the_threshold():
    x = torch.linspace(0, 1, 8**3).view(1, 8, 8, 8)
    y = _only(roi_size=8, solarize_prob=1.0)(x)
    assert torch.allclose(y, torch.where(x >= 0.5, 1.0 - x, x))
    y = _only(roi_size=8, solarize_prob=1.0, value_range=(-1.0, 3.0), solarize_threshold=2.0)(4 * x - 1)
    assert torch.allclose(y, torch.where(4 * x - 1 >= 2.0, 2.0 - (4 * x - 1), 4 * x - 1))
    with pytest.raises(ValueError, match="value_range"):
        VolumeViewAugment(8, solarize_prob=0.2, value_range=None)


def _blurred_and_solarized(view: torch.Tensor) -> tuple[bool, bool]:
    """For an input of noise in [0.6, 1.0]: solarized views have mean < 0.5, blurred ones (sigma >= 1)
    a far smaller standard deviation."""
    return float(view.std()) < 0.06, float(view.mean()) < 0.5


@pytest.mark.parametrize("blur_prob,solarize_prob", [(0.5, 0.2), (0.1, 0.0)])
def test_blur_and_solarize_rates(blur_prob, solarize_prob):
    torch.manual_seed(7)
    x = 0.6 + 0.4 * torch.rand(1, 16, 16, 16)
    aug = _only(roi_size=16, blur_prob=blur_prob, blur_sigma=(1.0, 2.0), solarize_prob=solarize_prob)
    flags = np.array([_blurred_and_solarized(aug(x)) for _ in range(500)])
    assert abs(flags[:, 0].mean() - blur_prob) < 0.07 and abs(flags[:, 1].mean() - solarize_prob) < 0.06


def test_asymmetric_pair_rates_per_view():
    """View 1 always blurred and never solarized, view 2 blurred 10 % and solarized 20 % of the time
    (BYOL's Table 6)."""
    torch.manual_seed(8)
    pair = AsymmetricVolumeAugment(16, blur_sigma=(1.0, 2.0), scale=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0)
    assert len(pair) == 2 and [v.blur_prob for v in pair] == [1.0, 0.1] and [v.solarize_prob for v in pair] == [0.0, 0.2]
    x = 0.6 + 0.4 * torch.rand(1, 16, 16, 16)
    first = np.array([_blurred_and_solarized(pair[0](x)) for _ in range(300)])
    second = np.array([_blurred_and_solarized(pair[1](x)) for _ in range(500)])
    assert first[:, 0].all() and not first[:, 1].any()
    assert abs(second[:, 0].mean() - 0.1) < 0.05 and abs(second[:, 1].mean() - 0.2) < 0.06
    with pytest.raises(ValueError, match="one entry per view"):
        AsymmetricVolumeAugment(16, blur_probs=(1.0,))
    three = AsymmetricVolumeAugment(16, blur_probs=(1.0, 0.1, 0.5), solarize_probs=(0.0, 0.2, 0.0))
    assert len(three) == 3 and three[2].blur_prob == 0.5


def test_normalisation_per_channel():
    x = torch.rand(2, 8, 8, 8)
    y = _only(roi_size=8, normalization={"mean": [0.5, 0.25], "std": [0.5, 2.0]})(x)
    assert torch.allclose(y[0], (x[0] - 0.5) / 0.5) and torch.allclose(y[1], (x[1] - 0.25) / 2.0)
    one = _only(roi_size=8, normalization={"mean": [67.27], "std": [84.66]})(x)
    assert torch.allclose(one, (x - 67.27) / 84.66)
    with pytest.raises(ValueError, match="normalization has 2 channels"):
        _only(roi_size=8, normalization={"mean": [0.5, 0.25], "std": [0.5, 2.0]})(torch.rand(3, 8, 8, 8))
    with pytest.raises(ValueError, match="normalization must be"):
        VolumeViewAugment(8, normalization={"mean": [0.5]})


def test_resume_draws_the_same_views():
    """The draws come from torch's global generator, which RNGState checkpoints: restoring the
    state gives the same views (what a resumed run relies on)."""
    chain = Compose([MultiViewd("image", AsymmetricVolumeAugment(12, normalization={"mean": [0.5], "std": [0.5]}))])
    x = torch.rand(1, 20, 18, 16)
    torch.manual_seed(9)
    chain({"image": x})
    rng = RNGState(chain)
    state = rng.state_dict()
    first = [chain({"image": x}) for _ in range(3)]
    torch.manual_seed(1234)  # anything in between
    np.random.seed(1234)
    rng.load_state_dict(state)
    again = [chain({"image": x}) for _ in range(3)]
    for a, b in zip(first, again):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["image_2"], b["image_2"])


def test_resumed_3d_pretraining_run_continues_exactly(demo_data, tmp_path):
    """byol_acdc with train_3d.json (smoke sizes): a run resumed from the checkpoint written after
    epoch 1 trains epoch 2 with the losses of the uninterrupted run — the same 3D views (torch's
    generator restored by RNGState), batches, weights, EMA target and schedule."""
    import os
    import shutil
    from pathlib import Path

    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    from monai_ssl_ext.handlers import ResumableCheckpoint
    from monai_ssl_ext.workflow import config_path, smoke_files, smoke_settings

    bundle = Path(__file__).resolve().parents[2] / "bundles" / "byol_acdc"
    configs = ["train.json", "train_3d.json"]
    files = [config_path(bundle, c) for c in configs] + smoke_files(bundle, configs)
    data = demo_data(smoke_settings(bundle, configs)["demo_data"])

    def run(root: Path, copy_to: Path | None = None) -> list[float]:
        wf = ConfigWorkflow(config_file=files, meta_file=str(bundle / "configs" / "metadata.json"), workflow_type=None,
                            bundle_root=str(root), dataset_dir=data)
        wf.initialize()
        trainer = wf.parser.get_parsed_content("train#trainer")
        losses: list[float] = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
        ckpt = Path(wf.parser.get_parsed_content("ckpt_dir"))
        if copy_to is not None:  # the state a run killed during epoch 2 leaves behind
            saver = next(h for h in wf.parser.get_parsed_content("train#handlers") if isinstance(h, ResumableCheckpoint))

            def keep(engine):
                saver.wait()  # the epoch-1 checkpoint is written in the background: once it has landed
                target = copy_to / ckpt.relative_to(root)
                os.makedirs(target, exist_ok=True)
                shutil.copy(ckpt / "checkpoint_last.pt", target / "checkpoint_last.pt")

            trainer.add_event_handler(Events.EPOCH_STARTED(once=2), keep)
        wf.run()
        wf.finalize()
        return losses

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels and summation order in both runs
    try:
        full = run(tmp_path / "full", copy_to=tmp_path / "resumed")
        rest = run(tmp_path / "resumed")
    finally:
        torch.set_num_threads(threads)
    assert len(full) == 4 and len(rest) == 2
    assert rest == full[2:], (full, rest)
