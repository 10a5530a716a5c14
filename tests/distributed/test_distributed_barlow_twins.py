"""Barlow Twins across 2 gloo CPU processes (one spawn for all checks): all_reduce_sum_with_grad, and the loss with
global-batch statistics — its value and DDP-averaged gradients at 2 ranks x B equal one process at 2B, while
per-rank standardisation (lightly's gather_distributed) gives another number, and the reference code's
non-differentiable all_reduce of C gives 1/W of the gradient (facebookresearch/barlowtwins#8, lightly#1977).

Why each rank returns the full loss L: every all-reduce in the loss passes its gradient back as an all-reduce, so the
local gradient on rank r is d(sum_s L_s)/d(local rows) = W dL/d(local rows); summed over ranks that is W dL/dtheta,
and DDP's average divides by W: dL/dtheta, the single-process gradient. ``test_raw_local_gradients_sum_to_W_times``
checks the first step of that argument, ``test_ddp_gradients_equal_single_process`` the result."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from monai_ssl_ext.distributed import all_reduce_sum_with_grad
from monai_ssl_ext.losses import BarlowTwinsCrossCorrelationLoss

WORLD = 2
B = 4  # per-rank batch
LAMBD = 0.0051


def _data():
    g = torch.Generator().manual_seed(0)
    x_a = torch.randn(WORLD * B, 5, generator=g, dtype=torch.float64) * 2 + 1
    x_b = 0.5 * x_a + 1.5 * torch.randn(WORLD * B, 5, generator=g, dtype=torch.float64)
    return x_a, x_b


def _model():
    torch.manual_seed(1)
    return torch.nn.Linear(5, 6).double()


def _reduce_inputs():
    g = torch.Generator().manual_seed(2)
    xs = torch.randn(WORLD, 3, 2, generator=g, dtype=torch.float64)  # one tensor per rank
    ws = torch.randn(WORLD, 3, 2, generator=g, dtype=torch.float64)
    return xs, ws


def _lightly_per_rank(z_a, z_b):
    """lightly's BarlowTwinsLoss(gather_distributed=True): each rank standardises with its own batch statistics and
    the matrices are averaged over ranks (value only)."""
    a, b = F.batch_norm(z_a, None, None, training=True), F.batch_norm(z_b, None, None, training=True)
    c = a.T @ b / z_a.shape[0] / WORLD
    dist.all_reduce(c)
    diag = torch.diagonal(c)
    return (1 - diag).pow(2).sum() + LAMBD * (c.pow(2).sum() - diag.pow(2).sum())


def _source_form(z_a, z_b):
    """facebookresearch/barlowtwins main.py: global statistics (its SyncBatchNorm; here reduced with gradients), then
    C divided by the global batch and summed over ranks with the in-place, non-differentiable dist.all_reduce."""
    n = z_a.shape[0] * WORLD
    z = torch.stack([z_a, z_b])
    centred = z - all_reduce_sum_with_grad(z.sum(1)).unsqueeze(1) / n
    zhat = centred / torch.sqrt(all_reduce_sum_with_grad(centred.pow(2).sum(1)).unsqueeze(1) / n + 1e-5)
    c = zhat[0].T @ zhat[1]
    c.div_(n)
    dist.all_reduce(c)
    diag = torch.diagonal(c)
    return (1 - diag).pow(2).sum() + LAMBD * (c.pow(2).sum() - diag.pow(2).sum())


def _worker(rank, tmpdir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmpdir}/rendezvous", rank=rank, world_size=WORLD)
    res = {}

    # all_reduce_sum_with_grad: rank r's loss_r = sum(w_r * y^2), y = sum_s x_s; x_r's gradient is sum_r 2 w_r y
    xs, ws = _reduce_inputs()
    x = xs[rank].clone().requires_grad_()
    before = x.detach().clone()
    y = all_reduce_sum_with_grad(x)
    (ws[rank] * y**2).sum().backward()
    res["reduce_value"], res["reduce_grad"] = y.detach(), x.grad
    res["reduce_input_intact"] = torch.equal(x.detach(), before)
    try:
        all_reduce_sum_with_grad(torch.zeros(2 + rank, 3))
        res["reduce_unequal"] = None
    except ValueError as e:
        res["reduce_unequal"] = str(e)

    x_a, x_b = _data()
    rows = slice(rank * B, (rank + 1) * B)
    loss_fn = BarlowTwinsCrossCorrelationLoss(lambd=LAMBD)

    # plain model: the loss value and the raw local gradients (before any averaging)
    model = _model()
    loss = loss_fn(model(x_a[rows]), model(x_b[rows]))
    loss.backward()
    res["loss"], res["raw_grads"] = loss.detach(), [p.grad.clone() for p in model.parameters()]

    # DDP-wrapped model: what training sees
    ddp = torch.nn.parallel.DistributedDataParallel(_model())
    ddp_loss = loss_fn(ddp(x_a[rows]), ddp(x_b[rows]))
    ddp_loss.backward()
    res["ddp_loss"], res["ddp_grads"] = ddp_loss.detach(), [p.grad.clone() for p in ddp.parameters()]

    # the reference code's form under DDP: same value, 1/W of the gradient
    ddp = torch.nn.parallel.DistributedDataParallel(_model())
    src_loss = _source_form(ddp(x_a[rows]), ddp(x_b[rows]))
    src_loss.backward()
    res["source_loss"], res["source_grads"] = src_loss.detach(), [p.grad.clone() for p in ddp.parameters()]

    with torch.no_grad():
        res["lightly_per_rank"] = _lightly_per_rank(model(x_a[rows]), model(x_b[rows]))
        res["local_loss"] = BarlowTwinsCrossCorrelationLoss(LAMBD, gather_distributed=False)(model(x_a[rows]),
                                                                                            model(x_b[rows]))
    torch.save(res, os.path.join(tmpdir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmpdir = str(tmp_path_factory.mktemp("dist_bt"))
    mp.spawn(_worker, args=(tmpdir,), nprocs=WORLD, join=True)
    return [torch.load(os.path.join(tmpdir, f"rank{r}.pt"), weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single():
    """One process, the whole 2B batch: the loss and its parameter gradients."""
    x_a, x_b = _data()
    model = _model()
    loss = BarlowTwinsCrossCorrelationLoss(lambd=LAMBD)(model(x_a), model(x_b))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()], model


def test_all_reduce_sum_with_grad(results):
    xs, ws = _reduce_inputs()
    total = xs.sum(0)
    grad = 2 * ws.sum(0) * total  # d/dx_r sum_s sum(w_s * (sum_t x_t)^2)
    for r in results:
        torch.testing.assert_close(r["reduce_value"], total, rtol=0, atol=1e-15)
        torch.testing.assert_close(r["reduce_grad"], grad, rtol=1e-12, atol=0)
        assert r["reduce_input_intact"]
        assert r["reduce_unequal"] is not None and "[(2, 3), (3, 3)]" in r["reduce_unequal"]


def test_single_process_fallback():
    x = torch.randn(3, requires_grad=True)
    assert all_reduce_sum_with_grad(x) is x


def test_loss_value_on_every_rank_equals_single_process(results, single):
    loss, _, _ = single
    assert loss.item() > 0.5  # far from the optimum
    for r in results:
        torch.testing.assert_close(r["loss"], loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r["ddp_loss"], loss, rtol=1e-12, atol=1e-12)


def test_raw_local_gradients_sum_to_W_times(results, single):
    """Step one of the argument: the raw per-rank gradients sum to W dL/dtheta, so their mean (DDP) is dL/dtheta."""
    _, grads, _ = single
    for i, g in enumerate(grads):
        total = sum(r["raw_grads"][i] for r in results)
        torch.testing.assert_close(total, WORLD * g, rtol=1e-10, atol=1e-12)
        # each rank alone is not the gradient (its rows only): the test is not trivially satisfied
        assert not torch.allclose(results[0]["raw_grads"][i], g, rtol=1e-3)


def test_ddp_gradients_equal_single_process(results, single):
    _, grads, _ = single
    for r in results:
        for got, want in zip(r["ddp_grads"], grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_reference_code_all_reduce_gives_one_over_W_of_the_gradient(results, single):
    """The property the upstream issue names: the in-place all_reduce of C keeps the value but DDP then averages
    gradients that lack the other ranks' share: exactly dL/dtheta / W."""
    loss, grads, _ = single
    for r in results:
        torch.testing.assert_close(r["source_loss"], loss, rtol=1e-12, atol=1e-12)
        for got, want in zip(r["source_grads"], grads):
            torch.testing.assert_close(got, want / WORLD, rtol=1e-10, atol=1e-12)


def test_per_rank_standardisation_differs(results, single):
    """lightly's per-rank statistics (mean of the ranks' C) are not the global-batch loss; without gathering, each
    rank's loss is the single-process loss of its own rows."""
    loss, _, model = single
    x_a, x_b = _data()
    per_rank = results[0]["lightly_per_rank"]
    for r in results:
        torch.testing.assert_close(r["lightly_per_rank"], per_rank, rtol=1e-12, atol=1e-12)  # same on every rank
    assert abs(per_rank.item() - loss.item()) > 1e-2 * loss.item()
    with torch.no_grad():
        for rank, r in enumerate(results):
            rows = slice(rank * B, (rank + 1) * B)
            local = BarlowTwinsCrossCorrelationLoss(LAMBD)(model(x_a[rows]), model(x_b[rows]))
            torch.testing.assert_close(r["local_loss"], local, rtol=1e-12, atol=1e-12)
