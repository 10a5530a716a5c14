"""The polyp detector (``ResNetFPNFasterRCNN``): torchvision's ``fasterrcnn_resnet50_fpn`` layout, the hand-off of
an exported ResNet trunk into its body (family ``torchvision-resnet-body``: zero missing / unused, equal features),
frozen batch norm = torchvision's ``FrozenBatchNorm2d``, trainable stages as torchvision, and the training step's
gradient accumulation (``DetectionTrainer(accum_iter=2)`` on two half batches = one full batch)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from monai_ssl_ext.encoders import EncoderLoadError, export_encoder, load_encoder
from monai_ssl_ext.networks import ResNetFPNFasterRCNN, build_backbone
from monai_ssl_ext.networks.families import family_of_module

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Weights and BN statistics far from their initial values, so that a tensor left out shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if p.dim() == 1 else 0.0) * 0.1)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def test_layout_is_torchvisions_fasterrcnn_resnet50_fpn():
    """Same tensors (names and shapes) as torchvision's builder without pretrained weights (BatchNorm body)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    with torch.device("meta"):
        ours = ResNetFPNFasterRCNN("timm/resnet50", num_classes=2)
        ref = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert a == b
    assert ours.transform.min_size == (800,) and ours.transform.max_size == 1333
    assert ours.transform.image_mean == NORM["mean"] and ours.transform.image_std == NORM["std"]


