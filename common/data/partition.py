"""Seeded splits of one data root into hospitals, with flwr-datasets partitioners.

flwr-datasets is imported on first use: it pulls in ``datasets``, seaborn and scipy (about
1.5 s), which a deployed hospital, reading its own folder, never needs at each ClientApp start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

__all__ = ["PARTITIONERS", "partition_by_group", "partition_indices", "split_train_val", "split_train_val_by_group"]

PARTITIONERS = ("iid", "dirichlet")


def _make_partitioner(name: str, num_partitions: int, *, alpha: float, seed: int, n: int) -> Partitioner:
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if name == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if name == "dirichlet":
        min_size = max(1, min(10, n // (4 * num_partitions)))
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min_size,
            self_balancing=False,
            seed=seed,
        )
    raise ValueError(f"partitioner = {name!r} is invalid; expected one of: {', '.join(PARTITIONERS)}")


def partition_indices(
    labels: Sequence[int], *, num_partitions: int, partitioner: str, alpha: float = 0.5, seed: int = 42
) -> list[list[int]]:
    """Split the indices ``0..len(labels)-1`` into ``num_partitions`` hospitals.

    The result depends only on the labels, the partitioner, ``alpha`` and ``seed``, so
    every simulated hospital computes the same split independently.

    Returns:
        One sorted index list per partition; together they cover every index once.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions = {num_partitions} is invalid; expected at least 1")
    n = len(labels)
    if n < num_partitions:
        raise ValueError(f"{n} training images cannot be split into {num_partitions} hospitals")
    from datasets import Dataset

    dataset = Dataset.from_dict({"label": list(map(int, labels)), "index": list(range(n))})
    if partitioner == "iid":
        dataset = dataset.shuffle(seed=seed).flatten_indices()
    splitter = _make_partitioner(partitioner, num_partitions, alpha=alpha, seed=seed, n=n)
    splitter.dataset = dataset
    return [sorted(splitter.load_partition(pid)["index"]) for pid in range(num_partitions)]


def split_train_val(indices: Sequence[int], *, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out a seeded ``val_fraction`` of a hospital's indices as its local test split."""
    order = np.random.default_rng(seed).permutation(len(indices))
    n_val = int(round(len(indices) * val_fraction))
    if val_fraction > 0 and len(indices) >= 2:
        n_val = min(max(n_val, 1), len(indices) - 1)
    val = sorted(indices[i] for i in order[:n_val])
    train = sorted(indices[i] for i in order[n_val:])
    return train, val


def partition_by_group(groups: Sequence[str], *, num_partitions: int, seed: int = 42) -> list[list[int]]:
    """Split image indices into hospitals by patient: each patient's images go to one hospital only.

    Patients are taken in a seeded random order, each to the hospital with the fewest images so
    far, so hospitals hold about as many images as an IID split would.

    Returns:
        One sorted index list per partition; together they cover every index once.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions = {num_partitions} is invalid; expected at least 1")
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    if len(members) < num_partitions:
        raise ValueError(f"{len(members)} patients cannot be split into {num_partitions} hospitals")
    patients = sorted(members)
    parts: list[list[int]] = [[] for _ in range(num_partitions)]
    for i in np.random.default_rng(seed).permutation(len(patients)):
        smallest = min(range(num_partitions), key=lambda p: len(parts[p]))
        parts[smallest].extend(members[patients[i]])
    return [sorted(p) for p in parts]


def split_train_val_by_group(
    indices: Sequence[int], groups: Sequence[str], *, val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Hold out whole patients, about ``val_fraction`` of a hospital's images, as its local test split."""
    members: dict[str, list[int]] = {}
    for index in indices:
        members.setdefault(groups[index], []).append(index)
    patients = sorted(members)
    val: list[int] = []
    if val_fraction > 0 and len(patients) >= 2:
        target = max(1, int(round(len(indices) * val_fraction)))
        for i in np.random.default_rng(seed).permutation(len(patients))[: len(patients) - 1]:
            if len(val) >= target:
                break
            val.extend(members[patients[i]])
    held = set(val)
    return sorted(i for i in indices if i not in held), sorted(val)
