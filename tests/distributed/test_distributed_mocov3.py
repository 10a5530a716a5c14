"""MoCoV3Loss across 2 gloo CPU processes: on 2 x B the mean over ranks of the loss and the DDP-averaged gradients
equal one process on the 2B batch (keys gathered without gradient; each rank scores its local queries against
all keys, positives offset by B * rank), and a rank-local loss is another number."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from monai_ssl_ext.losses import MoCoV3Loss

WORLD = 2
B = 4  # per-rank batch
TAUS = (0.2, 1.0)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(WORLD * B, 5, generator=g)
    return x + 0.7 * torch.randn(WORLD * B, 5, generator=g), x + 0.7 * torch.randn(WORLD * B, 5, generator=g)


def _query_model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))


def _key_model():
    """A stand-in for the momentum encoder: other weights, no gradients."""
    torch.manual_seed(2)
    model = torch.nn.Linear(5, 3)
    model.requires_grad_(False)
    return model


def _forward(model, keys, x1, x2):
    q1, q2 = model(x1), model(x2)
    with torch.no_grad():
        k1, k2 = keys(x1), keys(x2)
    return q1, q2, k1, k2


def _worker(rank, tmpdir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmpdir}/rendezvous", rank=rank, world_size=WORLD)
    x1, x2 = _data()
    rows = slice(rank * B, (rank + 1) * B)
    res = {}
    for tau in TAUS:
        # keys that require gradients still get none: the loss detaches and gathers them without a graph
        keys = _key_model().requires_grad_(True)
        ddp = torch.nn.parallel.DistributedDataParallel(_query_model())
        q1, q2 = ddp(x1[rows]), ddp(x2[rows])
        k1, k2 = keys(x1[rows]), keys(x2[rows])
        loss = MoCoV3Loss(temperature=tau)(q1, q2, k1, k2)
        loss.backward()
        res[f"loss_{tau}"] = loss.detach()
        res[f"grads_{tau}"] = [p.grad.clone() for p in ddp.parameters()]
        res[f"key_grads_{tau}"] = [p.grad for p in keys.parameters()]
        with torch.no_grad():
            local = MoCoV3Loss(tau, gather_distributed=False)(*_forward(ddp.module, _key_model(), x1[rows], x2[rows]))
        res[f"local_loss_{tau}"] = local
    torch.save(res, os.path.join(tmpdir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmpdir = str(tmp_path_factory.mktemp("dist_mocov3"))
    mp.spawn(_worker, args=(tmpdir,), nprocs=WORLD, join=True)
    return [torch.load(os.path.join(tmpdir, f"rank{r}.pt"), weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("tau", TAUS)
def test_2xB_equals_1x2B(results, tau):
    x1, x2 = _data()
    model = _query_model()
    loss = MoCoV3Loss(temperature=tau)(*_forward(model, _key_model(), x1, x2))  # one process, whole 2B batch
    loss.backward()
    mean_loss = torch.stack([r[f"loss_{tau}"] for r in results]).mean()
    torch.testing.assert_close(mean_loss, loss.detach(), rtol=1e-6, atol=1e-6)
    for i, p in enumerate(model.parameters()):
        for r in results:  # DDP averages the ranks' gradients: every rank holds the 1 x 2B gradient
            torch.testing.assert_close(r[f"grads_{tau}"][i], p.grad, rtol=1e-5, atol=1e-7)
    for r in results:
        assert all(g is None for g in r[f"key_grads_{tau}"])


@pytest.mark.parametrize("tau", TAUS)
def test_local_loss_differs_from_gathered(results, tau):
    """Without gathering, each rank only sees its own B keys: the rank loss equals the loss on that slice alone,
    which is not the gathered loss (fewer negatives)."""
    x1, x2 = _data()
    model = _query_model()
    for rank, r in enumerate(results):
        rows = slice(rank * B, (rank + 1) * B)
        with torch.no_grad():
            alone = MoCoV3Loss(temperature=tau)(*_forward(model, _key_model(), x1[rows], x2[rows]))
        torch.testing.assert_close(r[f"local_loss_{tau}"], alone, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(alone, r[f"loss_{tau}"], rtol=1e-4)
