"""Online weighted k-nearest-neighbour accuracy of the pretrained trunk on a labelled list.

The standard monitor of self-supervised pretraining (InstDisc: Wu et al., "Unsupervised Feature
Learning via Non-Parametric Instance Discrimination", CVPR 2018, section 3.4): embed labelled
items with the frozen trunk, let each item's ``k`` most similar items vote for their class with
weight ``exp(s / T)`` (``s`` the cosine similarity, ``T`` a temperature), and count how often the
vote is right. For item ``i`` with L2-normalised features ``f_i``::

    s_ij    = f_i . f_j
    N_k(i)  = the k items j != i with the largest s_ij          (leave-one-out)
    score_i(c) = sum over j in N_k(i) with y_j = c of exp(s_ij / T)
    pred_i  = argmax_c score_i(c)                 accuracy = mean_i [pred_i == y_i]

This is solo-learn's ``WeightedKNNClassifier.compute`` (``solo/utils/knn.py``: ``topk`` of the
cosine similarities, one-hot of the neighbours' labels weighted by ``exp(sim / T)``, summed) and
lightly's ``knn_predict`` (``lightly/utils/benchmarking/knn.py``), with defaults k = 20 and
T = 0.07 (solo-learn). Both score a test set against a train bank; here one labelled list is
scored against itself, leaving each item out of its own neighbours (and, with ``exclude_key``,
every item that shares its patient / video: frames of one video or slices of one patient are
near duplicates that share the label, and would make the accuracy measure retrieval of the same
patient rather than the representation).
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Hashable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn

from ..distributed import get_rank

__all__ = ["KNNMonitor", "knn_scores", "read_knn_datalist"]

#: label values that mark an unlabelled item (dropped)
UNLABELLED = (None, -1, "-1", "")
#: column names of the image path in a CSV header
PATH_COLUMNS = ("path", "image")


def _label_value(text: str):
    """A CSV label: an integer when it reads as one, else the stripped string."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return text


def _check_file(path: str, where: str, config_key: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: image {path!r} does not exist (config key `{config_key}`).")


def _read_csv(csv_path: Path, image_key: str, label_key: str, config_key: str, check_files: bool = True) -> list[dict]:
    """``path,label`` rows (header optional; a header may name more columns, kept as item keys)."""
    root = csv_path.resolve().parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = [(n, r) for n, r in enumerate(csv.reader(f), start=1) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"kNN datalist {str(csv_path)!r} has no rows (config key `{config_key}`).")
    first = [c.strip().lower() for c in rows[0][1]]
    if set(first) & {label_key, *PATH_COLUMNS}:  # a header
        missing = [c for c in (label_key,) if c not in first]
        if not set(first) & set(PATH_COLUMNS):
            missing.insert(0, "path")
        if missing:
            raise ValueError(f"kNN datalist {str(csv_path)!r}: header {rows[0][1]} has no column "
                             f"{' / '.join(repr(m) for m in missing)} (config key `{config_key}`).")
        columns, rows = first, rows[1:]
        path_col = next(c for c in PATH_COLUMNS if c in columns)
    else:
        columns, path_col = ["path", label_key], "path"
    items = []
    for lineno, row in rows:
        if len(row) != len(columns):
            raise ValueError(f"{csv_path}, line {lineno}: expected {len(columns)} fields {columns}, got {row!r} "
                             f"(config key `{config_key}`).")
        cells = dict(zip(columns, (c.strip() for c in row)))
        path = Path(os.path.expanduser(cells.pop(path_col)))
        path = os.path.normpath(path if path.is_absolute() else root / path)
        if check_files:
            _check_file(path, f"{csv_path}, line {lineno}", config_key)
        label = _label_value(cells.pop(label_key))
        items.append({**cells, image_key: path, label_key: label})
    return items


def _read_json(json_path: Path, json_key: str, image_key: str, config_key: str) -> list[dict]:
    try:
        content = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"kNN datalist {str(json_path)!r} is not valid JSON: {e} (config key `{config_key}`).") from None
    if isinstance(content, dict):
        if json_key not in content:
            raise ValueError(f"kNN datalist {str(json_path)!r} has no list {json_key!r} (keys: {sorted(content)}; "
                             f"config key `{config_key}`).")
        content = content[json_key]
    if not isinstance(content, list):
        raise ValueError(f"kNN datalist {str(json_path)!r}: expected a list of items, got {type(content).__name__} "
                         f"(config key `{config_key}`).")
    root = json_path.resolve().parent
    items = []
    for i, item in enumerate(content):
        if not isinstance(item, dict):
            raise ValueError(f"kNN datalist {str(json_path)!r}, item {i}: expected a dict, got {item!r} "
                             f"(config key `{config_key}`).")
        item = dict(item)
        if isinstance(item.get(image_key), str) and not os.path.isabs(item[image_key]):
            item[image_key] = os.path.normpath(root / item[image_key])
        items.append(item)
    return items


