"""A 2-D picture of an embedding: every item a point, coloured by its label.

:func:`project_2d` maps ``(N, D)`` embeddings to ``(N, 2)``: PCA (the first two principal components, by the
SVD of the centred matrix) or UMAP when the ``umap`` package is installed and asked for (``method="auto"`` or
``"umap"``); without it the PCA is drawn and the fallback is logged. :func:`embedding_plot` draws the projection
as a PNG scatter plot with one colour per class and a legend (unlabelled items, label -1, in grey), and returns
the coordinates, the colour of every point and where each point lies in the PNG (row, column), so a reader can
check the picture against the data. :class:`~monai_ssl_ext.handlers.EmbeddingWriter` calls it after writing
the embeddings of a pretraining bundle's ``inference.json`` (config id ``embedding_plot``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["CLASS_COLORS", "UNLABELLED_COLOR", "embedding_plot", "pca_2d", "project_2d"]

logger = logging.getLogger("monai_ssl_ext.plots")

#: RGB (0..1) of class index i is ``CLASS_COLORS[i % len(CLASS_COLORS)]`` (matplotlib's tab10, then tab20's
#: light shades)
CLASS_COLORS = (
    (0.122, 0.467, 0.706), (1.000, 0.498, 0.055), (0.173, 0.627, 0.173), (0.839, 0.153, 0.157),
    (0.580, 0.404, 0.741), (0.549, 0.337, 0.294), (0.890, 0.467, 0.761), (0.737, 0.741, 0.133),
    (0.090, 0.745, 0.812), (0.682, 0.780, 0.910), (1.000, 0.733, 0.471), (0.596, 0.875, 0.541),
    (1.000, 0.596, 0.588), (0.773, 0.690, 0.835), (0.769, 0.612, 0.580), (0.969, 0.714, 0.824),
    (0.859, 0.859, 0.553), (0.620, 0.855, 0.898),
)
#: RGB (0..1) of unlabelled items (label -1)
UNLABELLED_COLOR = (0.5, 0.5, 0.5)
METHODS = ("auto", "pca", "umap")


def pca_2d(x) -> tuple[np.ndarray, np.ndarray]:
    """``(coords (N, 2), explained variance ratio (2,))`` of the first two principal components of ``x (N, D)``:
    the rows centred, projected on the two leading right singular vectors. Each component's sign makes its
    largest-magnitude coordinate positive (deterministic). Fewer than two components (N < 3 or D < 2) leave
    the missing ones zero."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"pca_2d: expected embeddings of shape (N, D), got {x.shape}")
    n = x.shape[0]
    coords, ratio = np.zeros((n, 2)), np.zeros(2)
    if n < 2 or x.shape[1] == 0:
        return coords, ratio
    xc = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    k = min(2, s.shape[0])
    proj = u[:, :k] * s[:k]
    signs = np.sign(proj[np.abs(proj).argmax(axis=0), np.arange(k)])
    coords[:, :k] = proj * np.where(signs == 0, 1.0, signs)
    total = float((s ** 2).sum())
    if total > 0:
        ratio[:k] = s[:k] ** 2 / total
    return coords, ratio


def project_2d(x, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """``(coords (N, 2), method used)``: UMAP when ``method`` is ``"umap"`` or ``"auto"`` and the ``umap``
    package is importable, else PCA (:func:`pca_2d`); asking for UMAP without it logs the fallback."""
    if method not in METHODS:
        raise ValueError(f"embedding plot: method must be one of {METHODS}, got {method!r}")
    x = np.asarray(x, dtype=np.float64)
    if method != "pca":
        if importable("umap") and x.shape[0] > 3:
            import umap

            reducer = umap.UMAP(n_components=2, n_neighbors=min(15, x.shape[0] - 1), random_state=seed)
            return np.asarray(reducer.fit_transform(x), dtype=np.float64), "umap"
        reason = "umap is not installed (pip install umap-learn)" if not importable("umap") else "too few items"
        (logger.warning if method == "umap" else logger.info)(f"embedding plot: {reason}: drawing PCA instead")
    return pca_2d(x)[0], "pca"


def importable(name: str) -> bool:
    """True when ``import name`` would find the package."""
    return importlib.util.find_spec(name) is not None


def class_color(index: int) -> tuple[float, float, float]:
    """RGB (0..1) of class ``index`` (-1: unlabelled grey)."""
    return UNLABELLED_COLOR if index < 0 else CLASS_COLORS[index % len(CLASS_COLORS)]


def embedding_plot(
    embeddings,
    labels,
    path: str | os.PathLike,
    classes: Sequence[str] | None = None,
    method: str = "auto",
    title: str | None = None,
    marker_size: float = 16.0,
    seed: int = 0,
) -> dict:
    """Draw the 2-D projection (:func:`project_2d`) of ``embeddings (N, D)`` as a PNG scatter plot at ``path``.

    Args:
        embeddings: ``(N, D)`` array.
        labels: ``(N,)`` class indices, -1 for unlabelled items.
        path: the PNG file (folders are created).
        classes: the name of each class index (legend); default the index itself.
        method: ``"auto"`` (UMAP when installed, else PCA), ``"pca"`` or ``"umap"``.
        title: figure title (default: the method and the number of items).
        marker_size: scatter marker area (points²).

    Returns:
        ``{"path", "method", "coords" (N, 2), "colors" (N, 3) RGB 0..1, "pixels" (N, 2) row / column of every
        point's centre in the PNG}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    emb = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if emb.ndim != 2 or emb.shape[0] != labels.shape[0]:
        raise ValueError(f"embedding plot: {tuple(emb.shape)} embeddings for {labels.shape[0]} labels "
                         "(expected (N, D) and N labels)")
    if emb.shape[0] == 0:
        raise ValueError("embedding plot: no embeddings to draw")
    coords, used = project_2d(emb, method, seed=seed)
    colors = np.asarray([class_color(int(v)) for v in labels], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    for index in sorted(set(labels.tolist())):
        sel = labels == index
        if index < 0:
            name = "unlabelled"
        elif classes is not None and index < len(classes):
            name = str(classes[index])
        else:
            name = str(index)
        ax.scatter(coords[sel, 0], coords[sel, 1], s=marker_size, color=class_color(index),
                   label=f"{name} ({sel.sum()})", edgecolors="none")
    axis = "UMAP" if used == "umap" else "PC"
    ax.set_xlabel(f"{axis} 1"), ax.set_ylabel(f"{axis} 2")
    ax.set_title(title or f"{emb.shape[0]} embeddings ({emb.shape[1]}-d), {used.upper()}", fontsize=10)
    ax.legend(fontsize=7, loc="best", markerscale=1.5)
    fig.tight_layout()
    fig.canvas.draw()
    xy = ax.transData.transform(coords)  # display pixels, origin bottom left
    height = fig.canvas.get_width_height()[1]
    pixels = np.stack([height - xy[:, 1], xy[:, 0]], axis=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi)
    plt.close(fig)
    logger.info(f"embedding plot ({used}) of {emb.shape[0]} items written to {path}")
    return {"path": str(path), "method": used, "coords": coords, "colors": colors, "pixels": pixels}
