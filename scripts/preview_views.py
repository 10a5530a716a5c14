"""A PNG grid of a pretraining bundle's augmented views, to check the augmentation on your data first.

Usage::

    python scripts/preview_views.py --bundle simclr_cholec --dataset_dir /data/cholec80_frames [--out views.png] \\
        [--configs "['train.json','train_3d.json']"] [--n 4] [--seed 0] [--overrides '{"image_size": 96}']

A row per image: the input as the bundle loads it (before augmentation), then each view; 3D volumes as their
middle slices along each axis. A thin command line over :mod:`monai_ssl_ext.preview`.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(_ROOT))

from monai_ssl_ext.preview import bundle_view_samples, save_view_grid  # noqa: E402


def main(bundle: str, dataset_dir: str, out: str = "views.png", configs=("train.json",), n: int = 4, seed: int = 0,
         overrides: dict | None = None) -> str:
    """Write the grid of ``bundle`` (a name under bundles/ or a bundle folder) on ``dataset_dir`` to ``out``."""
    folder = Path(bundle) if Path(bundle, "configs").is_dir() else _ROOT / "bundles" / bundle
    if not (folder / "configs").is_dir():
        raise FileNotFoundError(f"no bundle {bundle!r} (looked for {folder / 'configs'})")
    configs = [configs] if isinstance(configs, str) else list(configs)
    samples = bundle_view_samples(folder, dataset_dir, configs, n=n, seed=seed, **(overrides or {}))
    path = save_view_grid(samples, out, title=f"{folder.name} {' + '.join(configs)}: input, then each view")
    print(path)
    return path


if __name__ == "__main__":
    import fire

    fire.Fire(main)
