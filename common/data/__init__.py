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


def __getattr__(name: str) -> object:
    """``build_transform`` on first use: torchvision (2-3 s to import) stays out of paths that only read images."""
    if name == "build_transform":
        from common.data.transforms import build_transform

        return build_transform
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
