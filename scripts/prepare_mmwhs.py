"""Slice the MMWHS training volumes into the unet_mmwhs layout and write its datalist.

Usage::

    python scripts/prepare_mmwhs.py --data_dir /data/MMWHS [--out_dir /data/MMWHS] [--modalities "['ct','mr']"] [--seed 0]
        [--label_aliases "{421: 420}"]

Input: ``<data_dir>/**/ct_train_<id>_image.nii.gz`` + ``ct_train_<id>_label.nii.gz`` (MR: ``mr_train_...``),
as in the MM-WHS 2017 release (``ct_train/``, ``mr_train/``). Output per modality (``out_dir`` default
``data_dir``): ``<mod>/images/<mod>_train_<id>_frame_<d>.png`` (uint8 slices: per-volume [0.5, 99.5]
percentile clip, z-score / 10, clip to [0, 1], × 255), ``<mod>/labels/...png`` (classes 0..7 from the
labels 205, 420, 500, 550, 600, 820, 850) and ``mmwhs_<mod>.json`` (the fixed patient split, the training
sample of every labelled slice + as many background-only ones drawn with ``seed``, all slices of the
validation and test volumes). A thin command line over :func:`monai_ssl_ext.mmwhs.prepare_mmwhs` (its
docstring gives the JSON keys); an unknown label value stops with the file and the values named.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(_ROOT))

from monai_ssl_ext.mmwhs import prepare_mmwhs  # noqa: E402

__all__ = ["prepare_mmwhs"]

if __name__ == "__main__":
    import fire

    fire.Fire(prepare_mmwhs)
