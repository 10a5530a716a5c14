"""Tool-segmentation demo data (RGB frames, binary tool masks, a decathlon datalist).

``tools`` writes tool-segmentation data::

    O/images/<id>.png      RGB, size x size
    O/masks/<id>.png       uint8, 0 background, 1 tool (exactly the painted grey bars)
    O/datalist.json        {"training": [{"image": "images/<id>.png", "label": "masks/<id>.png"}, ...],
                            "validation": [...], "testing": [...]}

with ids ``train_000``, ``val_000``, ``test_000``, ...
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._draw import _draw_tools, _random_tool, _tissue, _vignette

__all__ = ["tools"]


def _tool_sample(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    img = _tissue(rng, h, w) * _vignette(h, w)
    tools = [_random_tool(rng, h, w) for _ in range(int(rng.integers(1, 4)))]
    mask = _draw_tools(img, tools)
    return np.clip(img, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def tools(
    out_dir: str, n_train: int = 8, n_val: int = 4, n_test: int = 4, size: int | tuple = 64, seed: int = 0
) -> dict:
    """Tool-segmentation demo data: RGB images, binary masks and a decathlon ``datalist.json``.

    ``size`` is an int (square) or ``(height, width)``. Returns ``{"datalist": path, "counts": {...}}``.
    """
    from PIL import Image

    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(h, w) < 8:
        raise ValueError(f"size must be at least 8, got {size!r}.")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    datalist: dict[str, list[dict[str, str]]] = {}
    for key, prefix, n in (("training", "train", n_train), ("validation", "val", n_val), ("testing", "test", n_test)):
        entries = []
        for i in range(int(n)):
            rng = np.random.default_rng([seed, ("train", "val", "test").index(prefix), i])
            img, mask = _tool_sample(rng, h, w)
            name = f"{prefix}_{i:03d}.png"
            Image.fromarray(img).save(out / "images" / name)
            Image.fromarray(mask).save(out / "masks" / name)
            entries.append({"image": f"images/{name}", "label": f"masks/{name}"})
        datalist[key] = entries
    with open(out / "datalist.json", "w", encoding="utf-8") as f:
        json.dump(datalist, f, indent=2)
        f.write("\n")
    return {"datalist": str(out / "datalist.json"), "counts": {k: len(v) for k, v in datalist.items()}}
