"""The server's side of the hospitals' guard: a majority of declines stops the run at its last good checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common import records as rk
from common.config import parse_run_config
from common.experiment import initial_model, model_spec
from common.models import state_dict_to_cpu
from server.app import _stop_line
from server.history import RunHistory
from server.resume import load_resume_point
from server.run_directory import RunDirectory
from server.strategy import GlobalStepRejected, MedsiloFedAvg, RunStopped

CONFIG = {"model": "cnn3", "image-size": 32, "num-server-rounds": 8}
JUMP = "the global step's norm 9.1 is 12.0 times the median of its recent earlier steps, above update-norm-limit 4"


@pytest.fixture(autouse=True)
def _ids(task_identity: None) -> None:
    """Messages need the ids a ServerApp process has."""


class _Nodes:
    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


def _trained(msg: Message) -> Message:
    content = RecordDict(
        {
            rk.ARRAYS: ArrayRecord({"w": Array(np.ones(2, dtype=np.float32))}),
            rk.METRICS: MetricRecord({rk.NUM_EXAMPLES: 10}),
            rk.HOSPITAL: ConfigRecord({"name": f"h{msg.metadata.dst_node_id}", rk.STEP_NORM: 0.5, rk.STEP_RATIO: 0.9}),
        }
    )
    return Message(content, reply_to=msg)


def _declined(msg: Message, reason: str = JUMP, *, step: bool = True) -> Message:
    info = {"name": f"h{msg.metadata.dst_node_id}", rk.DECLINED: reason}
    if step:
        info.update({rk.STEP_DECLINED: True, rk.STEP_NORM: 9.1, rk.STEP_RATIO: 12.0})
    content = RecordDict({rk.METRICS: MetricRecord({rk.NUM_EXAMPLES: 0}), rk.HOSPITAL: ConfigRecord(info)})
    return Message(content, reply_to=msg)


def _round(tmp_path: Path, server_round: int, declines: int, *, step: bool = True) -> MedsiloFedAvg:
    strategy = MedsiloFedAvg(history=RunHistory(tmp_path / "history.json"), min_train_nodes=1)
    sent = list(strategy.configure_train(server_round, ArrayRecord({"w": Array(np.zeros(2, np.float32))}),
                                         ConfigRecord(), _Nodes()))  # fmt: skip
    replies = [_declined(m, step=step) if i < declines else _trained(m) for i, m in enumerate(sent)]
    strategy.aggregate_train(server_round, replies)
    return strategy


def test_a_majority_of_declined_steps_stops_the_run_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(GlobalStepRejected) as err:
        _round(tmp_path, 6, declines=2)
    assert isinstance(err.value, RunStopped) and err.value.rejected_round == 5
    assert str(err.value) == (
        "round 6: 2 of 3 hospitals declined round 5's global model (its step exceeded update-norm-limit times "
        "the median of their recent steps)"
    )
    record = json.loads((tmp_path / "history.json").read_text())["rounds"][0]
    assert record["global_step_rejected"] == {"declined": 2, "sampled": 3}
    assert record["hospitals"]["h1"] == {"declined": JUMP, "step_norm": 9.1, "step_ratio": 12.0}


def test_a_minority_of_declines_is_recorded_and_the_round_goes_on(tmp_path: Path) -> None:
    strategy = _round(tmp_path, 6, declines=1)
    hospitals = strategy.history.round(6)["hospitals"]
    assert hospitals["h1"]["declined"] == JUMP and hospitals["h1"]["step_ratio"] == 12.0
    assert hospitals["h2"]["examples"] == 10 and hospitals["h2"]["step_ratio"] == 0.9
    assert "global_step_rejected" not in strategy.history.round(6)


def test_other_declines_never_count_as_a_rejected_step(tmp_path: Path) -> None:
    """Spent privacy budgets are no verdict on the global model."""
    strategy = _round(tmp_path, 6, declines=3, step=False)
    assert "global_step_rejected" not in strategy.history.round(6)


def _run_dir(tmp_path: Path, rounds: tuple[int, ...]) -> tuple[RunDirectory, object]:
    cfg = parse_run_config(CONFIG)
    run_dir = RunDirectory.create(cfg, run_id=1, output_dir=tmp_path)
    state = ArrayRecord(state_dict_to_cpu(initial_model(cfg)))
    for server_round in rounds:
        run_dir.checkpoint(server_round, state, model_spec(cfg), server_state={})
    return run_dir, cfg


def test_the_declined_model_is_set_aside_and_the_run_resumes_from_the_last_good_one(tmp_path: Path) -> None:
    run_dir, cfg = _run_dir(tmp_path, (3, 4, 5))
    assert sorted(p.name for p in (run_dir.path / "checkpoints").iterdir()) == ["round-0004", "round-0005"]
    history = RunHistory(run_dir.history_file)
    for server_round in range(6):
        history.round(server_round)
    history.hospital(5, "h3")["examples"] = 10
    history.hospital(6, "h1")["declined"] = JUMP
    history.hospital(6, "h2")["declined"] = JUMP
    err = GlobalStepRejected(6, declined=2, sampled=3)
    history.stop(str(err))
    history.flush()
    line = _stop_line(err, run_dir)
    assert "\n" not in line and line.startswith(f"run stopped: {err}; its checkpoint is set aside as checkpoints/")
    assert f"The last good checkpoint is {run_dir.path / 'checkpoints' / 'round-0004'}" in line
    assert f"continue with --run-config \"resume-from='{run_dir.path}'\"" in line
    names = sorted(p.name for p in (run_dir.path / "checkpoints").iterdir())
    assert names == ["rejected-round-0005", "round-0004"]
    point = load_resume_point(run_dir.path, cfg)  # type: ignore[arg-type]
    assert point.last_round == 4 and [r["round"] for r in point.rounds] == [0, 1, 2, 3, 4]
    assert point.abandoned == {
        "stopped": str(err),
        "declined": [{"round": 6, "hospital": h, "reason": JUMP} for h in ("h1", "h2")],
    }
    resumed = RunHistory(tmp_path / "resumed.json")
    resumed.restore(point.rounds, after_round=4, resumed=point.resumed, abandoned=point.abandoned)
    assert resumed.to_json()["resumed"][0]["declined"][1] == {"round": 6, "hospital": "h2", "reason": JUMP}


def test_without_an_earlier_checkpoint_the_line_says_to_start_again(tmp_path: Path) -> None:
    run_dir, _ = _run_dir(tmp_path, (5,))
    line = _stop_line(GlobalStepRejected(6, declined=3, sampled=3), run_dir)
    assert line.endswith("; its checkpoint is set aside as checkpoints/rejected-round-0005 and no earlier one is "
                         "kept: start the run again")  # fmt: skip


def test_too_few_hospitals_keep_their_resume_hint(tmp_path: Path) -> None:
    run_dir, _ = _run_dir(tmp_path, (4, 5))
    line = _stop_line(RunStopped("round 6: 1 valid hospital update(s)"), run_dir)
    hint = f"continue it with --run-config \"resume-from='{run_dir.path}'\" once enough hospitals are back"
    assert line.endswith(hint)
    assert sorted(p.name for p in (run_dir.path / "checkpoints").iterdir()) == ["round-0004", "round-0005"]
