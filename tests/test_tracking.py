"""MLflow tracking of a finetuning run: the encoder header and load report become run params."""

from __future__ import annotations

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
