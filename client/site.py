"""One hospital's data and model set-up, shared by every ClientApp handler."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from flwr.app import ConfigRecord

from common import records as rk
from common.config import ConfigError, RunConfig
from common.data import (
    ImageSet,
    load_folder,
    load_split,
    partition_indices,
    resolve_test_folder,
    resolve_train_folder,
    split_train_val,
)
from common.data.partition import partition_by_group, split_train_val_by_group
from common.experiment import load_run_split, preset_for, resolve_path
from common.node_config import MISSING_STATE_DIR, NodeConfig, parse_node_config

__all__ = [
    "HospitalData", "NodeIdentity", "central_test_set", "hospital_data", "local_split", "node_identity", "state_dir",
]


@dataclass(frozen=True)
class HospitalData:
    """A hospital's local training images and its local test (validation) split."""

    name: str
    train: ImageSet
    val: ImageSet


@dataclass(frozen=True)
class NodeIdentity:
    """What this SuperNode is: a hospital or the evaluator, and where its data lives."""

    role: str
    name: str
    node: NodeConfig
    index: int = -1
    hospitals: int = 0


def _simulated_identity(cfg: RunConfig, node: NodeConfig) -> NodeIdentity:
    """Under HE the last simulated SuperNode is the evaluator, so N hospitals need N + 1 SuperNodes."""
    pid, num = int(node.partition_id or 0), int(node.num_partitions or 0)
    if not cfg.he_enabled:
        return NodeIdentity("hospital", f"hospital-{pid}", node, pid, num)
    if num < 2:
        raise ConfigError(
            f"he-enabled needs num-supernodes = hospitals + 1 (the last one is the evaluator); got {num} SuperNode(s)"
        )
    if pid == num - 1:
        return NodeIdentity("evaluator", "evaluator", node, -1, num - 1)
    return NodeIdentity("hospital", f"hospital-{pid}", node, pid, num - 1)


def node_identity(cfg: RunConfig, node_config: Mapping[str, object]) -> NodeIdentity:
    """The node's role and name, from its node config (deployment) or its partition (simulation)."""
    node = parse_node_config(node_config)
    if node.deployed:
        name = "evaluator" if node.role == "evaluator" else node.name
        return NodeIdentity(str(node.role), name, node)
    return _simulated_identity(cfg, node)


def local_split(cfg: RunConfig, images: ImageSet, mine: list[int], seed: int) -> tuple[list[int], list[int]]:
    """A hospital's local train/validation split: by patient when the images name them."""
    if images.groups:
        return split_train_val_by_group(mine, images.groups, val_fraction=cfg.local_val_fraction, seed=seed)
    return split_train_val(mine, val_fraction=cfg.local_val_fraction, seed=seed)


def _decoding(cfg: RunConfig) -> dict[str, object]:
    """How this run decodes a class-folder tree: its classes, channels, size and decoded-cache bound."""
    preset = preset_for(cfg)
    return {
        "classes": cfg.class_names,
        "channels": preset.channels,
        "size": cfg.image_size,
        "cache_mb": cfg.decoded_cache_mb,
    }


@lru_cache(maxsize=2)
def _all_partitions(cfg: RunConfig, num: int) -> tuple[ImageSet, list[list[int]]]:
    """The training images and every hospital's indices, computed once per process.

    A simulation process serves many hospitals (a thousand, in a large one); splitting the whole
    set again for each of them would make every message cost more as hospitals are added.
    """
    images = load_run_split(cfg, resolve_path(cfg.data_root), "train")
    if cfg.multilabel:  # whole patients per hospital: no patient is at two hospitals
        return images, partition_by_group(images.groups, num_partitions=num, seed=cfg.seed)
    parts = partition_indices(
        images.labels.tolist(),
        num_partitions=num,
        partitioner=cfg.partitioner,
        alpha=cfg.dirichlet_alpha,
        seed=cfg.seed,
    )
    return images, parts


