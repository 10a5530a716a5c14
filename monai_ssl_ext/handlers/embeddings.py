"""Collect an evaluator's per-item outputs (encoder embeddings) and write them to one ``.npz`` (and, when asked,
a 2-D picture of them, :func:`monai_ssl_ext.plots.embedding_plot`).

:func:`embedding_items` reads the items of a pretraining bundle's ``inference.json``: a labelled ``path,label``
CSV (the kNN monitor's), a JSON datalist or a list of items, labels (class names or integers) turned into class
indices with their names kept beside them."""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..distributed import get_rank
from ..io import atomic_write

__all__ = ["EmbeddingWriter", "embedding_items"]


def _as_list(value, n: int) -> list:
    if value is None:
        return [None] * n
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().reshape(-1).tolist()
    if isinstance(value, np.ndarray):
        return value.reshape(-1).tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * n


#: key of the class name beside the class index in the items of :func:`embedding_items`
LABEL_NAME_KEY = "label_name"


def _is_unlabelled(value) -> bool:
    from .knn_monitor import UNLABELLED

    return any(value is u or (type(value) is type(u) and value == u) for u in UNLABELLED)


def embedding_items(
    source: str | os.PathLike | Sequence[dict],
    image_key: str = "image",
    label_key: str = "label",
    json_key: str = "validation",
    base_dir: str | os.PathLike | None = None,
    config_key: str = "inference_datalist",
) -> list[dict]:
    """The items of an embedding inference run, each ``{image_key: ..., label_key: class index (-1 unlabelled),
    "label_name": class name ("" unlabelled), "path": where the item comes from, **the item's other keys}``.

    ``source`` is a labelled ``path,label`` CSV (read as the kNN monitor reads it,
    :func:`~monai_ssl_ext.handlers.knn_monitor.read_knn_datalist`: relative paths from the CSV's folder, labels
    may be class names; unlabelled rows are left out), a JSON datalist (its ``json_key`` list, relative paths
    from ``base_dir`` or the JSON's folder; items without a label are kept, unlabelled) or a list of items
    (e.g. :func:`monai_ssl_ext.data.acdc_group_items`). Class indices follow the sorted class names (numbers by
    value, then strings), as in the kNN monitor. ``path`` is the image path, followed by `` frame F`` /
    `` slice S`` where the item names a frame or slice of a volume (several items of one file).

    Raises:
        FileNotFoundError: ``source`` does not exist (named with ``config_key``).
        ValueError: an item has no ``image_key``, or the list is empty (named with ``config_key``).
    """
    from ..data import load_datalist
    from .knn_monitor import class_indices, read_knn_datalist

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"embedding datalist {str(path)!r} does not exist (config key `{config_key}`).")
        if path.suffix.lower() == ".json":
            items = load_datalist(path, json_key, base_dir=base_dir, is_segmentation=False)
        else:
            items = read_knn_datalist(path, image_key, label_key, config_key=config_key)
        name = str(path)
    elif isinstance(source, Sequence):
        items, name = list(source), "<list>"
    else:
        raise TypeError(f"`{config_key}` must be a CSV / JSON path or a list of items, got {type(source).__name__}.")
    if not items:
        raise ValueError(f"embedding datalist {name} has no items (config key `{config_key}`).")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or image_key not in item:
            raise ValueError(f"embedding datalist {name}, item {i}: needs key {image_key!r}, got "
                             f"{sorted(item) if isinstance(item, dict) else repr(item)} (config key `{config_key}`).")
    raw = [item.get(label_key) for item in items]
    labelled = [v for v in raw if not _is_unlabelled(v)]
    _, classes = class_indices(labelled)
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for item, value in zip(items, raw):
        where = str(item[image_key]) if isinstance(item[image_key], (str, os.PathLike)) else ""
        where += "".join(f" {k} {item[k]}" for k in ("frame", "slice") if item.get(k) is not None)
        unlabelled = _is_unlabelled(value)
        out.append({**item, label_key: -1 if unlabelled else index[value],
                    LABEL_NAME_KEY: "" if unlabelled else str(value), "path": where})
    return out


