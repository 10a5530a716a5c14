"""Shared fixtures: repo paths, the vendored schema, demo data generated once per session."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
SCHEMA = ROOT.parent / "shared" / "schema" / "meta_schema_20240725.json"
BUNDLES = sorted(p for p in (ROOT / "bundles").iterdir() if (p / "configs" / "train.json").is_file())


def load_script(name: str):
    """Import ``scripts/<name>.py`` as a module (scripts/ is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def read_bundle_config(configs_dir: Path, files, overrides: dict | None = None):
    """An unresolved ``ConfigParser`` of ``files`` (merged in order) with ``overrides`` set."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(Path(configs_dir) / f) for f in files])
    for k, v in (overrides or {}).items():
        parser[k] = v
    return parser


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """``demo_data(kind)`` → folder with ``make_demo_data <kind>`` output, made once per session."""
    cache: dict[str, str] = {}

    def make(kind: str) -> str:
        if kind not in cache:
            out = tmp_path_factory.mktemp(f"demo_{kind}")
            getattr(load_script("make_demo_data"), kind)(out_dir=str(out))
            cache[kind] = str(out)
        return cache[kind]

    return make
