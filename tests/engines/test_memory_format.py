"""Channels-last layout (``SSLTrainer(channels_last=True)``, :mod:`monai_ssl_ext.memory_format`) changes where the
numbers sit in memory, never which numbers.

What would be wrong: a layout change that permutes values (a reshape or ``view`` where a ``permute`` was meant, so
the network sees pixels in the wrong places), an optimizer left holding the old parameter tensors (so the trained
weights never move), views that reach the network in the old layout (no speed-up), and an encoder file whose
weights load into a contiguous downstream trunk as something else. The references: the same network trained with
the default layout, a hand-built channels-last tensor from its definition (strides ``(H*W*C, 1, W*C, C)``), and the
downstream trunk's features against the trained one's."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader

from monai_ssl_ext.engines import SSLTrainer
from monai_ssl_ext.memory_format import network_to_channels_last, to_channels_last


def test_channels_last_keeps_values_and_has_the_channels_last_strides():
    x = torch.randn(2, 3, 5, 7)
    y = to_channels_last(x)
    n, c, h, w = x.shape
    assert y.stride() == (h * w * c, 1, w * c, c)  # the definition: a pixel's channels are neighbours in memory
    assert torch.equal(y, x) and y.shape == x.shape
    # element [i, k, r, s] sits at offset i*H*W*C + r*W*C + s*C + k of the storage
    flat = y.as_strided((y.numel(),), (1,))
    assert flat[1 * h * w * c + 2 * w * c + 3 * c + 1] == x[1, 1, 2, 3]
    v = torch.randn(2, 3, 4, 5, 6)
    assert torch.equal(to_channels_last(v), v)
    assert to_channels_last(v).is_contiguous(memory_format=torch.channels_last_3d)
    z = torch.randn(4, 5)
    assert to_channels_last(z) is z


class _ConvPair(nn.Module):
    """A convolution network (conv, batch norm, conv, pool, linear) applied to each view; records whether each view
    reached it channels-last."""

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
        self.layouts: list[bool] = []

    def forward(self, *views):
        self.layouts += [v.is_contiguous(memory_format=torch.channels_last) for v in views]
        return tuple(self.f(v) for v in views)


def _loss(z1, z2):
    return ((z1 - z2) ** 2).mean() + 0.1 * (z1**2).mean()


def _train(network: nn.Module, channels_last: bool) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.randn(3, 9, 9, generator=g), "image_2": torch.randn(3, 9, 9, generator=g)}
            for _ in range(8)]
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
    trainer = SSLTrainer("cpu", 2, DataLoader(data, batch_size=4), network, optimizer, _loss,
                         channels_last=channels_last, retain_freed_memory=False)
    trainer.run()
    return network


def test_network_conversion_keeps_the_parameter_objects_and_values():
    net = _ConvPair()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = list(net.parameters())
    network_to_channels_last(net)
    assert all(a is b for a, b in zip(params, net.parameters()))  # an optimizer built before still holds them
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.f[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_training_reaches_the_weights_of_the_default_layout():
    torch.manual_seed(0)
    default = _ConvPair()
    channels_last, initial = copy.deepcopy(default), copy.deepcopy(default)
    _train(default, channels_last=False)
    _train(channels_last, channels_last=True)
    assert channels_last.layouts and all(channels_last.layouts)  # every view arrived channels-last
    assert not any(default.layouts)
    assert (channels_last.f[0].weight - initial.f[0].weight).abs().max() > 1e-3  # training moved the weights
    for (name, a), b in zip(default.state_dict().items(), channels_last.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert channels_last.f[0].weight.is_contiguous(memory_format=torch.channels_last)  # the optimizer kept it


def test_an_encoder_trained_channels_last_computes_the_same_features_downstream(tmp_path):
    from monai_ssl_ext.encoders import export_encoder, load_encoder
    from monai_ssl_ext.networks.backbones import build_backbone

    torch.manual_seed(0)
    trained = build_backbone("resnet10", in_channels=3)
    network_to_channels_last(trained)
    with torch.no_grad():  # weights that are not the initial ones, written through the channels-last tensors
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "encoder.pt"
    export_encoder(trained, str(path), method="simclr", normalization={"mean": [0.5] * 3, "std": [0.5] * 3})
    downstream = build_backbone("resnet10", in_channels=3)  # default layout
    load_encoder(downstream, str(path))
    x = torch.randn(2, 3, 32, 32)
    trained.eval()
    downstream.eval()
    with torch.no_grad():
        torch.testing.assert_close(downstream(x), trained(to_channels_last(x)), rtol=1e-4, atol=1e-5)


def test_the_multi_gpu_module_is_channels_last_before_the_wrap_and_the_trainer_leaves_it():
    """``ddp_module`` (the module of every SSL ``multi_gpu_train.json``) sets the layout before DDP is built on the
    parameters; the trainer's own conversion then keeps the very storages DDP holds (no copy, no new layout)."""
    from monai_ssl_ext.utils import ddp_module

    net = ddp_module(_ConvPair(), "cpu", sync_bn=True, channels_last=True)
    assert net.f[0].weight.is_contiguous(memory_format=torch.channels_last)
    pointers = [p.data_ptr() for p in net.parameters()]
    network_to_channels_last(net)
    assert [p.data_ptr() for p in net.parameters()] == pointers
    plain = ddp_module(_ConvPair(), "cpu", channels_last=False)
    assert not plain.f[0].weight.is_contiguous(memory_format=torch.channels_last)
