"""Stateful SSL pieces (FeatureQueue, MemoryBank, KMeansState): their semantics against references written here,
a state round trip through ``torch.load(weights_only=True)``, and an ignite run with ResumableCheckpoint stopped
after epoch 2 and resumed with new objects that ends with the uninterrupted run's queue, pointer, bank and
centroids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader

from monai_ssl_ext.handlers import FeatureQueue, KMeansState, MemoryBank, ResumableCheckpoint, RNGState

# ---- FeatureQueue ---------------------------------------------------------------------------------


def test_feature_queue_is_a_ring_fifo():
    size, dim = 8, 4
    q = FeatureQueue(size, dim)
    assert set(dict(q.named_buffers())) == {"queue", "ptr", "count"} and not list(q.parameters())
    assert q.features().shape == (0, dim) and not q.full
    g = torch.Generator().manual_seed(0)
    rows: list[torch.Tensor] = []
    for b in (3, 3, 5, 2, 11, 1):
        x = torch.randn(b, dim, generator=g, requires_grad=True)
        q.enqueue(x * 2)
        rows.extend((x * 2).detach())
        total = len(rows)
        # reference: the r-th row ever written sits at r mod size; later rows overwrite earlier ones
        expected = torch.zeros(size, dim)
        for r, row in enumerate(rows):
            expected[r % size] = row
        assert torch.equal(q.queue, expected)
        assert int(q.ptr) == total % size and int(q.count) == min(total, size)
        assert torch.equal(q.features(), expected[: min(total, size)])
        assert not q.queue.requires_grad
    assert q.full and q.features().shape == (size, dim)
    # the last `size` rows are exactly the newest ones
    newest = torch.stack(rows[-size:])
    order = [(len(rows) - size + i) % size for i in range(size)]
    assert torch.equal(q.queue[order], newest)
    q.reset()
    assert int(q.count) == 0 and int(q.ptr) == 0 and not q.queue.any()
    with pytest.raises(ValueError, match=r"\(batch, 4\)"):
        q.enqueue(torch.zeros(2, 5))

    torch.manual_seed(0)
    moco = FeatureQueue(16, 4, init="random")
    assert moco.full and torch.allclose(moco.queue.norm(dim=1), torch.ones(16))
    with pytest.raises(ValueError, match="init"):
        FeatureQueue(4, 4, init="ones")


# ---- MemoryBank -----------------------------------------------------------------------------------


def test_memory_bank_update_by_index_and_assignments():
    bank = MemoryBank(size=6, dim=3, n_views=2, n_heads=2)
    assert bank.features.shape == (2, 6, 3) and bank.assignments.shape == (2, 6)
    assert (bank.assignments == -100).all() and not bank.seen.any() and not list(bank.parameters())
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    bank.update(torch.tensor([4, 1]), a, view=0)
    bank.update([4, 1], b, view=1)
    assert torch.equal(bank.features[0, 4], a[0]) and torch.equal(bank.features[0, 1], a[1])
    assert torch.equal(bank.features[1, [4, 1]], b)
    assert not bank.features[:, [0, 2, 3, 5]].any()
    assert bank.seen.tolist() == [False, True, False, False, True, False]

    bank.set_assignments(torch.tensor([0, 1, 2, 0, 1, 2]), head=1)
    assert bank.lookup([4, 1]).tolist() == [[-100, -100], [1, 1]]
    bank.set_assignments([torch.arange(6), torch.arange(6).flip(0)])
    assert bank.lookup(torch.tensor([0, 5])).tolist() == [[0, 5], [5, 0]]

    with pytest.raises(IndexError, match=r"\[0, 6\)"):
        bank.update([6], torch.zeros(1, 3))
    with pytest.raises(ValueError, match="2 indices for 3 feature rows"):
        bank.update([0, 1], torch.zeros(3, 3))
    with pytest.raises(IndexError, match="view 2"):
        bank.update([0], torch.zeros(1, 3), view=2)
    with pytest.raises(ValueError, match="expected shape"):
        bank.set_assignments(torch.zeros(5, dtype=torch.long), head=0)


# ---- KMeansState ----------------------------------------------------------------------------------


def _reference_kmeans(x: torch.Tensor, k: int, n_iters: int, generator: torch.Generator):
    """DeepCluster-v2's ``cluster_memory`` for one head, written out with loops: centroids = random distinct memory
    rows; n_iters x (assign by the largest dot product; each non-empty cluster's centroid = its mean, empty ones
    kept; normalise every centroid); a final assignment."""
    c = x[torch.randperm(x.shape[0], generator=generator)[:k]].clone()
    for it in range(n_iters + 1):
        assign = torch.tensor([max(range(k), key=lambda j: float(row @ c[j])) for row in x])
        if it == n_iters:
            return c, assign
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.sum(0) / len(members)
        c = c / c.norm(dim=1, keepdim=True).clamp_min(1e-12)


def test_kmeans_matches_reference_and_converges():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 8, generator=g), dim=1)
    x = F.normalize(centres.repeat_interleave(10, 0) + 0.05 * torch.randn(30, 8, generator=g), dim=1)
    km = KMeansState([3, 5], dim=8, n_iters=4)
    assert [c.shape for c in km.centroids] == [(3, 8), (5, 8)] and int(km.fits) == 0
    assignments = km.fit([x, x.flip(0)], generator=torch.Generator().manual_seed(1))
    assert int(km.fits) == 1 and [a.shape for a in assignments] == [(30,), (30,)]

    ref_gen = torch.Generator().manual_seed(1)
    for head, (feats, k) in enumerate(((x, 3), (x.flip(0), 5))):
        c, a = _reference_kmeans(feats, k, 4, ref_gen)
        torch.testing.assert_close(km.centroids[head], c, rtol=1e-5, atol=1e-6)
        assert torch.equal(assignments[head], a)
        assert torch.equal(km.assign(feats, head=head), a)
    assert torch.allclose(km.centroids[0].norm(dim=1), torch.ones(3))
    # run to convergence: a fixed point, every centroid is the normalised mean of the samples assigned to it
    converged = KMeansState(3, dim=8, n_iters=20)
    (a,) = converged.fit(x, generator=torch.Generator().manual_seed(1))
    for j in a.unique().tolist():
        torch.testing.assert_close(converged.centroids[0][j], F.normalize(x[a == j].mean(0), dim=0))
    assert torch.equal(a, (x @ converged.centroids[0].T).argmax(1))

    with pytest.raises(ValueError, match="only 2 samples"):
        km.fit(x[:2])
    with pytest.raises(ValueError, match="1 feature sets for 2 heads"):
        km.fit([x])


# ---- state round trip -----------------------------------------------------------------------------


def _filled():
    torch.manual_seed(3)
    q = FeatureQueue(5, 3)
    q.enqueue(torch.randn(7, 3))
    bank = MemoryBank(6, 3, n_views=2, n_heads=2)
    bank.update([0, 2, 5], torch.randn(3, 3), view=1)
    bank.set_assignments(torch.tensor([1, 0, 2, 1, 0, 2]), head=0)
    km = KMeansState([2, 3], dim=3, n_iters=2)
    km.fit(F.normalize(torch.randn(10, 3), dim=1))
    return q, bank, km


def _assert_same_buffers(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_state_round_trip_weights_only(tmp_path):
    q, bank, km = _filled()
    holder = torch.nn.Module()  # inside a network: saved with it, under its name
    holder.linear, holder.queue = torch.nn.Linear(3, 3), q
    assert {"queue.queue", "queue.ptr", "queue.count"} <= set(holder.state_dict())
    torch.save({"queue": q.state_dict(), "bank": bank.state_dict(), "kmeans": km.state_dict(),
                "network": holder.state_dict()}, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)

    q2, bank2, km2 = FeatureQueue(5, 3), MemoryBank(6, 3, n_views=2, n_heads=2), KMeansState([2, 3], dim=3, n_iters=2)
    q2.load_state_dict(loaded["queue"])
    bank2.load_state_dict(loaded["bank"])
    km2.load_state_dict(loaded["kmeans"])
    _assert_same_buffers(q, q2)
    _assert_same_buffers(bank, bank2)
    _assert_same_buffers(km, km2)
    assert int(q2.ptr) == 2 and int(q2.count) == 5 and int(km2.fits) == 1
    holder2 = torch.nn.Module()
    holder2.linear, holder2.queue = torch.nn.Linear(3, 3), FeatureQueue(5, 3)
    holder2.load_state_dict(loaded["network"])
    _assert_same_buffers(holder.queue, holder2.queue)
    # a queue of another size is refused
    with pytest.raises(RuntimeError, match="size mismatch"):
        FeatureQueue(4, 3).load_state_dict(loaded["queue"])


# ---- resume through ResumableCheckpoint -----------------------------------------------------------

EPOCHS, STOP = 4, 2


class _Net(torch.nn.Module):
    """A trained projection whose loss reads the queue (so the queue shapes training) and the queue itself."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.queue = FeatureQueue(7, 3)  # 9 rows per epoch: the pointer is 4 after epoch 2, 1 after epoch 4