class EmbeddingWriter:
    """Write ``embeddings`` (N, D) float32, ``labels`` (N,) int64, ``paths`` (N,) str and ``classes`` (K,) str
    (the name of each class index, where the batches carry ``label_name_key``, else the index) arrays to
    ``path`` (``np.savez``, atomically) when the engine completes; with ``plot_path``, also a 2-D scatter plot
    of the embeddings coloured by label (:func:`monai_ssl_ext.plots.embedding_plot`: PCA, or UMAP when the
    ``umap`` package is installed).

    Use it on a ``SupervisedEvaluator`` whose network returns pooled features (a
    :class:`~monai_ssl_ext.networks.backbones.Backbone`): each iteration, the output
    ``engine.state.output[output_key]`` (B, ...) is flattened to (B, D) (decollated outputs,
    lists of per-item dicts, are stacked), the labels are taken from the batch's ``label_key``
    (-1 where there is none) and the paths from the batch's ``path_key`` or else the image's
    ``filename_or_obj`` metadata.
    Rows are in data-loader order. Single-process (rank 0 writes; no gathering across ranks).

    Args:
        path: output file; it should end in ``.npz``.
        output_key: key of the embeddings in the engine output.
        label_key: key of the labels in the batch.
        path_key: key of the item paths in the batch (e.g. copied from ``image`` before loading).
        image_key: key whose metadata gives the paths when ``path_key`` is absent.
        label_name_key: key of the class names in the batch (:func:`embedding_items`); absent: none.
        plot_path: PNG of the embedding plot (``None``: no plot). Log it to MLflow by listing it in the
            config's ``TrackParams`` ``artifacts`` (attached after this handler, so it exists when the run ends).
        plot_method: ``"auto"`` (UMAP when installed, else PCA), ``"pca"`` or ``"umap"``.
    """

    def __init__(
        self,
        path: str,
        output_key: Hashable = "pred",
        label_key: Hashable = "label",
        path_key: Hashable = "path",
        image_key: Hashable = "image",
        label_name_key: Hashable = LABEL_NAME_KEY,
        plot_path: str | None = None,
        plot_method: str = "auto",
    ):
        from ..plots import METHODS

        if not str(path).endswith(".npz"):
            raise ValueError(f"EmbeddingWriter: path must end in .npz, got {path!r}")
        if plot_path is not None and not str(plot_path).lower().endswith(".png"):
            raise ValueError(f"EmbeddingWriter: plot_path must end in .png, got {plot_path!r} "
                             "(config `embedding_plot`)")
        if plot_method not in METHODS:
            raise ValueError(f"EmbeddingWriter: plot_method must be one of {METHODS}, got {plot_method!r}")
        self.path = str(path)
        self.plot_path = None if plot_path is None else str(plot_path)
        self.plot_method = plot_method
        self.label_name_key = label_name_key
        self.output_key, self.label_key, self.path_key, self.image_key = output_key, label_key, path_key, image_key
        self.logger = logging.getLogger("monai_ssl_ext.EmbeddingWriter")
        self._reset()

    def _reset(self, engine: Engine | None = None) -> None:
        self.embeddings: list[np.ndarray] = []
        self.labels: list[int] = []
        self.paths: list[str] = []
        self.names: dict[int, str] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        output, batch = engine.state.output, engine.state.batch
        if isinstance(output, list) and output and isinstance(output[0], dict):  # decollated
            emb = torch.stack([torch.as_tensor(self._get(o, self.output_key, "output")) for o in output])
            items = batch if isinstance(batch, list) else [{}] * len(output)
            labels = [item.get(self.label_key) for item in items]
            names = [item.get(self.label_name_key) for item in items]
            paths = [item.get(self.path_key, self._meta_path(item)) for item in items]
        else:
            emb = torch.as_tensor(self._get(output, self.output_key, "output"))
            batch = batch if isinstance(batch, dict) else {}
            labels = _as_list(batch.get(self.label_key), emb.shape[0])
            names = _as_list(batch.get(self.label_name_key), emb.shape[0])
            paths = batch.get(self.path_key)
            paths = _as_list(paths if paths is not None else self._meta_path(batch), emb.shape[0])
        emb = emb.detach().float().cpu()
        emb = emb.reshape(emb.shape[0], -1)
        n = emb.shape[0]
        labels = [self._label(v) for v in labels]
        if len(labels) != n or len(paths) != n or len(names) != n:
            raise ValueError(f"EmbeddingWriter: {n} embeddings but {len(labels)} labels, {len(names)} label names "
                             f"and {len(paths)} paths")
        for index, name in zip(labels, names):
            if index < 0 or name is None:
                continue
            if self.names.setdefault(index, str(name)) != str(name):
                raise ValueError(f"EmbeddingWriter: class {index} is named both {self.names[index]!r} and {name!r}")
        self.embeddings.append(emb.numpy())
        self.labels.extend(labels)
        self.paths.extend("" if p is None else str(p) for p in paths)

    @staticmethod
    def _label(value) -> int:
        if value is None:
            return -1
        if isinstance(value, str):
            raise ValueError(f"EmbeddingWriter: label {value!r} is not a class index: read the list with "
                             "monai_ssl_ext.handlers.embeddings.embedding_items (class names -> indices)")
        return int(torch.as_tensor(value).item())

    def classes(self) -> list[str]:
        """The name of every class index up to the largest label seen (the index itself where unnamed)."""
        top = max([v for v in self.labels if v >= 0], default=-1)
        return [self.names.get(i, str(i)) for i in range(top + 1)]

    def _get(self, data, key, what: str):
        if not isinstance(data, dict) or key not in data:
            raise KeyError(f"EmbeddingWriter: the engine {what} has no {key!r}")
        return data[key]

    def _meta_path(self, data: dict):
        value = data.get(self.image_key)
        meta = getattr(value, "meta", None) or data.get(f"{self.image_key}_meta_dict") or {}
        return meta.get("filename_or_obj")

    def write(self, engine: Engine | None = None) -> None:
        if get_rank() != 0:
            return
        emb = np.concatenate(self.embeddings, 0).astype(np.float32) if self.embeddings else np.zeros((0, 0), np.float32)
        labels, paths = np.asarray(self.labels, dtype=np.int64), np.asarray(self.paths, dtype=str)
        # to an open file np.savez adds no ".npz": the temp file is <path>.tmp<pid>
        classes = np.asarray(self.classes(), dtype=str)
        atomic_write(self.path, lambda f: np.savez(f, embeddings=emb, labels=labels, paths=paths, classes=classes))
        self.logger.info(f"wrote {emb.shape[0]} embeddings of dim {emb.shape[1] if emb.ndim == 2 else 0} to {self.path}")
        if self.plot_path is not None and emb.shape[0]:
            from ..plots import embedding_plot

            embedding_plot(emb, labels, self.plot_path, classes=list(classes), method=self.plot_method)
