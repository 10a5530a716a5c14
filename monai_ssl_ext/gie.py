"""SSL4GIE downstream dataset layouts (Sanderson & Matuszewski 2024): datalists of Hyperkvasir
labelled-images, Kvasir-SEG, CVC-ClinicDB and C3VD, and their frozen splits.

One ``prepare_<layout>(data_dir, ...)`` per layout lists the data in the source's order, splits it
as the source does (:func:`monai_ssl_ext.data.split_80_10_10` over the sorted file names; C3VD:
the source's fixed validation / test videos) and writes the result next to the data as a MONAI
decathlon-style datalist (``{"training": [...], "validation": [...], "test": [...]}``, paths
relative to ``data_dir``) with :func:`write_split`, so every later run reads the same frozen split
(``monai_ssl_ext.data.load_datalist``). ``scripts/prepare_ssl4gie.py <layout> --data_dir D`` is the
command line; the demo generators call the same functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .io import atomic_write_text

__all__ = ["write_split"]

SPLIT_KEYS = ("training", "validation", "test")


def write_split(split: Mapping[str, Sequence[Mapping]], path: str | os.PathLike, **info) -> str:
    """Write ``split`` (``{"training", "validation", "test"}`` lists of item dicts whose paths are
    relative to the file's folder) as a datalist JSON at ``path``, atomically; extra keyword
    arguments are stored beside the lists (e.g. ``source="SSL4GIE split_ids"``, counts). Returns
    the path.

    Raises:
        ValueError: a list is missing or empty, or an item path is absolute.
    """
    out: dict = {}
    for key in SPLIT_KEYS:
        items = list(split.get(key, []))
        if not items:
            raise ValueError(f"write_split: the {key!r} list is missing or empty ({path}).")
        for item in items:
            for k, v in item.items():
                if isinstance(v, str) and os.path.isabs(v):
                    raise ValueError(f"write_split: item {k}={v!r} is absolute; paths are relative to {path}'s folder.")
        out[key] = [dict(item) for item in items]
    out.update({k: v for k, v in info.items() if k not in SPLIT_KEYS})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(out, indent=1) + "\n")
