"""Predicted masks and contour overlays of binary segmentations (gie_polyp_segmentation's inference).

:class:`ContourOverlayWriter` is an :class:`~monai_ssl_ext.handlers.overlay.OverlayWriter` whose overlay draws
outlines instead of a blended fill: the prediction's contour in ``color`` and, where the item has a ground-truth
mask (``label_key``), its contour in ``label_color``, over the original picture. The mask PNG (0 / 255, original
size) is written as by ``OverlayWriter``; both files are checked against the original picture's size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from ignite.engine import Engine

from .overlay import OverlayWriter, _to_numpy

__all__ = ["ContourOverlayWriter", "mask_contour"]


def mask_contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boolean outline of a boolean ``(H, W)`` mask: mask pixels with a 4-neighbour outside the mask (the image
    border counts as outside), grown inwards to ``width`` pixels."""
    mask = np.asarray(mask, bool)
    inner = mask.copy()
    for _ in range(max(1, int(width))):
        p = np.pad(inner, 1, constant_values=False)
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


class ContourOverlayWriter(OverlayWriter):
    """Write ``<stem>_mask.png`` (prediction, 0/255) and ``<stem>_overlay.png`` (contours on the picture).

    Args:
        label_key: key of the ground-truth mask in each output item (drawn when present; ``(1, H, W)`` at the
            original size, foreground > 0).
        label_color: RGB colour of the ground-truth contour.
        width: contour width in pixels.
        other arguments: as :class:`OverlayWriter` (``color`` is the prediction's contour colour; ``alpha`` its
            opacity).
    """

    def __init__(self, output_dir: str, label_key: str = "label", label_color: Sequence[int] = (0, 0, 255),
                 width: int = 2, **kwargs):
        super().__init__(output_dir, **kwargs)
        if len(tuple(label_color)) != 3:
            raise ValueError(f"ContourOverlayWriter: label_color must be an RGB triple, got {label_color!r}")
        self.label_key = label_key
        self.label_color = np.asarray(label_color, dtype=np.float32)
        self.width = int(width)

    def __call__(self, engine: Engine) -> None:
        outputs = engine.state.output
        if isinstance(outputs, dict):
            raise TypeError("ContourOverlayWriter needs decollated outputs (SupervisedEvaluator with decollate=True)")
        for item in outputs:
            pred = item[self.pred_key]
            filename = self._filename(pred) or self._filename(item.get(self.image_key))
            if filename is None:
                raise ValueError("ContourOverlayWriter: cannot find the source file name in the prediction or image "
                                 "metadata")
            self.write(pred, filename, item.get(self.label_key))

    def write(self, pred, filename: str, label=None) -> tuple[str, str]:
        from PIL import Image

        with Image.open(filename) as im:
            image = np.asarray(im.convert("RGB"), dtype=np.float32)
        h, w = image.shape[:2]
        mask = self.mask(pred)
        if mask.shape != (h, w):
            raise ValueError(f"ContourOverlayWriter: prediction for {filename} has spatial shape {mask.shape}, the "
                             f"image is {h} x {w} (H x W): resize the prediction to the original size first")
        overlay = image.copy()
        if label is not None:
            label = _to_numpy(label)
            label = label[0] if label.ndim == 3 else label
            if label.shape != (h, w):
                raise ValueError(f"ContourOverlayWriter: ground truth for {filename} has shape {label.shape}, the "
                                 f"image is {h} x {w}")
            overlay[mask_contour(label > 0, self.width)] = self.label_color
        edge = mask_contour(mask, self.width)
        overlay[edge] = (1.0 - self.alpha) * overlay[edge] + self.alpha * self.color
        stem = self._stem(filename)
        self.written[stem] = filename
        os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
        mask_path, overlay_path = f"{stem}{self.mask_postfix}.png", f"{stem}{self.overlay_postfix}.png"
        Image.fromarray((mask * 255).astype(np.uint8)).save(mask_path)
        Image.fromarray(np.clip(np.rint(overlay), 0, 255).astype(np.uint8)).save(overlay_path)
        return mask_path, overlay_path
