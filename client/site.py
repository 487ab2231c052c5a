"""One hospital's data and model set-up, shared by every ClientApp handler."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from common.config import RunConfig
from common.data import ImageSet, load_split, partition_indices, split_train_val
from common.experiment import preset_for, resolve_path

__all__ = ["HospitalData", "hospital_data"]


@dataclass(frozen=True)
class HospitalData:
    """A hospital's local training images and its local test (validation) split."""

    name: str
    train: ImageSet
    val: ImageSet


def _simulated_identity(node_config: Mapping[str, object]) -> tuple[int, int]:
    try:
        pid, num = int(node_config["partition-id"]), int(node_config["num-partitions"])  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            "node config: 'partition-id' and 'num-partitions' are missing or not integers; "
            "expected the simulation engine to set them"
        ) from None
    if not 0 <= pid < num:
        raise ValueError(f"node config: 'partition-id' = {pid} is invalid; expected 0..{num - 1}")
    return pid, num


@lru_cache(maxsize=4)
def _partition(cfg: RunConfig, pid: int, num: int) -> HospitalData:
    preset = preset_for(cfg)
    root = resolve_path(cfg.data_root, key="data-root")
    kwargs = {"classes": cfg.class_names, "channels": preset.channels, "size": cfg.image_size}
    if cfg.partitioner == "natural":
        sites = sorted(p.name for p in (root / "train").iterdir() if p.is_dir()) if (root / "train").is_dir() else []
        if len(sites) != num:
            raise ValueError(
                f"partitioner = 'natural' found {len(sites)} hospital folder(s) under {root / 'train'}; "
                f"expected one per simulated hospital ({num})"
            )
        images = load_split(root / "train", sites[pid], **kwargs)  # type: ignore[arg-type]
        name = sites[pid]
        mine = list(range(len(images)))
    else:
        images = load_split(root, "train", **kwargs)  # type: ignore[arg-type]
        parts = partition_indices(
            images.labels.tolist(),
            num_partitions=num,
            partitioner=cfg.partitioner,
            alpha=cfg.dirichlet_alpha,
            seed=cfg.seed,
        )
        mine, name = parts[pid], f"hospital-{pid}"
    train, val = split_train_val(mine, val_fraction=cfg.local_val_fraction, seed=cfg.seed + pid)
    return HospitalData(name=name, train=images.subset(train), val=images.subset(val))


def hospital_data(cfg: RunConfig, node_config: Mapping[str, object]) -> HospitalData:
    """This hospital's data, decoded and split once per process and reused every round."""
    pid, num = _simulated_identity(node_config)
    return _partition(cfg, pid, num)
