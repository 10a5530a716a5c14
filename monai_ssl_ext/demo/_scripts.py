"""The repository's command-line scripts that some generators run (``extract_frames``,
``prepare_acdc``), imported the way the scripts import each other: as top-level modules from
``scripts/`` (so a module already loaded under that name is shared)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

#: the repository root (the package lives in ``<root>/monai_ssl_ext``)
REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"


def script(name: str):
    """``scripts/<name>.py`` as module ``name``."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)
