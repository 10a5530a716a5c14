"""The online kNN monitor: InstDisc's weighted leave-one-out vote against plain-loop numpy written
here from the definition (Wu et al. 2018; solo-learn's WeightedKNNClassifier), its behaviour in a
run (eval mode restored, training RNG untouched, opt-in, MLflow metric, DDP rank 0 only) and its
errors."""

from __future__ import annotations

import json
import math
import os
import random
import shutil

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.transforms import EnsureTyped
from torch import nn

from monai_ssl_ext.handlers import KNNMonitor
from monai_ssl_ext.handlers.knn_monitor import knn_scores, read_knn_datalist

TO_TENSOR = EnsureTyped(keys="image")


# ----------------------------------------------------------------------------- the reference


def ref_knn_scores(features, labels, num_classes, k, temperature, groups=None):
    """Plain loops: for each item i, the k others j (not i, not i's group) with the largest cosine
    similarity s_ij each add exp(s_ij / T) to the score of their class."""
    f = np.asarray(features, np.float64)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    n = len(f)
    scores = np.zeros((n, num_classes))
    for i in range(n):
        candidates = []
        for j in range(n):
            if j == i or (groups is not None and groups[j] == groups[i]):
                continue
            candidates.append((float(np.dot(f[i], f[j])), j))
        candidates.sort(key=lambda c: -c[0])
        for s, j in candidates[:k]:
            scores[i, labels[j]] += math.exp(s / temperature)
    return scores


def ref_accuracy(scores, labels):
    return float(np.mean(np.argmax(scores, axis=1) == np.asarray(labels)))


def ref_top5(scores, labels):
    hits = 0
    for row, y in zip(scores, labels):
        best = sorted(range(len(row)), key=lambda c: -row[c])[:5]
        hits += int(y in best and row[y] > 0)
    return hits / len(labels)


def items_of(features, labels, **extra):
    return [{"image": np.asarray(f, np.float32), "label": y, **{k: v[i] for k, v in extra.items()}}
            for i, (f, y) in enumerate(zip(features, labels))]


