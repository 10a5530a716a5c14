"""Self-contained but for one pin: each bundle's ``required_packages_version`` pins ``monai-ssl-ext`` at the
installed project version, lists every other package its configs need (imported in a ``$`` expression or a
``_target_``, or needed by what they name: a timm trunk, a NIfTI loader, a picture loader, a MONAI ViT), and each
listed package is one the project installs, at a version its ``pyproject.toml`` range admits."""

from __future__ import annotations

import json
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import monai_ssl_ext
from conftest import BUNDLES, ROOT

IDS = [b.name for b in BUNDLES]

#: top-level module named in a config -> the distribution that provides it (torch, monai and numpy have their own
#: metadata fields; os, math, ... are the standard library)
MODULE_DISTRIBUTIONS = {
    "ignite": "pytorch-ignite", "timm": "timm", "torchvision": "torchvision", "nibabel": "nibabel", "PIL": "pillow",
    "einops": "einops", "mlflow": "mlflow-skinny", "monai_ssl_ext": "monai-ssl-ext",
}
#: what a config names -> the distribution it needs although no import is written: (pattern, distribution, why)
NEEDS = [
    (r'"timm/|timm\.', "timm", "a timm trunk"),
    (r'"LoadVolumed"|"LoadSliced"|"CheckedLoadImaged"|\.nii', "nibabel", "NIfTI files"),
    (r'"LoadPictured"|"OverlayWriter"|\.png|\.jpe?g', "pillow", "pictures"),
    (r'"(backbone|arch)": "vit"|"UNETR"|"ViTAutoEncoderSSL"|"MAE"|"ViT"', "einops", "MONAI's ViT patch embedding"),
    (r'"SupervisedTrainer"|"SSLTrainer"|"SupervisedEvaluator"|"StatsHandler"', "pytorch-ignite", "MONAI's engines"),
]


def _metadata(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def _configs_text(bundle: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((bundle / "configs").glob("*.json")) if p.name != "metadata.json")


def _needed(text: str) -> dict[str, str]:
    """distribution -> why, for one bundle's configs."""
    out: dict[str, str] = {}
    for module in re.findall(r'"\$(?:import|from) ([A-Za-z_]\w*)', text) + re.findall(
            r'"_target_": "([A-Za-z_]\w*)\.', text) + re.findall(r'\$[^"]*?\b([A-Za-z_]\w*)\.\w', text):
        if module in MODULE_DISTRIBUTIONS:
            out.setdefault(MODULE_DISTRIBUTIONS[module], f"imports {module}")
    for pattern, dist, why in NEEDS:
        if re.search(pattern, text):
            out.setdefault(dist, why)
    return out


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
    missing = {d: why for d, why in _needed(_configs_text(bundle)).items() if d not in pins}
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
    assert _needed('{"backbone": "timm/resnet50"}') == {"timm": "a timm trunk"}
    assert set(_needed('{"_target_": "LoadVolumed", "keys": "image"}')) == {"nibabel"}
    assert set(_needed('{"x": "$import ignite.distributed as idist"}')) == {"pytorch-ignite"}
    assert set(_needed('{"_target_": "torchvision.ops.nms"}')) == {"torchvision"}
    assert set(_needed('{"x": "$monai_ssl_ext.data.load_datalist(@a)"}')) == {"monai-ssl-ext"}
    assert _needed('{"_target_": "torch.optim.Adam", "x": "$os.path.join(@a)"}') == {}
