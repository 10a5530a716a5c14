"""The MONAI model zoo's own ``ci/verify_bundle.py`` checks, on every bundle (discovered as the harness does).

Read from Project-MONAI/model-zoo ``ci/verify_bundle.py`` (and ``ci/utils.py``, ``ci/bundle_custom_data.py``); the
zoo runs ``-m min`` on CPU for every pull request and the full mode on its GPU runners. Re-implemented here on
MONAI's public API, one test per check:

min mode
  * ``large_files``: the entries of ``large_files.{yml,yaml,json}`` (``path``, ``url``, optional hash) are
    downloaded into the bundle first (``monai.apps.utils.download_url``); no such file, nothing to download.
  * ``necessary_files``: ``configs/metadata.json`` and ``LICENSE``.
  * ``preferred_files``: ``models/model.pt`` (in the bundle or downloaded through ``large_files.yml``) and
    ``configs/inference.{json,yaml,yml}`` (the zoo exempts a bundle by name in ``exclude_verify_preferred_files_list``).
  * ``version_changelog``: ``version`` and ``changelog`` present, the version a key of the changelog. (The zoo
    also refuses a version already in its ``models/model_info.json``: that file is the zoo's, not ours.)
  * ``metadata_format``: ``monai.bundle.verify_metadata`` against the schema the metadata's ``schema`` names
    (the vendored copy, ``../shared/schema``: no network here).
full mode adds
  * ``properties``: with ``supported_apps``, each app's inference properties (``create_workflow(...)
    .check_properties()``, the app's ``bundle_properties.py`` lives in the zoo); none listed, nothing checked.
  * ``data_shape``: ``monai.bundle.verify_net_in_out("network_def", configs/inference.json alone, bundle_root)``:
    the network built from the inference config, no weights, a random input of ``network_data_format``'s input
    shape, output channels and dtype as declared.
  * ``torchscript``: ``monai.bundle.ckpt_export("network_def", ckpt_file=models/model.pt, inference.json,
    bundle_root)`` (scripted: the zoo passes no ``use_trace``), and ``models/model.ts`` loads if present. No
    bundle holds weights, so the checkpoint is the network's own initial ``state_dict`` (what the zoo's
    ``_produce_fake_weights`` writes).

The network checks run at a reduced input size (:data:`SMALL_2D` / :data:`SMALL_3D`; ``image_size`` / ``roi_size``
set to it where the inference config has them, for the ViTs whose size is built in): what ``verify_net_in_out``
compares, output channels and dtype, does not depend on it, and the published sizes would cost the CI's time.

A check a bundle cannot pass is declared in its ``docs/README.md``, section ``## Model zoo checks``, as a line
``- `<check>`: <reason>`` (the zoo's own way is a name in ``ci/bundle_custom_data.py``'s exclusion lists) and is
reported as xfail with that reason. A declared file / metadata check is still run and must fail (a declaration
that has become false fails the test: remove the line); a declared network check (``data_shape``,
``torchscript``) is not run, as the zoo does not run an excluded one. An undeclared failure fails the test. Where
the zoo's scripted export cannot work and ``metadata.json`` says ``"torchscript": {"use_trace": true, ...}``, the
traced export of the inference ``network_def`` is checked by :func:`test_traced_export` instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import BUNDLES, SCHEMA

IDS = [b.name for b in BUNDLES]
CHECKS = ("large_files", "necessary_files", "preferred_files", "version_changelog", "metadata_format", "properties",
          "data_shape", "torchscript")
NETWORK_CHECKS = ("data_shape", "torchscript")  # build the network: a declared failure is not run
SECTION = "Model zoo checks"
SMALL_2D, SMALL_3D = 64, 32  # input size of the network checks


def _find(folder: Path, stem: str) -> Path | None:
    """The zoo's ``_find_bundle_file``: ``<stem>.json`` / ``.yaml`` / ``.yml`` in ``folder`` (the last found)."""
    found = None
    for suffix in ("json", "yaml", "yml"):
        if (folder / f"{stem}.{suffix}").is_file():
            found = folder / f"{stem}.{suffix}"
    return found


def declared_failures(readme_text: str) -> dict[str, str]:
    """``{check: reason}`` from the ``## Model zoo checks`` section of a bundle README."""
    out: dict[str, str] = {}
    in_section = False
    for line in readme_text.splitlines():
        if line.startswith("## "):
            in_section = line[3:].strip().lower() == SECTION.lower()
            continue
        m = re.match(r"^\s*[-*] `([a-z_]+)`: (.+)$", line) if in_section else None
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _declared(bundle: Path) -> dict[str, str]:
    readme = bundle / "docs" / "README.md"
    return declared_failures(readme.read_text(encoding="utf-8")) if readme.is_file() else {}