def read_knn_datalist(
    source: str | os.PathLike | Sequence[dict],
    image_key: str = "image",
    label_key: str = "label",
    json_key: str = "validation",
    config_key: str = "knn_datalist",
    check_files: bool = True,
) -> list[dict]:
    """The labelled items of a kNN monitor, each a dict with ``image_key`` and ``label_key``.

    ``source`` is a CSV file (``path,label`` rows; a first row naming the columns is a header,
    which may name more columns, kept as item keys, e.g. ``patient``; relative paths start at the
    CSV's folder; labels that read as integers are integers, others strings), a JSON file (a
    list of items, or a dict whose ``json_key`` list is used, as in MONAI datalists; relative
    ``image`` paths start at the JSON's folder) or a list of items. Items labelled -1, None or ""
    are unlabelled and dropped. Errors name the file (and line or item) and ``config_key``.
    """
    from_csv = False
    if isinstance(source, (str, os.PathLike)):
        path, name = Path(source), str(source)
        if not path.is_file():
            raise FileNotFoundError(f"kNN datalist {name!r} does not exist (config key `{config_key}`).")
        from_csv = path.suffix.lower() != ".json"  # the CSV reader checks its files, naming the line
        items = (_read_csv(path, image_key, label_key, config_key, check_files) if from_csv
                 else _read_json(path, json_key, image_key, config_key))
    elif isinstance(source, Sequence):
        items, name = [dict(item) if isinstance(item, dict) else item for item in source], "<list>"
    else:
        raise TypeError(f"`{config_key}` must be a CSV / JSON path or a list of items, got {type(source).__name__}.")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or image_key not in item or label_key not in item:
            shown = sorted(item) if isinstance(item, dict) else repr(item)
            raise ValueError(f"kNN datalist {name}, item {i}: needs keys {image_key!r} and {label_key!r}, got "
                             f"{shown} (config key `{config_key}`).")
        if check_files and not from_csv and isinstance(item[image_key], str):
            _check_file(item[image_key], f"kNN datalist {name}, item {i}", config_key)
    labelled = [item for item in items if not _unlabelled(item[label_key])]
    if len(labelled) < len(items):
        logging.getLogger("monai_ssl_ext.KNNMonitor").info(
            f"kNN datalist {name}: {len(items) - len(labelled)} unlabelled items dropped, {len(labelled)} kept")
    return labelled


def _unlabelled(label) -> bool:
    return any(label is u or (type(label) is type(u) and label == u) for u in UNLABELLED)


def _sort_key(label: Hashable) -> tuple:
    return ("", label) if isinstance(label, (int, float)) and not isinstance(label, bool) else (type(label).__name__, str(label))


def class_indices(labels: Sequence[Hashable]) -> tuple[list[int], list]:
    """``(indices, classes)``: the classes sorted (numbers by value, then strings), each label
    replaced by its class's position."""
    classes = sorted(set(labels), key=_sort_key)
    pos = {c: i for i, c in enumerate(classes)}
    return [pos[v] for v in labels], classes


def _eligible_counts(groups: Sequence[int] | None, n: int) -> list[int]:
    """Per item, how many other items may be its neighbours."""
    if groups is None:
        return [n - 1] * n
    size: dict[int, int] = {}
    for g in groups:
        size[g] = size.get(g, 0) + 1
    return [n - size[g] for g in groups]


