"""Look at a pretraining bundle's views before spending GPU hours on them: a few input images next to the
augmented views the bundle's ``train#dataset`` transform makes of them, drawn as one PNG grid.

:func:`view_samples` runs the bundle's own transform chain on the first items of its datalist: the transforms
before the multi-view step give the input as the model would see it un-augmented (loaded, checked, resampled,
windowed), the multi-view step (:class:`~monai_ssl_ext.transforms.MultiViewd`) gives the views.
:func:`save_view_grid` draws them: a row per item, the input then each view; a 2D image as it is stored
(row index down, column index right); a 3D volume as its middle slice along each of the three axes.
:func:`bundle_view_samples` parses a bundle's configs without building its dataset (no cache is filled).
``scripts/preview_views.py`` is the command line.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["bundle_view_samples", "save_view_grid", "view_samples"]


def _flat(transform) -> list:
    from monai.transforms import Compose

    if isinstance(transform, Compose):
        return [t for sub in transform.transforms for t in _flat(sub)]
    return [transform]


def view_samples(datalist: Sequence[dict], transform, n: int = 4) -> list[dict]:
    """``[{"input": tensor, "views": [tensor, ...], "source": item}, ...]`` for the first ``n`` items of
    ``datalist`` through ``transform`` (a MONAI ``Compose`` holding one ``MultiViewd``).

    Raises:
        ValueError: the transform has no ``MultiViewd`` (not a multi-view pretraining pipeline), or the list is empty.
    """
    from monai.transforms import Compose

    from .transforms import MultiViewd

    steps = _flat(transform)
    where = [i for i, t in enumerate(steps) if isinstance(t, MultiViewd)]
    if not where:
        raise ValueError("view_samples: the transform has no MultiViewd step (not a multi-view pretraining pipeline)")
    if not datalist:
        raise ValueError("view_samples: the datalist is empty")
    before, multiview = Compose(steps[:where[0]]), steps[where[0]]
    out = []
    for item in list(datalist)[:n]:
        loaded = before(dict(item))
        views = multiview(dict(loaded))
        for key in multiview.keys:
            names = [key] + [f"{key}_{j}" for j in range(2, len(multiview.transforms) + 1)]
            out.append({"input": torch.as_tensor(loaded[key]), "views": [torch.as_tensor(views[k]) for k in names],
                        "source": item})
    return out


def _panels(x: torch.Tensor) -> list[np.ndarray]:
    """A channel-first image as displayable panels: ``(C, H, W)`` -> one ``(H, W[, 3])``; ``(C, H, W, D)`` -> the
    middle slice along each spatial axis (first channel). Each panel min-max scaled to [0, 1]."""
    a = x.detach().float().cpu().numpy()
    if a.ndim == 3:
        panels = [a[0] if a.shape[0] != 3 else np.moveaxis(a, 0, -1)]
    elif a.ndim == 4:
        v = a[0]
        panels = [v[v.shape[0] // 2], v[:, v.shape[1] // 2], v[:, :, v.shape[2] // 2]]
    else:
        raise ValueError(f"expected a channel-first 2D or 3D image, got shape {tuple(a.shape)}")
    out = []
    for p in panels:
        lo, hi = float(p.min()), float(p.max())
        out.append((p - lo) / (hi - lo) if hi > lo else np.zeros_like(p))
    return out


def save_view_grid(samples: Sequence[dict], path: str | os.PathLike, title: str | None = None) -> str:
    """Draw :func:`view_samples`' output as a PNG grid at ``path`` (a row per sample: input, view 1, view 2, ...;
    a 3D image takes three columns, its middle slices along axes 0, 1, 2). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [[_panels(s["input"])] + [_panels(v) for v in s["views"]] for s in samples]
    per = len(rows[0][0])
    cols = len(rows[0]) * per
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.2 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, panels in enumerate(row):
            for k, panel in enumerate(panels):
                ax = axes[r][c * per + k]
                ax.imshow(panel, cmap=None if panel.ndim == 3 else "gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    name = "input" if c == 0 else f"view {c}"
                    ax.set_title(name + (f" (axis {k})" if per > 1 else ""), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def bundle_view_samples(bundle_dir: str | os.PathLike, dataset_dir: str, configs: Sequence[str] = ("train.json",),
                        n: int = 4, seed: int = 0, **overrides) -> list[dict]:
    """:func:`view_samples` for a bundle: its ``configs`` (e.g. ``["train.json", "train_3d.json"]``) with
    ``dataset_dir`` and ``overrides``, reading ``train#datalist`` and ``train#dataset#transform`` (the dataset itself
    is not built, so no cache is filled). Views are drawn with MONAI's determinism set to ``seed``."""
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    cfg = Path(bundle_dir) / "configs"
    parser = ConfigParser()
    parser.read_config([str(cfg / c) for c in configs])
    parser.read_meta(str(cfg / "metadata.json"))
    parser.update({"dataset_dir": str(dataset_dir), "bundle_root": overrides.pop("bundle_root", tempfile.gettempdir()),
                   **overrides})
    set_determinism(seed=seed)
    return view_samples(parser.get_parsed_content("train#dataset#data"),
                        parser.get_parsed_content("train#dataset#transform"), n=n)