def _meta(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def _large_files(bundle: Path) -> list[dict]:
    from monai.bundle import ConfigParser

    found = _find(bundle, "large_files")
    if found is None:
        return []
    parser = ConfigParser()
    parser.read_config(str(found))
    entries = parser.get()["large_files"]
    for e in entries:
        assert {"path", "url"} <= set(e), f"{found.name}: each large file needs `path` and `url`, got {sorted(e)}"
    return entries


def _inference_config(bundle: Path) -> Path:
    found = _find(bundle / "configs", "inference")
    if found is None:
        raise FileNotFoundError(f"{bundle.name}: no configs/inference.json (the zoo verifies its network_def)")
    return found


def small_input(bundle: Path, config: Path) -> tuple[dict, list[int]]:
    """``(overrides, input shape)``: the declared input at :data:`SMALL_2D` / :data:`SMALL_3D` per axis, and the
    config's ``image_size`` / ``roi_size`` (the size a ViT is built for) set to it."""
    raw = json.loads(config.read_text())
    fmt = _meta(bundle)["network_data_format"]["inputs"]["image"]
    size = [SMALL_3D if len(fmt["spatial_shape"]) == 3 else SMALL_2D] * len(fmt["spatial_shape"])
    overrides = {"_meta_#network_data_format#inputs#image#spatial_shape": size}
    if "roi_size" in raw:
        overrides["roi_size"] = size
    if "image_size" in raw:
        overrides["image_size"] = size if isinstance(raw["image_size"], list) else size[0]
    return overrides, [1, fmt["num_channels"], *size]


# ------------------------------------------------------------------------------------------------- the checks


def check_large_files(bundle: Path, tmp_path: Path) -> None:
    from monai.apps.utils import download_url

    for entry in _large_files(bundle):
        if not str(entry["url"]).startswith("file://"):
            pytest.skip(f"{bundle.name}: large_files.yml downloads from {entry['url']}: no network here")
        kwargs = {k: v for k, v in entry.items() if k not in ("path", "url") and v != ""}
        download_url(url=entry["url"], filepath=str(tmp_path / entry["path"]), **kwargs)


def check_necessary_files(bundle: Path, tmp_path: Path) -> None:
    for rel in ("configs/metadata.json", "LICENSE"):
        assert (bundle / rel).is_file(), f"{bundle.name}: necessary file {rel} is missing"


def check_preferred_files(bundle: Path, tmp_path: Path) -> None:
    _inference_config(bundle)
    downloaded = {os.path.normpath(e["path"]) for e in _large_files(bundle)}
    assert (bundle / "models" / "model.pt").is_file() or os.path.normpath("models/model.pt") in downloaded, (
        f"{bundle.name}: models/model.pt is neither in the bundle nor listed in large_files.yml")


def check_version_changelog(bundle: Path, tmp_path: Path) -> None:
    meta = _meta(bundle)
    assert "version" in meta and "changelog" in meta, f"{bundle.name}: 'version' / 'changelog' missing"
    assert meta["version"] in meta["changelog"], f"{bundle.name}: version {meta['version']} not in the changelog"


def check_metadata_format(bundle: Path, tmp_path: Path) -> None:
    from monai.bundle import verify_metadata

    schema = tmp_path / "eval" / "schema.json"  # where the zoo's prepare_schema puts the downloaded schema
    schema.parent.mkdir(parents=True, exist_ok=True)
    assert _meta(bundle)["schema"].rsplit("/", 1)[-1] == SCHEMA.name, "the metadata names another schema"
    shutil.copyfile(SCHEMA, schema)
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(schema))


def check_properties(bundle: Path, tmp_path: Path) -> None:
    apps = _meta(bundle).get("supported_apps") or {}
    if apps:
        pytest.skip(f"{bundle.name}: supported_apps {sorted(apps)}: their bundle_properties.py live in the zoo")


def check_data_shape(bundle: Path, tmp_path: Path) -> None:
    from monai.bundle import verify_net_in_out

    config = _inference_config(bundle)
    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                      config_file=str(config), bundle_root=str(bundle), device="cpu", **small_input(bundle, config)[0])


