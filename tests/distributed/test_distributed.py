"""Distributed helpers and the gathered NT-Xent loss, with one spawn of 2 gloo CPU processes for all checks."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from monai_ssl_ext.distributed import (
    all_reduce_mean,
    gather_no_grad,
    gather_with_grad,
    get_rank,
    get_world_size,
    is_distributed,
)
from monai_ssl_ext.losses import NTXentLoss, ReconContrastiveLoss

WORLD = 2
B = 4  # per-rank batch
TAUS = (0.1, 0.005)


def _data():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(WORLD * B, 5, generator=g)
    x1 = x0 + 0.8 * torch.randn(WORLD * B, 5, generator=g)
    return x0, x1


def _model():
    torch.manual_seed(1)
    return torch.nn.Linear(5, 3)


def _recon_data():
    g = torch.Generator().manual_seed(3)
    return None, torch.randn(WORLD * B, 3, generator=g)


def _gather_inputs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(WORLD * 3, 2, generator=g, dtype=torch.float64)
    w = torch.randn(WORLD, WORLD * 3, 2, generator=g, dtype=torch.float64)  # one weight tensor per rank
    return x, w


def _worker(rank, tmpdir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmpdir}/rendezvous", rank=rank, world_size=WORLD)
    res = {"info": (is_distributed(), get_world_size(), get_rank())}

    # gather_no_grad: concatenation in rank order, no graph
    x = (torch.arange(6.0).reshape(3, 2) + 100 * rank).requires_grad_()
    y = gather_no_grad(x)
    res["no_grad"], res["no_grad_requires_grad"] = y, y.requires_grad

    # gather_with_grad: rank r's loss_r = sum(w_r * y^2); x_r's gradient must be d(sum_r loss_r)/dx_r
    xs, ws = _gather_inputs()
    x = xs[rank * 3 : (rank + 1) * 3].clone().requires_grad_()
    y = gather_with_grad(x)
    (ws[rank] * y**2).sum().backward()
    res["with_grad_value"], res["with_grad_grad"] = y.detach(), x.grad

    # unequal per-rank batch sizes: a clear error on every rank
    for name, fn in (("with_grad", gather_with_grad), ("no_grad", gather_no_grad)):
        try:
            fn(torch.zeros(2 + rank, 3))
            res[f"unequal_{name}"] = None
        except ValueError as e:
            res[f"unequal_{name}"] = str(e)

    res["mean"] = all_reduce_mean(torch.tensor([rank + 1.0, 10.0 * (rank + 1)]))

    # NT-Xent on this rank's rows, gathered negatives; plain and DDP-wrapped model
    x0, x1 = _data()
    rows = slice(rank * B, (rank + 1) * B)
    for tau in TAUS:
        model = _model()
        loss = NTXentLoss(temperature=tau)(model(x0[rows]), model(x1[rows]))
        loss.backward()
        res[f"loss_{tau}"] = loss.detach()
        res[f"grads_{tau}"] = [p.grad.clone() for p in model.parameters()]

        ddp = torch.nn.parallel.DistributedDataParallel(_model())
        NTXentLoss(temperature=tau)(ddp(x0[rows]), ddp(x1[rows])).backward()
        res[f"ddp_grads_{tau}"] = [p.grad.clone() for p in ddp.parameters()]

        with torch.no_grad():
            res[f"local_loss_{tau}"] = NTXentLoss(tau, gather_distributed=False)(model(x0[rows]), model(x1[rows]))

    # ViTAutoEnc's L1 * (1 + NT-Xent) on this rank's rows: DDP must give the global batch's loss and gradient
    recon, target = _recon_data()
    ddp = torch.nn.parallel.DistributedDataParallel(_model())
    loss = ReconContrastiveLoss(temperature=0.5)(ddp(x0[rows]), ddp(x1[rows]), target[rows])
    loss.backward()
    res["recon_loss"], res["recon_grads"] = loss.detach(), [p.grad.clone() for p in ddp.parameters()]

    torch.save(res, os.path.join(tmpdir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmpdir = str(tmp_path_factory.mktemp("dist"))
    mp.spawn(_worker, args=(tmpdir,), nprocs=WORLD, join=True)
    return [torch.load(os.path.join(tmpdir, f"rank{r}.pt")) for r in range(WORLD)]


def test_rank_info(results):
    assert [r["info"] for r in results] == [(True, WORLD, rank) for rank in range(WORLD)]
    assert (is_distributed(), get_world_size(), get_rank()) == (False, 1, 0)


def test_gather_no_grad_order(results):
    expected = torch.cat([torch.arange(6.0).reshape(3, 2) + 100 * r for r in range(WORLD)])
    for r in results:
        torch.testing.assert_close(r["no_grad"], expected, rtol=0, atol=0)
        assert not r["no_grad_requires_grad"]


def test_gather_with_grad_value_and_gradient(results):
    xs, ws = _gather_inputs()
    grad_of_total = 2 * ws.sum(0) * xs  # d/dx sum_r sum(w_r * x^2)
    for rank, r in enumerate(results):
        torch.testing.assert_close(r["with_grad_value"], xs, rtol=0, atol=0)
        torch.testing.assert_close(r["with_grad_grad"], grad_of_total[rank * 3 : (rank + 1) * 3], rtol=1e-12, atol=0)


def test_unequal_batch_sizes_raise(results):
    for r in results:
        for name in ("with_grad", "no_grad"):
            assert r[f"unequal_{name}"] is not None and "same tensor shape" in r[f"unequal_{name}"]
            assert "[(2, 3), (3, 3)]" in r[f"unequal_{name}"]


def test_all_reduce_mean(results):
    for r in results:
        torch.testing.assert_close(r["mean"], torch.tensor([1.5, 15.0]))


@pytest.mark.parametrize("tau", TAUS)
def test_gathered_ntxent_equals_single_process(results, tau):
    x0, x1 = _data()
    model = _model()
    loss = NTXentLoss(temperature=tau)(model(x0), model(x1))  # one process, whole 2B batch
    loss.backward()
    grads = [p.grad for p in model.parameters()]

    mean_loss = torch.stack([r[f"loss_{tau}"] for r in results]).mean()
    torch.testing.assert_close(mean_loss, loss.detach(), rtol=1e-6, atol=1e-6)
    for i, g in enumerate(grads):
        mean_grad = torch.stack([r[f"grads_{tau}"][i] for r in results]).mean(0)  # what DDP's all-reduce does
        torch.testing.assert_close(mean_grad, g, rtol=1e-5, atol=1e-6)
        for r in results:  # the real DDP wrapper gives the same gradient on every rank
            torch.testing.assert_close(r[f"ddp_grads_{tau}"][i], g, rtol=1e-5, atol=1e-6)

    # without gathering, each rank only sees its own negatives
    for rank, r in enumerate(results):
        rows = slice(rank * B, (rank + 1) * B)
        with torch.no_grad():
            local = NTXentLoss(temperature=tau)(model(x0[rows]), model(x1[rows]))
        torch.testing.assert_close(r[f"local_loss_{tau}"], local, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(local, r[f"loss_{tau}"])


def test_recon_contrastive_2xB_equals_1x2B(results):
    """2 ranks x B = 1 process x 2B for the ViTAutoEnc loss (a product of two means)."""
    x0, x1 = _data()
    _, target = _recon_data()
    model = _model()
    loss = ReconContrastiveLoss(temperature=0.5)(model(x0), model(x1), target)
    loss.backward()
    for r in results:
        torch.testing.assert_close(r["recon_loss"], loss.detach(), rtol=1e-6, atol=1e-6)
        for got, want in zip(r["recon_grads"], (p.grad for p in model.parameters())):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the product of per-rank means is a different number
    with torch.no_grad():
        per_rank = [ReconContrastiveLoss(0.5)(model(x0[i * B:(i + 1) * B]), model(x1[i * B:(i + 1) * B]),
                                              target[i * B:(i + 1) * B]) for i in range(WORLD)]
    assert not torch.allclose(torch.stack(per_rank).mean(), loss.detach(), rtol=1e-3)


def test_single_process_fallbacks():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    y = gather_no_grad(x)
    assert not y.requires_grad and torch.equal(y, x.detach())
    m = all_reduce_mean(x.sum())
    assert not m.requires_grad and m.item() == pytest.approx(x.sum().item())
    assert all_reduce_mean(torch.tensor(3)).item() == 3.0
