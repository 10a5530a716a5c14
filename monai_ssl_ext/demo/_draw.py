"""Painting helpers shared by the demo generators: smooth noise, endoscopic "tissue", a vignette
and grey bar-shaped "tools"."""

from __future__ import annotations

import numpy as np


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a cells x cells random grid upsampled bilinearly to h x w."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    ys = np.linspace(0, cells, h, dtype=np.float32)
    xs = np.linspace(0, cells, w, dtype=np.float32)
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    g00 = grid[y0][:, x0]
    g01 = grid[y0][:, x0 + 1]
    g10 = grid[y0 + 1][:, x0]
    g11 = grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fy) * (1 - fx) + g01 * (1 - fy) * fx + g10 * fy * (1 - fx) + g11 * fy * fx).astype(np.float32)


def _tissue(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Reddish textured "tissue" background, float32 (h, w, 3) in [0, 255]."""
    coarse = _smooth_noise(rng, h, w, 4)
    fine = _smooth_noise(rng, h, w, max(4, min(h, w) // 4))
    t = 0.6 * coarse + 0.4 * fine
    img = np.empty((h, w, 3), np.float32)
    img[..., 0] = 140 + 90 * t
    img[..., 1] = 35 + 55 * t * fine
    img[..., 2] = 40 + 45 * t * coarse
    return img


def _vignette(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2))
    return np.clip(1.25 - 0.6 * r**2, 0.25, 1.0)[..., None]


def _bar_mask(h: int, w: int, start, angle: float, length: float, width: float):
    """Boolean mask of a straight bar from ``start`` (y, x) along ``angle``, plus a shading map."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = np.sin(angle), np.cos(angle)
    py, px = yy - start[0], xx - start[1]
    along = py * dy + px * dx
    across = -py * dx + px * dy
    mask = (along >= 0) & (along <= length) & (np.abs(across) <= width / 2)
    shade = 1.0 - 0.35 * (np.abs(across) / max(width / 2, 1e-3)) ** 2
    return mask, shade


def _draw_tools(img: np.ndarray, tools: list[dict]) -> np.ndarray:
    """Paint grey bars (opaque) on ``img`` in place; returns the union mask (bool)."""
    h, w = img.shape[:2]
    union = np.zeros((h, w), bool)
    for tool in tools:
        mask, shade = _bar_mask(h, w, tool["start"], tool["angle"], tool["length"], tool["width"])
        grey = tool["grey"] * shade
        img[mask] = np.stack([grey, grey, grey * 1.03], axis=-1)[mask]
        union |= mask
    return union


def _random_tool(rng: np.random.Generator, h: int, w: int) -> dict:
    """A tool entering from a random border point, pointing roughly at the image centre."""
    side = rng.integers(4)
    u = rng.uniform(0.15, 0.85)
    start = [(0.0, u * w), (h - 1.0, u * w), (u * h, 0.0), (u * h, w - 1.0)][side]
    to_centre = np.arctan2(h / 2 - start[0], w / 2 - start[1])
    return {
        "start": start,
        "angle": float(to_centre + rng.uniform(-0.5, 0.5)),
        "length": float(rng.uniform(0.35, 0.7) * min(h, w)),
        "width": float(max(3.0, rng.uniform(0.06, 0.12) * min(h, w))),
        "grey": float(rng.uniform(135, 205)),
    }