@torch.no_grad()
def knn_scores(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    groups: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Leave-one-out weighted kNN class scores ``(N, num_classes)`` of every item (module docstring).

    ``features`` (N, D) are L2-normalised here; item ``i`` is never its own neighbour, nor is any
    item ``j`` with ``groups[j] == groups[i]`` when ``groups`` (N,) is given. Each row is divided
    by its sum (the vote shares): the InstDisc / solo-learn scores times one positive factor per
    item, so the prediction ``argmax`` is theirs; ``exp((s - s_max) / T)`` is used so no
    temperature overflows. An item with fewer than ``k`` eligible neighbours votes with those it
    has (``k`` must be below N); one without any is an error.
    """
    f = F.normalize(features.float(), dim=1)
    n = f.shape[0]
    labels = labels.to(f.device).long()
    groups = groups.to(f.device) if groups is not None else None
    out = torch.empty(n, num_classes, device=f.device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sim = f[start:stop] @ f.T  # (b, N) cosine similarities
        rows = torch.arange(stop - start, device=f.device)
        sim[rows, rows + start] = -math.inf  # leave one out
        if groups is not None:  # leave the item's group out
            sim.masked_fill_(groups[start:stop, None] == groups[None, :], -math.inf)
        top, idx = sim.topk(k, dim=1)  # sorted: column 0 is each row's largest similarity
        if not torch.isfinite(top[:, 0]).all():
            raise ValueError("knn_scores: some items have no neighbour outside their group")
        weight = torch.exp((top - top[:, :1]) / temperature)  # excluded items (-inf) weigh 0
        votes = F.one_hot(labels[idx], num_classes).float() * weight.unsqueeze(-1)
        scores = votes.sum(dim=1)
        out[start:stop] = scores / scores.sum(dim=1, keepdim=True)
    return out


def _collate_key(key: str, batch: list[dict]):
    """Collate only ``key`` of the transformed items (the other keys may differ between items)."""
    from monai.data import list_data_collate

    return list_data_collate([{key: item[key]} for item in batch])


def _unwrap(module: nn.Module) -> nn.Module:
    while isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        module = module.module
    return module


class KNNMonitor:
    """Weighted kNN accuracy of ``backbone`` on a labelled list, every ``interval`` epochs and once
    at the end of the run: ``engine.state.metrics["knn_acc"]`` (and ``"knn_top5"`` with more than
    5 classes), so the trainer's ``StatsHandler`` prints it and MONAI's ``MLFlowHandler`` logs it
    with the epoch as step, and a log line ``kNN (k=20) accuracy: 0.xxx on N items``. The scoring
    is InstDisc's weighted vote, leave-one-out (module docstring; :func:`knn_scores`).

    Opt-in: with ``datalist`` None or ``interval`` 0 nothing is read and nothing is attached.

    Put it before the trainer's ``StatsHandler`` in ``train#handlers`` (then that prints the value
    in its epoch line); MONAI's ``--tracking mlflow`` appends its ``MLFlowHandler`` after every
    handler of ``train#handlers``, so it logs the metrics this handler set at EPOCH_COMPLETED. The
    value stays in ``state.metrics`` only for the epoch it was computed at (removed when the next
    epoch starts), so MLflow gets one point per evaluation. An evaluation at COMPLETED (a run that
    ended before its last epoch's end) is logged through the engine's ``MLFlowHandler`` directly.

    Each evaluation embeds every item (``transform`` per item, batches of ``batch_size``, in
    ``torch.no_grad()``, the backbone in eval mode, then every submodule's train / eval mode as
    before: batch-norm statistics are not touched), L2-normalises the features and scores them.
    The loader has its own random generator: the training's random streams are not advanced.
    Under ``torchrun`` only rank 0 evaluates (no collective: the other ranks go on to the next
    epoch and wait for rank 0 in the next gradient all-reduce); DDP wrappers are unwrapped.

    Small lists still give a number, with a warning: ``k`` is clipped to the list size minus one;
    an item with fewer than ``k`` items outside its ``exclude_key`` group votes with those; when
    every item has the same ``exclude_key`` value, each item is only left out itself. A list with
    a single class, or a missing file or column, is an error naming the file and ``config_key``.

    Args:
        backbone: module giving pooled features ``(B, D)`` (a :class:`~monai_ssl_ext.networks.Backbone`;
            for EMA methods the exported one, e.g. ``$@network_def.exported_backbone('target')``).
        datalist: a ``path,label`` CSV, a JSON datalist, or a list of ``{"image", "label"}`` items
            (:func:`read_knn_datalist`); labels may be strings (classes sorted, then indexed).
        transform: MONAI dictionary transform making ``image_key`` a channel-first tensor the
            backbone takes (load, resize / crop, intensity map, normalisation).
        interval: epochs between evaluations (0: off).
        k: neighbours (solo-learn's default 20).
        temperature: T of the weights ``exp(s / T)`` (solo-learn's default 0.07).
        batch_size: items per forward pass.
        device: where features are computed (default: the backbone's device).
        num_workers: DataLoader workers.
        exclude_key: item key whose shared values exclude items from each other's neighbours
            (leave-one-patient-out, e.g. ``"patient"``); ``"folder"`` (when the items have no such
            key) is the folder of the image file, e.g. the video of an extracted Cholec80 frame.
        image_key, label_key: item keys of the image and the label.
        json_key: the list of a JSON datalist that holds a dict.
        amp: autocast the forward passes (CUDA).
        config_key: the config id named in error messages.
    """

    def __init__(
        self,
        backbone: nn.Module,
        datalist: str | os.PathLike | Sequence[dict] | None,
        transform=None,
        interval: int | None = 1,
        k: int = 20,
        temperature: float = 0.07,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        num_workers: int = 0,
        exclude_key: str | None = None,
        image_key: str = "image",
        label_key: str = "label",
        json_key: str = "validation",
        amp: bool = False,
        config_key: str = "knn_datalist",
    ):
        self.logger = logging.getLogger("monai_ssl_ext.KNNMonitor")
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"KNNMonitor: backbone must be a torch module, got {type(backbone).__name__}")
        if isinstance(interval, bool) or (interval is not None and (not isinstance(interval, int) or interval < 0)):
            raise ValueError(f"KNNMonitor: `knn_interval` must be an integer >= 0 (0: off), got {interval!r}")
        self.backbone, self.interval = backbone, int(interval or 0)
        self.enabled = datalist is not None and self.interval > 0
        self.transform, self.batch_size, self.num_workers = transform, int(batch_size), int(num_workers)
        self.device = torch.device(device) if device is not None else None
        self.image_key, self.label_key, self.amp, self.config_key = image_key, label_key, bool(amp), config_key
        if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            raise ValueError(f"KNNMonitor: k must be an integer >= 1, got {k!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"KNNMonitor: temperature must be a number > 0, got {temperature!r}")
        self.k_requested, self.temperature = k, float(temperature)
        self._done: tuple[int, int] | None = None
        self.last: dict[str, float] = {}
        if not self.enabled:
            return
        if transform is None:
            raise ValueError(f"KNNMonitor: a transform is needed to load the `{config_key}` items (config key `knn_transform`)")
        self.source = str(datalist) if isinstance(datalist, (str, os.PathLike)) else "<list>"
        self.items = read_knn_datalist(datalist, image_key, label_key, json_key, config_key)
        self.labels, self.classes = class_indices([item[label_key] for item in self.items])
        if len(self.classes) < 2:
            found = f"only class {self.classes[0]!r}" if self.classes else "no labelled item"
            raise ValueError(f"KNNMonitor: {self.source} has {found} ({len(self.items)} items): kNN accuracy needs "
                             f"at least two classes (config key `{config_key}`)")
        n = len(self.items)
        self.k = min(k, n - 1)
        if self.k < k:
            self._warn(f"k={k} but {self.source} has {n} items: k clipped to {self.k}")
        self.groups = self._groups(exclude_key)
        if self.groups is not None and len(set(self.groups)) == 1:
            self.groups = None
            self._warn(f"every item of {self.source} has the same `{exclude_key}` (exclude_key): no item has a "
                       "neighbour outside its own group, so each item is only left out itself")
        eligible = min(_eligible_counts(self.groups, n))
        if eligible < self.k:
            self._warn(f"some items of {self.source} have only {eligible} neighbours outside their `{exclude_key}` "
                       f"group: they vote with those (k={self.k} for the others)")

    def _warn(self, text: str) -> None:
        msg = f"KNNMonitor: {text} (config key `{self.config_key}`)"
        warnings.warn(msg, stacklevel=3)
        self.logger.warning(msg)

    def _groups(self, exclude_key: str | None) -> list[int] | None:
        if exclude_key is None:
            return None
        values = []
        for i, item in enumerate(self.items):
            if exclude_key in item:
                values.append(item[exclude_key])
            elif exclude_key == "folder" and isinstance(item[self.image_key], (str, os.PathLike)):
                values.append(os.path.dirname(os.path.abspath(item[self.image_key])))
            else:
                raise ValueError(f"KNNMonitor: item {i} of {self.source} has no {exclude_key!r} (exclude_key; config "
                                 f"key `{self.config_key}`)")
        return class_indices(values)[0]

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("knn_acc", "knn_top5") if self.enabled and len(self.classes) > 5 else ("knn_acc",)

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.EPOCH_STARTED, self._clear)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _reset(self, engine: Engine) -> None:
        self._done = None

    def _clear(self, engine: Engine) -> None:
        for name in self.metric_names:
            engine.state.metrics.pop(name, None)

    def _epoch_completed(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval == 0 or engine.state.epoch == engine.state.max_epochs:
            self(engine)

    def _completed(self, engine: Engine) -> None:
        """The evaluation at the end of the run, unless this epoch and iteration were just evaluated."""
        if self._done == (engine.state.epoch, engine.state.iteration):
            return
        result = self(engine)
        if result:
            _log_to_mlflow(engine, result)

    def __call__(self, engine: Engine) -> dict[str, float]:
        if get_rank() != 0:
            return {}
        start = time.perf_counter()
        result = self.evaluate()
        engine.state.metrics.update(result)
        self._done = (engine.state.epoch, engine.state.iteration)
        top5 = f", top-5 {result['knn_top5']:.3f}" if "knn_top5" in result else ""
        self.logger.info(f"kNN (k={self.k}) accuracy: {result['knn_acc']:.3f} on {len(self.items)} items{top5} "
                         f"({len(self.classes)} classes, epoch {engine.state.epoch}, {time.perf_counter() - start:.1f} s)")
        return result

    def evaluate(self) -> dict[str, float]:
        """Embed every item and score it: ``{"knn_acc": ..., ["knn_top5": ...]}``."""
        if not self.enabled:
            raise RuntimeError("KNNMonitor: disabled (no datalist or interval 0)")
        backbone = _unwrap(self.backbone)
        device = self.device or next(iter(backbone.parameters()), torch.empty(0)).device
        modes = [(m, m.training) for m in backbone.modules()]
        backbone.eval()
        try:
            features = self.features(backbone, device)
        finally:
            for m, training in modes:
                m.training = training
        labels = torch.as_tensor(self.labels, device=features.device)
        groups = torch.as_tensor(self.groups, device=features.device) if self.groups is not None else None
        scores = knn_scores(features, labels, len(self.classes), self.k, self.temperature, groups)
        n = len(self.labels)
        result = {"knn_acc": int((scores.argmax(dim=1) == labels).sum()) / n}
        if len(self.classes) > 5:  # the label among the 5 best-scored classes, with a vote
            top, idx = scores.topk(5, dim=1)
            hit = ((idx == labels[:, None]) & (top > 0)).any(dim=1)
            result["knn_top5"] = int(hit.sum()) / n
        self.last = result
        return result

    @torch.no_grad()
    def features(self, backbone: nn.Module, device: torch.device) -> torch.Tensor:
        """``(N, D)`` features of the items, in list order."""
        from monai.data import DataLoader, Dataset
        from monai.utils import convert_to_tensor

        loader = DataLoader(Dataset(self.items, self.transform), batch_size=self.batch_size, shuffle=False,
                            num_workers=self.num_workers, generator=torch.Generator().manual_seed(0),
                            collate_fn=functools.partial(_collate_key, self.image_key))
        out = []
        for batch in loader:
            x = convert_to_tensor(batch[self.image_key], track_meta=False).to(device)
            with torch.autocast(device.type, enabled=self.amp and device.type == "cuda"):
                f = backbone(x)
            if not isinstance(f, torch.Tensor) or f.ndim < 2:
                raise ValueError(f"KNNMonitor: the backbone must return (B, D) features, got "
                                 f"{getattr(f, 'shape', type(f).__name__)}")
            out.append(f.float().flatten(1))
        return torch.cat(out)


def _log_to_mlflow(engine: Engine, metrics: dict[str, float]) -> None:
    """Log ``metrics`` at the current epoch through the ``MLFlowHandler`` attached to ``engine``
    (MONAI's handler logs ``state.metrics`` at EPOCH_COMPLETED only)."""
    from .tracking import _mlflow_handlers

    handlers = [h for h in _mlflow_handlers(engine) if h.cur_run is not None]
    if not handlers:
        return
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    for handler in handlers:
        step = handler.global_epoch_transform(engine.state.epoch)
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        handler.client.log_batch(handler.cur_run.info.run_id, metrics=batch)
