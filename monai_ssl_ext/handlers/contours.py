"""Outlines of segmentations: :func:`mask_contour`, which :class:`~monai_ssl_ext.handlers.overlay.OverlayWriter`
draws for ground truths and, with ``style="contour"``, predictions.

:class:`ContourOverlayWriter` is the ``OverlayWriter`` with contour defaults (gie_polyp_segmentation's inference):
the prediction's outline in ``color`` and, where the item has a ground-truth mask (``label_key``), its outline in
``label_color``, over the original picture; the mask PNG (0 / 255, original size) as ``OverlayWriter`` writes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .overlay import OverlayWriter

__all__ = ["ContourOverlayWriter", "mask_contour"]


def mask_contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boolean outline of a ``(H, W)`` segmentation: a boolean mask, or a class-index map (0 = background).

    Foreground pixels with a 4-neighbour of another class (the image border counts as background) are the
    outline; it is grown inwards to ``width`` pixels (a pixel is on it when the region of its class eroded
    ``width`` times no longer holds it). For a boolean mask: mask pixels with a 4-neighbour outside the mask."""
    labels = np.asarray(mask)
    labels = labels.astype(np.int64) if labels.dtype == bool else np.rint(labels).astype(np.int64)
    if labels.ndim != 2:
        raise ValueError(f"mask_contour: expected a 2D mask, got shape {labels.shape}")
    fg = labels > 0
    p = np.pad(labels, 1, constant_values=0)
    same = fg.copy()
    for nb in (p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]):
        same &= nb == labels
    inner = fg.copy()
    for _ in range(max(1, int(width))):
        q = np.pad(inner, 1, constant_values=False)
        inner = inner & q[:-2, 1:-1] & q[2:, 1:-1] & q[1:-1, :-2] & q[1:-1, 2:] & same
    return fg & ~inner


class ContourOverlayWriter(OverlayWriter):
    """:class:`OverlayWriter` with ``style="contour"``, ground truth under ``label_key`` (default ``"label"``)
    outlined in ``label_color`` (default blue) and outlines ``width`` pixels wide (default 2). Writes
    ``<stem>_mask.png`` (prediction, 0/255) and ``<stem>_overlay.png`` (outlines on the picture).

    Args:
        output_dir, label_key, label_color, width: as :class:`OverlayWriter`.
        kwargs: the other arguments of :class:`OverlayWriter` (``color`` is the prediction's outline colour;
            ``alpha`` its opacity).
    """

    def __init__(self, output_dir: str, label_key: str = "label", label_color: Sequence[int] = (0, 0, 255),
                 width: int = 2, **kwargs):
        kwargs.setdefault("style", "contour")
        super().__init__(output_dir, label_key=label_key, label_color=label_color, width=width, **kwargs)
