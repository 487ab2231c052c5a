"""Every registry model through one federated round on tiny data: local training, FedAvg, central scoring.

The hospitals train with the ClientApp's own code (``train_local``, or DP-SGD's ``train_private``),
the server aggregates with the ServerApp's strategy, and the aggregate is checked against a
plain numpy weighted mean of the replies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.training import train_local
from common import records as rk
from common.architectures import ARCHITECTURES, MIN_IMAGE_SIZE
from common.config import RunConfig, parse_run_config
from common.data import ImageSet, build_transform, load_split
from common.data.labels_csv import load_labels_csv
from common.data.synth import write_synthetic_multilabel, write_synthetic_tree
from common.experiment import initial_model, preset_for
from common.inference import predict
from common.models import state_dict_to_cpu
from common.precision import Precision
from common.privacy.dpsgd import train_private
from server.history import RunHistory
from server.server_steps import make_strategy


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


CHECKED = 2_000_000
"""Tensors up to this size are checked against the numpy mean (not VGG's and AlexNet's 100M-value classifiers)."""


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [1, 2]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_tree(
        tmp_path_factory.mktemp("tiny") / "t", modality="brain-mri", train_per_class=4, test_per_class=1, size=32
    )


def _images(root: Path, cfg: RunConfig, split: str) -> ImageSet:
    return load_split(root, split, classes=cfg.class_names, channels=preset_for(cfg).channels, size=cfg.image_size)


def _train(model: torch.nn.Module, shard: ImageSet, cfg: RunConfig, *, dp: bool) -> int:
    if not dp:
        result = train_local(model, shard, cfg=cfg, preset=preset_for(cfg), device=torch.device("cpu"), seed=1)
        return result.num_examples
    transform = build_transform(preset_for(cfg), train=True)
    result = train_private(
        model, shard, transform=transform, batch_size=4, epochs=1, lr=1e-3, optimizer_name="adam",
        noise_multiplier=1.0, max_grad_norm=1.0, seed=1, device=torch.device("cpu"),
    )
    assert result.steps > 0
    return result.num_examples


def _federated_round(cfg: RunConfig, train: ImageSet, test: ImageSet, *, dp: bool = False) -> dict[str, Any]:
    """One round on two hospitals (halves of ``train``); returns the aggregate and the central scores."""
    model = initial_model(cfg)
    arrays = ArrayRecord(state_dict_to_cpu(model))
    strategy = make_strategy(
        cfg, history=RunHistory(Path("/dev/null")), min_train_nodes=2, min_evaluate_nodes=0, fraction_evaluate=0.0
    )
    sent = list(strategy.configure_train(1, arrays, ConfigRecord(), _Grid()))
    replies, states, weights = [], [], []
    for k, msg in enumerate(sent):
        shard = train.subset(range(k, len(train), 2))
        model.load_state_dict(arrays.to_torch_state_dict())
        n = _train(model, shard, cfg, dp=dp)
        state = state_dict_to_cpu(model)
        states.append({name: t.numpy().astype(np.float64) for name, t in state.items() if t.numel() <= CHECKED})
        weights.append(n)
        content = RecordDict(
            {
                rk.ARRAYS: ArrayRecord(state),
                rk.METRICS: MetricRecord({rk.NUM_EXAMPLES: n, rk.TRAIN_LOSS: 1.0}),
                rk.HOSPITAL: ConfigRecord({"name": f"hospital-{k}"}),
            }
        )
        replies.append(Message(content, reply_to=msg))
    aggregated, _ = strategy.aggregate_train(1, replies)
    assert aggregated is not None, "the round's replies were rejected"
    merged = aggregated.to_torch_state_dict()
    for name, tensor in merged.items():
        if tensor.is_floating_point() and tensor.numel() <= CHECKED:
            expected = sum(w * s[name] for w, s in zip(weights, states, strict=True)) / sum(weights)
            np.testing.assert_allclose(tensor.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=name)
    model.load_state_dict(merged)
    exact = Precision("fp32", "cpu")  # scored in float32: compared below with a float32 forward pass
    probs, loss = predict(model, test, build_transform(preset_for(cfg), train=False), batch_size=8, precision=exact)
    return {"probabilities": probs, "loss": loss, "model": model}


FAST = ("cnn3", "resnet18")  # the rest take seconds each: `make test` runs them, `make test-fast` does not


def _marked(architectures: tuple[str, ...]) -> list[Any]:
    return [a if a in FAST else pytest.param(a, marks=pytest.mark.slow) for a in architectures]


@pytest.mark.parametrize("architecture", _marked(ARCHITECTURES))
def test_every_registry_model_completes_a_federated_round(tree: Path, architecture: str) -> None:
    size = max(32, MIN_IMAGE_SIZE.get(architecture, 32))
    cfg = parse_run_config(
        {"model": architecture, "image-size": size, "local-steps": 1, "batch-size": 4, "optimizer": "sgd",
         "data-root": str(tree)}
    )
    out = _federated_round(cfg, _images(tree, cfg, "train"), _images(tree, cfg, "test"))
    assert out["probabilities"].shape == (4, 4) and np.isfinite(out["loss"])
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ("resnet18", "densenet121"))
def test_a_dp_round_for_resnet18_and_densenet121(tree: Path, architecture: str) -> None:
    cfg = parse_run_config(
        {"model": architecture, "image-size": 32, "batch-size": 4, "dp-enabled": True, "data-root": str(tree)}
    )
    out = _federated_round(cfg, _images(tree, cfg, "train"), _images(tree, cfg, "test"), dp=True)
    assert np.isfinite(out["probabilities"]).all() and np.isfinite(out["loss"])


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp"])
def test_a_multilabel_round_trains_on_bce(tmp_path: Path, dp: bool) -> None:
    labels = ("Atelectasis", "Cardiomegaly")
    root = write_synthetic_multilabel(tmp_path / "ml", labels=labels, patients=(4, 2), images_per_patient=3)
    keys = {"dataset": "nih-chestxray", "task": "multilabel", "partitioner": "iid", "classes": ",".join(labels)}
    steps = {"dp-enabled": True} if dp else {"local-steps": 2}
    cfg = parse_run_config({**keys, "model": "cnn3", "image-size": 32, "batch-size": 4, **steps})
    kwargs = {"labels": labels, "channels": 1, "size": 32}
    test = load_labels_csv(root, "test", **kwargs)
    out = _federated_round(cfg, load_labels_csv(root, "train", **kwargs), test, dp=dp)
    probs = out["probabilities"]
    assert probs.shape == (6, 2) and ((probs > 0) & (probs < 1)).all()
    assert not np.allclose(probs.sum(axis=1), 1.0)  # a sigmoid per label, not a softmax
    with torch.no_grad():
        logits = out["model"].eval()(build_transform(preset_for(cfg), train=False)(test.images).float())
    bce = torch.nn.BCEWithLogitsLoss()(logits, test.labels.float())  # the mean over images and labels
    assert out["loss"] == pytest.approx(float(bce), rel=1e-4)


@pytest.mark.slow
def test_inception_v3_trains_its_auxiliary_classifier(tree: Path) -> None:
    cfg = parse_run_config({"model": "inception_v3", "image-size": 75, "local-steps": 1, "batch-size": 4})
    model = initial_model(cfg)
    aux_before = {k: v.clone() for k, v in model.AuxLogits.state_dict().items()}
    main_logits = model.train()(torch.zeros(2, 1, 75, 75))
    assert main_logits.aux_logits.shape == (2, 4)  # small inputs too: the head pools to its 5x5 grid
    train_local(model, _images(tree, cfg, "train"), cfg=cfg, preset=preset_for(cfg), device=torch.device("cpu"),
                seed=1)
    changed = [k for k, v in model.AuxLogits.state_dict().items() if not torch.equal(v, aux_before[k])]
    assert "fc.weight" in changed  # the auxiliary loss reached the head
    assert model.eval()(torch.zeros(1, 1, 75, 75)).shape == (1, 4)  # evaluation: the main logits only
