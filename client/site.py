"""One hospital's data and model set-up, shared by every ClientApp handler."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from common.config import RunConfig
from common.data import ImageSet, load_split, partition_indices, split_train_val
from common.experiment import preset_for, resolve_path

__all__ = ["HospitalData", "NodeIdentity", "central_test_set", "hospital_data", "node_identity"]


@dataclass(frozen=True)
class HospitalData:
    """A hospital's local training images and its local test (validation) split."""

    name: str
    train: ImageSet
    val: ImageSet


@dataclass(frozen=True)
class NodeIdentity:
    """What this SuperNode is: a hospital (with its index) or the evaluator."""

    role: str
    index: int
    hospitals: int


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
    root = resolve_path(cfg.data_root)
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


def node_identity(cfg: RunConfig, node_config: Mapping[str, object]) -> NodeIdentity:
    """The node's role. Under HE the last simulated SuperNode is the evaluator.

    So an HE simulation of N hospitals needs ``num-supernodes = N + 1``.
    """
    pid, num = _simulated_identity(node_config)
    if not cfg.he_enabled:
        return NodeIdentity("hospital", pid, num)
    if num < 2:
        raise ValueError(
            f"he-enabled needs num-supernodes = hospitals + 1 (the last one is the evaluator); got {num} SuperNode(s)"
        )
    if pid == num - 1:
        return NodeIdentity("evaluator", -1, num - 1)
    return NodeIdentity("hospital", pid, num - 1)


def hospital_data(cfg: RunConfig, node_config: Mapping[str, object]) -> HospitalData:
    """This hospital's data, decoded and split once per process and reused every round."""
    identity = node_identity(cfg, node_config)
    if identity.role != "hospital":
        raise ValueError("the evaluator node holds no training data; it only scores the central test set")
    return _partition(cfg, identity.index, identity.hospitals)


def central_test_set(cfg: RunConfig) -> ImageSet:
    """The central test set (``data-root/test``), for the evaluator node."""
    preset = preset_for(cfg)
    root = resolve_path(cfg.data_root)
    return load_split(root, "test", classes=cfg.class_names, channels=preset.channels, size=cfg.image_size)
