"""SwAV and DeepCluster-v2 across 2 gloo CPU processes equal one process on all the data: Sinkhorn codes (sums
all-reduced, no gradient), the SwAV loss (mean over ranks) and its DDP gradients, the SwAV queue (every rank holds
the gathered embeddings; the ranks score disjoint rows of it), spherical k-means (sums and counts all-reduced,
rank 0's initial centroids) and the DeepCluster-v2 memory bank (embeddings and indices gathered)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.handlers import KMeansState
from monai_ssl_ext.losses import SwAVLoss, sinkhorn
from monai_ssl_ext.networks import DeepClusterV2, SwAV

WORLD = 2
B = 6  # per-rank batch
N_VIEWS = 3
K = 5


class Tiny(nn.Sequential):
    """A stand-in trunk: Linear + ReLU with the ``feature_dim`` the wrappers read."""

    feature_dim = 7

    def __init__(self):
        super().__init__(nn.Linear(4, 7), nn.ReLU())


def _views():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(WORLD * B, 4, generator=g)
    return [x + 0.5 * torch.randn(WORLD * B, 4, generator=g) for _ in range(N_VIEWS)]


def _swav(queue_length=0):
    torch.manual_seed(1)
    # one projection layer: no BatchNorm (per-rank batch statistics would differ from one process's)
    return SwAV(Tiny(), projection_dims=[3], n_prototypes=K, queue_length=queue_length)


def _deepcluster():
    torch.manual_seed(2)
    return DeepClusterV2(Tiny(), dataset_size=WORLD * B * 2, projection_dims=[3], n_prototypes=[4, 3], kmeans_iters=3)


def _kmeans_data():
    g = torch.Generator().manual_seed(5)
    centres = F.normalize(torch.randn(4, 6, generator=g), dim=1)
    return F.normalize(centres.repeat_interleave(9, 0) + 0.2 * torch.randn(36, 6, generator=g), dim=1)


def _worker(rank, tmpdir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmpdir}/rendezvous", rank=rank, world_size=WORLD)
    rows = slice(rank * B, (rank + 1) * B)
    views = [v[rows] for v in _views()]
    res = {}
    scores = torch.randn(WORLD * B, K, generator=torch.Generator().manual_seed(3))[rows]
    res["codes"] = sinkhorn(scores, 0.05, 3)

    ddp = nn.parallel.DistributedDataParallel(_swav())
    s, queue_scores = ddp(*views)
    loss = SwAVLoss()(s, queue_scores)
    loss.backward()
    res["loss"] = loss.detach()
    res["grads"] = [p.grad.clone() for p in ddp.parameters()]

    model = _swav(queue_length=2 * WORLD * B)
    model.use_queue = True
    for step in range(3):  # two steps fill the queue, the third uses it
        s, queue_scores = model(*[v.roll(step, 0) for v in views])
    res["queue"] = [q.queue.clone() for q in model.queues]
    res["queue_loss"] = SwAVLoss()(s, queue_scores).detach()

    km = KMeansState([4, 3], dim=6, n_iters=5)
    res["assign"] = km.fit(_kmeans_data(), generator=torch.Generator().manual_seed(7))
    res["centroids"] = [c.clone() for c in km.centroids]

    dc = _deepcluster()
    dc(*views[:2], index=torch.arange(WORLD * B)[rows] * 2)
    res["bank"] = dc.memory.features.clone()
    res["seen"] = dc.memory.seen.clone()
    torch.save(res, os.path.join(tmpdir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmpdir = str(tmp_path_factory.mktemp("dist_clustering"))
    mp.spawn(_worker, args=(tmpdir,), nprocs=WORLD, join=True)
    return [torch.load(os.path.join(tmpdir, f"rank{r}.pt"), weights_only=True) for r in range(WORLD)]


def test_sinkhorn_2_ranks_equal_one_rank(results):
    scores = torch.randn(WORLD * B, K, generator=torch.Generator().manual_seed(3))
    whole = sinkhorn(scores, 0.05, 3)
    torch.testing.assert_close(torch.cat([r["codes"] for r in results]), whole, rtol=1e-5, atol=1e-7)
    # a rank alone codes its half differently (the equipartition is over the global batch)
    assert not torch.allclose(sinkhorn(scores[:B], 0.05, 3), whole[:B], atol=1e-3)


def test_swav_loss_and_gradients_2xB_equal_1x2B(results):
    model = _swav()
    s, queue_scores = model(*_views())
    loss = SwAVLoss()(s, queue_scores)
    loss.backward()
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), loss.detach(), rtol=1e-5, atol=1e-6)
    for i, p in enumerate(model.parameters()):
        for r in results:
            torch.testing.assert_close(r["grads"][i], p.grad, rtol=1e-4, atol=1e-6)


def test_swav_queue_holds_every_rank_and_codes_as_one_process(results):
    model = _swav(queue_length=2 * WORLD * B)
    model.use_queue = True
    views = _views()
    for step in range(3):
        rolled = [torch.cat([v[r * B:(r + 1) * B].roll(step, 0) for r in range(WORLD)]) for v in views]
        s, queue_scores = model(*rolled)
    assert queue_scores is not None and all(q.full for q in model.queues)
    for r in results:
        for a, b in zip(r["queue"], model.queues):
            torch.testing.assert_close(a, b.queue, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.stack([r["queue_loss"] for r in results]).mean(), SwAVLoss()(s, queue_scores),
                               rtol=1e-5, atol=1e-6)


def test_kmeans_2_ranks_equal_one_rank(results):
    km = KMeansState([4, 3], dim=6, n_iters=5, distributed=False)
    assign = km.fit(_kmeans_data(), generator=torch.Generator().manual_seed(7))
    for r in results:
        for a, b in zip(r["assign"], assign):
            assert torch.equal(a, b)
        for a, b in zip(r["centroids"], km.centroids):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # well-separated clusters are recovered: the 4 groups of 9 rows are the 4 clusters of head 0
    groups = assign[0].view(4, 9)
    assert all(len(g.unique()) == 1 for g in groups) and len(groups[:, 0].unique()) == 4


def test_deepcluster_memory_bank_gathers_every_rank(results):
    dc = _deepcluster()
    views = _views()
    dc(*views[:2], index=torch.arange(WORLD * B) * 2)
    for r in results:
        assert torch.equal(r["seen"], dc.memory.seen)
        torch.testing.assert_close(r["bank"], dc.memory.features, rtol=1e-5, atol=1e-6)
    assert int(dc.memory.seen.sum()) == WORLD * B and not bool(dc.memory.seen[1::2].any())
