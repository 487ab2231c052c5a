"""Node-config validation: simulation partitions or deployment roles, one line per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import ConfigError
from common.node_config import parse_node_config


def test_simulation_keys() -> None:
    node = parse_node_config({"partition-id": 2, "num-partitions": 3})
    assert not node.deployed and node.seed_offset == 2


def test_deployment_keys(tmp_path: Path) -> None:
    secret = tmp_path / "secret.ctx"
    secret.write_bytes(b"x")
    node = parse_node_config(
        {
            "role": "hospital",
            "data-path": str(tmp_path),
            "he-secret-context": str(secret),
            "state-dir": str(tmp_path / "state"),
            "hospital-name": "st-mary",
        }
    )
    assert node.deployed and node.name == "st-mary"
    assert (
        node.seed_offset
        == parse_node_config({"role": "hospital", "data-path": str(tmp_path), "hospital-name": "st-mary"}).seed_offset
    )
    assert parse_node_config({"role": "evaluator", "data-path": str(tmp_path)}).name == tmp_path.name


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"role": "server", "data-path": "."},
            "'role' = 'server' is invalid; expected one of 'hospital' or 'evaluator'",
        ),
        ({"role": "hospital"}, "'data-path' is missing"),
        ({"role": "hospital", "data-path": "/no/such/folder"}, "'data-path' = '/no/such/folder' is not a folder"),
        ({"role": "hospital", "data-path": ".", "he-secret-context": "/no/key.ctx"}, "'he-secret-context' = "),
        ({"role": "hospital", "data-path": ".", "hospital-name": "a b/c"}, "'hospital-name' = 'a b/c' is invalid"),
        ({"role": "hospital", "data-path": ".", "partition-id": 0}, "'role' and 'partition-id' are both set"),
        ({"role": "hospital", "data-pth": "."}, "unknown key 'data-pth'; did you mean 'data-path'?"),
        ({}, "'role' (deployment) or 'partition-id' and 'num-partitions' (simulation) are missing"),
        ({"partition-id": 3, "num-partitions": 3}, "'partition-id' = 3 is invalid; expected 0..2"),
        ({"partition-id": True, "num-partitions": 3}, "'partition-id' = True is invalid"),
    ],
)
def test_bad_node_config_is_one_line(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_node_config(values)
    text = str(err.value)
    assert "\n" not in text and text.startswith("node config: ")
    assert message in text
