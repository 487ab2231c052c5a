"""Tests for common.data.partition: IID and Dirichlet hospitals, and the train/validation split."""

from __future__ import annotations

import numpy as np
import pytest

from common.data.partition import partition_indices, split_train_val

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # flwr-datasets Dirichlet resampling notes

LABELS = np.repeat(np.arange(4), 60)  # 240 samples, 4 balanced classes
np.random.default_rng(0).shuffle(LABELS)


def _covers_once(parts: list[list[int]], n: int) -> None:
    flat = [i for part in parts for i in part]
    assert len(flat) == n
    assert sorted(flat) == list(range(n))
    for part in parts:
        assert part == sorted(part)


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet"])
def test_partition_reproducible_and_covering(partitioner):
    labels = LABELS.tolist()
    a = partition_indices(labels, num_partitions=4, partitioner=partitioner, alpha=0.5, seed=7)
    b = partition_indices(labels, num_partitions=4, partitioner=partitioner, alpha=0.5, seed=7)
    c = partition_indices(labels, num_partitions=4, partitioner=partitioner, alpha=0.5, seed=8)
    assert a == b
    assert a != c
    assert len(a) == 4 and len(c) == 4
    assert all(len(part) > 0 for part in a)
    _covers_once(a, len(labels))
    _covers_once(c, len(labels))


def test_iid_parts_are_balanced_in_size():
    parts = partition_indices(LABELS.tolist(), num_partitions=3, partitioner="iid", seed=1)
    assert [len(p) for p in parts] == [80, 80, 80]


def _mean_distance_from_global(parts: list[list[int]]) -> float:
    """Mean total-variation distance of each part's label distribution from the global one."""
    overall = np.bincount(LABELS, minlength=4) / len(LABELS)
    dists = []
    for part in parts:
        hist = np.bincount(LABELS[part], minlength=4) / len(part)
        dists.append(0.5 * np.abs(hist - overall).sum())
    return float(np.mean(dists))


def test_dirichlet_small_alpha_is_non_iid():
    labels = LABELS.tolist()
    iid = partition_indices(labels, num_partitions=4, partitioner="iid", seed=3)
    skewed = partition_indices(labels, num_partitions=4, partitioner="dirichlet", alpha=0.1, seed=3)
    _covers_once(skewed, len(labels))
    assert _mean_distance_from_global(iid) < 0.15
    assert _mean_distance_from_global(skewed) > 0.3
    # at least one hospital misses a class entirely, or nearly
    assert min(np.bincount(LABELS[p], minlength=4).min() for p in skewed) <= 2


def test_single_partition_is_everything():
    assert partition_indices([0, 1, 1, 0], num_partitions=1, partitioner="iid") == [[0, 1, 2, 3]]


@pytest.mark.parametrize(
    ("labels", "num", "partitioner", "match"),
    [
        ([0, 1, 0, 1], 0, "iid", "num_partitions"),
        ([0, 1, 0, 1], -2, "dirichlet", "num_partitions"),
        ([0, 1, 0], 4, "iid", "cannot be split"),
        ([], 1, "dirichlet", "cannot be split"),
        ([0, 1, 0, 1], 2, "foo", "partitioner"),
        ([0, 1, 0, 1], 2, "natural", "partitioner"),
    ],
)
def test_partition_bad_inputs_raise(labels, num, partitioner, match):
    with pytest.raises(ValueError, match=match):
        partition_indices(labels, num_partitions=num, partitioner=partitioner)


def test_split_train_val_disjoint_covering_reproducible():
    indices = list(range(100, 300, 2))  # 100 arbitrary index values
    train, val = split_train_val(indices, val_fraction=0.2, seed=5)
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == indices
    assert len(val) == 20 and len(train) == 80
    assert train == sorted(train) and val == sorted(val)
    assert split_train_val(indices, val_fraction=0.2, seed=5) == (train, val)
    assert split_train_val(indices, val_fraction=0.2, seed=6) != (train, val)


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"),
    [(10, 0.0, 0), (10, 0.1, 1), (10, 0.5, 5), (3, 0.1, 1), (2, 0.5, 1), (1, 0.5, 0), (40, 0.25, 10)],
)
def test_split_train_val_fraction(n, fraction, n_val):
    train, val = split_train_val(list(range(n)), val_fraction=fraction, seed=0)
    assert len(val) == n_val and len(train) == n - n_val
