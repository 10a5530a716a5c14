"""The README quickstart, reduced (fewer epochs, smaller images), with its fixed seed."""

from __future__ import annotations

import json
import os

from conftest import load_script


def test_quickstart_reduced(tmp_path):
    quickstart = load_script("quickstart")
    summary = quickstart.main(
        out_root=str(tmp_path), ssl_epochs=8, seg_epochs=1, image_size=32, batch_size=16, n_videos=4, frames_per_video=40
    )
    losses = quickstart.ssl_loss_history(tmp_path)
    assert len(losses) == 8 * 5  # 80 training frames // 16 per batch, 8 epochs
    quarter = len(losses) // 4
    assert sum(losses[-quarter:]) / quarter < sum(losses[:quarter]) / quarter
    assert summary["simclr_loss_last_quarter"] < summary["simclr_loss_first_quarter"]
    for key in ("simclr_encoder", "segmentation_model", "mlflow_db"):
        assert os.path.isfile(summary[key]), key
    assert 0.0 <= summary["segmentation_test_mean_iou"] <= 1.0
    saved = json.loads((tmp_path / "runs" / "quickstart_summary.json").read_text())
    assert saved["simclr_encoder"] == summary["simclr_encoder"]
