"""``medsilo node check``: a deployed SuperNode's node config, checked before the SuperNode starts.

Flower's SuperNode cannot run our code when it starts, so a typo in its node config would
otherwise surface only when the first run arrives. This check validates the keys, reads the
node's own image folder the way a run will, and looks at the secret key's file mode.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.common.config import parse_config_args

from common.config import ConfigError
from common.data import load_folder, resolve_test_folder, resolve_train_folder
from common.node_config import MISSING_STATE_DIR, NodeConfig, parse_node_config

__all__ = ["NodeReport", "check_node", "parse_node_config_string"]


@dataclass(frozen=True)
class NodeReport:
    """What a checked node holds: its config, its images per class, and what was skipped."""

    node: NodeConfig
    folder: Path
    counts: dict[str, int]
    skipped: int
    missing_classes: tuple[str, ...]


def parse_node_config_string(text: str) -> dict[str, Any]:
    """``"role='hospital' data-path='/data'"`` (``flower-supernode --node-config``'s syntax) as a dict."""
    try:
        return parse_config_args([text])
    except Exception as err:  # Flower raises several types for unparsable TOML
        raise ConfigError(
            f"node config: {text!r} does not parse ({err}); expected \"key='value' key='value'\""
        ) from None


def _check_secret_key(node: NodeConfig) -> None:
    if not node.he_secret_context:
        return
    mode = stat.S_IMODE(Path(node.he_secret_context).stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"node config: 'he-secret-context' = {node.he_secret_context!r} is readable by others "
            f"(mode {mode:04o}); expected 0600: chmod 600 {node.he_secret_context}"
        )
    from common.he.keys import load_secret_context  # TenSEAL only when the node holds a key

    try:
        load_secret_context(node.he_secret_context)
    except ValueError as err:
        raise ConfigError(f"node config: 'he-secret-context' = {node.he_secret_context!r}: {err}") from None


def _check_state_dir(node: NodeConfig) -> None:
    if not node.state_dir:
        if node.role == "hospital":
            raise ConfigError(MISSING_STATE_DIR)
        return
    existing = Path(node.state_dir)
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(
            f"node config: 'state-dir' = {node.state_dir!r} cannot be created or written here; "
            "expected a folder this node may write (its DP ledgers and optimiser state)"
        )


def check_node(values: Mapping[str, Any], *, classes: Sequence[str], channels: int) -> NodeReport:
    """Validate a deployed node's config and read its images as a run would.

    Raises:
        ConfigError: one line for the first problem: a bad key or value, a missing or empty data
            folder, a class folder with no readable image, a secret key others can read, or a
            hospital without a state folder it can write.
    """
    node = parse_node_config(values)
    if not node.deployed:
        raise ConfigError("node config: 'role' is missing; expected role='hospital' or role='evaluator'")
    _check_secret_key(node)
    _check_state_dir(node)
    root = Path(node.data_path)
    folder = resolve_test_folder(root) if node.role == "evaluator" else resolve_train_folder(root)
    try:
        images = load_folder(folder, classes=classes, channels=channels, size=32, root=root)
    except ValueError as err:
        raise ConfigError(f"node config: 'data-path': {err}") from None
    counts = dict(zip(classes, images.class_counts(), strict=True))
    present = {p.name for p in folder.iterdir() if p.is_dir()}
    empty = [name for name in classes if name in present and counts[name] == 0]
    if empty:
        raise ConfigError(
            f"node config: 'data-path' = {node.data_path!r}: class folder {str(folder / empty[0])!r} holds no "
            "readable image; expected images in it, or no folder for a class this node does not have"
        )
    if not len(images):
        raise ConfigError(
            f"node config: 'data-path' = {node.data_path!r} holds no readable images of the classes "
            f"{', '.join(classes)}; expected {folder}/<class>/*"
        )
    missing = tuple(name for name in classes if name not in present)
    return NodeReport(node, folder, counts, len(images.skipped), missing)
