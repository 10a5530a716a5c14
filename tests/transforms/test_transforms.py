"""Multi-view transform, SimCLR augmentation, channel check, MLP head, SimCLR wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import RandGaussianNoise

from monai_ssl_ext.handlers import flatten_params
from monai_ssl_ext.networks import MLPHead, SimCLR, build_backbone
from monai_ssl_ext.transforms import MultiViewd, SimCLRAugment, view_keys


def test_view_keys():
    assert view_keys("image", 3) == ["image", "image_2", "image_3"]


def test_multiview_views_are_independent_and_original_kept():
    torch.manual_seed(0)
    image = torch.rand(3, 40, 40)
    t = MultiViewd("image", SimCLRAugment(size=32), n_views=2, original_key="gt_image")
    out = t({"image": image, "label": 4})
    assert set(out) == {"image", "image_2", "gt_image", "label"}
    assert out["image"].shape == out["image_2"].shape == (3, 32, 32)
    assert not torch.equal(out["image"], out["image_2"])
    assert torch.equal(out["gt_image"], image) and out["label"] == 4


def test_multiview_asymmetric_monai_transforms_seeded():
    image = np.zeros((1, 8, 8), dtype=np.float32)
    noise = RandGaussianNoise(prob=1.0, std=1.0)
    t = MultiViewd("image", [noise, lambda x: x + 1])
    noise.set_random_state(3)
    out = t({"image": image})
    assert np.allclose(out["image_2"], 1.0)
    assert not np.allclose(out["image"], 0.0)
    assert np.allclose(image, 0.0)  # input untouched


def test_multiview_plain_copy_of_a_metatensor_gives_the_same_views_and_leaves_the_input():
    """A MetaTensor reaches a plain-view transform (ViewAugment, BYOLAugment) as a plain copy: the same views as
    from a MetaTensor clone, and neither the input's pixels nor its metadata change (the float path clamps in place,
    and an identity-sized crop without flip would return its input)."""
    from monai_ssl_ext.transforms import BYOLAugment

    picture = MetaTensor(torch.rand(3, 16, 16) * 1.2 - 0.1, meta={"filename_or_obj": "a.png"})  # some values to clamp
    before = picture.as_tensor().clone()
    for aug in (SimCLRAugment(size=16, scale=(1.0, 1.0), hflip_prob=0.0), BYOLAugment(size=16, mean=0.5, std=0.2)):
        assert aug.plain_views
        torch.manual_seed(3)
        views = MultiViewd("image", aug, n_views=2)({"image": picture})
        torch.manual_seed(3)
        reference = [aug(picture.clone()) for _ in range(2)]
        for key, ref in zip(("image", "image_2"), reference):
            assert type(views[key]) is torch.Tensor and torch.equal(views[key], ref)
        assert torch.equal(picture.as_tensor(), before) and picture.meta["filename_or_obj"] == "a.png"


def test_simclr_augment_normalises_to_minus_one_one():
    torch.manual_seed(1)
    aug = SimCLRAugment(size=16, jitter_prob=0.0, hflip_prob=0.0, scale=(1.0, 1.0))
    white = aug(torch.ones(3, 16, 16))
    black = aug(torch.zeros(3, 16, 16))
    assert torch.allclose(white, torch.ones_like(white)) and torch.allclose(black, -torch.ones_like(black))


def test_mlp_head_layers():
    head = MLPHead([512, 512, 128])
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "ReLU", "Linear"]
    bn = MLPHead([2048, 4096, 256], batch_norm=True, last_batch_norm=True, bias=False)
    assert [type(m).__name__ for m in bn] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert bn[-1].affine is False and bn[0].bias is None


def test_simclr_projects_each_view_through_shared_encoder():
    model = SimCLR(build_backbone("resnet18"), projection_dims=[32, 16]).eval()
    x0, x1 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    z0, z1 = model(x0, x1)
    assert z0.shape == z1.shape == (2, 16)
    with torch.no_grad():
        assert torch.allclose(z0, model.projector(model.backbone(x0)), atol=1e-5)
    assert model.backbone.feature_dim == 512


@pytest.mark.parametrize("name,spatial_dims,channels,dim", [("efficientnet-b0", 2, 3, 1280), ("resnet10", 3, 1, 512), ("timm/resnet18", 2, 1, 512)])
def test_backbone_factory(name, spatial_dims, channels, dim):
    b = build_backbone(name, spatial_dims=spatial_dims, in_channels=channels).eval()
    x = torch.randn(2, channels, *([32] * spatial_dims))
    with torch.no_grad():
        assert b(x).shape == (2, dim)
    assert b.feature_dim == dim and b.trunk.state_dict()[b.first_conv].shape[1] == channels


def test_backbone_factory_errors():
    with pytest.raises(ValueError, match="unknown backbone 'resnet_does_not_exist'"):
        build_backbone("resnet_does_not_exist")
    with pytest.raises(ValueError, match="timm has no model"):
        build_backbone("timm/not_a_model")
    with pytest.raises(ValueError, match="2D only"):
        build_backbone("timm/resnet18", spatial_dims=3)


def test_flatten_params():
    flat = flatten_params({"lr": 1e-3, "normalization": {"mean": [0.5], "std": [0.5]}, "name": "x"})
    assert flat == {"lr": "0.001", "normalization.mean": "[0.5]", "normalization.std": "[0.5]", "name": "x"}


def test_rand_resized_crop_pairs_image_and_label():
    from monai_ssl_ext.transforms.spatial import RandResizedCropd

    torch.manual_seed(0)
    label = torch.zeros(1, 64, 64)
    label[:, 16:48, 20:40] = 3
    image = label * 100.0 + 7.0  # the image is a function of the label
    t = RandResizedCropd("image", size=32, scale=(0.3, 1.0), label_keys="label")
    for _ in range(5):
        out = t({"image": image, "label": label})
        assert out["image"].shape == out["label"].shape == (1, 32, 32)
        assert set(out["label"].unique().tolist()) <= {0.0, 3.0}  # nearest: no blended label values
        inside = out["label"] == 3
        if inside.any():  # bilinear image agrees with the label away from edges
            assert out["image"][inside].median() > 150 and out["image"][~inside].median() < 60
