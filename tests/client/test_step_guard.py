"""The key-holders' guard: the global step's norm, its ratio to the recent steps, and when a hospital declines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import train as client_train
from client.step_guard import GUARD_FILE, MIN_EARLIER_STEPS, WINDOW, guard_global_step, step_norm, step_ratio
from common import records as rk
from common.config import parse_run_config
from common.data.synth import write_synthetic_tree
from common.experiment import initial_model
from common.models import state_dict_to_cpu

LIMIT = 4.0


def _model(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    return {
        "conv.weight": torch.from_numpy(rng.normal(size=(4, 3)).astype(np.float32)),
        "bn.running_var": torch.from_numpy(rng.uniform(0.5, 2.0, size=4).astype(np.float32)),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
    }


def _step(model: dict[str, torch.Tensor], rng: np.random.Generator, size: float) -> dict[str, torch.Tensor]:
    """``model`` moved by a random step of norm ``size`` (integer buffers move too, and must not count)."""
    floats = [k for k, v in model.items() if v.is_floating_point()]
    direction = {k: rng.normal(size=model[k].shape) for k in floats}
    scale = size / np.sqrt(sum(float((d**2).sum()) for d in direction.values()))
    moved = {k: model[k] + torch.from_numpy((scale * d).astype(np.float32)) for k, d in direction.items()}
    return {**moved, "bn.num_batches_tracked": model["bn.num_batches_tracked"] + 100}


def _ordinary_run(folder: Path, rounds: int, rng: np.random.Generator) -> list[dict[str, torch.Tensor]]:
    """Global models of ``rounds`` rounds with ordinary steps (norms 0.8 to 1.2, shrinking as a schedule decays)."""
    models = [_model(rng)]
    for server_round in range(1, rounds + 1):
        check = guard_global_step(folder, models[-1], server_round=server_round, limit=LIMIT)
        assert check.declined is None, check
        models.append(_step(models[-1], rng, rng.uniform(0.8, 1.2) * (1 - 0.04 * server_round)))
    return models


def test_the_step_norm_is_numpys_over_the_floating_point_arrays() -> None:
    rng = np.random.default_rng(0)
    old = _model(rng)
    new = _step(old, rng, 1.0)
    diff = np.concatenate([(new[k].numpy() - old[k].numpy()).ravel() for k in ("conv.weight", "bn.running_var")])
    assert step_norm(new, old) == pytest.approx(float(np.linalg.norm(diff.astype(np.float64))), rel=1e-6)
    with pytest.raises(ValueError, match="the global-step base has no array 'conv.weight' of shape \\(4, 3\\)"):
        step_norm(new, {"bn.running_var": old["bn.running_var"]})


def test_the_ratio_is_over_the_median_of_the_recent_earlier_steps() -> None:
    earlier = [9.0, 8.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert step_ratio(6.0, earlier) == pytest.approx(6.0 / np.median(earlier[-WINDOW:]))
    assert step_ratio(6.0, earlier[: MIN_EARLIER_STEPS - 1]) is None


def test_the_guard_declines_a_planted_scaled_step_and_not_an_ordinary_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    models = _ordinary_run(tmp_path, 8, rng)
    ordinary = guard_global_step(tmp_path, models[-1], server_round=9, limit=LIMIT)
    assert ordinary.declined is None and ordinary.ratio is not None and ordinary.ratio < 2
    planted = _step(models[-1], rng, 10.0)  # a step ten times the ordinary ones
    check = guard_global_step(tmp_path, planted, server_round=10, limit=LIMIT)
    assert check.ratio is not None and check.ratio > LIMIT
    assert check.declined is not None and "\n" not in check.declined
    assert f"is {check.ratio:.1f} times the median of its recent earlier steps, above update-norm-limit 4" in (
        check.declined
    )
    # a declined model is no base: the next round still measures from the model this hospital trained from
    again = guard_global_step(tmp_path, _step(planted, rng, 0.5), server_round=11, limit=LIMIT)
    assert again.declined is not None and again.norm is not None and again.norm > 3
    following = guard_global_step(tmp_path, _step(models[-1], rng, 1.5), server_round=12, limit=LIMIT)
    assert following.declined is None and following.norm == pytest.approx(1.5 / 3, rel=1e-4)  # three rounds on


def test_the_guard_judges_only_after_enough_earlier_steps(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    model = _model(rng)
    checks = []
    for server_round in range(1, MIN_EARLIER_STEPS + 3):
        checks.append(guard_global_step(tmp_path, model, server_round=server_round, limit=LIMIT))
        model = _step(model, rng, 10.0**server_round)  # steps growing tenfold: judged only once 3 are known
    assert checks[0].norm is None and all(c.ratio is None for c in checks[: MIN_EARLIER_STEPS + 1])
    assert all(c.declined is None for c in checks[:-1]) and checks[-1].declined is not None


def test_a_zero_step_is_not_recorded(tmp_path: Path) -> None:
    """A round that kept the global model is no step: it must not pull the median to zero."""
    rng = np.random.default_rng(3)
    models = _ordinary_run(tmp_path, 5, rng)
    for server_round in (6, 7, 8, 9):  # round 6 takes an ordinary step; rounds 7 to 9 keep the model
        check = guard_global_step(tmp_path, models[-1], server_round=server_round, limit=LIMIT)
        assert check.declined is None and (check.norm == 0.0) == (server_round > 6)
    check = guard_global_step(tmp_path, _step(models[-1], rng, 1.0), server_round=10, limit=LIMIT)
    assert check.declined is None and check.ratio is not None and check.ratio < 2


def test_a_replayed_round_after_a_resume_is_not_judged_and_forgets_the_abandoned_steps(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    models = _ordinary_run(tmp_path, 8, rng)  # the base is round 8's; norms up to round 8 are on record
    replay = guard_global_step(tmp_path, models[5], server_round=6, limit=LIMIT)  # resumed after round 5
    assert replay.norm is None and replay.declined is None
    nxt = guard_global_step(tmp_path, _step(models[5], rng, 1.0), server_round=7, limit=LIMIT)
    assert nxt.norm == pytest.approx(1.0, rel=1e-4) and nxt.ratio is not None  # rounds 2-5 still count


def test_a_hospital_sampled_out_of_rounds_measures_per_round(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    models = _ordinary_run(tmp_path, 6, rng)
    two_rounds_on = _step(_step(models[-1], rng, 1.0), rng, 1.0)
    check = guard_global_step(tmp_path, two_rounds_on, server_round=9, limit=LIMIT)  # it missed rounds 7, 8
    assert check.declined is None and check.norm is not None and check.norm < 1.0


def test_a_corrupt_state_file_is_one_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    (tmp_path / GUARD_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=f"global-step state '.*{GUARD_FILE}' is corrupt: ") as err:
        guard_global_step(tmp_path, _model(rng), server_round=2, limit=LIMIT)
    assert "\n" not in str(err.value)
    (tmp_path / GUARD_FILE).unlink()
    guard_global_step(tmp_path, {"other": torch.zeros(2)}, server_round=1, limit=LIMIT)
    with pytest.raises(ValueError, match="the global-step base has no array 'conv.weight'"):
        guard_global_step(tmp_path, _model(rng), server_round=2, limit=LIMIT)


def test_the_train_handler_declines_a_planted_step_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ClientApp's own handler: ordinary rounds train and report their step; a scaled step is declined."""
    for name in ("_run_id", "_node_id", "_task_id"):  # what a ServerApp process has set before it builds a Message
        monkeypatch.setattr(TaskIdentity, name, 1)
    tree = write_synthetic_tree(tmp_path / "data", modality="brain-mri", train_per_class=4, test_per_class=1, size=32)
    run_config = {
        "model": "cnn3", "image-size": 32, "data-root": str(tree), "device": "cpu", "partitioner": "iid",
        "local-steps": 1, "batch-size": 4, "optimizer": "sgd", "learning-rate": 0.01, "lr-schedule": "constant",
        "lr-warmup-rounds": 0, "optimizer-state": "reset", "local-val-fraction": 0.0, "update-norm-limit": LIMIT,
    }  # fmt: skip
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
        run_config=run_config,
    )  # fmt: skip
    arrays = ArrayRecord(state_dict_to_cpu(initial_model(parse_run_config(run_config))))

    def send(server_round: int, arrays: ArrayRecord) -> Message:
        config = ConfigRecord({rk.SERVER_ROUND: server_round, rk.RUN_DIR: str(tmp_path / "run")})
        msg = Message(RecordDict({rk.ARRAYS: arrays, rk.CONFIG: config}), dst_node_id=1, message_type="train")
        return client_train(msg, context)

    previous = arrays
    for server_round in range(1, 7):  # one hospital: its own model is the next global model
        info = (reply := send(server_round, arrays)).content[rk.HOSPITAL]
        assert rk.DECLINED not in info and (rk.STEP_NORM in info) == (server_round > 1)
        assert (rk.STEP_RATIO in info) == (server_round > MIN_EARLIER_STEPS + 1)
        previous, arrays = arrays, reply.content[rk.ARRAYS]
    planted = {k: a.numpy() + 20 * (a.numpy() - previous[k].numpy()) for k, a in arrays.items()}
    reply = send(7, ArrayRecord({k: Array(np.asarray(v, dtype=arrays[k].numpy().dtype)) for k, v in planted.items()}))
    info = reply.content[rk.HOSPITAL]
    assert not reply.content.array_records and reply.content[rk.METRICS][rk.NUM_EXAMPLES] == 0
    assert info[rk.STEP_DECLINED] is True and info[rk.STEP_RATIO] > LIMIT
    assert "above update-norm-limit 4" in str(info[rk.DECLINED]) and "\n" not in str(info[rk.DECLINED])
