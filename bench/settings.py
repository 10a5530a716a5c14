"""What each bundle is benchmarked with: its CPU demo settings (``configs/cpu_demo.json``), then the
overrides below (the same in every mode), on its demo data."""

from __future__ import annotations

#: merged after cpu_demo.json in every mode: whole epochs, no resume, no progress bar
COMMON = {"resume": False, "progress_bar": False, "num_workers": 2}

#: demo data kind -> generator arguments: a few hundred training items, so that an epoch is several batches
DATA: dict[str, dict] = {
    "cholec": {"n_videos": 6, "frames_per_video": 110},  # ~440 training frames (the 444 real slices)
    "acdc": {"n_patients": 24, "n_slices": 6},
    "hyperkvasir": {"n_unlabeled": 448},
    "ssl_slices": {"n_volumes": 8, "depth": 16},
    "tcia": {"n_train": 16},
}

#: bundle -> (demo data kind, overrides); SimCLR is the issue's reference setting (ResNet-18, 96 px, batch 32).
#: ``warmup_epochs`` 0 where the bundle's ``WarmupCosineLR`` needs a run longer than its CPU demo's warmup (the bench
#: runs 1-2 epochs; the warmup changes the learning rate, not what a step costs)
BUNDLES: dict[str, tuple[str, dict]] = {
    "simclr_cholec": ("cholec", {"backbone": "timm/resnet18", "image_size": 96, "batch_size": 32, "val_interval": 1000}),
    "byol_acdc": ("acdc", {}),
    "mocov3_hyperkvasir": ("hyperkvasir", {"knn_interval": 0}),
    "barlowtwins_hyperkvasir": ("hyperkvasir", {"knn_interval": 0, "warmup_epochs": 0}),
    "mae_hyperkvasir": ("hyperkvasir", {"knn_interval": 0}),
    "swav_slices": ("ssl_slices", {}),
    "deepclusterv2_slices": ("ssl_slices", {}),
    # its default stage (DeepCluster-v2 on slice stacks) on the same demo's 3D arrays: 32 volumes, batch 2
    "joint_ssl_3d": ("ssl_slices", {"warmup_epochs": 0}),
    "vitautoenc_ct": ("tcia", {"val_interval": 1000}),
}

#: bundle -> the epochs a bench run lasts when ``--epochs`` is not given: at least 2, so that every run crosses an
#: epoch boundary (the bundle's epoch-end checkpoint and export, written while the next epoch trains), and enough for
#: a run of about 10 s or more on 2 CPU cores (shorter runs are dominated by the machine's moment-to-moment speed)
EPOCHS: dict[str, int] = {
    "simclr_cholec": 2,
    "byol_acdc": 2,
    "mocov3_hyperkvasir": 2,
    "barlowtwins_hyperkvasir": 2,
    "mae_hyperkvasir": 3,
    "swav_slices": 2,
    "deepclusterv2_slices": 2,
    "joint_ssl_3d": 3,
    "vitautoenc_ct": 10,
}