def _data():
    g = torch.Generator().manual_seed(5)
    return [{"index": i, "x": torch.randn(4, generator=g)} for i in range(10)]


def _run(ckpt_dir, epochs: int):
    """``epochs`` epochs (from the checkpoint in ``ckpt_dir`` when there is one) of: SGD on a loss of the features,
    the queue and (DeepCluster-v2 style) the previous clustering's centroids and the bank's assignments; enqueue,
    store two views in the bank by dataset index; at each epoch end k-means on the bank (random initial centroids
    from torch's global generator) and new assignments. The last, shuffled, item of each pass is dropped, so the
    bank keeps rows from earlier epochs."""
    torch.manual_seed(0)
    net = _Net()
    opt = torch.optim.SGD(net.linear.parameters(), lr=0.1, momentum=0.9)
    bank = MemoryBank(size=10, dim=3, n_views=2, n_heads=2)
    kmeans = KMeansState([3, 2], dim=3, n_iters=3)
    loader = DataLoader(_data(), batch_size=3, shuffle=True, drop_last=True)  # 3 batches of 3, new order each pass

    def step(engine, batch):
        opt.zero_grad()
        f = F.normalize(net.linear(batch["x"]), dim=1)
        queued = net.queue.features().clone()
        loss = (f - 0.3).pow(2).mean() + ((f @ queued.T).mean() if len(queued) else 0.0)
        targets = bank.lookup(batch["index"])[0]
        if (targets >= 0).any():  # the previous epoch's clustering: scores against its centroids
            loss = loss + F.cross_entropy(f @ kmeans.centroids[0].T / 0.1, targets, ignore_index=bank.ignore_index)
        loss.backward()
        opt.step()
        net.queue.enqueue(f)
        bank.update(batch["index"], f, view=0)
        bank.update(batch["index"], -f, view=1)
        return float(loss.detach())

    engine = Engine(step)

    @engine.on(Events.EPOCH_COMPLETED)
    def _cluster(_):
        bank.set_assignments(kmeans.fit([bank.features[0], bank.features[1]]))

    save = {"network": net, "optimizer": opt, "memory_bank": bank, "kmeans": kmeans, "rng": RNGState()}
    ResumableCheckpoint(str(ckpt_dir), save, resume=True).attach(engine)
    engine.run(loader, max_epochs=epochs)
    return engine, net, bank, kmeans


