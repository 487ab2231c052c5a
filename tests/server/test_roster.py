"""The describe query: which nodes are hospitals, the evaluator, and which failed (history.json and config.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict

from common.config import parse_run_config
from common.report.summary import run_summary
from server.history import RunHistory
from server.roster import NodeRoster
from server.run_directory import RunDirectory

pytestmark = pytest.mark.usefixtures("task_identity")

_REPORT = {"classes": ["a", "b"], "n": 4}


class _FakeGrid:
    """Just enough of a Flower Grid for the roster query: a role per node, an error, or no reply."""

    def __init__(self, roles: dict[int, tuple[str, int]], *, data: str = "simulated") -> None:
        self.roles = roles
        self.data = data

    def get_node_ids(self) -> list[int]:
        return list(self.roles)

    def send_and_receive(self, messages, timeout: float):
        replies = []
        for msg in messages:
            role, n = self.roles[msg.metadata.dst_node_id]
            if role == "silent":
                continue
            if role == "broken":
                replies.append(Message(Error(code=0, reason="node config: unknown key 'data-pth'"), reply_to=msg))
                continue
            content = RecordDict(
                {
                    "metrics": MetricRecord({"num-examples": n}),
                    "hospital": ConfigRecord({"role": role, "name": f"n{n}", "data": self.data}),
                }
            )
            replies.append(Message(content, reply_to=msg))
        return replies


def test_roster_finds_hospitals_and_the_evaluator() -> None:
    grid = _FakeGrid({2**63 + 5: ("hospital", 10), 7: ("hospital", 30), 9: ("evaluator", 0)})
    roster = NodeRoster.discover(grid, min_hospitals=2, timeout=5)
    assert roster.hospitals == {2**63 + 5: 10, 7: 30} and roster.evaluator == 9 and roster.total_examples == 40
    assert roster.failed == {} and not roster.deployed


@pytest.mark.parametrize(
    ("roles", "match"),
    [
        ({1: ("hospital", 10), 2: ("hospital", 10), 3: ("hospital", 10)}, "found 0 evaluator"),
        ({1: ("hospital", 10), 2: ("evaluator", 0), 3: ("evaluator", 0)}, "found 2 evaluator"),
    ],
)
def test_roster_explains_a_bad_node_count(roles: dict[int, tuple[str, int]], match: str) -> None:
    with pytest.raises(RuntimeError, match=match):
        NodeRoster.discover(_FakeGrid(roles), min_hospitals=1, timeout=5)
    with pytest.raises(RuntimeError, match=r"min-train-nodes \+ 1 = 5 \(the hospitals and one evaluator\)$"):
        NodeRoster.discover(_FakeGrid(roles), min_hospitals=4, timeout=1)
    with pytest.raises(RuntimeError, match=r"^only 3 SuperNode\(s\) connected after 1s; min-train-nodes is 4$"):
        NodeRoster.discover(_FakeGrid(roles), min_hospitals=4, timeout=1, evaluator=False)


def _deployment_with_a_bad_node() -> NodeRoster:
    grid = _FakeGrid(
        {11: ("hospital", 10), 12: ("hospital", 30), 13: ("broken", 0), 14: ("silent", 0), 9: ("evaluator", 0)},
        data="own",
    )
    return NodeRoster.discover(grid, min_hospitals=2, timeout=3)


def test_nodes_that_fail_to_describe_themselves_are_recorded_by_id(tmp_path: Path) -> None:
    roster = _deployment_with_a_bad_node()
    assert roster.hospitals == {11: 10, 12: 30} and roster.deployed
    assert roster.failed == {13: "node config: unknown key 'data-pth'", 14: "no reply within 3s"}
    history = RunHistory(tmp_path / "history.json")
    history.set_nodes(roster.to_json(), first_round=1)
    history.flush()
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["rounds"][0]["failures"] == [
        {"node_id": 13, "stage": "describe", "reason": "node config: unknown key 'data-pth'"},
        {"node_id": 14, "stage": "describe", "reason": "no reply within 3s"},
    ]
    assert saved["nodes"]["nodes"] == [
        {"node_id": 11, "name": "n10", "role": "hospital", "examples": 10},
        {"node_id": 12, "name": "n30", "role": "hospital", "examples": 30},
        {"node_id": 9, "name": "n0", "role": "evaluator"},
    ]
    saved["rounds"].append({"round": 2, "hospitals": {"n10": {"examples": 10}, "n30": {"examples": 30}}})
    summary = run_summary({"dataset": "brain-mri", "partitioner": "dirichlet"}, saved, _REPORT)
    assert summary["hospitals"].startswith("2 (n10: 10 images, n30: 30 images); 2 of 4 node(s) took no part (node 13:")
    assert "partitioner" not in summary["hospitals"]
    assert summary["dataset"] == "brain-mri (each hospital's own data-path)"


def test_too_few_hospitals_names_the_nodes_that_failed() -> None:
    grid = _FakeGrid({1: ("hospital", 10), 2: ("broken", 0), 9: ("evaluator", 0)})
    expected = r"^found 1 hospital\(s\); min-train-nodes is 2; node 2 did not describe itself: node config: unknown"
    with pytest.raises(RuntimeError, match=expected + r" key 'data-pth'$"):
        NodeRoster.discover(grid, min_hospitals=2, timeout=3)


def test_a_resumed_run_records_describe_failures_in_its_first_round(tmp_path: Path) -> None:
    history = RunHistory(tmp_path / "history.json")
    history.set_nodes(_deployment_with_a_bad_node().to_json(), first_round=4)
    assert [f["node_id"] for f in history.round(4)["failures"]] == [13, 14] and 0 not in history.rounds


def test_a_deployed_run_config_leaves_out_the_simulation_keys(tmp_path: Path) -> None:
    cfg = parse_run_config({"data-root": "/server/has/no/data", "partitioner": "iid"})
    run_dir = RunDirectory.create(cfg, run_id=1, output_dir=tmp_path)
    assert json.loads((run_dir.path / "config.json").read_text())["partitioner"] == "iid"
    run_dir.write_config(cfg, deployed=True, central_on_node=True)
    config = json.loads((run_dir.path / "config.json").read_text())
    assert not {"partitioner", "dirichlet-alpha", "he-secret-context", "data-root"} & set(config)
    assert config["model"] == cfg.model and config["num-server-rounds"] == cfg.num_server_rounds
    run_dir.write_config(cfg, deployed=True, central_on_node=False)  # the server scores data-root itself
    assert json.loads((run_dir.path / "config.json").read_text())["data-root"] == "/server/has/no/data"


def test_a_simulated_run_summary_keeps_its_partitioner() -> None:
    history = {"rounds": [{"round": 1, "hospitals": {"hospital-0": {"examples": 5}}}]}
    summary = run_summary({"dataset": "brain-mri", "data-root": "d", "partitioner": "iid"}, history, _REPORT)
    assert summary["hospitals"] == "1 (hospital-0), partitioner iid" and summary["dataset"] == "brain-mri (d)"
