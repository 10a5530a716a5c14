"""Share a bundle: a model-zoo style zip of the bundle and the ``monai-ssl-ext`` wheel it pins.

:func:`package_bundle` writes ``<out_dir>/<name>_v<version>.zip`` holding ``<name>/configs/``,
``<name>/docs/``, ``<name>/LICENSE`` (and ``<name>/large_files.yml`` where weights live elsewhere,
``<name>/models/`` only when asked) — what ``python -m monai.bundle download --url <zip>`` unpacks
into ``<bundle_dir>/<name>/`` — and, with ``wheel=True``, the project's wheel beside it, so the one
package the bundle needs besides MONAI travels with it. Run outputs (``runs/``), data and caches never
go in; a file over the model zoo's 25 MB limit is refused by name.

:func:`with_encoder` is how a shared bundle's ``inference.json`` gets its weights the model zoo's way: the
``network_def`` the zoo's ``ci/verify_bundle.py`` builds (``verify_net_in_out``, ``ckpt_export``) is the
architecture alone, buildable in a checkout that holds no weight file, and the encoder file is loaded into it
when the workflow runs (as a zoo bundle's ``CheckpointLoader`` loads ``models/model.pt``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

__all__ = [
    "MAX_FILE_BYTES", "bundle_files", "download_bundle", "export_status", "needed_packages", "package_bundle",
    "pin_problems", "round_trip", "with_encoder", "with_trunks",
]

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


def with_encoder(network, weights, trunk: str | None = None):
    """``network`` (an architecture-only trunk, e.g. ``build_backbone``) with the weight spec ``weights`` loaded
    (an ``encoder.pt``, ``timm/<name>``, or null / ``"random"`` for none), strictly, converting the stem's input
    channels when they differ, as :func:`~monai_ssl_ext.encoders.pretrained_backbone` does. The load report is
    kept as ``network.load_report`` (the encoder header: normalisation, MLflow params). An encoder trained on
    another architecture is refused by :func:`~monai_ssl_ext.encoders.load_encoder` (pass its ``backbone``)."""
    from .encoders import load_encoder

    network.load_report = load_encoder(network, weights, convert_channels=True, trunk=trunk)
    return network


def with_trunks(network, weights, names):
    """``network`` whose sub-modules ``names`` (e.g. the joint 2D-3D encoder's ``slice_encoder`` and
    ``slice_transformer``) are loaded from the trunks of those names in the encoder file ``weights``, each as
    :func:`with_encoder` loads one; the load reports are kept as ``network.load_reports``."""
    network.load_reports = {name: with_encoder(getattr(network, name), weights, trunk=name).load_report
                            for name in names}
    return network


# ----------------------------------------------------------------------------- pins (self-contained but for one)

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


def configs_text(bundle_dir: str | os.PathLike) -> str:
    """Every config of a bundle but ``metadata.json``, as one text (what :func:`needed_packages` reads)."""
    cfg = Path(bundle_dir) / "configs"
    return "\n".join(p.read_text() for p in sorted(cfg.glob("*.json")) if p.name != "metadata.json")


def needed_packages(text: str) -> dict[str, str]:
    """``{distribution: why}`` for config text: modules imported in ``$`` expressions or named by ``_target_``, and
    what the configs use without an import (:data:`NEEDS`)."""
    import re

    out: dict[str, str] = {}
    for module in re.findall(r'"\$(?:import|from) ([A-Za-z_]\w*)', text) + re.findall(
            r'"_target_": "([A-Za-z_]\w*)\.', text) + re.findall(r'\$[^"]*?\b([A-Za-z_]\w*)\.\w', text):
        if module in MODULE_DISTRIBUTIONS:
            out.setdefault(MODULE_DISTRIBUTIONS[module], f"imports {module}")
    for pattern, dist, why in NEEDS:
        if re.search(pattern, text):
            out.setdefault(dist, why)
    return out


def project_requirements() -> dict:
    """``{distribution name (lower case): packaging Requirement}`` of the installed ``monai-ssl-ext``."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    reqs = [Requirement(r) for r in requires("monai-ssl-ext") or []]
    return {r.name.lower(): r for r in reqs if r.marker is None}