def blobs(n_per_class, num_classes, dim=16, spread=0.1, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.eye(dim)[:num_classes] * 3.0
    feats = np.concatenate([centers[c] + spread * rng.normal(size=(n_per_class, dim)) for c in range(num_classes)])
    labels = np.repeat(np.arange(num_classes), n_per_class)
    return feats.astype(np.float32), labels


def angles(a):
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------- the score


def test_scores_match_reference_with_groups_and_chunks():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(60, 8)).astype(np.float32)
    labels = rng.integers(0, 7, 60)
    groups = rng.integers(0, 10, 60)
    for g in (None, groups):
        ref = ref_knn_scores(feats, labels, 7, 9, 0.1, g)
        got = knn_scores(torch.from_numpy(feats), torch.from_numpy(labels), 7, k=9, temperature=0.1,
                         groups=None if g is None else torch.from_numpy(g), chunk_size=16)
        np.testing.assert_allclose(got.numpy(), ref / ref.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
        assert ref_accuracy(got.numpy(), labels) == ref_accuracy(ref, labels)


def test_weighted_vote_differs_from_majority():
    """Item 0 has one very close neighbour of its own class and three farther ones of class 1: the
    majority of its k=4 neighbours says 1, the exp(s / 0.07) weights say 0."""
    feats = angles(np.array([0.0, 0.05, 0.6, 0.65, 0.7]))
    labels = np.array([0, 0, 1, 1, 1])
    ref = ref_knn_scores(feats, labels, 2, 4, 0.07)
    majority = np.bincount(labels[[1, 2, 3, 4]], minlength=2)
    assert majority.argmax() == 1 and ref[0].argmax() == 0  # the case tells the two votes apart
    got = knn_scores(torch.from_numpy(feats), torch.from_numpy(labels), 2, k=4, temperature=0.07).numpy()
    np.testing.assert_allclose(got, ref / ref.sum(1, keepdims=True), rtol=1e-4)
    assert got[0].argmax() == 0
    # a large temperature flattens the weights to a majority vote
    flat = knn_scores(torch.from_numpy(feats), torch.from_numpy(labels), 2, k=4, temperature=100.0).numpy()
    assert flat[0].argmax() == 1
    monitor = KNNMonitor(nn.Flatten(), items_of(feats, labels), TO_TENSOR, k=4, temperature=0.07)
    assert monitor.evaluate()["knn_acc"] == pytest.approx(ref_accuracy(ref, labels))


def test_leave_one_out_item_never_votes_for_itself():
    """Items 0 and 1 are identical with different labels (k=1): each one's neighbour is the other."""
    feats = np.concatenate([angles(np.array([0.0, 0.0])), angles(np.array([2.0, 2.05, 4.0, 4.05]))])
    labels = np.array([0, 1, 1, 1, 0, 0])
    got = knn_scores(torch.from_numpy(feats), torch.from_numpy(labels), 2, k=1, temperature=0.07).numpy()
    assert got[0].argmax() == 1 and got[1].argmax() == 0
    monitor = KNNMonitor(nn.Flatten(), items_of(feats, labels), TO_TENSOR, k=1)
    assert monitor.evaluate()["knn_acc"] == pytest.approx(4 / 6)


def test_exclude_key_leaves_the_group_out():
    """Two patients per class; a patient's own slices are its nearest items. Leave-one-out alone
    finds them (accuracy 1); leaving the patient out finds the other patient of the class, which
    here lies nearer the other class."""
    a = np.array([0.0, 0.02, 1.0, 1.02, 2.0, 2.02, 3.0, 3.02])
    labels = [0, 0, 1, 1, 1, 1, 0, 0]  # patients p0 (class 0), p1 (1), p2 (1), p3 (0): p1 sits by p3
    patients = ["p0", "p0", "p1", "p1", "p2", "p2", "p3", "p3"]
    feats = angles(a)
    plain = KNNMonitor(nn.Flatten(), items_of(feats, labels, patient=patients), TO_TENSOR, k=1)
    assert plain.evaluate()["knn_acc"] == 1.0
    grouped = KNNMonitor(nn.Flatten(), items_of(feats, labels, patient=patients), TO_TENSOR, k=1, exclude_key="patient")
    ref = ref_knn_scores(feats, labels, 2, 1, 0.07, groups=patients)
    assert grouped.evaluate()["knn_acc"] == pytest.approx(ref_accuracy(ref, labels)) and ref_accuracy(ref, labels) < 1


def test_separable_blobs_give_accuracy_one():
    feats, labels = blobs(20, 3)
    monitor = KNNMonitor(nn.Flatten(), items_of(feats, labels), TO_TENSOR, batch_size=7)
    assert monitor.evaluate() == {"knn_acc": 1.0}


def test_shuffled_labels_give_chance():
    """Labels drawn independently of the features: leave-one-out accuracy near 1 / C. With N = 300
    and C = 3 the binomial standard deviation is 0.027; the bound is 4.4 of them."""
    feats, labels = blobs(100, 3, spread=0.5, seed=2)
    shuffled = np.random.default_rng(3).permutation(labels)
    monitor = KNNMonitor(nn.Flatten(), items_of(feats, shuffled), TO_TENSOR, batch_size=64)
    acc = monitor.evaluate()["knn_acc"]
    assert abs(acc - 1 / 3) < 0.12, acc
    assert KNNMonitor(nn.Flatten(), items_of(feats, labels), TO_TENSOR).evaluate()["knn_acc"] > 0.95


def test_top5_with_more_than_five_classes():
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(40, 6)).astype(np.float32)
    labels = rng.integers(0, 8, 40)
    monitor = KNNMonitor(nn.Flatten(), items_of(feats, labels), TO_TENSOR, k=5, temperature=0.2)
    result = monitor.evaluate()
    # classes are the sorted labels present: remap for the reference
    present = sorted(set(labels.tolist()))
    idx = np.array([present.index(y) for y in labels])
    ref = ref_knn_scores(feats, idx, len(present), 5, 0.2)
    assert result["knn_acc"] == pytest.approx(ref_accuracy(ref, idx))
    assert result["knn_top5"] == pytest.approx(ref_top5(ref, idx))
    assert "knn_top5" not in KNNMonitor(nn.Flatten(), items_of(*blobs(5, 3)), TO_TENSOR, k=5).evaluate()


# ----------------------------------------------------------------------------- in a run


class Probe(nn.Module):
    """Linear + batch norm + a dropout kept in eval mode; records the mode of every forward."""

    def __init__(self, dim=16):
        super().__init__()
        self.linear, self.bn, self.drop = nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.Dropout(0.5)
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return self.drop(self.bn(self.linear(x)))


def test_eval_mode_then_modes_and_statistics_restored():
    net = Probe()
    net.train()
    net.drop.eval()  # a submodule deliberately in eval mode stays so
    net(torch.randn(8, 16))  # non-trivial running statistics
    net.seen.clear()
    buffers = {k: v.clone() for k, v in net.state_dict().items()}
    modes = {name: m.training for name, m in net.named_modules()}
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    monitor = KNNMonitor(net, items_of(*blobs(6, 2)), TO_TENSOR, batch_size=4, k=5)
    first, second = monitor.evaluate(), monitor.evaluate()
    assert first == second
    assert net.seen and not any(net.seen)  # every forward in eval mode
    assert {name: m.training for name, m in net.named_modules()} == modes
    for k, v in net.state_dict().items():
        assert torch.equal(v, buffers[k]), k  # batch-norm statistics untouched
    # the training's random streams did not move
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


