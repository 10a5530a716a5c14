"""Depth predictions written as files (gie_depth inference): :class:`DepthMapWriter`."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from .overlay import OverlayWriter

__all__ = ["DepthMapWriter"]


class DepthMapWriter(OverlayWriter):
    """Inference writer of the depth bundle (ignite handler on a ``SupervisedEvaluator``, decollated outputs).

    For each picture (source file from the image metadata, original size ``(H, W)`` from its ``spatial_shape``):

    * ``<stem>_depth.png``: the network's depth (sigmoid output, relative: C3VD depth up to scale and shift),
      padding removed and resized to the original ``H x W``, as a 16-bit PNG ``round(depth * 65535)``;
    * ``<stem>_error.png`` where ground truth was loaded (the item has ``aligned_key``, from ``AlignDepthd``):
      the absolute error ``|aligned - depth| x 10`` (the metric's units) as a colour map from 0 to ``error_max``
      (matplotlib ``cmap``), black where there is no ground truth.

    Args:
        output_dir: output folder; ``data_root_dir``: keep the source's sub-folders below it (``OverlayWriter``).
        pred_key, image_key: keys of the prediction (network size) and the input picture.
        aligned_key, depth_key: keys of the aligned full-size prediction and the ground truth.
        error_max: error mapped to the top of the colour map (metric units: 10 = the full 16-bit range).
        cmap: matplotlib colour map name.
    """

    def __init__(self, output_dir: str, data_root_dir: str | None = None, pred_key: str = "pred",
                 image_key: str = "image", aligned_key: str = "pred_full", depth_key: str = "depth",
                 error_max: float = 1.0, cmap: str = "magma"):
        super().__init__(output_dir, pred_key=pred_key, image_key=image_key, data_root_dir=data_root_dir,
                         mask_postfix="_depth", overlay_postfix="_error")
        if float(error_max) <= 0:
            raise ValueError(f"DepthMapWriter: error_max must be > 0, got {error_max!r}")
        self.aligned_key, self.depth_key = aligned_key, depth_key
        self.error_max, self.cmap = float(error_max), str(cmap)
        self.logger = logging.getLogger("monai_ssl_ext.DepthMapWriter")

    def __call__(self, engine) -> None:
        outputs, batch = engine.state.output, engine.state.batch
        if isinstance(outputs, dict):
            raise TypeError("DepthMapWriter needs decollated outputs (SupervisedEvaluator with decollate=True)")
        for i, item in enumerate(outputs):
            source = batch[i] if isinstance(batch, list) and i < len(batch) else item
            image = source.get(self.image_key, item.get(self.image_key))
            filename = self._filename(image)
            meta = getattr(image, "meta", None) or {}
            if filename is None or "spatial_shape" not in meta:
                raise ValueError("DepthMapWriter: the image metadata names no source file / original size "
                                 "(load pictures with LoadPictured)")
            size = [int(v) for v in np.asarray(meta["spatial_shape"]).reshape(-1)[:2]]
            depth = item.get(self.depth_key, source.get(self.depth_key))
            self.write_depth(item[self.pred_key], filename, size, item.get(self.aligned_key), depth)

    def write_depth(self, pred, filename: str, size, aligned=None, depth=None) -> list[str]:
        """Write the depth map (and the error map when ``aligned`` and ``depth`` are given); returns the paths."""
        from PIL import Image

        h, w = size
        p = torch.as_tensor(pred).as_subclass(torch.Tensor).float()
        if p.dim() != 3 or p.shape[0] != 1:
            raise ValueError(f"DepthMapWriter: prediction for {filename} must be (1, S, S), got {tuple(p.shape)}")
        side = max(h, w)
        full = torch.nn.functional.interpolate(p[None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
        top, left = (side - h) // 2, (side - w) // 2
        full = full[top:top + h, left:left + w].clamp(0, 1)
        stem = self._stem(filename)
        os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
        paths = [f"{stem}{self.mask_postfix}.png"]
        Image.fromarray(np.round(full.cpu().numpy() * 65535).astype(np.uint16)).save(paths[0])
        if aligned is not None and depth is not None:
            import matplotlib

            a = torch.as_tensor(aligned).as_subclass(torch.Tensor).float().reshape(h, w)
            d = torch.as_tensor(depth).as_subclass(torch.Tensor).float().reshape(h, w)
            err = ((a - d).abs() * 10.0 / self.error_max).clamp(0, 1).cpu().numpy()
            rgb = matplotlib.colormaps[self.cmap](err)[..., :3]
            rgb[(d <= 0).cpu().numpy()] = 0.0
            paths.append(f"{stem}{self.overlay_postfix}.png")
            Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(paths[1])
        self.written[stem] = filename
        return paths

    def _report(self, engine) -> None:
        self.logger.info(f"wrote depth maps (and error maps where ground truth exists) of {len(self.written)} "
                         f"pictures to {self.output_dir}")

