"""The embedding picture of the pretraining bundles' inference.json (``monai_ssl_ext.plots``, ``EmbeddingWriter``'s
``plot_path``, ``embedding_items``): the projection is the PCA of the definition, separated classes land apart
in the PNG in their own colours, the UMAP request falls back to PCA with a message, and the class names of a
labelled CSV reach the ``.npz``."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from monai_ssl_ext import plots
from monai_ssl_ext.handlers import EmbeddingWriter, embedding_items


def _pca_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PCA from its definition: eigenvectors of the sample covariance, largest eigenvalues first."""
    xc = x - x.mean(axis=0)
    cov = xc.T @ xc / (len(x) - 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:2]
    return xc @ vectors[:, order], values[order] / values.sum()


def test_pca_matches_the_covariance_eigenvectors():
    rng = np.random.default_rng(0)
    # anisotropic data: a clear first and second direction
    x = rng.normal(size=(60, 5)) * np.array([5.0, 2.0, 0.5, 0.3, 0.1]) @ np.linalg.qr(rng.normal(size=(5, 5)))[0]
    x += 3.0
    coords, ratio = plots.pca_2d(x)
    ref, ref_ratio = _pca_reference(x)
    assert coords.shape == (60, 2)
    for k in range(2):  # a principal direction is defined up to its sign
        sign = np.sign(coords[:, k] @ ref[:, k])
        np.testing.assert_allclose(coords[:, k], sign * ref[:, k], atol=1e-8)
    np.testing.assert_allclose(ratio, ref_ratio, rtol=1e-8)
    assert abs(coords.mean(axis=0)).max() < 1e-9  # centred
    # deterministic sign: each component's largest-magnitude coordinate is positive
    assert all(coords[np.abs(coords[:, k]).argmax(), k] > 0 for k in range(2))


def test_pca_degenerate_inputs():
    assert plots.pca_2d(np.ones((1, 4)))[0].tolist() == [[0.0, 0.0]]
    coords, ratio = plots.pca_2d(np.array([[0.0], [2.0], [4.0]]))  # one dimension: the second component is 0
    np.testing.assert_allclose(np.abs(coords[:, 0]), [2.0, 0.0, 2.0])
    assert np.all(coords[:, 1] == 0) and ratio.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="N, D"):
        plots.pca_2d(np.zeros(5))


