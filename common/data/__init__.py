"""Datasets, transforms, partitioning, the synthetic generator and the data check."""

from common.data.images import (
    ImageSet,
    TensorImageDataset,
    load_folder,
    load_split,
    resolve_test_folder,
    resolve_train_folder,
)
from common.data.partition import partition_indices, split_train_val
from common.data.transforms import build_transform

__all__ = [
    "ImageSet",
    "TensorImageDataset",
    "build_transform",
    "load_folder",
    "load_split",
    "partition_indices",
    "resolve_test_folder",
    "resolve_train_folder",
    "split_train_val",
]
