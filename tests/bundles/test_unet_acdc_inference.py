"""unet_acdc's inference.json: every test volume is segmented slice by slice (MONAI's SliceInferer over the third
axis) and written as a NIfTI label map on the input's grid. The reference here is the other path through the
bundle — each slice loaded on its own as training and validation load it (LoadSliced), normalised, padded, argmax
of the same network, cropped back — so an axis swapped, a flip or a padding left in place shows as a difference.
The inference run is tracked with ``--tracking mlflow`` like every other inference config."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from conftest import ROOT
from monai_ssl_ext.workflow import run_bundle

BUNDLE = ROOT / "bundles" / "unet_acdc"


def _assert_tracked(parser) -> None:
    """``--tracking mlflow`` attaches to the inference evaluator (MONAI's ids ``evaluator`` / ``handlers``): one run
    with the config, the run parameters and the overlay pictures."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=parser.get_parsed_content("tracking_uri"))
    exp = client.get_experiment_by_name(parser.get_parsed_content("experiment_name"))
    assert exp is not None, "unet_acdc inference opened no MLflow run (is its evaluator MONAI's `evaluator` id?)"
    (run,) = client.search_runs([exp.experiment_id])

    def walk(path=None):
        for a in client.list_artifacts(run.info.run_id, path):
            yield from walk(a.path) if a.is_dir else [a.path]

    artifacts = list(walk())
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts), artifacts
    assert any(a.endswith("_overlay_axis2.png") for a in artifacts), artifacts
    assert run.data.params["backbone"] == "timm/resnet18" and run.info.run_name.startswith("unet_acdc")


def test_inference_writes_label_volumes_matching_slicewise_prediction(demo_data, tmp_path):
    from monai.transforms import DivisiblePad

    from monai_ssl_ext.transforms import LoadSliced

    data = demo_data("acdc")
    overrides = {"bundle_root": str(tmp_path), "dataset_dir": data, "pretrained_encoder": None}
    trained = run_bundle(BUNDLE, ["train.json"], overrides, smoke=True)
    res = run_bundle(BUNDLE, ["train.json", "inference.json"], overrides, tracking="mlflow", smoke=True)
    parser = res["parser"]
    _assert_tracked(parser)
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(Path(trained["output_dir"]) / "models" / "model.pt", weights_only=True))
    norm = parser.get_parsed_content("normalization")
    volumes = parser.get_parsed_content("inference_datalist")
    assert len(volumes) == 2  # the demo's test patient: ED and ES frames
    for item in volumes:
        src = nib.load(item["image"])
        out = nib.load(Path(res["output_dir"]) / "predictions" / Path(item["image"]).name.replace(".nii.gz", "_seg.nii.gz"))
        assert out.shape == src.shape and np.allclose(out.affine, src.affine)
        pred = np.asarray(out.dataobj)
        load = LoadSliced("image")
        for s in range(src.shape[2]):
            img = load({"image": item["image"], "slice": s})["image"].as_tensor()
            h, w = img.shape[1:]
            x = DivisiblePad(32)((img - norm["mean"][0]) / norm["std"][0])  # symmetric, as validation pads
            top, left = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
            with torch.no_grad():
                expected = net(x[None]).argmax(1)[0, top:top + h, left:left + w].numpy()
            np.testing.assert_array_equal(pred[..., s], expected, err_msg=f"{item['image']} slice {s}")
    assert pred.dtype == np.uint8
