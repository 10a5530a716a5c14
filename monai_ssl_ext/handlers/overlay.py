"""Write segmentation predictions as PNG masks and overlays (inference bundles), 2D pictures and 3D volumes.

:class:`OverlayWriter` is an ignite handler for a MONAI ``SupervisedEvaluator`` whose
postprocessing leaves, for every image, a class-index (or one-hot / probability) prediction that
has already been inverted to the **original** image size (``Invertd``). For each 2D image it writes

* ``<stem><mask_postfix>.png``: the foreground mask, uint8 0 / 255, original size;
* ``<stem><overlay_postfix>.png``: the original RGB image with the prediction drawn on it: blended in
  ``color`` (``style="fill"``) or outlined in ``color`` (``style="contour"``); where the item has a ground
  truth (``label_key``), its outline in ``label_color`` as well, so a wrong model shows at a glance (a
  prediction of "foreground everywhere" tints the whole picture, or outlines its border, away from the
  ground truth's outline). Outlines follow class boundaries (:func:`~monai_ssl_ext.handlers.contours.mask_contour`).
  With ``compare_postfix`` the overlay stays a picture of the prediction alone and the comparison goes to
  ``<stem><compare_postfix>.png``: the prediction's outline in ``color`` and the ground truth's in ``label_color``.

For each 3D volume (prediction ``(C, S1, S2, S3)``) it writes ``<stem><overlay_postfix>_axis<k>.png`` for every
axis ``k`` of ``axes``: the middle slice along that axis of the volume (``original_key``: the loaded input kept
before intensity changes, on the prediction's grid), the prediction and the ground truth, drawn as above. A
slice is drawn as its array is stored, first remaining axis down, second across (no flip, no transpose): a
voxel keeps its position, as in ``scripts/preview_views.py``; intensities are scaled between the volume's
0.5th and 99.5th percentiles.

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

__all__ = ["OverlayWriter", "display_image", "inference_items", "middle_slices", "require_checkpoint"]

STYLES = ("fill", "contour")


def require_checkpoint(path: str, hint: str = "run the bundle's configs/train.json first, or set `ckpt_dir`") -> str:
    """Return ``path`` if it is a file; otherwise raise ``FileNotFoundError`` naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model checkpoint {os.path.abspath(path)!r} does not exist ({hint}).")
    return path


