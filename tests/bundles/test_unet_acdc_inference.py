"""unet_acdc's inference.json: every test volume is segmented slice by slice (MONAI's SliceInferer over the third
axis) and written as a NIfTI label map on the input's grid. The reference here is the other path through the
bundle — each slice loaded on its own as training and validation load it (LoadSliced), normalised, padded, argmax
of the same network, cropped back — so an axis swapped, a flip or a padding left in place shows as a difference."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from conftest import ROOT
from monai_ssl_ext.workflow import run_bundle

BUNDLE = ROOT / "bundles" / "unet_acdc"


def test_inference_writes_label_volumes_matching_slicewise_prediction(demo_data, tmp_path):
    from monai.transforms import DivisiblePad

    from monai_ssl_ext.transforms import LoadSliced

    data = demo_data("acdc")
    overrides = {"bundle_root": str(tmp_path), "dataset_dir": data, "pretrained_encoder": None}
    trained = run_bundle(BUNDLE, ["train.json"], overrides, smoke=True)
    res = run_bundle(BUNDLE, ["train.json", "inference.json"], overrides, smoke=True)
    parser = res["parser"]
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
