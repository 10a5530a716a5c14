"""The clustering wrappers and their training-loop handlers: SwAV scores unit embeddings against unit prototypes
and uses its queue only once full; DeepCluster-v2 sets its prototypes to the k-means centroids and its targets to
the clusters of the batch's items; FreezePrototypes leaves the prototypes unchanged for exactly the first N
optimizer steps; ClusterMemory fills the bank with every item once."""

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from monai.engines.utils import IterationEvents
from torch import nn

from monai_ssl_ext.handlers import FreezePrototypes
from monai_ssl_ext.losses import DeepClusterV2Loss, SwAVLoss
from monai_ssl_ext.networks import DeepClusterV2, SwAV


class Tiny(nn.Sequential):
    feature_dim = 6

    def __init__(self):
        super().__init__(nn.Linear(5, 6), nn.ReLU())


def _views(n=8, views=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 5, generator=g) for _ in range(views)]


def test_swav_scores_are_cosines_with_unit_prototypes():
    torch.manual_seed(0)
    model = SwAV(Tiny(), projection_dims=[8, 4], n_prototypes=7).train()
    with torch.no_grad():
        model.prototypes.heads[0].weight.mul_(3.0)  # not unit
    x = _views()
    scores, queue_scores = model(*x)
    w = model.prototypes.heads[0].weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(7))  # normalised before the forward
    z = F.normalize(model.projector(model.backbone(torch.cat(x))), dim=1)[:8]  # BN over both views
    torch.testing.assert_close(scores[0], z @ w.T)
    assert float(scores[0].detach().abs().max()) <= 1 + 1e-6 and queue_scores is None


def test_swav_queue_used_only_when_full_and_switched_by_epoch():
    from monai_ssl_ext.handlers import QueueStart

    torch.manual_seed(0)
    model = SwAV(Tiny(), projection_dims=[4], n_prototypes=5, queue_length=12).train()
    x = _views(n=8)
    handler = QueueStart(model, start_epoch=1)
    engine = Engine(lambda e, b: None)
    engine.state.epoch = 1
    handler(engine)
    assert not model.use_queue
    _, q = model(*x)
    assert q is None and all(int(queue.count) == 0 for queue in model.queues)  # off: nothing stored
    engine.state.epoch = 2
    handler(engine)
    assert model.use_queue
    _, q = model(*x)  # 8 of 12 rows: not full, not used
    assert q is None and all(int(queue.count) == 8 for queue in model.queues)
    _, q = model(*x)
    assert q is None  # scored before this batch is pushed: still 8 rows at scoring time
    _, q = model(*x)
    assert q is not None and [t.shape for t in q] == [(12, 5), (12, 5)]
    loss = SwAVLoss()(*model(*x))
    assert torch.isfinite(loss)


def test_deepcluster_prototypes_are_centroids_and_targets_are_clusters():
    torch.manual_seed(0)
    n = 24
    model = DeepClusterV2(Tiny(), dataset_size=n, projection_dims=[4], n_prototypes=[3, 2], kmeans_iters=5).train()
    assert not any(p.requires_grad for p in model.prototypes.parameters())
    x = _views(n=n)
    index = torch.arange(n)
    with torch.no_grad():
        model(*x, index=index)  # fills the bank
    assert bool(model.memory.seen.all())
    sizes = model.cluster(torch.Generator().manual_seed(0))
    assert [int(s.sum()) for s in sizes] == [n, n]
    for head, centroids in zip(model.prototypes.heads, model.kmeans.centroids):
        assert torch.equal(head.weight, centroids)
    # head 0 clusters view 0's memory, head 1 view 1's
    for h in range(2):
        mem = model.memory.features[h]
        torch.testing.assert_close(model.memory.assignments[h], (mem @ model.kmeans.centroids[h].T).argmax(1))
    scores, targets = model(*[v[5:9] for v in x], index=index[5:9])
    assert torch.equal(targets, model.memory.assignments[:, 5:9])
    assert [s.shape for s in scores] == [(8, 3), (8, 2)]  # 2 views x 4 items
    assert torch.isfinite(DeepClusterV2Loss()(scores, targets))


def test_deepcluster_refuses_more_clusters_than_items():
    with pytest.raises(ValueError, match="n_prototypes"):
        DeepClusterV2(Tiny(), dataset_size=4, projection_dims=[4], n_prototypes=[5])


