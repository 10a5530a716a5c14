"""Package a bundle for sharing: ``<name>_v<version>.zip`` in the model-zoo layout and the monai-ssl-ext wheel.

Usage::

    python scripts/package_bundle.py --bundle unet_acdc --out_dir dist [--wheel True] [--include_models False]

A thin command line over :func:`monai_ssl_ext.sharing.package_bundle`; the README's "Sharing a bundle" says
what to do with the zip.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(_ROOT))

from monai_ssl_ext.sharing import package_bundle  # noqa: E402


def main(bundle: str, out_dir: str = "dist", wheel: bool = True, include_models: bool = False) -> dict:
    """Package ``bundle`` (a name under bundles/ or a bundle folder) into ``out_dir``."""
    folder = Path(bundle) if Path(bundle, "configs").is_dir() else _ROOT / "bundles" / bundle
    return package_bundle(folder, out_dir, wheel=wheel, include_models=include_models)  # fire prints it


if __name__ == "__main__":
    import fire

    fire.Fire(main)
