"""Benchmarks of the SSL bundles (``python -m bench``): training throughput through ``monai.bundle run``
against a plain PyTorch loop over the same parsed components and, where lightly has the method and is
installed (the optional ``bench`` extra), against lightly's loss and augmentations; the augmentation
pipeline's items/s per worker. Medians of interleaved rounds; results in ``bench/results/``."""
