"""The joint 2D-3D method's networks (SPEC E.2-E.4): multi-scale slice features, masking, the masked loss and its
collapse guard, the volume embedding, and the two-trunk encoder file. References are written here from the source's
definitions (``ResNet.forward_2D``, ``MaskGenerator``, ``ResNet_Trans``), not taken from the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_ssl_ext.encoders import (EncoderLoadError, export_encoder, export_encoders, load_encoder,
                                    pretrained_backbone, read_encoder_file)
from monai_ssl_ext.networks import DeepClusterV2, build_backbone
from monai_ssl_ext.networks.joint3d import (JointVolumeEncoder, MaskedSliceEmbedding, MaskedSliceLoss, SliceTransformer,
                                           joint_ssl_network, joint_volume_encoder, multiscale_dim, multiscale_features,
                                           n_masked_slices, random_slice_mask, trainable_parameters)

SMALL = dict(d_model=32, ffn_dim=40, num_layers=2, num_heads=4)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point() and "running_var" not in name:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)


def _encoder(seed: int = 0) -> JointVolumeEncoder:
    torch.manual_seed(seed)
    model = joint_volume_encoder("timm/resnet18", **SMALL)
    _randomise(model.slice_transformer.trunk, seed + 1)
    return model.eval()


def _reference_forward_2d(trunk, x: torch.Tensor) -> torch.Tensor:
    """The source's ``forward_2D`` written out on a timm ResNet: stem, then each layer's global average pool,
    L2-normalised, then the final average pool, L2-normalised, concatenated."""
    h = trunk.maxpool(trunk.act1(trunk.bn1(trunk.conv1(x))))
    blocks = []
    for layer in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
        h = layer(h)
        blocks.append(F.normalize(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1), dim=1, p=2))
    blocks.append(F.normalize(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1), dim=1, p=2))  # avgpool(layer4) again
    return torch.cat(blocks, dim=1)


def test_multiscale_features_match_the_source_definition():
    backbone = build_backbone("timm/resnet18").eval()
    x = torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = multiscale_features(backbone, x)
        ref = _reference_forward_2d(backbone.trunk, x)
    assert got.shape == (3, 64 + 128 + 256 + 512 + 512) == (3, multiscale_dim(backbone)) == (3, 1472)
    assert torch.allclose(got, ref, atol=1e-6)
    # five unit-norm blocks per slice
    edges = np.cumsum([0, 64, 128, 256, 512, 512])
    for a, b in zip(edges[:-1], edges[1:]):
        assert torch.allclose(got[:, a:b].norm(dim=1), torch.ones(3), atol=1e-5)


def test_resnet50_gives_5888():
    with torch.device("meta"):
        backbone = build_backbone("timm/resnet50")
    # bottleneck ResNet-50: layer1..4 have 64*4, 128*4, 256*4, 512*4 channels; the final pool repeats layer4
    assert multiscale_dim(backbone) == 64 * 4 + 128 * 4 + 256 * 4 + 512 * 4 + 512 * 4 == 5888


def test_non_resnet_slice_encoder_is_refused():
    with torch.device("meta"):
        vit = build_backbone("vit", img_size=32, patch_size=16, hidden_size=16, mlp_dim=32, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match="timm ResNet"):
        multiscale_dim(vit)


@pytest.mark.parametrize("depth,ratio,expected", [(64, 0.1, 7), (8, 0.1, 1), (10, 0.1, 1), (20, 0.25, 5), (3, 0.5, 2)])
def test_mask_count_is_ceil_of_ratio(depth, ratio, expected):
    assert n_masked_slices(depth, ratio) == expected == math.ceil(round(depth * ratio, 9))
    mask = random_slice_mask(50, depth, ratio, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (50, depth)
    assert (mask.sum(dim=1) == expected).all()
    if expected < depth:  # random positions: not the same slices in every volume
        assert len({tuple(r.tolist()) for r in mask}) > 1


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "0.1", True, None])
def test_mask_ratio_must_be_a_fraction(bad):
    with pytest.raises(ValueError, match="mask_ratio"):
        n_masked_slices(64, bad)


def test_masking_replaces_exactly_the_masked_slices_by_the_token():
    torch.manual_seed(0)
    trunk = SliceTransformer(20, **SMALL).eval()
    feats = torch.randn(2, 6, 20)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, [1, 4]] = True
    mask[1, 0] = True
    with torch.no_grad():
        emb = trunk.embed(feats, mask)
    # positions from the formula: sin(p / 10000^(2i/d)) in column 2i, cos in 2i + 1
    d = SMALL["d_model"]
    pos = np.zeros((6, d))
    for p in range(6):
        for i in range(0, d, 2):
            pos[p, i] = math.sin(p / 10000 ** (i / d))
            pos[p, i + 1] = math.cos(p / 10000 ** (i / d))
    w, b = trunk.projection.weight.detach().double(), trunk.projection.bias.detach().double()
    for vol in range(2):
        for s in range(6):
            content = trunk.mask_token.detach().double() if mask[vol, s] else feats[vol, s].double() @ w.T + b
            assert torch.allclose(emb[vol, s].double(), content + torch.from_numpy(pos[s]), atol=1e-5), (vol, s)
    # the masked slices' content is gone: changing their features changes nothing
    other = feats.clone()
    other[mask] = torch.randn(int(mask.sum()), 20)
    with torch.no_grad():
        assert torch.equal(trunk(other, mask), trunk(feats, mask))
        assert not torch.allclose(trunk(other), trunk(feats))


def test_masked_loss_counts_masked_slices_only():
    g = torch.Generator().manual_seed(3)
    pred, target = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    mask = torch.rand(3, 5, generator=g) < 0.4
    mask[0, 0] = True
    loss = MaskedSliceLoss()(pred, target, mask)
    p, t, m = pred.double().numpy(), target.double().numpy(), mask.numpy()
    total, count = 0.0, 0
    for b in range(3):
        for d in range(5):
            if m[b, d]:
                total += sum((p[b, d, f] - t[b, d, f]) ** 2 for f in range(7))
                count += 1
    assert loss.item() == pytest.approx(total / (count * 7), rel=1e-6)
    changed = pred.clone()
    changed[~mask] += 100.0  # visible slices are not scored
    assert MaskedSliceLoss()(changed, target, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    with pytest.raises(ValueError, match="no slice is masked"):
        MaskedSliceLoss()(pred, target, torch.zeros_like(mask))


def test_collapse_guard_target_is_frozen_and_not_collapsible():
    model = MaskedSliceEmbedding(_encoder(), mask_ratio=0.25)
    encoder = model.backbone.slice_encoder
    model.train()
    assert not encoder.training and model.backbone.slice_transformer.training  # frozen encoder stays in eval mode
    assert all(not p.requires_grad for p in encoder.parameters())
    trainable = {id(p) for p in trainable_parameters(model)}
    assert not trainable & {id(p) for p in encoder.parameters()}
    assert {id(model.backbone.slice_transformer.trunk.mask_token), id(model.decoder.weight),
            id(model.backbone.slice_transformer.trunk.projection.weight)} <= trainable
    stats = {k: v.clone() for k, v in encoder.state_dict().items()}
    x = torch.rand(2, 3, 8, 32, 32)
    pred, target, mask = model(x)
    assert not target.requires_grad and (mask.sum(dim=1) == 2).all()
    MaskedSliceLoss()(pred, target, mask).backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert all(torch.equal(stats[k], v) for k, v in encoder.state_dict().items())  # no batch-norm update

    # collapse: zero projection, mask token and decoder (every trainable map shrunk to nothing); the target does not
    # move, so the loss is the mean squared norm of the masked targets: 5 unit-norm blocks per slice of 1472 features
    # -> 5 / 1472, never 0
    with torch.no_grad():
        for p in trainable_parameters(model):
            p.zero_()
        pred2, target2, mask2 = model(x)
    assert torch.allclose(target2, target, atol=1e-6)
    assert torch.count_nonzero(pred2) == 0
    assert MaskedSliceLoss()(pred2, target2, mask2).item() == pytest.approx(5.0 / 1472, rel=1e-5)


def test_volume_embedding_is_the_mean_over_slices_then_normalised():
    model = _encoder(seed=4)
    x = torch.rand(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # slice by slice, volume by volume (the B*D reshape must keep each volume's slices in order)
        feats = torch.stack([torch.cat([multiscale_features(model.slice_encoder, x[b, :, d][None]) for d in range(5)])
                             for b in range(2)])
        tokens = model.slice_transformer.trunk(feats)
        ref = tokens.mean(dim=1)
        assert torch.allclose(model(x), ref, atol=1e-5)
        net = DeepClusterV2(model, dataset_size=4, projection_dims=[], n_prototypes=[3], train_prototypes=True).eval()
        assert net.dim == 32
        assert torch.allclose(net.embed(x), ref / ref.norm(dim=1, keepdim=True), atol=1e-5)
        scores, _ = net(x, index=torch.tensor([0, 1]))
        w = net.prototypes.heads[0].weight
        assert torch.allclose(scores[0], (ref / ref.norm(dim=1, keepdim=True)) @ w.T, atol=1e-5)


def test_stage_b_networks_train_everything_but_the_mask_token():
    model = _encoder()
    net = joint_ssl_network("deepclusterv2", model, n_prototypes=[4, 4], dataset_size=6)
    trainable = {id(p) for p in trainable_parameters(net)}
    assert id(model.slice_transformer.trunk.mask_token) not in trainable  # unused in stage (b): no DDP complaint
    for part in (model.slice_encoder, model.slice_transformer.trunk.projection, model.slice_transformer.trunk.encoder,
                 net.prototypes):
        assert all(id(p) in trainable for p in part.parameters())
    swav = joint_ssl_network("swav", _encoder(), n_prototypes=[12])
    assert swav.prototypes.heads[0].weight.shape == (12, 32)
    with pytest.raises(ValueError, match="method"):
        joint_ssl_network("byol", _encoder())


def _export(tmp_path, model: JointVolumeEncoder):
    _randomise(model.slice_encoder.trunk, 7)
    path = str(tmp_path / "encoder.pt")
    export_encoders({"slice_encoder": model.slice_encoder, "slice_transformer": model.slice_transformer}, path,
                    method="joint_ssl_3d_mask", normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    return path


def test_both_trunks_export_and_load_back(tmp_path):
    model = _encoder(seed=2)
    path = _export(tmp_path, model)
    payload = read_encoder_file(path)
    assert payload["format"] == 2 and sorted(payload["trunks"]) == ["slice_encoder", "slice_transformer"]
    assert payload["trunks"]["slice_transformer"]["arch_params"] == {**SMALL, "dropout": 0.1, "activation": "gelu"}
    assert payload["trunks"]["slice_transformer"]["in_channels"] == 1472

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    enc = build_backbone("timm/resnet18").eval()
    report = load_encoder(enc, path, trunk="slice_encoder")
    assert report.ok and not report.missing and not report.unused and len(report.loaded) == len(enc.trunk.state_dict())
    import timm

    bare = timm.create_model("resnet18", num_classes=0).eval()  # a downstream timm trunk, timm key names
    assert load_encoder(bare, path, trunk="slice_encoder").ok
    with torch.no_grad():
        ref = multiscale_features(model.slice_encoder, x)
        assert (multiscale_features(enc, x) - ref).abs().max() <= 1e-5
        assert (bare(x) - model.slice_encoder(x)).abs().max() <= 1e-5

    rebuilt = pretrained_backbone(None, path, spatial_dims=1, in_channels=1472, trunk="slice_transformer").eval()
    assert rebuilt.load_report.ok and not rebuilt.load_report.missing and not rebuilt.load_report.unused
    feats = torch.randn(2, 6, 1472)
    mask = random_slice_mask(2, 6, 0.3)
    with torch.no_grad():
        assert (rebuilt.trunk(feats, mask) - model.slice_transformer.trunk(feats, mask)).abs().max() <= 1e-5
        assert (rebuilt(feats) - model.slice_transformer(feats)).abs().max() <= 1e-5

    # the bundle's builder takes the right trunk of a joint file for each part
    again = joint_volume_encoder("timm/resnet18", init_weights=path, init_transformer=path, **SMALL).eval()
    vol = torch.rand(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert (again(vol) - model(vol)).abs().max() <= 1e-5
    assert all(r is not None and r.ok for r in again.load_reports.values())


def test_a_stage1_file_initialises_the_slice_encoder(tmp_path):
    source = build_backbone("timm/resnet18")
    _randomise(source.trunk, 9)
    path = str(tmp_path / "stage1.pt")
    export_encoder(source.eval(), path, method="swav", normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    model = joint_volume_encoder("timm/resnet18", init_weights=path, **SMALL).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert (model.slice_encoder(x) - source(x)).abs().max() <= 1e-5
    assert model.load_reports["slice_transformer"] is None  # random transformer, no report


@pytest.mark.parametrize("change,message", [
    ({"num_heads": 2}, r"num_heads: encoder header 4, target 2"),
    ({"num_layers": 1}, r"num_layers: encoder header 2, target 1"),
    ({"ffn_dim": 48}, r"ffn_dim: encoder header 40, target 48"),
    ({"activation": "relu"}, r"activation: encoder header 'gelu', target 'relu'"),
])
def test_a_transformer_of_other_sizes_is_refused(tmp_path, change, message):
    path = _export(tmp_path, _encoder())
    target = build_backbone("slice-transformer", spatial_dims=1, in_channels=1472, **{**SMALL, **change})
    with pytest.raises(EncoderLoadError, match=message):
        load_encoder(target, path, trunk="slice_transformer")
    with pytest.raises(EncoderLoadError, match=message.split(":")[0]):
        joint_volume_encoder("timm/resnet18", init_transformer=path, **{**SMALL, **change})


def test_trunks_export_handler_writes_both(tmp_path):
    from ignite.engine import Engine

    from monai_ssl_ext.handlers import TrunksExport

    model = _encoder()
    path = str(tmp_path / "out" / "encoder.pt")
    (tmp_path / "out").mkdir()
    handler = TrunksExport({"slice_encoder": model.slice_encoder, "slice_transformer": model.slice_transformer}, path,
                           method="joint_ssl_3d_deepclusterv2", normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0, 1], max_epochs=2)
    payload = read_encoder_file(path)
    assert sorted(payload["trunks"]) == ["slice_encoder", "slice_transformer"] and payload["epoch"] == 2
    assert payload["method"] == "joint_ssl_3d_deepclusterv2"
    with pytest.raises(TypeError, match="not monai_ssl_ext Backbones"):
        TrunksExport({"x": model.slice_transformer.trunk}, path, method="m")


def test_slice_encoder_loads_into_a_one_channel_unet_encoder(tmp_path):
    """unet_mmwhs's path: its U-Net trunk (1 input channel) loads the ``slice_encoder`` trunk with the RGB filters
    summed; on a grey slice it then computes what the 3-channel encoder computes on the slice repeated 3 times."""
    from monai_ssl_ext.networks import BackboneUNet

    model = _encoder(seed=6)
    path = _export(tmp_path, model)
    unet = BackboneUNet(build_backbone("timm/resnet18", spatial_dims=2, in_channels=1), out_channels=8).eval()
    report = load_encoder(unet.backbone, path, trunk="slice_encoder", convert_channels=True)
    assert report.ok and not report.missing and not report.unused and report.converted
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        got = unet.backbone(grey)
        ref = model.slice_encoder(grey.expand(2, 3, 32, 32))
    assert (got - ref).abs().max() <= 1e-5


def test_grey_volumes_must_be_repeated_to_the_encoder_channels():
    with pytest.raises(ValueError, match="repeat the grey volume"):
        _encoder()(torch.rand(1, 1, 4, 32, 32))
    with pytest.raises(ValueError, match="B x C x D x H x W"):
        _encoder()(torch.rand(1, 3, 32, 32))


def test_inference_architecture_loads_both_trunks_and_refuses_another(tmp_path, caplog):
    """joint_ssl_3d's inference.json: an architecture-only encoder (no warning about random weights) into which
    with_trunks loads both trunks of the exported file computes the trained encoder's volume embedding; a
    transformer of another size is refused, naming the trunk."""
    import logging

    from monai_ssl_ext.encoders import EncoderLoadError
    from monai_ssl_ext.sharing import with_trunks

    model = _encoder(seed=4)
    path = _export(tmp_path, model)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        arch = joint_volume_encoder("timm/resnet18", weights_later=True, **SMALL).eval()
    assert "randomly initialised" not in caplog.text
    loaded = with_trunks(arch, path, ["slice_encoder", "slice_transformer"])
    assert loaded is arch and all(r.ok for r in arch.load_reports.values())
    vol = torch.rand(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (arch(vol) - model(vol)).abs().max() <= 1e-5
    other = joint_volume_encoder("timm/resnet18", weights_later=True, **{**SMALL, "d_model": 48, "num_heads": 4})
    with pytest.raises(EncoderLoadError, match="slice_transformer|d_model"):
        with_trunks(other, path, ["slice_encoder", "slice_transformer"])
