"""BarlowTwins wrapper: the reference projector (facebookresearch/barlowtwins main.py), per-view forwarding, and the
zero-initialised residual branches of ``resnet50(zero_init_residual=True)`` for timm, MONAI (2D / 3D) and
torchvision ResNets."""

import pytest
import torch
from torch import nn

from monai_ssl_ext.encoders import export_encoder, pretrained_backbone
from monai_ssl_ext.losses import BarlowTwinsCrossCorrelationLoss
from monai_ssl_ext.networks import BarlowTwins, build_backbone, zero_init_residual


def _last_bns(trunk):
    """The closing BN of every residual block, found by name (bn3 of bottlenecks, bn2 of basic blocks)."""
    names = dict(trunk.named_modules())
    found = []
    for name, m in names.items():
        if name.count(".") == 1 and name.startswith("layer"):  # layerK.J: a block
            found.append(m.bn3 if hasattr(m, "bn3") else m.bn2)
    return found


def test_projector_is_the_reference_mlp_and_has_no_final_bn():
    bb = build_backbone("timm/resnet18", spatial_dims=2, in_channels=3)
    net = BarlowTwins(bb, projection_dims=(64, 48, 32))
    kinds = [type(m) for m in net.projector]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    linears = [m for m in net.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 64), (64, 48), (48, 32)]
    assert all(m.bias is None for m in linears)  # Linear(no bias) as in the reference projector
    assert all(m.affine for m in net.projector if isinstance(m, nn.BatchNorm1d))  # the hidden BNs are affine
    # the published default is 8192-8192-8192
    assert BarlowTwins.__init__.__defaults__[0] == (8192, 8192, 8192)


def test_forward_is_per_view_and_trains_with_the_loss():
    torch.manual_seed(0)
    bb = build_backbone("timm/resnet10t", spatial_dims=2, in_channels=3)
    net = BarlowTwins(bb, projection_dims=(32, 16)).train()
    x1 = torch.randn(6, 3, 32, 32)
    x2 = x1 + 0.3 * torch.randn(6, 3, 32, 32)  # a second "view" of the same pictures
    z1, z2 = net(x1, x2)
    assert z1.shape == z2.shape == (6, 16)
    # each view on its own: the same as two separate calls, not as one batch of both views (BN statistics)
    torch.testing.assert_close(z1, net.projector(net.backbone(x1)))
    torch.testing.assert_close(z2, net.projector(net.backbone(x2)))
    joint = net.projector(net.backbone(torch.cat([x1, x2])))
    assert not torch.allclose(joint[:6], z1, atol=1e-4)

    # the loss reaches every trainable parameter and a few steps on one batch lower it
    loss_fn = BarlowTwinsCrossCorrelationLoss()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = loss_fn(*net(x1, x2))
        loss.backward()
        if not losses:
            missing = [n for n, p in net.named_parameters() if p.grad is None]
            assert not missing, missing
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_timm_resnet_already_zero_inits_the_last_bn():
    """timm's ResNet has zero_init_last=True by default: a fresh timm/resnet50 trunk has bn3.weight == 0 in every
    Bottleneck, like torchvision's resnet50(zero_init_residual=True) that the reference code builds."""
    bb = build_backbone("timm/resnet50", spatial_dims=2, in_channels=3)
    bns = _last_bns(bb.trunk)
    assert len(bns) == 16 and all(torch.count_nonzero(bn.weight) == 0 for bn in bns)
    net = BarlowTwins(bb, projection_dims=(8,))
    assert net.zeroed_blocks == 16 and all(torch.count_nonzero(bn.weight) == 0 for bn in bns)


@pytest.mark.parametrize("arch, spatial_dims, blocks", [("resnet10", 3, 4), ("resnet50", 2, 16)])
def test_monai_resnet_blocks_start_as_identity(arch, spatial_dims, blocks):
    """MONAI's ResNet does not zero-init: the wrapper does, and each block then adds nothing to its shortcut."""
    torch.manual_seed(0)
    bb = build_backbone(arch, spatial_dims=spatial_dims, in_channels=1)
    bns = _last_bns(bb.trunk)
    assert len(bns) == blocks and all(torch.count_nonzero(bn.weight) > 0 for bn in bns)  # MONAI: BN weight 1
    net = BarlowTwins(bb, projection_dims=(8,))
    assert net.zeroed_blocks == blocks and all(torch.count_nonzero(bn.weight) == 0 for bn in bns)
    block = bb.trunk.layer1[0]
    x = torch.randn(2, block.conv1.in_channels, *([6] * spatial_dims))
    block.eval()
    shortcut = x if block.downsample is None else block.downsample(x)
    torch.testing.assert_close(block(x), torch.relu(shortcut))


def test_matches_torchvision_zero_init_residual():
    """On torchvision's own ResNets the helper zeroes exactly what ``zero_init_residual=True`` zeroes."""
    tv = pytest.importorskip("torchvision.models")
    for ctor in (tv.resnet18, tv.resnet50):
        torch.manual_seed(0)
        ours = ctor()
        count = zero_init_residual(ours)
        torch.manual_seed(0)
        theirs = ctor(zero_init_residual=True)
        assert count == (8 if ctor is tv.resnet18 else 16)
        for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_loaded_weights_are_not_zeroed(tmp_path):
    """A backbone built from a weight spec (pretrained_backbone sets load_report) keeps its weights."""
    torch.manual_seed(0)
    src = build_backbone("resnet10", spatial_dims=2, in_channels=1)
    with torch.no_grad():
        for bn in _last_bns(src.trunk):
            bn.weight.fill_(0.5)
    path = tmp_path / "encoder.pt"
    export_encoder(src, str(path), method="test", normalization={"mean": [0.0], "std": [1.0]})
    bb = pretrained_backbone("resnet10", weights=str(path), spatial_dims=2, in_channels=1)
    net = BarlowTwins(bb, projection_dims=(8,))
    assert net.zeroed_blocks == 0
    assert all(torch.all(bn.weight == 0.5) for bn in _last_bns(bb.trunk))
    # asked not to, a random trunk is left alone too
    fresh = build_backbone("resnet10", spatial_dims=2, in_channels=1)
    assert BarlowTwins(fresh, projection_dims=(8,), zero_init_residual=False).zeroed_blocks == 0
    assert all(torch.count_nonzero(bn.weight) > 0 for bn in _last_bns(fresh.trunk))


def test_no_residual_blocks_and_bad_dims():
    bb = build_backbone("efficientnet-b0", spatial_dims=2, in_channels=3)
    assert BarlowTwins(bb, projection_dims=(8,)).zeroed_blocks == 0
    with pytest.raises(ValueError, match="projection_dims"):
        BarlowTwins(bb, projection_dims=())
