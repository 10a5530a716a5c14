"""Generate small synthetic datasets in the real layouts of the recipes (deterministic by seed).

Usage::

    python scripts/make_demo_data.py cholec --out_dir O [--n_videos 4] [--frames_per_video 20] \\
        [--size 64] [--seed 0] [--fps None]
    python scripts/make_demo_data.py tools --out_dir O [--n_train 8] [--n_val 4] [--n_test 4] \\
        [--size 64] [--seed 0]
    python scripts/make_demo_data.py btcv --out_dir O [--size 32] [--depth 32] [--seed 0]
    python scripts/make_demo_data.py acdc --out_dir O [--n_patients 6] [--size 48] [--n_slices 4] \\
        [--n_frames 6] [--seed 0]
    python scripts/make_demo_data.py tcia --out_dir O [--n_train 4] [--n_val 2] [--size 48] [--seed 0]
    python scripts/make_demo_data.py hyperkvasir --out_dir O [--n_unlabeled 48] [--n_per_class "(4, 6)"] [--seed 0]
    python scripts/make_demo_data.py kvasir_seg --out_dir O [--n 20] [--size 64] [--seed 0]
    python scripts/make_demo_data.py cvc_clinicdb --out_dir O [--n 16] [--size 64] [--seed 0]
    python scripts/make_demo_data.py c3vd --out_dir O [--n_train_videos 4] [--frames_per_video 6] [--width 48] \\
        [--height 40] [--seed 0]
    python scripts/make_demo_data.py mmwhs --out_dir O [--ids "(1001, 1003, 1004, 1002)"] [--size 64] [--depth 12] [--seed 0]
    python scripts/make_demo_data.py ssl_slices --out_dir O [--n_volumes 4] [--size 64] [--depth 8] [--seed 0]


A thin command line over :mod:`monai_ssl_ext.demo`, one module per dataset layout (its docstrings
describe each layout): ``cholec`` (Cholec80 videos, phase annotations, extracted frames and CSVs),
``tools`` (tool-segmentation images, masks, ``datalist.json``), ``acdc`` (ACDC raw release +
``acdc_slices.json``), ``btcv`` (BTCV in the unetr_btcv datalists' MSD layout), ``tcia``
(TCIA-COVID19 chest CT) and ``hyperkvasir`` (Hyperkvasir unlabelled folder, labelled class tree,
``knn.csv`` and ``unlabeled.csv``). ``kvasir_seg`` / ``cvc_clinicdb`` write the Kvasir-SEG
(``images/``, ``masks/``, ``bounding-boxes.json``) and CVC-ClinicDB (``Original/``, ``Ground Truth/``) layouts with
their frozen ``split_80_10_10.json``; ``c3vd`` the C3VD video folders (``<k>_color.png`` + 16-bit
``<k>_depth.tiff``) with ``c3vd_split.json`` (SSL4GIE's fixed validation / test videos).
The generator functions are importable from here as before
(``make_demo_data.tools(out_dir=...)``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(_ROOT))

from monai_ssl_ext.demo import (  # noqa: E402
    ACDC_GROUPS,
    BTCV_DATALISTS,
    BTCV_ORGANS,
    GENERATORS,
    PHASE_TINTS,
    VIDEO_CODECS,
    acdc,
    btcv,
    cholec,
    hyperkvasir,
    tcia,
    tools,
    write_video,
)
from monai_ssl_ext.demo import cvc_clinicdb, kvasir_seg  # noqa: E402
from monai_ssl_ext.demo import c3vd  # noqa: E402
from monai_ssl_ext.demo import mmwhs, ssl_slices  # noqa: E402

__all__ = ["ACDC_GROUPS", "BTCV_DATALISTS", "BTCV_ORGANS", "PHASE_TINTS", "VIDEO_CODECS", "acdc", "btcv", "cholec",
           "hyperkvasir", "tcia", "tools", "write_video"]
__all__ += ["cvc_clinicdb", "kvasir_seg"]
__all__ += ["c3vd"]
__all__ += ["mmwhs", "ssl_slices"]

if __name__ == "__main__":
    import fire

    fire.Fire(dict(GENERATORS))
