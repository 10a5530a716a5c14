"""Share a bundle: a model-zoo style zip of the bundle and the ``monai-ssl-ext`` wheel it pins.

:func:`package_bundle` writes ``<out_dir>/<name>_v<version>.zip`` holding ``<name>/configs/``,
``<name>/docs/``, ``<name>/LICENSE`` (and ``<name>/large_files.yml`` where weights live elsewhere,
``<name>/models/`` only when asked) — what ``python -m monai.bundle download --url <zip>`` unpacks
into ``<bundle_dir>/<name>/`` — and, with ``wheel=True``, the project's wheel beside it, so the one
package the bundle needs besides MONAI travels with it. Run outputs (``runs/``), data and caches never
go in; a file over the model zoo's 25 MB limit is refused by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

__all__ = ["MAX_FILE_BYTES", "bundle_files", "package_bundle"]

#: the MONAI model zoo's limit for a file in a bundle (larger weights go through large_files.yml)
MAX_FILE_BYTES = 25 * 1024 * 1024
#: what a shared bundle holds, relative to its folder
INCLUDED = ("configs", "docs", "LICENSE", "large_files.yml", "large_files.yaml", "large_files.json")
_SKIPPED_PARTS = {"__pycache__", ".ipynb_checkpoints", "runs", "data"}
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def bundle_files(bundle_dir: str | os.PathLike, include_models: bool = False) -> list[Path]:
    """The files of ``bundle_dir`` that a shared bundle holds (sorted, relative to the bundle folder).

    Raises:
        FileNotFoundError: ``configs/metadata.json`` or ``LICENSE`` is missing.
        ValueError: a file is larger than :data:`MAX_FILE_BYTES` (named, with the fix).
    """
    root = Path(bundle_dir)
    for required in ("configs/metadata.json", "LICENSE"):
        if not (root / required).is_file():
            raise FileNotFoundError(f"{root}: a shared bundle needs {required}")
    tops = INCLUDED + (("models",) if include_models else ())
    files = []
    for top in tops:
        path = root / top
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        for f in candidates:
            rel = f.relative_to(root)
            if _SKIPPED_PARTS & set(rel.parts[:-1]) or f.name.startswith("."):
                continue
            size = f.stat().st_size
            if size > MAX_FILE_BYTES:
                raise ValueError(
                    f"{f} is {size / 2**20:.1f} MB, over the model zoo's 25 MB per file: host it elsewhere and "
                    "list it in large_files.yml (path, url, hash) instead")
            files.append(rel)
    return files


def package_bundle(bundle_dir: str | os.PathLike, out_dir: str | os.PathLike, wheel: bool = True,
                   include_models: bool = False) -> dict:
    """Write ``<out_dir>/<name>_v<version>.zip`` (name = the bundle folder's name, version from its
    ``metadata.json``) and, with ``wheel``, build the ``monai-ssl-ext`` wheel into ``out_dir``
    (``pip wheel --no-deps --no-build-isolation``: no download). Returns ``{"zip", "files", "wheel"}``."""
    root = Path(bundle_dir).resolve()
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = bundle_files(root, include_models)
    zip_path = out / f"{root.name}_v{meta['version']}.zip"
    tmp = zip_path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in files:
            zf.write(root / rel, arcname=f"{root.name}/{rel.as_posix()}")
    os.replace(tmp, zip_path)
    result = {"zip": str(zip_path), "files": [f"{root.name}/{r.as_posix()}" for r in files], "wheel": None}
    if wheel:
        before = set(out.glob("monai_ssl_ext-*.whl"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", str(PROJECT_ROOT), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(out)], check=True)
        built = sorted(set(out.glob("monai_ssl_ext-*.whl")) - before) or sorted(out.glob("monai_ssl_ext-*.whl"))
        result["wheel"] = str(built[-1]) if built else None
    return result