@lru_cache(maxsize=64)
def _partition(cfg: RunConfig, pid: int, num: int) -> HospitalData:
    root = resolve_path(cfg.data_root)
    kwargs = _decoding(cfg)
    if cfg.partitioner == "natural" and not cfg.multilabel:
        sites = sorted(p.name for p in (root / "train").iterdir() if p.is_dir()) if (root / "train").is_dir() else []
        if len(sites) != num:
            raise ConfigError(
                f"partitioner = 'natural' found {len(sites)} hospital folder(s) under {root / 'train'}; "
                f"expected one per simulated hospital ({num})"
            )
        images = load_split(root / "train", sites[pid], **kwargs)  # type: ignore[arg-type]
        name = sites[pid]
        mine = list(range(len(images)))
    else:
        images, parts = _all_partitions(cfg, num)
        mine, name = parts[pid], f"hospital-{pid}"
    train, val = local_split(cfg, images, mine, cfg.seed + pid)
    return HospitalData(name=name, train=images.subset(train), val=images.subset(val))


def _own_root(node: NodeConfig) -> Path:
    """A deployed node's ``data-path``, which must be a folder."""
    root = Path(node.data_path)
    if not root.is_dir():
        raise ConfigError(f"node config: 'data-path' = {node.data_path!r} is not a folder; expected this node's images")
    return root


@lru_cache(maxsize=4)
def _own_folder(cfg: RunConfig, node: NodeConfig) -> HospitalData:
    """A deployed hospital's own ``data-path`` (``DATA/train/<class>`` or ``DATA/<class>``), never another's."""
    root = _own_root(node)
    if cfg.multilabel:
        images = load_run_split(cfg, root, "train")
    else:
        folder = resolve_train_folder(root)
        images = load_folder(folder, root=root, **_decoding(cfg))  # type: ignore[arg-type]
    if len(images) == 0:
        expected = "DATA/labels.csv with train rows" if cfg.multilabel else "DATA/train/<class>/* or DATA/<class>/*"
        raise ConfigError(
            f"node config: 'data-path' = {node.data_path!r} holds no readable images of the classes "
            f"{', '.join(cfg.class_names)}; expected {expected}"
        )
    train, val = local_split(cfg, images, list(range(len(images))), cfg.seed + node.seed_offset)
    return HospitalData(name=node.name, train=images.subset(train), val=images.subset(val))


def hospital_data(cfg: RunConfig, node_config: Mapping[str, object]) -> HospitalData:
    """This hospital's data, decoded and split once per process and reused every round."""
    identity = node_identity(cfg, node_config)
    if identity.role != "hospital":
        raise ValueError("the evaluator node holds no training data; it only scores the central test set")
    if identity.node.deployed:
        return _own_folder(cfg, identity.node)
    return _partition(cfg, identity.index, identity.hospitals)


def central_test_set(cfg: RunConfig, node_config: Mapping[str, object]) -> ImageSet:
    """The central test set: the deployed evaluator's ``data-path``, else ``data-root/test`` (simulation)."""
    identity = node_identity(cfg, node_config)
    kwargs = _decoding(cfg)
    if identity.node.deployed:
        root = _own_root(identity.node)
        if cfg.multilabel:
            return load_run_split(cfg, root, "test")
        return load_folder(resolve_test_folder(root), root=root, **kwargs)  # type: ignore[arg-type]
    return load_run_split(cfg, resolve_path(cfg.data_root), "test")


def state_dir(node_config: Mapping[str, object], config: ConfigRecord, hospital: str) -> Path:
    """This hospital's state folder for this run: its privacy ledger, kept optimizer state and global-step guard.

    ``<state-dir>/<run name>`` when the node config sets ``state-dir`` (deployment, where it
    is required: a :class:`ConfigError` without it), else ``<run dir>/state/<hospital>``
    (simulation). A resumed run keeps its run directory, so its ledger continues; a new run
    starts its own.
    """
    if rk.RUN_DIR not in config:
        raise ValueError(f"train message: '{rk.RUN_DIR}' is missing; expected the run directory from the server")
    run_dir = Path(str(config[rk.RUN_DIR]))
    node = parse_node_config(node_config)
    if node.state_dir:
        return Path(str(node.state_dir)) / run_dir.name
    if node.deployed:  # the run directory is the server's path: a hospital never writes under it
        raise ConfigError(MISSING_STATE_DIR)
    return run_dir / "state" / hospital