def test_umap_falls_back_to_pca_with_a_message(monkeypatch, caplog):
    monkeypatch.setattr(plots, "importable", lambda name: False if name == "umap" else True)
    x = np.random.default_rng(1).normal(size=(10, 4))
    with caplog.at_level(logging.INFO, logger="monai_ssl_ext.plots"):
        coords, used = plots.project_2d(x, "umap")
    assert used == "pca"
    np.testing.assert_allclose(coords, plots.pca_2d(x)[0])
    assert any("umap is not installed" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monai_ssl_ext.plots"):
        assert plots.project_2d(x, "auto")[1] == "pca"  # auto: an info line, not a warning
    assert any("drawing PCA instead" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    with pytest.raises(ValueError, match="tsne"):
        plots.project_2d(x, "tsne")


def _two_clusters(n: int = 20, d: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    centre = np.zeros(d)
    centre[0] = 10.0
    a = rng.normal(scale=0.3, size=(n, d)) - centre
    b = rng.normal(scale=0.3, size=(n, d)) + centre
    return np.concatenate([a, b]), np.array([0] * n + [1] * n)


def test_separated_classes_land_apart_in_their_colours(tmp_path):
    emb, labels = _two_clusters()
    out = plots.embedding_plot(emb, labels, tmp_path / "e.png", classes=["polyp", "normal"], method="pca")
    assert out["method"] == "pca"
    # coordinates: the clusters are split along the first component, far apart compared with their spread
    x = out["coords"][:, 0]
    assert (x[labels == 0].max() < x[labels == 1].min()) or (x[labels == 1].max() < x[labels == 0].min())
    assert abs(x[labels == 0].mean() - x[labels == 1].mean()) > 10 * x[labels == 0].std()
    # colours: one per class, the class's own
    assert np.allclose(out["colors"][labels == 0], plots.class_color(0))
    assert np.allclose(out["colors"][labels == 1], plots.class_color(1))
    assert not np.allclose(plots.class_color(0), plots.class_color(1))
    # the picture: every point's pixel shows its class colour, and the two groups are far apart in the PNG
    png = np.asarray(Image.open(tmp_path / "e.png").convert("RGB")).astype(float)
    rows, cols = np.rint(out["pixels"]).astype(int).T
    assert rows.min() >= 0 and rows.max() < png.shape[0] and cols.min() >= 0 and cols.max() < png.shape[1]
    for k in (0, 1):
        want = np.asarray(plots.class_color(k)) * 255
        seen = png[rows[labels == k], cols[labels == k]]
        hits = np.abs(seen - want).max(axis=1) < 40
        assert hits.mean() > 0.8, f"class {k}: {hits.mean():.2f} of its points drawn in its colour"
    centre0 = out["pixels"][labels == 0].mean(axis=0)
    centre1 = out["pixels"][labels == 1].mean(axis=0)
    assert np.linalg.norm(centre0 - centre1) > 200  # pixels apart in a 640 x 480 picture


def test_unlabelled_points_are_grey(tmp_path):
    emb, labels = _two_clusters(n=5)
    labels[:5] = -1
    out = plots.embedding_plot(emb, labels, tmp_path / "e.png")
    assert np.allclose(out["colors"][:5], plots.UNLABELLED_COLOR)
    assert np.allclose(out["colors"][5:], plots.class_color(1))
    with pytest.raises(ValueError, match="labels"):
        plots.embedding_plot(emb, labels[:3], tmp_path / "f.png")


def test_embedding_items_from_a_labelled_csv_and_a_json(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "knn.csv").write_text("path,label\na.jpg,z-line\nb.jpg,cecum\nc.jpg,z-line\n")
    items = embedding_items(str(tmp_path / "knn.csv"))
    assert [i["label"] for i in items] == [1, 0, 1]  # classes sorted: cecum 0, z-line 1
    assert [i["label_name"] for i in items] == ["z-line", "cecum", "z-line"]
    assert items[0]["path"] == str(tmp_path / "a.jpg")
    (tmp_path / "list.json").write_text(json.dumps({"validation": [{"image": "a.jpg"}, {"image": "b.jpg", "label": 3}]}))
    items = embedding_items(str(tmp_path / "list.json"))
    assert [(i["label"], i["label_name"]) for i in items] == [(-1, ""), (0, "3")]
    items = embedding_items([{"image": "v.nii.gz", "slice": 2, "frame": 0, "label": "NOR"}])
    assert items[0]["path"] == "v.nii.gz frame 0 slice 2"
    with pytest.raises(FileNotFoundError, match="inference_datalist"):
        embedding_items(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="image"):
        embedding_items([{"label": 1}])


def test_embedding_writer_plot_and_class_names(tmp_path):
    from ignite.engine import Engine

    emb, labels = _two_clusters(n=6, d=4)
    names = np.array(["cecum", "z-line"])[labels]
    batches = [{"image": torch.as_tensor(emb[i:i + 4]), "label": torch.as_tensor(labels[i:i + 4]),
                "label_name": list(names[i:i + 4]), "path": [f"p{j}" for j in range(i, i + 4)]} for i in range(0, 12, 4)]
    engine = Engine(lambda e, b: {"pred": b["image"]})
    writer = EmbeddingWriter(str(tmp_path / "emb.npz"), plot_path=str(tmp_path / "emb.png"), plot_method="pca")
    writer.attach(engine)
    engine.run(batches)
    d = np.load(tmp_path / "emb.npz")
    assert d["classes"].tolist() == ["cecum", "z-line"] and d["labels"].tolist() == labels.tolist()
    np.testing.assert_allclose(d["embeddings"], emb.astype(np.float32))
    png = np.asarray(Image.open(tmp_path / "emb.png"))
    assert png.ndim == 3 and png.shape[0] > 100
    with pytest.raises(ValueError, match="png"):
        EmbeddingWriter(str(tmp_path / "emb.npz"), plot_path=str(tmp_path / "emb.pdf"))
    bad = [{"image": torch.zeros(2, 3), "label": torch.tensor([0, 0]), "label_name": ["a", "b"], "path": ["x", "y"]}]
    engine = Engine(lambda e, b: {"pred": b["image"]})
    EmbeddingWriter(str(tmp_path / "bad.npz")).attach(engine)
    with pytest.raises(ValueError, match="named both"):
        engine.run(bad)