def test_stopped_run_resumes_with_the_same_queue_bank_and_centroids(tmp_path):
    engine_a, net_a, bank_a, km_a = _run(tmp_path / "a", EPOCHS)  # uninterrupted
    assert engine_a.state.iteration == EPOCHS * 3

    engine_b, net_b, bank_b, km_b = _run(tmp_path / "b", STOP)  # stopped after epoch 2
    payload = torch.load(tmp_path / "b" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert payload["engine"]["epoch"] == STOP
    assert int(payload["network"]["queue.ptr"]) == (STOP * 9) % 7 == 4
    assert int(payload["kmeans"]["fits"]) == STOP and int(payload["memory_bank"]["seen"].sum()) >= 9
    assert not torch.equal(net_b.queue.queue, net_a.queue.queue)  # mid-run state differs from the end state

    # new objects, same command: resumed from epoch 2
    engine_c, net_c, bank_c, km_c = _run(tmp_path / "b", EPOCHS)
    assert engine_c.state.epoch == EPOCHS and engine_c.state.iteration == EPOCHS * 3
    assert int(km_c.fits) == EPOCHS  # 2 loaded + 2 run, not 4 fresh
    _assert_same_buffers(net_a.queue, net_c.queue)
    assert int(net_c.queue.ptr) == (EPOCHS * 9) % 7 == 1 and net_c.queue.full
    _assert_same_buffers(bank_a, bank_c)
    _assert_same_buffers(km_a, km_c)
    assert (bank_c.assignments >= 0).all()
    assert bool(bank_c.features[:, bank_c.seen].any())
    for (n, a), c in zip(net_a.state_dict().items(), net_c.state_dict().values()):
        assert torch.equal(a, c), n
