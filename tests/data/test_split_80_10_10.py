"""SSL4GIE's 80 / 10 / 10 image-level split (``Data/dataloaders.py::split_ids``): the sizes the paper's datasets
get, disjoint parts covering every item, and the very indices of scikit-learn's ``train_test_split`` called twice
as the source calls it (scikit-learn is the reference here, not a dependency of the package)."""

from __future__ import annotations

import pytest

from monai_ssl_ext.data import split_80_10_10


@pytest.mark.parametrize("n, sizes", [(1000, (800, 100, 100)), (612, (490, 61, 61)), (6, (4, 1, 1))])
def test_sizes_and_partition(n, sizes):
    names = [f"img_{i:04d}.jpg" for i in range(n)]
    split = split_80_10_10(names)
    assert tuple(len(split[k]) for k in ("training", "validation", "test")) == sizes
    assert sorted(split["training"] + split["validation"] + split["test"]) == names


@pytest.mark.parametrize("n", [612, 1000, 10662])
def test_matches_scikit_learn_train_test_split_twice(n):
    """The source: ``train_test_split(linspace(0, n-1, n).astype(int), test_size=round(.1 n), random_state=42)``,
    then the same on the train part -> (train, val)."""
    sklearn = pytest.importorskip("sklearn.model_selection")
    import numpy as np

    n_test = int(round(0.1 * n))
    idx = np.linspace(0, n - 1, n).astype("int")
    train, test = sklearn.train_test_split(idx, test_size=n_test, random_state=42)
    train, val = sklearn.train_test_split(train, test_size=n_test, random_state=42)
    split = split_80_10_10(list(range(n)))
    assert split["training"] == train.tolist() and split["validation"] == val.tolist() and split["test"] == test.tolist()


def test_too_few_items_refused():
    with pytest.raises(ValueError, match="5 items"):
        split_80_10_10(list(range(5)))
