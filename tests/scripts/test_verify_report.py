"""scripts/verify_bundles.py's status table: one row per bundle, one column per check (metadata, pins, rules,
package, round trip, export), each ``ok``, the problem, or ``skipped: <reason>``. The full checks run on ONE copy
of a small bundle, broken on purpose in two places (its ``monai-ssl-ext`` pin and its inference network), so the
row must name exactly those two checks and pass the others, the round trip included."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import ROOT, SCHEMA, load_script

vb = load_script("verify_bundles")
BUNDLE = "flexibleunet_tools"


def _row(out: str, name: str) -> dict[str, str]:
    """The table row of ``name`` in the printed markdown table, as ``{column: cell}``."""
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["bundle", *vb.COLUMNS], header
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if cells[0] == name:
            return dict(zip(header[1:], cells[1:]))
    raise AssertionError(f"no row for {name} in {lines}")


def test_static_report_of_the_real_bundle(capsys):
    rows = vb.report(names=[BUNDLE], schema=str(SCHEMA))
    assert rows == {BUNDLE: {"metadata": "ok", "pins": "ok", "rules": "ok", "package": "skipped: --full",
                             "round trip": "skipped: --full", "export": "skipped: --full"}}
    vb.main(schema=str(SCHEMA), names=BUNDLE, table=True)
    assert _row(capsys.readouterr().out, BUNDLE) == rows[BUNDLE]


def test_full_report_names_the_broken_checks(tmp_path, capsys):
    bundles = tmp_path / "bundles"
    copy = bundles / BUNDLE
    shutil.copytree(ROOT / "bundles" / BUNDLE, copy, ignore=shutil.ignore_patterns("runs", "data"))
    meta_file = copy / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["required_packages_version"]["monai-ssl-ext"] = "0.0.1"  # schema-valid, but not the installed version
    meta_file.write_text(json.dumps(meta, indent=4))
    inference = copy / "configs" / "inference.json"
    config = json.loads(inference.read_text())
    config["network_def"]["_target_"] = "NoSuchNetwork"  # parses, cannot be built: the export must fail
    inference.write_text(json.dumps(config, indent=4))

    with pytest.raises(SystemExit) as e:
        vb.main(bundles_dir=str(bundles), schema=str(SCHEMA), full=True, work_dir=str(tmp_path / "work"), wheel=False)
    assert e.value.code == 1
    out = capsys.readouterr().out
    row = _row(out, BUNDLE)
    assert row["metadata"] == "ok" and row["rules"] == "ok", row
    assert row["package"] == "ok (zip)" and row["round trip"] == "ok", row  # the smoke run of the downloaded copy
    assert "monai-ssl-ext pinned at '0.0.1'" in row["pins"], row
    assert vb.is_failure(row["export"]) and "NoSuchNetwork" in row["export"], row
    assert f"{BUNDLE}: export: " in out and f"{BUNDLE}: pins: " in out  # the whole problems above the table
    assert (tmp_path / "work" / BUNDLE / "dist" / f"{BUNDLE}_v{meta['version']}.zip").is_file()
    assert (tmp_path / "work" / BUNDLE / "round_trip" / "zoo" / BUNDLE / "configs" / "train.json").is_file()