def pin_problems(bundle_dir: str | os.PathLike) -> list[str]:
    """Why a bundle's ``required_packages_version`` is not self-contained but for one pin (empty: it is):
    ``monai-ssl-ext`` pinned at the installed version, every package the configs need listed, each listed package a
    dependency of ``monai-ssl-ext`` at a version its range admits."""
    from importlib.metadata import version

    meta = json.loads((Path(bundle_dir) / "configs" / "metadata.json").read_text())
    pins = meta.get("required_packages_version") or {}
    problems = []
    installed = version("monai-ssl-ext")
    if pins.get("monai-ssl-ext") != installed:
        problems.append(f"monai-ssl-ext pinned at {pins.get('monai-ssl-ext')!r}, installed {installed}")
    missing = {d: why for d, why in needed_packages(configs_text(bundle_dir)).items() if d not in pins}
    if missing:
        problems.append("required_packages_version lacks " + ", ".join(f"{d} ({why})" for d, why in missing.items()))
    requirements = project_requirements()
    for dist, pinned in pins.items():
        if dist == "monai-ssl-ext":
            continue
        req = requirements.get(dist.lower())
        if req is None:
            problems.append(f"{dist} is pinned but not a dependency of monai-ssl-ext")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{dist} {pinned} outside monai-ssl-ext's range {req.specifier}")
    return problems


# ------------------------------------------------------------------------------ round trip and export


def download_bundle(zip_path: str | os.PathLike, bundle_dir: str | os.PathLike, name: str | None = None) -> Path:
    """Unpack a packaged bundle as a receiving user does, ``python -m monai.bundle download --url file://...``
    (a fresh process, offline); returns ``<bundle_dir>/<name>``."""
    zip_path = Path(zip_path).resolve()
    name = name or zip_path.name.rsplit("_v", 1)[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    Path(bundle_dir).mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "download", "--name", name, "--url",
                           f"file://{zip_path}", "--bundle_dir", str(bundle_dir)],
                          capture_output=True, text=True, env=env, cwd=str(bundle_dir))
    if done.returncode != 0:
        raise RuntimeError(f"monai.bundle download failed: {done.stderr.strip()[-800:]}")
    return Path(bundle_dir) / name


def round_trip(bundle_dir: str | os.PathLike, work_dir: str | os.PathLike, dataset_dir: str,
               zip_path: str | os.PathLike | None = None) -> dict:
    """Package ``bundle_dir`` (unless ``zip_path`` is given), download it into ``<work_dir>/zoo`` and run its smoke
    ``train.json`` from the downloaded copy on ``dataset_dir``; returns the run's result (``run_bundle``)."""
    from .workflow import run_bundle

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if zip_path is None:
        zip_path = package_bundle(bundle_dir, work / "dist", wheel=False)["zip"]
    copy = download_bundle(zip_path, work / "zoo", Path(bundle_dir).resolve().name)
    res = run_bundle(copy, ["train.json"], {"bundle_root": str(work / "run"), "dataset_dir": dataset_dir}, smoke=True)
    if not res.get("losses"):
        raise RuntimeError("the smoke train.json of the downloaded copy ran no iteration")
    return res


def export_status(bundle_dir: str | os.PathLike, work_dir: str | os.PathLike, dataset_dir: str | None = None) -> str:
    """Export the ``network_def`` of ``configs/inference.json`` (at the smoke sizes: ``smoke.json`` merged) with
    ``monai.bundle.ckpt_export`` from its own initial weights, scripted, or traced where ``metadata.json`` says
    ``"torchscript": {"use_trace": true, ...}``, and load it back. Returns ``"scripted"`` / ``"traced"``, or
    ``"skipped: <reason>"`` where the metadata says ``"torchscript": {"skip": <reason>}``; raises when it fails."""
    import torch
    from monai.bundle import ConfigParser, ckpt_export

    root = Path(bundle_dir)
    meta_file = root / "configs" / "metadata.json"
    setting = json.loads(meta_file.read_text()).get("torchscript", {})
    if "skip" in setting:
        return f"skipped: {setting['skip']}"
    inference = root / "configs" / "inference.json"
    if not inference.is_file():
        raise FileNotFoundError("no configs/inference.json (the network the model zoo exports)")
    configs = [str(inference), str(root / "configs" / "smoke.json")]
    overrides = {"bundle_root": str(root), **({"dataset_dir": dataset_dir} if dataset_dir else {})}
    parser = ConfigParser()
    parser.read_config(configs)
    for k, v in overrides.items():
        parser[k] = v
    net = parser.get_parsed_content("network_def")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), work / "model.pt")
    kwargs = {}
    if setting.get("use_trace"):
        size_id = "roi_size" if "roi_size" in parser else "image_size"
        size = parser.get_parsed_content(size_id)
        size = list(size) if isinstance(size, (list, tuple)) else [int(size)] * 2
        kwargs = {"use_trace": True, "input_shape": [1, parser.get_parsed_content("in_channels"), *size],
                  "converter_kwargs": {"check_trace": False}}
    ckpt_export(net_id="network_def", filepath=str(work / "model.ts"), ckpt_file=str(work / "model.pt"),
                meta_file=str(meta_file), config_file=configs, **overrides, **kwargs)
    torch.jit.load(str(work / "model.ts"))
    return "traced" if kwargs else "scripted"
