"""Training and evaluation engines for torchvision detection models (SSL4GIE polyp detection).

torchvision's detectors take a *list* of ``(C, H, W)`` images (each its own size) and, in train mode, a list of
``{"boxes": (N, 4) xyxy, "labels": (N,)}`` targets, and return a dict of losses; in eval mode they return one
``{"boxes", "scores", "labels"}`` dict per image. The engines here are MONAI's ``SupervisedTrainer`` /
``SupervisedEvaluator`` with that calling convention:

* the data loader yields lists of items (``collate_fn=monai.data.utils.no_collation``), each
  ``{"image": (C, H, W) float in [0, 1], "boxes": (N, 4) xyxy pixels (x along the width), "labels": (N,)}``;
* :class:`DetectionBatch` turns such a list into ``(images, targets)`` on the device (and, for training, passes
  the targets to the model's forward);
* :class:`DetectionLoss` sums the loss dict, as torchvision's reference training and the source do
  (``sum(loss for loss in loss_dict.values())``);
* :class:`DetectionTrainer` (its output: one dict per image, each with the batch ``loss`` and the loss dict as
  ``pred``, like MONAI's decollated outputs) steps the optimizer every ``accum_iter`` iterations (and at the end of an epoch) on
  the gradient of ``loss / accum_iter`` per iteration (MONAI's ``accumulation_steps``): ``accum_iter`` loader
  batches of ``b`` images make one optimizer step of ``accum_iter * b`` images (the source's ``--accum_iter``,
  2 for its ViT-B runs: its per-process loader batch is ``batch_size // world_size // accum_iter``);
* :class:`DetectionEvaluator` runs the model in eval mode; ``pred`` and ``label`` are the per-image lists that
  :class:`monai_ssl_ext.metrics.DetectionMAP` reads;
* :class:`DetectionWriter` (an evaluator handler) writes the predicted boxes of every image to one JSON file in
  Kvasir-SEG's ``bounding-boxes.json`` format (plus scores) and a PNG per image with the boxes drawn.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer

__all__ = ["DetectionBatch", "DetectionEvaluator", "DetectionLoss", "DetectionTrainer", "DetectionWriter"]


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


class DetectionBatch:
    """``prepare_batch`` of the detection engines: a list of items → ``(images, targets)`` on ``device``, with
    ``args = (targets,)`` when ``train`` (so the model's forward gets them). ``targets`` is None when the items
    carry no ``boxes`` (inference on bare images)."""

    def __init__(self, train: bool = False, image_key: str = "image", box_key: str = "boxes", label_key: str = "labels"):
        self.train = bool(train)
        self.image_key, self.box_key, self.label_key = image_key, box_key, label_key

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        if isinstance(batchdata, dict):  # a batch of one, not collated into a list
            batchdata = [batchdata]
        images = [_plain(item[self.image_key]).to(device=device, dtype=torch.float32, non_blocking=non_blocking)
                  for item in batchdata]
        targets = None
        if all(self.box_key in item for item in batchdata):
            targets = []
            for item in batchdata:
                boxes = _plain(item[self.box_key]).to(device=device, dtype=torch.float32).reshape(-1, 4)
                labels = item.get(self.label_key)
                labels = (torch.ones(len(boxes), dtype=torch.int64) if labels is None else _plain(labels)).to(
                    device=device, dtype=torch.int64).reshape(-1)
                targets.append({"boxes": boxes, "labels": labels})
        if self.train:
            if targets is None:
                raise ValueError(f"detection training items need {self.box_key!r} and {self.label_key!r} keys")
            return images, targets, (targets,), {}
        return images, targets


class DetectionLoss:
    """The training loss of a torchvision detector: the sum of its loss dict (equal weights), as torchvision's
    reference scripts and SSL4GIE's ``train_detection.py`` compute it."""

    def __call__(self, pred: dict, target=None) -> torch.Tensor:
        if not isinstance(pred, dict) or not pred:
            raise TypeError(f"DetectionLoss expects the model's loss dict (train mode), got {type(pred).__name__}")
        return sum(pred.values())


class DetectionTrainer(SupervisedTrainer):
    """MONAI ``SupervisedTrainer`` for torchvision detectors (see the module docstring).

    Args:
        accum_iter: loader batches per optimizer step (gradient accumulation; 1 = none).
        Others: as ``SupervisedTrainer`` (``loss_function``, ``prepare_batch`` and ``decollate`` are fixed).
    """

    def __init__(self, device, max_epochs: int, train_data_loader, network, optimizer, epoch_length=None,
                 accum_iter: int = 1, train_handlers: Sequence | None = None, amp: bool = False, **kwargs):
        if int(accum_iter) < 1:
            raise ValueError(f"accum_iter must be >= 1, got {accum_iter}")
        super().__init__(
            device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
            optimizer=optimizer, loss_function=DetectionLoss(), epoch_length=epoch_length,
            prepare_batch=DetectionBatch(train=True), train_handlers=train_handlers, amp=amp, decollate=False,
            accumulation_steps=int(accum_iter), **kwargs,
        )

    def _iteration(self, engine, batchdata) -> list[dict]:
        output = super()._iteration(engine, batchdata)
        # one dict per image, the batch loss (and loss dict) in each, as MONAI's decollated outputs: handlers read
        # ``from_engine(["loss"], first=True)``; the autograd graph is dropped now rather than at the next iteration
        loss = output["loss"].detach()
        parts = {k: v.detach() for k, v in output["pred"].items()}
        targets = output.get("label") or [None] * len(output["image"])
        return [{"image": img, "label": tgt, "pred": parts, "loss": loss} for img, tgt in zip(output["image"], targets)]


class DetectionEvaluator(SupervisedEvaluator):
    """MONAI ``SupervisedEvaluator`` for torchvision detectors: ``output["pred"]`` is the list of per-image
    detections, ``output["label"]`` the list of targets (None without boxes)."""

    def __init__(self, device, val_data_loader, network, **kwargs):
        super().__init__(device=device, val_data_loader=val_data_loader, network=network,
                         prepare_batch=DetectionBatch(train=False), decollate=False, **kwargs)


def _box_record(box, score=None) -> dict:
    xmin, ymin, xmax, ymax = (round(float(v), 2) for v in box)
    rec = {"label": "polyp", "xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}
    if score is not None:
        rec["score"] = round(float(score), 4)
    return rec


class DetectionWriter:
    """Evaluator handler: every image's predicted boxes → ``<output_dir>/<json_name>`` (Kvasir-SEG's
    ``bounding-boxes.json`` format, ``{"<id>": {"height", "width", "bbox": [{"label", "xmin", "ymin", "xmax",
    "ymax", "score"}]}}``, every detection the model returns) and ``<output_dir>/images/<id>_boxes.png``: the input
    picture with the detections of score >= ``score_threshold`` drawn in ``pred_color`` (score written above) and,
    where the item has boxes, the ground truth in ``gt_color``. ``<id>`` is the image's file stem.

    The images must be the model's inputs in ``[0, 1]`` (the pipeline does not resize them: boxes are in the
    image's own pixels).
    """

    def __init__(self, output_dir: str, json_name: str = "predictions.json", score_threshold: float = 0.5,
                 pred_color: Sequence[int] = (255, 0, 0), gt_color: Sequence[int] = (0, 255, 0), line_width: int = 2):
        self.output_dir = str(output_dir)
        self.json_name = json_name
        self.score_threshold = float(score_threshold)
        self.pred_color, self.gt_color = tuple(int(c) for c in pred_color), tuple(int(c) for c in gt_color)
        self.line_width = int(line_width)
        self.records: dict[str, dict] = {}

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine) -> None:
        self.records = {}
        os.makedirs(os.path.join(self.output_dir, "images"), exist_ok=True)

    def iteration_completed(self, engine) -> None:
        batch = engine.state.batch
        batch = [batch] if isinstance(batch, dict) else batch
        preds = engine.state.output["pred"]
        targets = engine.state.output.get("label")
        for i, (item, pred) in enumerate(zip(batch, preds)):
            image = item["image"]
            meta = getattr(image, "meta", {}) or {}
            name = Path(str(meta.get("filename_or_obj", f"image_{engine.state.iteration:05d}_{i}"))).stem
            boxes, scores = pred["boxes"].detach().cpu(), pred["scores"].detach().cpu()
            h, w = int(image.shape[-2]), int(image.shape[-1])
            self.records[name] = {"height": h, "width": w,
                                  "bbox": [_box_record(b, s) for b, s in zip(boxes.tolist(), scores.tolist())]}
            gt = targets[i]["boxes"].detach().cpu().tolist() if targets is not None else []
            shown = [b for b, s in zip(boxes.tolist(), scores.tolist()) if s >= self.score_threshold]
            shown_scores = [s for s in scores.tolist() if s >= self.score_threshold]
            self._draw(image, gt, shown, shown_scores, os.path.join(self.output_dir, "images", f"{name}_boxes.png"))

    def _draw(self, image, gt, boxes, scores, path: str) -> None:
        import numpy as np
        from PIL import Image, ImageDraw

        arr = _plain(image).detach().cpu().float().clamp(0, 1).mul(255).round().byte().numpy()
        arr = np.repeat(arr, 3, axis=0) if arr.shape[0] == 1 else arr[:3]
        pic = Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)))
        draw = ImageDraw.Draw(pic)
        for b in gt:
            draw.rectangle(b, outline=self.gt_color, width=self.line_width)
        for b, s in zip(boxes, scores):
            draw.rectangle(b, outline=self.pred_color, width=self.line_width)
            draw.text((b[0] + 2, max(b[1] - 11, 0)), f"{s:.2f}", fill=self.pred_color)
        pic.save(path)

    def completed(self, engine) -> None:
        from ..io import atomic_write_text

        atomic_write_text(os.path.join(self.output_dir, self.json_name), json.dumps(self.records, indent=1) + "\n")