def inference_items(items, label_key: str = "label") -> list[dict]:
    """``[{"image": path[, label_key: path]}, ...]`` from a datalist (dicts with an ``image`` key) or a list of
    paths: the items of a segmentation inference run, with the ground truth where an item names one (drawn by
    :class:`OverlayWriter`'s ``label_key``); other keys are dropped."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            if "image" not in item:
                raise ValueError(f"inference item {i} has no 'image' key (keys: {sorted(map(str, item))})")
            out.append({"image": item["image"], **({label_key: item[label_key]} if item.get(label_key) else {})})
        else:
            out.append({"image": item})
    return out


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.numpy()
    return np.asarray(x)


def display_image(image) -> np.ndarray:
    """A channel-first image ``(C, *spatial)`` as RGB float ``(*spatial, 3)`` in 0..255: three channels with
    values in 0..255 are kept as they are; otherwise the first channel is scaled between its 0.5th and 99.5th
    percentiles to grey."""
    a = _to_numpy(image).astype(np.float32)
    if a.shape[0] == 3 and a.min() >= 0 and a.max() <= 255 and a.max() > 1:
        return np.moveaxis(a, 0, -1).copy()
    v = a[0]
    lo, hi = (np.percentile(v, (0.5, 99.5)) if v.size else (0.0, 0.0))
    grey = np.clip((v - lo) / (hi - lo), 0, 1) * 255 if hi > lo else np.zeros_like(v)
    return np.repeat(grey[..., None], 3, axis=-1)


def middle_slices(volume: np.ndarray, axes=(0, 1, 2)) -> list[tuple[int, np.ndarray]]:
    """``[(axis, slice), ...]``: the middle slice (index ``n // 2``) of a spatial 3D array (trailing dimensions,
    e.g. RGB, kept) along each of ``axes``, its remaining axes in stored order."""
    return [(k, np.take(volume, volume.shape[k] // 2, axis=k)) for k in axes]


class OverlayWriter:
    """Save predicted masks (0/255 PNG) and overlays (PNG) at the original image size (2D), or middle-slice
    overlays of 3D volumes (see the module docstring).

    Args:
        output_dir: output folder (created if needed).
        pred_key: key of the prediction in each decollated output item.
        image_key: key of the input image in each batch item (its metadata names the source file
            when the prediction's metadata does not).
        data_root_dir: keep the source file's sub-folders relative to this folder; files outside
            it (and every file when ``None``) are written flat under ``output_dir``.
        color: RGB colour of the prediction in the overlay.
        alpha: opacity of ``color`` over predicted pixels (0..1).
        mask_postfix / overlay_postfix: appended to the source file's stem.
        foreground: class indices counted as foreground; ``None`` = every class but 0.
        label_key: key of the ground truth (class indices ``(1, *spatial)`` or one-hot, at the prediction's
            size) in the output or batch item; drawn as an outline in ``label_color`` where present.
            ``None``: no ground truth.
        label_color: RGB colour of the ground-truth outline.
        style: ``"fill"`` (prediction blended in ``color``) or ``"contour"`` (prediction outlined).
        width: outline width in pixels.
        original_key: key of the image to draw on, channel first, on the prediction's grid (required for 3D;
            in 2D the source picture is read again from its file when ``None``).
        axes: the axes of a 3D volume whose middle slices are drawn.
        compare_postfix: where there is a ground truth, write the comparison (both outlines) to
            ``<stem><compare_postfix>.png`` instead of drawing the ground truth on the overlay (2D only).

    The prediction (``C x S1 x S2[ x S3]``, channel first) may hold class indices (``C = 1``, e.g. after
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
        label_key: str | None = None,
        label_color: Sequence[int] = (0, 0, 255),
        style: str = "fill",
        width: int = 2,
        original_key: str | None = None,
        axes: Sequence[int] = (0, 1, 2),
        compare_postfix: str | None = None,
    ) -> None:
        name = type(self).__name__
        if len(tuple(color)) != 3:
            raise ValueError(f"{name}: color must be an RGB triple, got {color!r}")
        if len(tuple(label_color)) != 3:
            raise ValueError(f"{name}: label_color must be an RGB triple, got {label_color!r}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"{name}: alpha must be in [0, 1], got {alpha!r}")
        if len({mask_postfix, overlay_postfix, compare_postfix}) < 3:
            raise ValueError(f"{name}: mask_postfix, overlay_postfix and compare_postfix must differ")
        if style not in STYLES:
            raise ValueError(f"{name}: style must be one of {STYLES}, got {style!r}")
        if int(width) < 1:
            raise ValueError(f"{name}: width must be >= 1, got {width!r}")
        if not axes or any(int(k) not in (0, 1, 2) for k in axes):
            raise ValueError(f"{name}: axes must be a non-empty list of 0, 1, 2, got {axes!r}")
        self.output_dir = str(output_dir)
        self.pred_key, self.image_key = pred_key, image_key
        self.data_root_dir = os.path.abspath(data_root_dir) if data_root_dir else None
        self.color = np.asarray(color, dtype=np.float32)
        self.alpha = float(alpha)
        self.mask_postfix, self.overlay_postfix = mask_postfix, overlay_postfix
        self.foreground = None if foreground is None else [int(c) for c in foreground]
        self.label_key, self.label_color = label_key, np.asarray(label_color, dtype=np.float32)
        self.style, self.width = style, int(width)
        self.original_key = original_key
        self.axes = tuple(int(k) for k in axes)
        self.compare_postfix = compare_postfix
        self.written: dict[str, str] = {}  # output stem -> source file
        self.logger = logging.getLogger(f"monai_ssl_ext.{name}")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._report)

    def __call__(self, engine: Engine) -> None:
        outputs = engine.state.output
        batch = engine.state.batch
        if isinstance(outputs, dict):  # evaluator with decollate=False: not supported, be explicit
            raise TypeError(f"{type(self).__name__} needs decollated outputs (SupervisedEvaluator with decollate=True)")
        for i, item in enumerate(outputs):
            source = batch[i] if isinstance(batch, list) and i < len(batch) and isinstance(batch[i], dict) else {}
            pred = item[self.pred_key]
            filename = self._filename(pred) or self._filename(source.get(self.image_key))
            if filename is None:
                filename = self._filename(item.get(self.image_key))
            if filename is None:
                raise ValueError(f"{type(self).__name__}: cannot find the source file name in the prediction or image "
                                 "metadata")
            label = self._get(item, source, self.label_key)
            image = self._get(item, source, self.original_key)
            if _to_numpy(pred).ndim == 4:
                self.write_volume(pred, filename, image, label, frame=self._frame(pred, source.get(self.image_key)))
            else:
                self.write(pred, filename, label, image)

    @staticmethod
    def _get(item: dict, source: dict, key):
        if key is None:
            return None
        value = item.get(key)
        return source.get(key) if value is None else value

    @staticmethod
    def _filename(x) -> str | None:
        meta = getattr(x, "meta", None) or {}
        name = meta.get("filename_or_obj")
        if isinstance(name, (list, tuple)):
            name = name[0] if name else None
        return str(name) if name else None

    @staticmethod
    def _frame(*xs) -> int | None:
        """The cine frame of a 4D file's volume (``LoadVolumed``'s ``frame`` metadata; -1 / absent: none)."""
        for x in xs:
            frame = (getattr(x, "meta", None) or {}).get("frame")
            if frame is not None:
                frame = int(np.asarray(_to_numpy(frame)).reshape(-1)[0])
                return frame if frame >= 0 else None
        return None

    def _stem(self, filename: str) -> str:
        path = os.path.abspath(filename)
        base = os.path.basename(path)
        base = base[:-len(".nii.gz")] if base.lower().endswith(".nii.gz") else os.path.splitext(base)[0]
        if self.data_root_dir is not None:
            rel = os.path.relpath(os.path.dirname(path), self.data_root_dir)
            if rel != "." and not rel.startswith(".."):
                return os.path.join(self.output_dir, rel, base)
        return os.path.join(self.output_dir, base)

    def labels(self, pred, what: str = "prediction", spatial_dims: int = 2) -> np.ndarray:
        """Integer class map ``(*spatial)`` of a channel-first prediction or label, classes outside
        ``foreground`` set to 0."""
        p = _to_numpy(pred)
        if p.ndim != spatial_dims + 1:
            raise ValueError(f"{type(self).__name__}: expected a channel-first {spatial_dims}D {what} "
                             f"(C, {', '.join(f'S{i + 1}' for i in range(spatial_dims))}), got shape {p.shape}")
        labels = p[0] if p.shape[0] == 1 else p.argmax(axis=0)
        labels = np.rint(labels).astype(np.int64)
        if self.foreground is not None:
            labels = np.where(np.isin(labels, self.foreground), labels, 0)
        return labels

    def mask(self, pred) -> np.ndarray:
        """Boolean foreground mask ``(S1, S2)`` of a channel-first prediction."""
        return self.labels(pred) > 0

    def draw(self, image: np.ndarray, pred: np.ndarray, label: np.ndarray | None = None,
             style: str | None = None) -> np.ndarray:
        """The overlay of class maps ``pred`` (and ``label``) ``(H, W)`` on an RGB float ``image (H, W, 3)``:
        uint8 ``(H, W, 3)``; ``style`` defaults to the writer's."""
        from .contours import mask_contour

        style = style or self.style
        overlay = image.astype(np.float32).copy()
        if style == "fill":
            fg = pred > 0
            overlay[fg] = (1.0 - self.alpha) * overlay[fg] + self.alpha * self.color
        if label is not None:
            overlay[mask_contour(label, self.width)] = self.label_color
        if style == "contour":
            edge = mask_contour(pred, self.width)
            overlay[edge] = (1.0 - self.alpha) * overlay[edge] + self.alpha * self.color
        return np.clip(np.rint(overlay), 0, 255).astype(np.uint8)

    def _register(self, filename: str, suffix: str = "") -> str:
        stem = self._stem(filename) + suffix
        if stem in self.written and self.written[stem] != filename:
            self.logger.warning(f"{filename} and {self.written[stem]} map to the same output {stem}*: overwritten "
                                "(set data_root_dir to keep sub-folders)")
        self.written[stem] = filename
        os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
        return stem

    def write(self, pred, filename: str, label=None, image=None) -> tuple[str, str]:
        """Write the mask and overlay of a 2D ``pred`` for the source picture ``filename`` (drawn on ``image``,
        channel first, when given, else on the picture read again); returns their paths."""
        from PIL import Image

        name = type(self).__name__
        if image is None:
            with Image.open(filename) as im:
                picture = np.asarray(im.convert("RGB"), dtype=np.float32)  # (H, W, 3)
        else:
            picture = display_image(image)
        h, w = picture.shape[:2]
        pred_labels = self.labels(pred)
        if pred_labels.shape != (h, w):
            raise ValueError(
                f"{name}: prediction for {filename} has spatial shape {pred_labels.shape}, the image is "
                f"{h} x {w} (H x W): invert the resize (Invertd) before writing, and load pictures with "
                "LoadPictured (row first)"
            )
        gt = None
        if label is not None:
            gt = self.labels(label, "ground truth")
            if gt.shape != (h, w):
                raise ValueError(f"{name}: ground truth for {filename} has shape {gt.shape}, the image is {h} x {w}")
        stem = self._register(filename)
        mask_path = f"{stem}{self.mask_postfix}.png"
        overlay_path = f"{stem}{self.overlay_postfix}.png"
        Image.fromarray(((pred_labels > 0) * 255).astype(np.uint8)).save(mask_path)
        compare = gt is not None and self.compare_postfix is not None
        Image.fromarray(self.draw(picture, pred_labels, None if compare else gt)).save(overlay_path)
        if compare:
            Image.fromarray(self.draw(picture, pred_labels, gt, style="contour")).save(
                f"{stem}{self.compare_postfix}.png")
        return mask_path, overlay_path

    def write_volume(self, pred, filename: str, image, label=None, frame: int | None = None) -> list[str]:
        """Write the middle-slice overlays (one PNG per axis of ``axes``) of a 3D ``pred`` ``(C, S1, S2, S3)``
        drawn on ``image`` ``(C, S1, S2, S3)`` (and ``label``) of the source volume ``filename``; returns the paths."""
        from PIL import Image

        name = type(self).__name__
        if image is None:
            raise ValueError(f"{name}: a 3D prediction ({filename}) needs the input volume: set original_key (e.g. "
                             "'original', a CopyItemsd of the loaded image before intensity transforms)")
        pred_labels = self.labels(pred, spatial_dims=3)
        volume = display_image(image)
        if volume.shape[:3] != pred_labels.shape:
            raise ValueError(f"{name}: prediction for {filename} has spatial shape {pred_labels.shape}, the volume "
                             f"`{self.original_key}` is {volume.shape[:3]}: invert the preprocessing (Invertd) first")
        gt = None
        if label is not None:
            gt = self.labels(label, "ground truth", spatial_dims=3)
            if gt.shape != pred_labels.shape:
                raise ValueError(f"{name}: ground truth for {filename} has shape {gt.shape}, the prediction "
                                 f"{pred_labels.shape}")
        stem = self._register(filename, "" if frame is None else f"_frame{frame:02d}")
        paths = []
        gts = middle_slices(gt, self.axes) if gt is not None else [(k, None) for k in self.axes]
        for (k, picture), (_, p), (_, g) in zip(middle_slices(volume, self.axes), middle_slices(pred_labels, self.axes),
                                               gts):
            path = f"{stem}{self.overlay_postfix}_axis{k}.png"
            Image.fromarray(self.draw(picture, p, g)).save(path)
            paths.append(path)
        return paths

    def _report(self, engine: Engine) -> None:
        self.logger.info(f"wrote overlays of {len(self.written)} images to {self.output_dir}")