def _engine():
    return Engine(lambda engine, batch: {"loss": 0.0})


def _handler_count(engine):
    return sum(len(v) for v in engine._event_handlers.values())


def test_opt_out_attaches_nothing(tmp_path):
    missing = str(tmp_path / "nothing_here.csv")
    for datalist, interval in ((None, 5), (missing, 0), (missing, None)):
        monitor = KNNMonitor(nn.Flatten(), datalist, transform=None, interval=interval)
        assert not monitor.enabled
        engine = _engine()
        before = _handler_count(engine)
        monitor.attach(engine)
        assert _handler_count(engine) == before
        engine.run([0, 1], max_epochs=2)
        assert "knn_acc" not in engine.state.metrics


def test_every_interval_and_at_the_end():
    feats, labels = blobs(6, 2)
    monitor = KNNMonitor(nn.Flatten(), items_of(feats, labels), TO_TENSOR, interval=2, k=5)
    engine, seen = _engine(), []
    monitor.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append((e.state.epoch, dict(e.state.metrics))))
    engine.run([0, 1], max_epochs=5)
    assert seen == [(1, {}), (2, {"knn_acc": 1.0}), (3, {}), (4, {"knn_acc": 1.0}), (5, {"knn_acc": 1.0})]


def test_log_line(caplog):
    feats, labels = blobs(6, 2)
    monitor = KNNMonitor(nn.Flatten(), items_of(feats, labels), TO_TENSOR, interval=1, k=3)
    engine = _engine()
    monitor.attach(engine)
    with caplog.at_level("INFO", logger="monai_ssl_ext.KNNMonitor"):
        engine.run([0], max_epochs=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "monai_ssl_ext.KNNMonitor"]
    assert len(lines) == 1 and lines[0].startswith("kNN (k=3) accuracy: 1.000 on 12 items"), lines


