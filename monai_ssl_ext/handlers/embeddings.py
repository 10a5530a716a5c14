"""Collect an evaluator's per-item outputs (encoder embeddings) and write them to one ``.npz``."""

from __future__ import annotations

import logging
from collections.abc import Hashable

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..distributed import get_rank
from ..io import atomic_write

__all__ = ["EmbeddingWriter"]


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


class EmbeddingWriter:
    """Write ``embeddings`` (N, D) float32, ``labels`` (N,) int64 and ``paths`` (N,) str arrays to
    ``path`` (``np.savez``, atomically) when the engine completes.

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
    """

    def __init__(
        self,
        path: str,
        output_key: Hashable = "pred",
        label_key: Hashable = "label",
        path_key: Hashable = "path",
        image_key: Hashable = "image",
    ):
        if not str(path).endswith(".npz"):
            raise ValueError(f"EmbeddingWriter: path must end in .npz, got {path!r}")
        self.path = str(path)
        self.output_key, self.label_key, self.path_key, self.image_key = output_key, label_key, path_key, image_key
        self.logger = logging.getLogger("monai_ssl_ext.EmbeddingWriter")
        self._reset()

    def _reset(self, engine: Engine | None = None) -> None:
        self.embeddings: list[np.ndarray] = []
        self.labels: list[int] = []
        self.paths: list[str] = []

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
            paths = [item.get(self.path_key, self._meta_path(item)) for item in items]
        else:
            emb = torch.as_tensor(self._get(output, self.output_key, "output"))
            batch = batch if isinstance(batch, dict) else {}
            labels = _as_list(batch.get(self.label_key), emb.shape[0])
            paths = batch.get(self.path_key)
            paths = _as_list(paths if paths is not None else self._meta_path(batch), emb.shape[0])
        emb = emb.detach().float().cpu()
        emb = emb.reshape(emb.shape[0], -1)
        n = emb.shape[0]
        labels = [int(torch.as_tensor(v).item()) if v is not None else -1 for v in labels]
        if len(labels) != n or len(paths) != n:
            raise ValueError(f"EmbeddingWriter: {n} embeddings but {len(labels)} labels and {len(paths)} paths")
        self.embeddings.append(emb.numpy())
        self.labels.extend(labels)
        self.paths.extend("" if p is None else str(p) for p in paths)

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
        atomic_write(self.path, lambda f: np.savez(f, embeddings=emb, labels=labels, paths=paths))
        self.logger.info(f"wrote {emb.shape[0]} embeddings of dim {emb.shape[1] if emb.ndim == 2 else 0} to {self.path}")
