"""MLflow tracking of a finetuning run: the encoder header and load report become run params."""

from __future__ import annotations

import json

from pathlib import Path

from bundle_runner import run_config
from conftest import ROOT

from monai_ssl_ext.encoders import export_encoder
from monai_ssl_ext.networks import build_backbone


def test_finetuning_run_logs_encoder_header(demo_data, tmp_path):
    from mlflow.tracking import MlflowClient

    encoder = tmp_path / "encoder.pt"
    export_encoder(build_backbone("efficientnet-b0"), str(encoder), method="simclr",
                   normalization={"mean": [0.5] * 3, "std": [0.5] * 3}, epoch=7)
    res = run_config(ROOT / "bundles" / "flexibleunet_tools", ["train.json"], str(tmp_path), demo_data("tools"),
                     tracking="mlflow", pretrained_encoder=str(encoder))
    client = MlflowClient(tracking_uri=res["parser"].get_parsed_content("tracking_uri"))
    exp = client.get_experiment_by_name("flexibleunet_tools")
    params = client.search_runs([exp.experiment_id])[0].data.params
    assert params["encoder.arch"] == "efficientnet-b0"
    assert params["encoder.method"] == "simclr"
    assert params["encoder.epoch"] == "7"
    assert params["encoder.source"] == str(encoder)
    assert params["encoder.loaded"] == "358" and params["encoder.ignored"] == "2"
    assert Path(params["encoder.source"]).is_file()
    # the run parameters are derived from the config: the config lists none of these
    config = json.loads((ROOT / "bundles" / "flexibleunet_tools" / "configs" / "train.json").read_text())
    (track,) = [h for h in config["train"]["handlers"] if h.get("_target_") == "TrackParams"]
    assert not {"epochs", "batch_size", "learning_rate", "normalization"} & set(track.get("params", {}))
    assert params["epochs"] == "2" and params["batch_size"] == "2"
    assert float(params["learning_rate"]) == 1e-4
    assert params["normalization.mean"] == "[0.5, 0.5, 0.5]"
    assert params["pretrained_encoder"] == str(encoder) and params["backbone"] == "efficientnet-b0"
    assert "device" not in params and "network" not in params and "optimizer" not in params


def test_config_params_derives_scalar_ids(tmp_path):
    """Root ids with scalar / short values are parameters; components, object-valued and
    never-evaluated expressions are not."""
    from monai.bundle import ConfigParser

    from monai_ssl_ext.handlers.tracking import TrackParams, config_params

    parser = ConfigParser({
        "imports": ["$import torch"],
        "epochs": 3, "learning_rate": 0.1, "out": "$'/tmp/' + 'x'", "name": "@out",
        "normalization": {"mean": [0.5], "std": [0.25]}, "device": "$torch.device('cpu')",
        "net": {"_target_": "torch.nn.Identity"}, "unused": "$1 + 1", "long": list(range(100)),
        "handler": {"_target_": "TrackParams", "params": {"extra": "@epochs"}},
    })
    parser.parse()
    handler = parser.get_parsed_content("handler")
    for key in ("out", "device"):
        parser.get_parsed_content(key)
    params = config_params(parser)
    assert params == {"epochs": 3, "learning_rate": 0.1, "out": "/tmp/x", "name": "/tmp/x",
                      "normalization": {"mean": [0.5], "std": [0.25]}}
    flat = handler.all_params()
    assert flat["extra"] == "3" and flat["epochs"] == "3" and flat["normalization.std"] == "[0.25]"
    assert "net" not in flat and "handler" not in flat and "long" not in flat


def test_run_names_and_pretrain_to_finetune_lineage(demo_data, tmp_path):
    """simclr_cholec pretrains with tracking: its run is named after the bundle and settings and its encoder.pt
    header carries the run's id; flexibleunet_tools finetuned from that file is tagged with that id and names the
    encoder's bundle in its own run name."""
    from mlflow.tracking import MlflowClient

    from monai_ssl_ext.encoders import read_encoder

    pre = run_config(ROOT / "bundles" / "simclr_cholec", ["train.json"], str(tmp_path), demo_data("cholec"),
                     tracking="mlflow", backbone="efficientnet-b0")
    client = MlflowClient(tracking_uri=pre["parser"].get_parsed_content("tracking_uri"))
    (pre_run,) = client.search_runs([client.get_experiment_by_name("simclr_cholec").experiment_id])
    assert pre_run.info.run_name == "simclr_cholec backbone=efficientnet-b0 seed=42"
    encoder = Path(pre["output_dir"]) / "models" / "encoder.pt"
    assert read_encoder(str(encoder))["mlflow_run_id"] == pre_run.info.run_id

    fine = run_config(ROOT / "bundles" / "flexibleunet_tools", ["train.json"], str(tmp_path), demo_data("tools"),
                      tracking="mlflow", pretrained_encoder=str(encoder))
    (run,) = client.search_runs([client.get_experiment_by_name("flexibleunet_tools").experiment_id])
    assert run.data.tags["pretraining_run_id"] == pre_run.info.run_id
    assert run.data.params["encoder.mlflow_run_id"] == pre_run.info.run_id
    assert run.info.run_name.startswith("flexibleunet_tools backbone=efficientnet-b0 pretrained_encoder=simclr_cholec")
    assert fine["losses"]
