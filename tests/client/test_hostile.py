"""The hostile-hospital fixture: wrong labels, a scaled update, and the node-config switch that turns it on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import train as client_train
from client.hostile import SCALE, SCALED_FROM_ROUND, flipped_labels, scaled_update
from common import records as rk
from common.config import ConfigError, parse_run_config
from common.data import ImageSet
from common.data.synth import write_synthetic_tree
from common.experiment import initial_model
from common.models import state_dict_to_cpu
from common.node_config import parse_node_config


def _images(labels: torch.Tensor, classes: int) -> ImageSet:
    n = len(labels)
    return ImageSet(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), labels, tuple(f"{i}.png" for i in range(n)),
                    tuple(f"c{i}" for i in range(classes)))  # fmt: skip


def test_label_flip_leaves_no_image_with_its_label_and_keeps_the_class_sizes() -> None:
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0, 0])
    flipped = flipped_labels(_images(labels, 4)).labels
    assert not bool((flipped == labels).any())
    assert sorted(np.bincount(flipped.numpy(), minlength=4)) == sorted(np.bincount(labels.numpy(), minlength=4))
    assert [int(flipped[labels == c][0]) for c in range(4)] == [1, 2, 3, 0]  # one class map, not noise


def test_label_flip_inverts_every_multilabel_flag() -> None:
    flags = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 1, 0]])
    assert torch.equal(flipped_labels(_images(flags, 3)).labels, torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1]]))


def test_the_scaled_update_is_numpys_on_the_parameters_and_leaves_the_buffers_as_trained() -> None:
    rng = np.random.default_rng(0)
    received = {"w": rng.normal(size=(3, 2)), "bn.running_var": rng.uniform(1, 2, size=3)}
    trained = {"w": rng.normal(size=(3, 2)), "bn.running_var": rng.uniform(0, 1, size=3)}
    as_torch = {k: {n: torch.from_numpy(a) for n, a in d.items()} for k, d in (("r", received), ("t", trained))}
    sent = scaled_update(as_torch["t"], as_torch["r"], parameters={"w"})
    np.testing.assert_allclose(sent["w"].numpy(), received["w"] + SCALE * (trained["w"] - received["w"]))
    np.testing.assert_array_equal(sent["bn.running_var"].numpy(), trained["bn.running_var"])


@pytest.mark.parametrize("value", ["flip", "Scaled", 1])
def test_a_bad_hostile_value_is_one_line(value: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_node_config({"partition-id": 0, "num-partitions": 2, "hostile": value})
    assert "'hostile'" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_a_scaled_hospital_sends_ten_times_the_honest_update_from_its_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ClientApp's own handler, honest and hostile on the same shard, seed and global model."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    tree = write_synthetic_tree(tmp_path / "data", modality="brain-mri", train_per_class=4, test_per_class=1, size=32)
    run_config = {
        "model": "cnn3", "image-size": 32, "data-root": str(tree), "device": "cpu", "local-steps": 1,
        "batch-size": 4, "optimizer": "sgd", "learning-rate": 0.05, "optimizer-state": "reset",
        "local-val-fraction": 0.0, "update-norm-limit": 0.0, "precision": "fp32",
    }  # fmt: skip
    cfg = parse_run_config(run_config)
    model = initial_model(cfg)
    arrays = ArrayRecord(state_dict_to_cpu(model))
    parameters = {name for name, _ in model.named_parameters()}

    def reply(server_round: int, hostile: str) -> dict[str, np.ndarray]:
        node = {"partition-id": 0, "num-partitions": 2, **({"hostile": hostile} if hostile else {})}
        context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=run_config)
        config = ConfigRecord({rk.SERVER_ROUND: server_round, rk.RUN_DIR: str(tmp_path / "run")})
        msg = Message(RecordDict({rk.ARRAYS: arrays, rk.CONFIG: config}), dst_node_id=1, message_type="train")
        return {k: a.numpy() for k, a in client_train(msg, context).content[rk.ARRAYS].items()}

    sent = {k: a.numpy() for k, a in arrays.items()}
    honest, attacking = reply(SCALED_FROM_ROUND, ""), reply(SCALED_FROM_ROUND, "scaled")
    early_honest, early_hostile = reply(SCALED_FROM_ROUND - 1, ""), reply(SCALED_FROM_ROUND - 1, "scaled")
    for key, value in honest.items():
        np.testing.assert_array_equal(early_hostile[key], early_honest[key])  # honest until its round
        expected = sent[key] + SCALE * (value - sent[key]) if key in parameters else value
        np.testing.assert_allclose(attacking[key], expected, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(honest[k], sent[k]) for k in parameters)  # it trained: the scaling is not vacuous


def test_a_label_flipping_hospital_trains_on_other_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same shard, seed and model: the flipped hospital's first-step loss is not the honest one's."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    tree = write_synthetic_tree(tmp_path / "data", modality="brain-mri", train_per_class=4, test_per_class=1, size=32)
    run_config = {"model": "cnn3", "image-size": 32, "data-root": str(tree), "device": "cpu", "local-steps": 1,
                  "batch-size": 16, "optimizer-state": "reset", "local-val-fraction": 0.0, "update-norm-limit": 0.0,
                  "loss": "cross-entropy", "precision": "fp32"}  # fmt: skip
    arrays = ArrayRecord(state_dict_to_cpu(initial_model(parse_run_config(run_config))))
    losses = {}
    for hostile in ("", "label-flip"):
        node = {"partition-id": 0, "num-partitions": 1, **({"hostile": hostile} if hostile else {})}
        context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=run_config)
        config = ConfigRecord({rk.SERVER_ROUND: 1, rk.RUN_DIR: str(tmp_path / "run")})
        msg = Message(RecordDict({rk.ARRAYS: arrays, rk.CONFIG: config}), dst_node_id=1, message_type="train")
        losses[hostile] = float(client_train(msg, context).content[rk.METRICS][rk.TRAIN_LOSS])
    assert losses[""] != pytest.approx(losses["label-flip"], rel=1e-4)
