"""Command-line overrides are checked: an id no config defines is refused before anything runs,
naming the closest ids; null / None mean null; a choice id lists its allowed values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from monai_ssl_ext.overrides import UnknownOverrideError, check_cli_overrides, choose, cli_overrides, config_ids

CLI = [os.path.join("x", "monai", "bundle", "__main__.py"), "run"]


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true")


def test_parse_command_line():
    got = cli_overrides(CLI + ["--config_file", "['a.json','b.json']", "--epochs", "3", "--amp=false", "--resume"])
    assert got == {"config_file": "['a.json','b.json']", "epochs": "3", "amp": "false", "resume": None}


def test_ids_of_the_configs(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochs": 2, "train": {"handlers": [{"interval": 1}]}}))
    ids = config_ids([str(f)])
    assert {"epochs", "train", "train#handlers", "train#handlers#0", "train#handlers#0#interval"} <= ids
    assert "tracking_uri" in ids  # MONAI's experiment tracking adds it


def test_unknown_override_names_the_closest_id(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochs": 2, "epoch_length": None, "batch_size": 4}))
    argv = CLI + ["--config_file", str(f), "--epoch", "3", "--batch_size", "8"]
    with pytest.raises(UnknownOverrideError, match=r"--epoch: no config of this run defines 'epoch' \(did you mean --epochs"):
        check_cli_overrides(argv)
    assert check_cli_overrides(CLI + ["--config_file", str(f), "--epochs", "3"]) == {"config_file": str(f), "epochs": "3"}
    assert check_cli_overrides(["pytest", "--epoch", "3"]) == {}  # not the bundle command line: no check


def test_choice_lists_allowed_values():
    files = {"6": "a.json", "12": "b.json", "24": "c.json"}
    assert choose(files, 12, "train_volumes") == "b.json" and choose(files, "6", "train_volumes") == "a.json"
    with pytest.raises(ValueError, match=r"`train_volumes` is 7; allowed values: 6, 12, 24"):
        choose(files, 7, "train_volumes")


@pytest.mark.parametrize("value", ["null", "None"])
def test_null_on_the_command_line(tmp_path, value):
    cfg = tmp_path / "configs"
    cfg.mkdir()
    (cfg / "metadata.json").write_text("{}")
    (cfg / "train.json").write_text(json.dumps({
        "imports": ["$import monai_ssl_ext"], "epochs": 5, "epoch_length": 2,
        "initialize": ["$monai_ssl_ext.overrides.check_cli_overrides()"],
        "run": ["$print('RESULT', @epochs, @epoch_length)"]}))
    out = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(cfg / "train.json"),
                          "--epoch_length", value, "--epochs", "3"], capture_output=True, text=True, env=_env(),
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RESULT 3 None" in out.stdout


def test_typo_on_a_real_bundle_stops_before_training(tmp_path):
    cfg = ROOT / "bundles" / "simclr_cholec" / "configs"
    out = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                          repr([str(cfg / "train.json"), str(cfg / "smoke.json")]), "--bundle_root", str(tmp_path),
                          "--epoch", "3"], capture_output=True, text=True, env=_env(), timeout=300, cwd=str(ROOT))
    assert out.returncode != 0
    assert "--epoch: no config of this run defines 'epoch'" in out.stderr and "--epochs" in out.stderr
    assert not (Path(tmp_path) / "runs" / "simclr_cholec" / "models" / "checkpoint_last.pt").exists()


def test_unetr_train_volumes_lists_allowed_values(tmp_path):
    from conftest import read_bundle_config

    parser = read_bundle_config(ROOT / "bundles" / "unetr_btcv" / "configs", ["train.json"],
                                {"datalist_dir": str(ROOT / "bundles" / "unetr_btcv" / "configs" / "datalists"),
                                 "train_volumes": 7})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("datalist_file")
    text = repr(info.value) + repr(info.value.__cause__)
    assert "`train_volumes` is 7; allowed values: 6, 12, 24" in text