def test_encoder_handoff_resnet18(tmp_path):
    """A timm/resnet18 trunk exported as encoder.pt loads into the detector's body with nothing missing or unused,
    the architecture check passes, and the body's layer4 output equals the trunk's features (eval mode)."""
    trunk = build_backbone("timm/resnet18")
    _randomise(trunk.trunk)
    path = str(tmp_path / "encoder.pt")
    export_encoder(trunk, path, method="test", normalization=NORM)

    det = ResNetFPNFasterRCNN("timm/resnet18", min_size=64, max_size=64)
    assert family_of_module(det.encoder).name == "torchvision-resnet-body"
    report = load_encoder(det.encoder, path, expected_normalization=NORM)
    assert report.ok and report.missing == [] and report.unused == [] and report.mismatched == []
    assert len(report.loaded) == len(trunk.trunk.state_dict()) == len(det.encoder.state_dict())
    assert {"conv1_stride", "max_pool", "activation", "layer settings"} <= set(report.arch_checked)

    det.eval()
    trunk.eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        ours = det.encoder(x)["3"]
        ref = trunk.trunk.forward_features(x)
    assert ours.shape == ref.shape == (2, 512, 2, 3)
    assert ((ours - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_handoff_refuses_another_resnet(tmp_path):
    trunk = build_backbone("timm/resnet34")
    path = str(tmp_path / "encoder.pt")
    export_encoder(trunk, path, method="test", normalization=NORM)
    det = ResNetFPNFasterRCNN("timm/resnet18", min_size=64, max_size=64)
    with pytest.raises(EncoderLoadError, match="encoder tensors unused"):
        load_encoder(det.encoder, path)


def test_frozen_batch_norm_is_torchvisions_frozen_batch_norm():
    """frozen_batch_norm: in train mode the body computes what torchvision's FrozenBatchNorm2d body computes, the
    BN tensors get no gradient and their statistics do not move."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    det = ResNetFPNFasterRCNN("timm/resnet18", frozen_batch_norm=True, min_size=64, max_size=64)
    _randomise(det.encoder)
    ref = copy.deepcopy(det.encoder)

    def freeze(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                fbn = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                fbn.weight.copy_(child.weight.detach())
                fbn.bias.copy_(child.bias.detach())
                fbn.running_mean.copy_(child.running_mean)
                fbn.running_var.copy_(child.running_var)
                setattr(module, name, fbn)
            else:
                freeze(child)

    freeze(ref)
    det.train()
    assert det.training and all(not m.training for m in det.encoder.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(not p.requires_grad for m in det.encoder.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert det.encoder.conv1.weight.requires_grad  # trainable_backbone_layers 5: the convolutions train
    stats = det.encoder.bn1.running_mean.clone()
    x = torch.rand(2, 3, 64, 64)
    ours = det.encoder(x)["3"]
    with torch.no_grad():
        theirs = ref(x)["3"]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert torch.equal(det.encoder.bn1.running_mean, stats)
    # without it, batch norm trains (batch statistics: another output, moving running stats)
    plain = ResNetFPNFasterRCNN("timm/resnet18", min_size=64, max_size=64)
    plain.encoder.load_state_dict(det.encoder.state_dict())
    plain.train()
    assert plain.encoder.bn1.training and plain.encoder.bn1.weight.requires_grad
    assert not torch.allclose(plain.encoder(x)["3"], theirs, atol=1e-3)


@pytest.mark.parametrize("k,trained", [(5, {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}),
                                       (3, {"layer2", "layer3", "layer4"}), (0, set())])
def test_trainable_backbone_layers(k, trained):
    det = ResNetFPNFasterRCNN("timm/resnet18", trainable_backbone_layers=k, min_size=64, max_size=64)
    grad = {n.split(".")[0] for n, p in det.encoder.named_parameters() if p.requires_grad}
    assert grad == trained
    assert all(p.requires_grad for p in det.backbone.fpn.parameters())  # the FPN and heads always train
    frozen = ResNetFPNFasterRCNN("timm/resnet18", frozen=True, min_size=64, max_size=64)
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    frozen.train()
    assert not frozen.encoder.training and frozen.rpn.training
    assert len(frozen.trainable_parameters()) == sum(1 for p in frozen.parameters() if p.requires_grad) > 0


def test_backbone_names():
    with pytest.raises(ValueError, match="plain ResNet"):
        ResNetFPNFasterRCNN("timm/resnet50d")
    with pytest.raises(ValueError, match="trainable_backbone_layers"):
        ResNetFPNFasterRCNN("resnet18", trainable_backbone_layers=6)


# ---- training step: gradient accumulation ---------------------------------------------------------------------

def _step(model: nn.Module, batches: list, accum_iter: int) -> dict[str, torch.Tensor]:
    """One epoch of DetectionTrainer with SGD(lr=1) over ``batches``: returns the parameter change (= -gradient
    of the one optimizer step)."""
    from monai_ssl_ext.engines import DetectionTrainer

    model = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD(model.trainable_parameters(), lr=1.0)
    trainer = DetectionTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=batches, network=model,
                               optimizer=opt, accum_iter=accum_iter)
    trainer.run()
    return {n: p.detach() - before[n] for n, p in model.named_parameters() if p.requires_grad}


def test_accumulation_of_two_half_batches_is_one_full_batch():
    """With batch norm frozen (the pretrained runs) and the detector sampling every anchor and a fixed number of
    proposals per image, torchvision's batch losses are means of the per-image losses, so two batches of one
    image with accum_iter=2 take the same optimizer step as one batch of two (the source's --accum_iter)."""
    torch.manual_seed(0)
    model = ResNetFPNFasterRCNN(
        "timm/resnet18", frozen_batch_norm=True, min_size=64, max_size=64, fpn_channels=32, representation_size=64,
        rpn_batch_size_per_image=100000, box_batch_size_per_image=100000,
        rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=8,
    )
    g = torch.Generator().manual_seed(1)
    box = torch.tensor([[10.0, 12.0, 40.0, 44.0]])
    items = [{"image": torch.rand(3, 64, 64, generator=g), "boxes": box.clone(), "labels": torch.tensor([1])}
             for _ in range(2)]
    full = _step(model, [items], accum_iter=1)
    accumulated = _step(model, [[items[0]], [items[1]]], accum_iter=2)
    changed = [n for n, d in full.items() if d.abs().max() > 0]
    assert len(changed) > 0.9 * len(full)  # every part of the detector learns from this batch
    for n in full:
        torch.testing.assert_close(accumulated[n], full[n], rtol=1e-3, atol=1e-6, msg=n)
    # without accumulation, the same two half batches take two different steps: not the full-batch step
    two_steps = _step(model, [[items[0]], [items[1]]], accum_iter=1)
    assert any(not torch.allclose(two_steps[n], full[n], rtol=1e-3, atol=1e-6) for n in changed)
