"""Write 2D segmentation predictions as PNG masks and colour overlays (inference bundles).

:class:`OverlayWriter` is an ignite handler for a MONAI ``SupervisedEvaluator`` whose
postprocessing leaves, for every image, a class-index (or one-hot / probability) prediction that
has already been inverted to the **original** image size (``Invertd``). For each image it writes

* ``<stem><mask_postfix>.png``: the foreground mask, uint8 0 / 255, original size;
* ``<stem><overlay_postfix>.png``: the original RGB image with the mask blended in ``color``.

Files go to ``output_dir``; with ``data_root_dir`` the input's sub-folders below that folder are
kept (so ``<root>/val/video41/000001.jpg`` does not collide with ``<root>/val/video42/000001.jpg``).

Orientation: pictures are loaded with :class:`~monai_ssl_ext.transforms.LoadPictured`, row index
first, so a prediction's spatial shape is the picture's ``(H, W)``; the writer reads the original
picture again with PIL and raises when the shapes differ (e.g. when the prediction was not
inverted to the original size, or was loaded with MONAI's default ``(W, H)`` reader).

:func:`require_checkpoint` fails early, with the path and what to do, when a bundle is asked to
evaluate or infer with a model that does not exist.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["OverlayWriter", "require_checkpoint"]


def require_checkpoint(path: str, hint: str = "run the bundle's configs/train.json first, or set `ckpt_dir`") -> str:
    """Return ``path`` if it is a file; otherwise raise ``FileNotFoundError`` naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model checkpoint {os.path.abspath(path)!r} does not exist ({hint}).")
    return path


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.numpy()
    return np.asarray(x)


class OverlayWriter:
    """Save predicted masks (0/255 PNG) and overlays (PNG) at the original image size.

    Args:
        output_dir: output folder (created if needed).
        pred_key: key of the prediction in each decollated output item.
        image_key: key of the input image in each batch item (its metadata names the source file
            when the prediction's metadata does not).
        data_root_dir: keep the source file's sub-folders relative to this folder; files outside
            it (and every file when ``None``) are written flat under ``output_dir``.
        color: RGB colour of the mask in the overlay.
        alpha: opacity of ``color`` over masked pixels (0..1).
        mask_postfix / overlay_postfix: appended to the source file's stem.
        foreground: class indices counted as foreground; ``None`` = every class but 0.

    The prediction (``C x S1 x S2``, channel first) may hold class indices (``C = 1``, e.g. after
    ``AsDiscreted(argmax=True)``) or one score / one-hot channel per class (``C > 1``, reduced by
    argmax).
    """

    def __init__(
        self,
        output_dir: str,
        pred_key: str = "pred",
        image_key: str = "image",
        data_root_dir: str | None = None,
        color: Sequence[int] = (0, 255, 0),
        alpha: float = 0.5,
        mask_postfix: str = "_mask",
        overlay_postfix: str = "_overlay",
        foreground: Sequence[int] | None = None,
    ) -> None:
        if len(tuple(color)) != 3:
            raise ValueError(f"OverlayWriter: color must be an RGB triple, got {color!r}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"OverlayWriter: alpha must be in [0, 1], got {alpha!r}")
        if mask_postfix == overlay_postfix:
            raise ValueError("OverlayWriter: mask_postfix and overlay_postfix must differ")
        self.output_dir = str(output_dir)
        self.pred_key, self.image_key = pred_key, image_key
        self.data_root_dir = os.path.abspath(data_root_dir) if data_root_dir else None
        self.color = np.asarray(color, dtype=np.float32)
        self.alpha = float(alpha)
        self.mask_postfix, self.overlay_postfix = mask_postfix, overlay_postfix
        self.foreground = None if foreground is None else [int(c) for c in foreground]
        self.written: dict[str, str] = {}  # output stem -> source file
        self.logger = logging.getLogger("monai_ssl_ext.OverlayWriter")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._report)

    def __call__(self, engine: Engine) -> None:
        outputs = engine.state.output
        batch = engine.state.batch
        if isinstance(outputs, dict):  # evaluator with decollate=False: not supported, be explicit
            raise TypeError("OverlayWriter needs decollated outputs (SupervisedEvaluator with decollate=True)")
        for i, item in enumerate(outputs):
            pred = item[self.pred_key]
            filename = self._filename(pred)
            if filename is None and isinstance(batch, list) and i < len(batch):
                filename = self._filename(batch[i].get(self.image_key))
            if filename is None:
                filename = self._filename(item.get(self.image_key))
            if filename is None:
                raise ValueError("OverlayWriter: cannot find the source file name in the prediction or image metadata")
            self.write(pred, filename)

    @staticmethod
    def _filename(x) -> str | None:
        meta = getattr(x, "meta", None) or {}
        name = meta.get("filename_or_obj")
        if isinstance(name, (list, tuple)):
            name = name[0] if name else None
        return str(name) if name else None

    def _stem(self, filename: str) -> str:
        path = os.path.abspath(filename)
        base = os.path.splitext(os.path.basename(path))[0]
        if self.data_root_dir is not None:
            rel = os.path.relpath(os.path.dirname(path), self.data_root_dir)
            if rel != "." and not rel.startswith(".."):
                return os.path.join(self.output_dir, rel, base)
        return os.path.join(self.output_dir, base)

    def mask(self, pred) -> np.ndarray:
        """Boolean foreground mask ``(S1, S2)`` of a channel-first prediction."""
        p = _to_numpy(pred)
        if p.ndim != 3:
            raise ValueError(f"OverlayWriter: expected a channel-first 2D prediction (C, S1, S2), got shape {p.shape}")
        labels = p[0] if p.shape[0] == 1 else p.argmax(axis=0)
        labels = np.rint(labels).astype(np.int64)
        if self.foreground is None:
            return labels > 0
        return np.isin(labels, self.foreground)

    def write(self, pred, filename: str) -> tuple[str, str]:
        """Write the mask and overlay of ``pred`` for the source image ``filename``; returns their paths."""
        from PIL import Image

        with Image.open(filename) as im:
            image = np.asarray(im.convert("RGB"), dtype=np.float32)  # (H, W, 3)
        h, w = image.shape[:2]
        mask = self.mask(pred)
        if mask.shape != (h, w):
            raise ValueError(
                f"OverlayWriter: prediction for {filename} has spatial shape {mask.shape}, the image is "
                f"{h} x {w} (H x W): invert the resize (Invertd) before writing, and load pictures with "
                "LoadPictured (row first)"
            )
        stem = self._stem(filename)
        if stem in self.written and self.written[stem] != filename:
            self.logger.warning(f"{filename} and {self.written[stem]} map to the same output {stem}*: overwritten "
                                "(set data_root_dir to keep sub-folders)")
        self.written[stem] = filename
        os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
        mask_path = f"{stem}{self.mask_postfix}.png"
        overlay_path = f"{stem}{self.overlay_postfix}.png"
        Image.fromarray((mask * 255).astype(np.uint8)).save(mask_path)
        overlay = image.copy()
        overlay[mask] = (1.0 - self.alpha) * overlay[mask] + self.alpha * self.color
        Image.fromarray(np.clip(np.rint(overlay), 0, 255).astype(np.uint8)).save(overlay_path)
        return mask_path, overlay_path

    def _report(self, engine: Engine) -> None:
        self.logger.info(f"wrote masks and overlays of {len(self.written)} images to {self.output_dir}")
