"""The node config of a SuperNode: its role and local paths, validated once.

In simulation Flower sets ``partition-id`` and ``num-partitions``, and the data comes
from the run's ``data-root`` through a partitioner. In deployment each hospital's
SuperNode is started with ``--node-config`` naming its role and its own folders; no
partitioner is involved and no node reads another node's data.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from common.config_values import ConfigError
from common.key_validation import validate_keys

__all__ = ["MISSING_STATE_DIR", "NodeConfig", "parse_node_config"]

MISSING_STATE_DIR = (
    "node config: 'state-dir' is missing; expected a folder this hospital may write for its optimizer state "
    "(optimizer-state = 'keep', the default), its global-step guard (update-norm-limit) and its DP ledgers: "
    "it never writes under another party's path"
)
"""Why a deployed hospital without ``state-dir`` is refused (``medsilo node check`` and its first round)."""


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("an integer, not a boolean")
    return value


_Int = Annotated[int, BeforeValidator(_no_bool), Field(strict=True, ge=0)]


class NodeConfig(BaseModel):
    """Every node-config key: simulation's partition keys, or deployment's role and paths."""

    model_config = ConfigDict(alias_generator=lambda n: n.replace("_", "-"), extra="forbid", frozen=True)

    partition_id: _Int | None = None
    num_partitions: _Int | None = None
    role: Literal["hospital", "evaluator"] | None = None
    data_path: str = ""
    he_secret_context: str = ""
    state_dir: str = ""
    hospital_name: str = Field("", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$|^$")
    hostile: Literal["", "label-flip", "scaled"] = ""
    """A test-and-benchmark fixture (``client.hostile``): this hospital sends harm. Never set in production."""

    @property
    def deployed(self) -> bool:
        """True for a SuperNode started with a ``role`` (deployment), False in simulation."""
        return self.role is not None

    @property
    def name(self) -> str:
        """The hospital's name in reports: ``hospital-name``, else its data folder's name."""
        return self.hospital_name or Path(self.data_path).name

    @property
    def seed_offset(self) -> int:
        """A stable per-hospital offset for seeds (the partition id in simulation)."""
        if self.partition_id is not None:
            return self.partition_id
        return zlib.crc32(self.name.encode()) % 100_003


def parse_node_config(values: Mapping[str, Any]) -> NodeConfig:
    """Validate a SuperNode's node config (once per process and distinct config).

    Raises:
        ConfigError: one line naming the key, the value and what is expected.
    """
    return _parse(tuple(sorted(values.items())))


@lru_cache(maxsize=8)
def _parse(items: tuple[tuple[str, Any], ...]) -> NodeConfig:
    node = validate_keys(NodeConfig, dict(items), source="node config")
    if node.deployed:
        if node.partition_id is not None:
            raise ConfigError(
                "node config: 'role' and 'partition-id' are both set; expected 'role' with 'data-path' (deployment) "
                "or the simulation's 'partition-id' and 'num-partitions', not both"
            )
        if not node.data_path:
            raise ConfigError(f"node config: 'data-path' is missing; expected the {node.role}'s own image folder")
        if not Path(node.data_path).is_dir():
            raise ConfigError(
                f"node config: 'data-path' = {node.data_path!r} is not a folder; expected an image folder"
            )
        if node.he_secret_context and not Path(node.he_secret_context).is_file():
            raise ConfigError(
                f"node config: 'he-secret-context' = {node.he_secret_context!r} does not exist; "
                "expected the secret.ctx made by 'medsilo keys init'"
            )
        return node
    if node.partition_id is None or node.num_partitions is None:
        raise ConfigError(
            "node config: 'role' (deployment) or 'partition-id' and 'num-partitions' (simulation) are missing; "
            "expected --node-config \"role='hospital' data-path='...'\" on a deployed SuperNode"
        )
    if node.partition_id >= node.num_partitions:
        raise ConfigError(
            f"node config: 'partition-id' = {node.partition_id} is invalid; expected 0..{node.num_partitions - 1}"
        )
    return node
