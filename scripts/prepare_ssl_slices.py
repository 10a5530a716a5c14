"""Slice folders of NIfTI volumes (one folder per dataset) into the joint 2D-3D SSL recipe's layouts.

Usage::

    python scripts/prepare_ssl_slices.py --data_dir /data/ssl_raw --out_dir /data/training_data_2D \\
        [--datasets "['BraTS2018','LUNA2016','LiTS2017','MSD_Heart']"] [--fractions "(0.8,0.1,0.1)"] [--seed 0] \\
        [--volumes_dir /data/training_data_3D] [--skip_blank true]

Input: ``<data_dir>/<Dataset>/**/*.nii.gz`` (label files left out: folders ``labels*``, names ``*_label``,
``*_seg``, ``*_gt``, ``*_mask``). Output: ``<out_dir>/{train,valid,test}/<Dataset>/<stem>_frame_<d>.png``
(uint8, the MMWHS intensity map per volume, slices along the last axis, each dataset split at volume level
with ``seed``; the layout ``monai_ssl_ext.data.read_slice_folders`` and the swav_slices /
deepclusterv2_slices bundles read) and, with ``--volumes_dir``, ``<volumes_dir>/<Dataset>/<stem>.npy``
(H x W x D float32 in [0, 1], the 3D layout). A thin command line over
:func:`monai_ssl_ext.mmwhs.prepare_ssl_slices`.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(_ROOT))

from monai_ssl_ext.mmwhs import prepare_ssl_slices  # noqa: E402

__all__ = ["prepare_ssl_slices"]

if __name__ == "__main__":
    import fire

    fire.Fire(prepare_ssl_slices)