def test_freeze_prototypes_for_exactly_n_steps():
    torch.manual_seed(0)
    model = SwAV(Tiny(), projection_dims=[4], n_prototypes=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    engine = Engine(lambda e, b: None)
    engine.register_events(*IterationEvents)
    engine.network, engine.optimizer = model, opt
    FreezePrototypes(model.prototypes, iterations=2).attach(engine)
    history = []
    for it in range(1, 5):
        engine.state.iteration, engine.state.epoch_length = it, 10
        opt.zero_grad()
        SwAVLoss()(*model(*_views(seed=it))).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        before = model.prototypes.heads[0].weight.detach().clone()
        trunk = model.backbone[0].weight.detach().clone()
        opt.step()
        # the prototypes are re-normalised in every forward, so compare right around the step
        history.append((not torch.equal(before, model.prototypes.heads[0].weight),
                        not torch.equal(trunk, model.backbone[0].weight)))
    assert history == [(False, True), (False, True), (True, True), (True, True)]


@pytest.mark.parametrize("n,batch,world", [(10, 4, 1), (10, 4, 2), (9, 4, 2), (7, 3, 3), (5, 2, 2)])
def test_fill_batches_every_item_once_equal_shapes(n, batch, world):
    from monai_ssl_ext.handlers.clustering import fill_batches

    per_rank = [fill_batches(n, batch, r, world) for r in range(world)]
    items = [i for chunks in per_rank for chunk in chunks for i in chunk if i >= 0]
    assert sorted(items) == list(range(n))  # every item exactly once over the ranks
    shapes = [[len(c) for c in chunks] for chunks in per_rank]
    assert all(s == shapes[0] for s in shapes)  # the same batch sizes on every rank (gathered)
    assert all(sum(i >= 0 for i in c) >= 1 for chunks in per_rank for c in chunks)
    assert all(len(c) >= 2 for c in per_rank[0]) or n < 2 * world


def test_cluster_memory_fills_every_item_once_with_its_embedding():
    from monai.data import DataLoader

    from monai_ssl_ext.engines import SSLTrainer
    from monai_ssl_ext.handlers import ClusterMemory

    torch.manual_seed(0)
    n = 10
    g = torch.Generator().manual_seed(1)
    items = [{"image": torch.randn(5, generator=g), "image_2": torch.randn(5, generator=g), "index": i} for i in range(n)]
    # one projection layer, no BatchNorm: an item's embedding does not depend on its batch
    model = DeepClusterV2(Tiny(), dataset_size=n, projection_dims=[4], n_prototypes=[3], kmeans_iters=2)
    trainer = SSLTrainer(device=torch.device("cpu"), max_epochs=1, network=model, loss_function=DeepClusterV2Loss(),
                         train_data_loader=DataLoader(items, batch_size=4, shuffle=True, drop_last=True),
                         optimizer=torch.optim.SGD(model.parameters(), lr=0.1), extra_keys=["index"])
    ClusterMemory(model).fill(trainer)
    assert bool(model.memory.seen.all()) and bool(model.memory.fresh.all())
    with torch.no_grad():
        for view, key in enumerate(("image", "image_2")):
            expected = model.embed(torch.stack([it[key] for it in items]))
            torch.testing.assert_close(model.memory.features[view], expected)
    # the training run: the network gets the batch's indices (extra_keys), the epoch's items are refreshed
    handler = ClusterMemory(model, seed=3)
    handler.attach(trainer)
    trainer.run()
    assert int(model.kmeans.fits) == 1
    assert int(model.memory.fresh.sum()) == 8  # 2 batches of 4 (drop_last) written during the epoch
    assert not bool(model.memory.fresh.all())


def test_picture_channels():
    from monai_ssl_ext.transforms import PictureChannelsd

    grey = {"image": torch.arange(6.0).view(1, 2, 3)}
    out = PictureChannelsd("image", channels=3)(grey)["image"]
    assert out.shape == (3, 2, 3) and all(torch.equal(out[c], grey["image"][0]) for c in range(3))
    rgb = {"image": torch.rand(3, 2, 3)}
    assert torch.equal(PictureChannelsd("image")(rgb)["image"], rgb["image"])
    with pytest.raises(ValueError, match="2 channels"):
        PictureChannelsd("image")({"image": torch.rand(2, 2, 3)})


def test_sinkhorn_needs_an_iteration():
    from monai_ssl_ext.losses import sinkhorn

    with pytest.raises(ValueError, match="iterations >= 1"):
        sinkhorn(torch.rand(4, 3), iterations=0)


def test_fresh_trunk_keeps_unit_residual_bn_loaded_trunk_untouched(tmp_path):
    from monai_ssl_ext.encoders import export_encoder, pretrained_backbone
    from monai_ssl_ext.networks import build_backbone

    fresh = build_backbone("timm/resnet18")
    last = lambda b: [blk.bn2.weight for layer in ("layer1", "layer2", "layer3", "layer4")  # noqa: E731
                      for blk in getattr(b.trunk, layer)]
    assert all(float(w.abs().max()) == 0 for w in last(fresh))  # timm zeroes them
    SwAV(fresh, projection_dims=[8], n_prototypes=4)
    assert all(torch.equal(w, torch.ones_like(w)) for w in last(fresh))  # swav / VISSL: PyTorch's BN init
    trained = build_backbone("timm/resnet18")
    with torch.no_grad():
        for w in last(trained):
            w.fill_(0.25)
    export_encoder(trained, str(tmp_path / "enc.pt"), method="test")
    loaded = pretrained_backbone("timm/resnet18", weights=str(tmp_path / "enc.pt"))
    DeepClusterV2(loaded, dataset_size=8, projection_dims=[8], n_prototypes=[4])
    assert all(torch.equal(w, torch.full_like(w, 0.25)) for w in last(loaded))


def test_items_not_visited_last_epoch_keep_a_target():
    """The clustering fits the items written since the last one, but every stored item gets its nearest centroid:
    with an epoch shorter than the data, the items of the next epoch (not visited in the last) still have targets
    (they would otherwise be ignored and the loss of a whole batch be 0)."""
    torch.manual_seed(0)
    n = 12
    model = DeepClusterV2(Tiny(), dataset_size=n, projection_dims=[4], n_prototypes=[3, 2], kmeans_iters=3).train()
    x = _views(n=n)
    with torch.no_grad():
        model(*x, index=torch.arange(n))
        model.cluster(torch.Generator().manual_seed(0))
        model(*[v[:6] for v in x], index=torch.arange(6))  # a short epoch: half the items
    assert int(model.memory.fresh.sum()) == 6
    model.cluster(torch.Generator().manual_seed(1))
    assert bool((model.memory.assignments >= 0).all())
    for h in range(2):
        feats = model.memory.features[h]
        torch.testing.assert_close(model.memory.assignments[h], (feats @ model.kmeans.centroids[h].T).argmax(1))
    scores, targets = model(*[v[6:] for v in x], index=torch.arange(6, n))
    assert float(DeepClusterV2Loss()(scores, targets)) > 0
