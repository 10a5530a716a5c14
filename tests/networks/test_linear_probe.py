"""Linear probe (frozen trunk, pooled trunk features, test labels from the test list, label
budgets) and the embedding writer of the simclr_cholec bundle."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_ssl_ext.encoders import export_encoder, pretrained_backbone
from monai_ssl_ext.handlers import EmbeddingWriter
from monai_ssl_ext.networks import (
    LinearProbe,
    RunSignature,
    build_backbone,
    encoder_normalization,
    probe_datalist,
    stack_from_engine,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "simclr_cholec" / "configs"
HEADER_NORM = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """An efficientnet-b0 encoder.pt with non-trivial weights and BN statistics."""
    torch.manual_seed(0)
    bb = build_backbone("efficientnet-b0")
    with torch.no_grad():
        for name, t in bb.trunk.state_dict().items():
            if t.is_floating_point() and "running_var" not in name:
                t.add_(0.01 * torch.randn_like(t))
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    export_encoder(bb, str(path), method="simclr", normalization=HEADER_NORM)
    return str(path)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_backbone_through_supervised_trainer(encoder_file):
    """One SupervisedTrainer step (network.train() each iteration, AdamW given *all* probe
    parameters): trunk weights and BN buffers unchanged, no trunk gradients, classifier trained."""
    from monai.engines import SupervisedTrainer

    probe = LinearProbe(pretrained_backbone(None, encoder_file), num_classes=7)
    before, cls_before = _state(probe.backbone), _state(probe.classifier)
    data = [{"image": torch.randn(3, 32, 32), "label": torch.tensor(i % 7)} for i in range(4)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=loader, network=probe,
        optimizer=torch.optim.AdamW(probe.parameters(), lr=0.1, weight_decay=0.1),
        loss_function=torch.nn.CrossEntropyLoss(),
    )
    trainer.run()
    assert probe.training and not probe.backbone.training
    assert not any(m.training for m in probe.backbone.modules())
    assert all(not p.requires_grad and p.grad is None for p in probe.backbone.parameters())
    after = _state(probe.backbone)
    assert any("running_mean" in k for k in after)
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"frozen trunk tensor {k} changed"
    assert not torch.equal(cls_before["weight"], probe.classifier.weight)
    assert probe.classifier.weight.grad is not None


def test_features_are_pooled_trunk_features(encoder_file):
    """EfficientNet: the probe sees the 1280-d pooled trunk features (not a projection output).
    Reference built without the package: the file's tensors in MONAI's own EfficientNetBN
    classifier, whose forward is stem -> blocks -> head -> global average pool -> (dropout) -> fc,
    with fc replaced by the identity, in eval mode."""
    from monai.networks.nets import EfficientNetBN

    probe = LinearProbe(pretrained_backbone(None, encoder_file), num_classes=7).train()
    ref = EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3, num_classes=7)
    state = torch.load(encoder_file, map_location="cpu", weights_only=True)["state_dict"]
    report = ref.load_state_dict(state, strict=False)
    assert sorted(report.missing_keys) == ["_fc.bias", "_fc.weight"] and not report.unexpected_keys
    ref._fc = torch.nn.Identity()
    ref.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref(x)
    feats = probe.features(x)
    assert feats.shape == (2, 1280) == expected.shape
    assert torch.allclose(feats, expected, atol=1e-5)
    logits = probe(x)
    assert logits.shape == (2, 7)
    assert torch.allclose(logits, probe.classifier(expected), atol=1e-5)
    with pytest.raises(TypeError):
        LinearProbe(torch.nn.Linear(3, 3), 7)


def test_normalization_from_encoder_header(encoder_file):
    config_norm = {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert encoder_normalization(pretrained_backbone(None, encoder_file), config_norm, 3) == HEADER_NORM
    assert encoder_normalization(build_backbone("resnet10"), config_norm, 3) == config_norm  # no header
    assert encoder_normalization(build_backbone("resnet10"), {"mean": [0.5], "std": [0.25]}, 3) == {
        "mean": [0.5] * 3, "std": [0.25] * 3}
    with pytest.raises(ValueError):
        encoder_normalization(build_backbone("resnet10"), None, 3)


def test_budget_per_class_counts():
    counts = {0: 2500, 1: 300, 2: 150, 6: 2001, -1: 10}
    items = [{"image": f"f{c}_{i}.jpg", "label": c} for c, n in counts.items() for i in range(n)]
    got = {b: Counter(d["label"] for d in probe_datalist(items, 7, budget=b, seed=3)) for b in ("1%", "10%", "100%")}
    assert got["1%"] == {0: 200, 1: 200, 2: 150, 6: 200}
    assert got["10%"] == {0: 2000, 1: 300, 2: 150, 6: 2000}
    assert got["100%"] == {0: 2500, 1: 300, 2: 150, 6: 2001}  # unlabelled (-1) frames dropped
    a = probe_datalist(items, 7, budget="1%", seed=3)
    assert a == probe_datalist(items, 7, budget="1%", seed=3)
    assert a != probe_datalist(items, 7, budget="1%", seed=4)
    with pytest.raises(ValueError, match="outside 0..6"):
        probe_datalist(items + [{"image": "x.jpg", "label": 7}], 7)


def test_run_signature_refuses_other_settings():
    sig = RunSignature(label_budget="1%", pretrained_encoder="a.pt")
    RunSignature(label_budget="1%", pretrained_encoder="a.pt").load_state_dict(sig.state_dict())
    with pytest.raises(RuntimeError, match="label_budget"):
        RunSignature(label_budget="10%", pretrained_encoder="a.pt").load_state_dict(sig.state_dict())


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """8 tiny RGB frames; train/val labels 0/1, test labels 5/6 (differing from the train list)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    names = []
    for i in range(8):
        name = f"frames/f{i}.png"
        (root / "frames").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / name)
        names.append(name)
    for split, labels in (("train", [0, 1]), ("val", [0, 1]), ("test", [5, 6])):
        rows = [f"{n},{labels[i % 2]}" for i, n in enumerate(names)]
        (root / f"{split}.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return root


def _run(config: str, root: Path, **override):
    from monai.bundle import ConfigWorkflow

    settings = dict(dataset_dir=str(root), bundle_root=str(root / "bundle"), pretrained_encoder="random",
                    backbone="resnet10", epochs=1, epoch_length=1, batch_size=4, num_workers=0, image_size=32,
                    val_interval=1, device="$torch.device('cpu')")
    settings.update(override)
    wf = ConfigWorkflow(config_file=str(CONFIGS / config), workflow_type=None, **settings)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf.parser.get_parsed_content("output_dir")


def test_test_labels_come_from_the_test_list(frames):
    items = probe_datalist(str(frames / "test.csv"), 7)
    assert [d["label"] for d in items] == [5, 6] * 4
    out = _run("linear_probe.json", frames, resume=False)
    report = json.loads(Path(out, "linear_probe", "test_metrics.json").read_text())
    # rows of the confusion matrix are the true classes: 4 frames of class 5 and 4 of class 6,
    # as in test.csv (the same images are labelled 0/1 in train.csv and val.csv)
    assert report["class_counts"] == [0, 0, 0, 0, 0, 4, 4]
    assert report["n"] == 8
    cm = np.array(report["confusion_matrix"])
    assert report["accuracy"] == pytest.approx(np.trace(cm) / 8)
    assert os.path.isfile(Path(out, "linear_probe", "model_best_val_acc.pt"))


def test_embedding_writer_handler(tmp_path):
    from ignite.engine import Engine

    batches = [
        {"image": torch.randn(3, 2, 4), "label": torch.tensor([1, 2, 3]), "path": ["a.png", "b.png", "c.png"]},
        {"image": torch.randn(2, 2, 4), "label": torch.tensor([4, 5]), "path": ["d.png", "e.png"]},
    ]
    engine = Engine(lambda e, b: {"pred": b["image"].flatten(1), "label": b["label"]})
    path = tmp_path / "emb" / "embeddings.npz"
    EmbeddingWriter(str(path)).attach(engine)
    engine.run(batches)
    d = np.load(path)
    assert d["embeddings"].shape == (5, 8) and d["embeddings"].dtype == np.float32
    assert np.allclose(d["embeddings"], torch.cat([b["image"].flatten(1) for b in batches]).numpy())
    assert d["labels"].tolist() == [1, 2, 3, 4, 5]
    assert d["paths"].tolist() == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    with pytest.raises(ValueError):
        EmbeddingWriter(str(tmp_path / "x.npy"))


def test_inference_config_writes_embeddings(frames):
    out = _run("inference.json", frames)
    d = np.load(Path(out, "embeddings", "embeddings.npz"))
    assert d["embeddings"].shape == (8, 512)  # resnet10 pooled features
    assert d["labels"].tolist() == [5, 6] * 4  # inference_csv defaults to test.csv
    assert d["paths"].tolist() == [os.path.normpath(str(frames / f"frames/f{i}.png")) for i in range(8)]


def test_stack_from_engine():
    out = {"pred": torch.zeros(2, 7), "label": torch.tensor([1, 2])}
    p, y = stack_from_engine(["pred", "label"])(out)
    assert p.shape == (2, 7) and y.tolist() == [1, 2]
    p, y = stack_from_engine(["pred", "label"])([{"pred": torch.zeros(7), "label": torch.tensor(k)} for k in (3, 4)])
    assert p.shape == (2, 7) and y.tolist() == [3, 4]
