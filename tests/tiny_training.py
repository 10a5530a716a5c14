"""A tiny ignite trainer and trunk for handler tests (checkpoints, exports, faults)."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from torch import nn


def tiny_backbone():
    """A one-layer 2-D ViT trunk (a monai_ssl_ext ``Backbone``), 16 px, one channel."""
    from monai_ssl_ext.networks import build_backbone

    return build_backbone("vit", spatial_dims=2, in_channels=1, img_size=16, patch_size=8, hidden_size=16,
                          mlp_dim=32, num_layers=1, num_heads=2)


def tiny_trainer(net: nn.Module, opt: torch.optim.Optimizer, handlers=()) -> tuple[Engine, list[int]]:
    """An ignite trainer taking one optimizer step of ``net`` per iteration on its batches, with ``handlers``
    attached; returns the engine and the list its iterations are counted in (filled when it runs)."""
    def step(engine, batch):
        opt.zero_grad()
        loss = net(batch).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    engine = Engine(step)
    iterations: list[int] = []
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: iterations.append(e.state.iteration))
    for h in handlers:
        h.attach(engine)
    return engine, iterations
