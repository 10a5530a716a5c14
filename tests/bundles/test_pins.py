"""Self-contained but for one pin: each bundle's ``required_packages_version`` pins ``monai-ssl-ext`` at the
installed project version, lists every other package its configs need (imported in a ``$`` expression or a
``_target_``, or needed by what they name: a timm trunk, a NIfTI loader, a picture loader, a MONAI ViT), and each
listed package is one the project installs, at a version its ``pyproject.toml`` range admits."""

from __future__ import annotations

import json
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import monai_ssl_ext
from conftest import BUNDLES, ROOT
from monai_ssl_ext.sharing import configs_text, needed_packages

IDS = [b.name for b in BUNDLES]

def _metadata(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def _project_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return {r.name.lower(): r for r in reqs}


def test_project_version_is_the_installed_one():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert monai_ssl_ext.__version__ == project["version"] == version("monai-ssl-ext")


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_monai_ssl_ext_pinned_at_the_installed_version(bundle):
    pins = _metadata(bundle)["required_packages_version"]
    assert pins.get("monai-ssl-ext") == version("monai-ssl-ext"), (
        f"{bundle.name}: pin monai-ssl-ext {pins.get('monai-ssl-ext')!r}, installed {version('monai-ssl-ext')} "
        "(bump the pin with the package version, and the bundle's version and changelog)")


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_every_needed_package_is_listed(bundle):
    pins = _metadata(bundle)["required_packages_version"]
    missing = {d: why for d, why in needed_packages(configs_text(bundle)).items() if d not in pins}
    assert not missing, f"{bundle.name}: required_packages_version lacks {missing}"


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_listed_packages_are_installed_by_the_project(bundle):
    """Installing monai-ssl-ext brings every pinned package, and each pin lies in the project's range."""
    requirements = _project_requirements()
    for dist, pinned in _metadata(bundle)["required_packages_version"].items():
        if dist == "monai-ssl-ext":
            continue
        assert dist.lower() in requirements, f"{bundle.name}: {dist} is pinned but not a dependency of monai-ssl-ext"
        assert requirements[dist.lower()].specifier.contains(pinned, prereleases=True), (
            f"{bundle.name}: {dist} {pinned} outside the project's range {requirements[dist.lower()].specifier}")


def test_the_rules_see_what_they_look_for():
    """The detection itself, on config snippets (a rule that matches nothing would pass every bundle)."""
    assert needed_packages('{"backbone": "timm/resnet50"}') == {"timm": "a timm trunk"}
    assert set(needed_packages('{"_target_": "LoadVolumed", "keys": "image"}')) == {"nibabel"}
    assert set(needed_packages('{"x": "$import ignite.distributed as idist"}')) == {"pytorch-ignite"}
    assert set(needed_packages('{"_target_": "torchvision.ops.nms"}')) == {"torchvision"}
    assert set(needed_packages('{"x": "$monai_ssl_ext.data.load_datalist(@a)"}')) == {"monai-ssl-ext"}
    assert needed_packages('{"_target_": "torch.optim.Adam", "x": "$os.path.join(@a)"}') == {}