def test_knn_acc_reaches_mlflow(tmp_path):
    """A real sqlite MLflow store and MONAI's MLFlowHandler attached after the monitor (as
    ``--tracking mlflow`` appends it to train#handlers): one knn_acc point per evaluation, the epoch
    as step; an evaluation at COMPLETED (terminated run) is logged too."""
    from mlflow.tracking import MlflowClient
    from monai.handlers import MLFlowHandler
    from monai.utils import path_to_sqlite_uri

    uri = path_to_sqlite_uri(str(tmp_path / "mlruns.db"))
    feats, labels = blobs(6, 2)
    client = MlflowClient(tracking_uri=uri)
    for name, interval, epochs, stop_at in (("interval", 2, 3, None), ("terminated", 5, 3, 3)):
        engine = _engine()
        KNNMonitor(nn.Flatten(), items_of(feats, labels), TO_TENSOR, interval=interval, k=5).attach(engine)
        MLFlowHandler(tracking_uri=uri, experiment_name=name, iteration_log=False, close_on_complete=True,
                      artifacts=None).attach(engine)
        if stop_at:
            engine.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
        engine.run([0, 1], max_epochs=epochs)
        (run,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        history = client.get_metric_history(run.info.run_id, "knn_acc")
        expected = [2, 3] if stop_at is None else [2]
        assert sorted(m.step for m in history) == expected, (name, [(m.step, m.value) for m in history])
        assert all(m.value == 1.0 for m in history)


# ----------------------------------------------------------------------------- the list


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_csv_with_string_labels_header_and_folders(tmp_path):
    for v, n in (("video01", 3), ("video02", 3)):
        for i in range(n):
            _touch(tmp_path / "frames" / v / f"{i}.jpg")
    rows = ["path,label"] + [f"frames/video0{1 + i // 3}/{i % 3}.jpg,{lab}" for i, lab in
                             enumerate(["NOR", "DCM", "-1", "HCM", "NOR", "DCM"])]
    (tmp_path / "knn.csv").write_text("\n".join(rows) + "\n")
    items = read_knn_datalist(str(tmp_path / "knn.csv"))
    assert len(items) == 5 and all(os.path.isabs(it["image"]) for it in items)  # the -1 row dropped
    monitor = KNNMonitor(nn.Flatten(), str(tmp_path / "knn.csv"), TO_TENSOR, exclude_key="folder", k=2)
    assert monitor.classes == ["DCM", "HCM", "NOR"] and monitor.labels == [2, 0, 1, 2, 0]
    assert monitor.groups == [0, 0, 1, 1, 1] and monitor.k == 2
    # headerless integer CSV (the published sample_csv.csv layout)
    (tmp_path / "plain.csv").write_text("frames/video01/0.jpg,10\nframes/video01/1.jpg,9\nframes/video02/0.jpg,10\n")
    assert KNNMonitor(nn.Flatten(), str(tmp_path / "plain.csv"), TO_TENSOR, k=1).classes == [9, 10]


def test_json_datalist(tmp_path):
    for i in range(4):
        _touch(tmp_path / "img" / f"{i}.nii.gz")
    data = {"validation": [{"image": f"img/{i}.nii.gz", "label": i % 2} for i in range(4)]}
    (tmp_path / "list.json").write_text(json.dumps(data))
    monitor = KNNMonitor(nn.Flatten(), str(tmp_path / "list.json"), TO_TENSOR, k=3)
    assert [it["image"] for it in monitor.items] == [str(tmp_path / "img" / f"{i}.nii.gz") for i in range(4)]
    with pytest.raises(ValueError, match=r"no list 'test'.*knn_datalist"):
        KNNMonitor(nn.Flatten(), str(tmp_path / "list.json"), TO_TENSOR, json_key="test")


def test_bad_lists_name_file_and_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.csv.*knn_datalist"):
        KNNMonitor(nn.Flatten(), str(tmp_path / "missing.csv"), TO_TENSOR)
    _touch(tmp_path / "a.jpg")
    _touch(tmp_path / "b.jpg")
    (tmp_path / "phase.csv").write_text("path,phase\na.jpg,1\nb.jpg,2\n")
    with pytest.raises(ValueError, match=r"phase\.csv.*no column 'label'.*knn_datalist"):
        KNNMonitor(nn.Flatten(), str(tmp_path / "phase.csv"), TO_TENSOR)
    (tmp_path / "one.csv").write_text("path,label\na.jpg,3\nb.jpg,3\n")
    with pytest.raises(ValueError, match=r"one\.csv has only class 3.*two classes.*knn_datalist"):
        KNNMonitor(nn.Flatten(), str(tmp_path / "one.csv"), TO_TENSOR)
    (tmp_path / "gone.csv").write_text("path,label\na.jpg,0\nc.jpg,1\n")
    with pytest.raises(FileNotFoundError, match=r"gone\.csv, line 3: image .*c\.jpg.*knn_datalist"):
        KNNMonitor(nn.Flatten(), str(tmp_path / "gone.csv"), TO_TENSOR)
    with pytest.raises(ValueError, match=r"knn_transform"):
        KNNMonitor(nn.Flatten(), str(tmp_path / "phase.csv"), None)
    with pytest.raises(ValueError, match=r"knn_interval"):
        KNNMonitor(nn.Flatten(), None, None, interval=-1)


def test_small_lists_warn_and_still_score():
    """k clipped to N - 1; an item with fewer than k items outside its group votes with those
    (the reference's ``candidates[:k]``); a single group falls back to leave-one-out."""
    feats, labels = blobs(3, 2)
    with pytest.warns(UserWarning, match=r"k=20 but <list> has 6 items: k clipped to 5.*knn_datalist"):
        monitor = KNNMonitor(nn.Flatten(), items_of(feats, labels), TO_TENSOR)
    assert monitor.k == 5 and monitor.evaluate()["knn_acc"] == 1.0
    with pytest.warns(UserWarning, match=r"every item of <list> has the same `patient`.*only left out itself"):
        single = KNNMonitor(nn.Flatten(), items_of(feats, labels, patient=["p"] * 6), TO_TENSOR, k=5,
                            exclude_key="patient")
    assert single.groups is None and single.evaluate()["knn_acc"] == 1.0
    with pytest.raises(ValueError, match=r"item 0 .* has no 'patient'"):
        KNNMonitor(nn.Flatten(), items_of(feats, labels), TO_TENSOR, exclude_key="patient")
    # unbalanced groups: the 30 items of group 0 have 10 candidates for k = 15
    rng = np.random.default_rng(6)
    feats, labels = rng.normal(size=(40, 5)).astype(np.float32), rng.integers(0, 3, 40)
    groups = np.array([0] * 30 + list(range(1, 11)))
    with pytest.warns(UserWarning, match=r"only 10 neighbours outside their `patient` group"):
        monitor = KNNMonitor(nn.Flatten(), items_of(feats, labels, patient=groups), TO_TENSOR, k=15,
                             temperature=0.3, exclude_key="patient")
    ref = ref_knn_scores(feats, labels, 3, 15, 0.3, groups)
    got = knn_scores(torch.from_numpy(feats), torch.from_numpy(labels), 3, k=15, temperature=0.3,
                     groups=torch.from_numpy(groups)).numpy()
    np.testing.assert_allclose(got, ref / ref.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    assert monitor.evaluate()["knn_acc"] == pytest.approx(ref_accuracy(ref, labels))


def test_acdc_group_items(demo_data, tmp_path):
    """byol_acdc's list: the slices of the index's training list, labelled with the Group line of
    each patient's Info.cfg."""
    from monai_ssl_ext.data import acdc_group_items, load_datalist
    from monai_ssl_ext.demo.acdc import demo_group

    root = demo_data("acdc")
    index = os.path.join(root, "acdc_slices.json")
    items = acdc_group_items(index, "training", root)
    slices = load_datalist(index, "training", base_dir=root)
    assert [it["image"] for it in items] == [s["image"] for s in slices]
    assert [it["label"] for it in items] == [demo_group(s["patient"]) for s in slices]
    assert len({it["label"] for it in items}) >= 2 and "frame" not in items[0] and items[0]["slice"] == 0
    cfg = tmp_path / "acdc"  # a copy without one Info.cfg: the error names it
    shutil.copytree(root, cfg)
    pid = slices[0]["patient"]
    os.remove(cfg / "training" / f"patient{pid:03d}" / "Info.cfg")
    with pytest.raises(FileNotFoundError, match=rf"patient{pid:03d}.*Info\.cfg"):
        acdc_group_items(str(cfg / "acdc_slices.json"), "training", str(cfg))


# ----------------------------------------------------------------------------- under DDP


def _ddp_worker(rank, tmpdir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmpdir}/rendezvous", rank=rank, world_size=2)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16))
    ddp = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)

    def step(engine, batch):  # every iteration all-reduces the gradients
        opt.zero_grad()
        loss = ddp(batch).pow(2).mean()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    engine = Engine(step)
    KNNMonitor(ddp, items_of(*blobs(6, 2)), TO_TENSOR, interval=1, k=3).attach(engine)  # the DDP wrapper itself
    data = [torch.randn(4, 16, generator=torch.Generator().manual_seed(10 * rank + i)) for i in range(2)]
    engine.run(data, max_epochs=3)
    dist.barrier()
    params = torch.cat([p.detach().flatten() for p in net.parameters()])
    torch.save({"metrics": dict(engine.state.metrics), "params": params, "training": net.training},
               f"{tmpdir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_rank_zero_only_no_hang(tmp_path):
    """Two gloo processes training a DDP model: rank 0 evaluates (the wrapper unwrapped), rank 1
    does not, nobody waits on a collective the other never calls, and the replicas stay equal."""
    import torch.multiprocessing as mp

    import time

    ctx = mp.start_processes(_ddp_worker, args=(str(tmp_path),), nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + 240
    try:
        while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):  # True once both have exited
            assert time.monotonic() < deadline, "the 2-process run did not finish in 240 s (a hang)"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert set(r0["metrics"]) == {"knn_acc"} and r0["metrics"]["knn_acc"] == 1.0
    assert r1["metrics"] == {}
    assert torch.equal(r0["params"], r1["params"]) and r0["training"] and r1["training"]


def test_vitautoenc_ct_monitor_wiring(demo_data, tmp_path):
    """vitautoenc_ct ships the monitor off (no labels in TCIA-COVID19); a user list of labelled
    volumes turns it on: the 3D knn_transform feeds the ViT trunk and knn_acc is a trainer metric."""
    from bundle_runner import run_config
    from conftest import ROOT

    data = demo_data("tcia")
    split = json.loads(open(os.path.join(data, "dataset_split.json")).read())
    volumes = [it["image"] for key in ("training", "validation") for it in split[key]]
    listed = tmp_path / "labelled.json"
    listed.write_text(json.dumps({"validation": [{"image": os.path.join(data, v), "label": ["a", "b"][i % 2]}
                                                 for i, v in enumerate(volumes)]}))
    with pytest.warns(UserWarning, match="k clipped"):
        res = run_config(ROOT / "bundles" / "vitautoenc_ct", ["train.json"], str(tmp_path / "run"), data,
                         knn_interval=1, knn_datalist=str(listed))
    metrics = res["parser"].get_parsed_content("train#trainer").state.metrics
    assert 0.0 <= metrics["knn_acc"] <= 1.0