def _fake_weights(bundle: Path, config: Path, path: Path, overrides: dict) -> None:
    """The zoo's ``_produce_fake_weights``: the network's own state dict, saved where ckpt_export reads it."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    for k, v in {"bundle_root": str(bundle), **overrides}.items():
        parser[k] = v
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)


def check_torchscript(bundle: Path, tmp_path: Path) -> None:
    from monai.bundle import ckpt_export

    config = _inference_config(bundle)
    overrides = small_input(bundle, config)[0]
    ckpt = bundle / "models" / "model.pt"
    if not ckpt.is_file():
        ckpt = tmp_path / "models" / "model.pt"
        _fake_weights(bundle, config, ckpt, overrides)
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "models" / "verify_model.ts"), ckpt_file=str(ckpt),
                meta_file=str(bundle / "configs" / "metadata.json"), config_file=str(config), bundle_root=str(bundle),
                **overrides)
    torch.jit.load(str(tmp_path / "models" / "verify_model.ts"))
    if (bundle / "models" / "model.ts").is_file():
        torch.jit.load(str(bundle / "models" / "model.ts"))


RUN = {name: globals()[f"check_{name}"] for name in CHECKS}


def run_zoo_check(bundle: Path, check: str, tmp_path: Path) -> None:
    """Run one zoo check; a check the bundle's README declares as failing must fail (xfail with its reason)."""
    reason = _declared(bundle).get(check)
    if reason is None:
        RUN[check](bundle, tmp_path)
        return
    if check in NETWORK_CHECKS:
        pytest.xfail(f"{bundle.name}: zoo check `{check}` declared failing (not run): {reason}")
    try:
        RUN[check](bundle, tmp_path)
    except pytest.skip.Exception:
        raise
    except Exception as e:  # the declared failure
        pytest.xfail(f"{bundle.name}: zoo check `{check}` fails ({type(e).__name__}): {reason}")
    pytest.fail(f"{bundle.name}: docs/README.md declares that the zoo check `{check}` fails ({reason}), but it "
                "passes: remove that line")


# ------------------------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small inputs: one thread is as fast, and two threads on a shared 2-core machine stall each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
@pytest.mark.parametrize("check", CHECKS[:5])
def test_zoo_min_mode(bundle, check, tmp_path):
    run_zoo_check(bundle, check, tmp_path)


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
@pytest.mark.parametrize("check", CHECKS[5:])
def test_zoo_full_mode(bundle, check, tmp_path):
    run_zoo_check(bundle, check, tmp_path)


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_declared_failures_name_zoo_checks(bundle):
    """A typo in the README section would silently declare nothing."""
    unknown = set(_declared(bundle)) - set(CHECKS)
    assert not unknown, f"{bundle.name}: docs/README.md '## {SECTION}' names unknown checks {sorted(unknown)}"


TRACED = [b for b in BUNDLES if _meta(b).get("torchscript", {}).get("use_trace")]


@pytest.mark.parametrize("bundle", TRACED, ids=[b.name for b in TRACED])
def test_traced_export(bundle, tmp_path):
    """Where scripting cannot work (``metadata.json``'s ``torchscript.reason``), the inference ``network_def``
    exports with ``ckpt_export --use_trace`` and loads back: at the smoke sizes (``smoke.json`` merged, as
    tests/bundles/test_export.py does: the same classes and code paths as the published network, a tenth of the
    weights to write and read) and without torch.jit.trace's re-trace check (ten times the trace; test_export.py
    compares exported and eager outputs): :func:`monai_ssl_ext.sharing.export_status`, the export column of
    ``scripts/verify_bundles.py --full``."""
    from monai_ssl_ext.sharing import export_status

    assert _meta(bundle)["torchscript"].get("reason"), f"{bundle.name}: say why scripting cannot work"
    assert "torchscript" in _declared(bundle), f"{bundle.name}: traces, so the zoo's scripted check is declared"
    if "data_shape" in _declared(bundle):
        pytest.skip(f"{bundle.name}: the inference network_def cannot be built here: {_declared(bundle)['data_shape']}")
    assert export_status(bundle, tmp_path) == "traced"


def test_version_is_new_to_the_zoo():
    pytest.skip("the zoo also refuses a version already in its models/model_info.json, a file of the zoo's "
                "repository (checked there by its CI)")


def test_a_declared_failure_that_passes_is_reported(tmp_path):
    """The xfail path cannot hide a check that passes: declaring `necessary_files` on a complete bundle fails."""
    bundle = tmp_path / BUNDLES[0].name
    shutil.copytree(BUNDLES[0], bundle, ignore=shutil.ignore_patterns("runs", "data"))
    readme = bundle / "docs" / "README.md"
    readme.write_text(readme.read_text() + f"\n## {SECTION}\n\n- `necessary_files`: pretend\n")
    assert declared_failures(readme.read_text())["necessary_files"] == "pretend"
    with pytest.raises(pytest.fail.Exception, match="remove that line"):
        run_zoo_check(bundle, "necessary_files", tmp_path)
    (bundle / "LICENSE").unlink()
    with pytest.raises(pytest.xfail.Exception, match="pretend"):
        run_zoo_check(bundle, "necessary_files", tmp_path)
