"""The federated calibration through medsilo's own ClientApp: three hospitals, plaintext and under HE.

The server's fit must equal a fit on the hospitals' pooled validation logits, and what each
hospital sends must be fixed-size sums: the same sizes whatever its number of validation images.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from recording_grid import RecordingGrid
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from client.app import app
from client.site import hospital_data
from client.training import train_local
from common import records as rk
from common.calibration_fit import SCORE_EDGES, statistic_shapes
from common.config import parse_run_config
from common.data import build_transform
from common.data.synth import write_synthetic_tree
from common.experiment import initial_model, load_run_split, preset_for
from common.he.keys import create_key_pair, load_public_context
from common.he.payload import EncryptedPayload, is_encrypted
from common.inference import predict_logits
from common.models import state_dict_to_cpu
from common.precision import resolve_precision
from server.app import _headline
from server.calibration import FederatedCalibration, _Summed
from server.roster import NodeRoster

pytestmark = pytest.mark.usefixtures("task_identity")
HOSPITALS = 3
FP32 = resolve_precision("fp32", torch.device("cpu"))



@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Synthetic chest X-rays, a run config with unequal hospitals, and an over-confident trained cnn3."""
    base = tmp_path_factory.mktemp("calibration")
    root = write_synthetic_tree(base / "data", modality="chest-xray", train_per_class=40, test_per_class=1, size=32)
    run_config = {
        "dataset": "chest-xray", "data-root": str(root), "model": "cnn3", "image-size": 32, "batch-size": 16,
        "local-val-fraction": 0.5, "partitioner": "dirichlet", "dirichlet-alpha": 1.0, "precision": "fp32",
        "device": "cpu", "target-sensitivity": 0.9, "local-epochs": 3.0, "lr-warmup-rounds": 0,
    }  # fmt: skip
    cfg = parse_run_config(run_config)
    torch.manual_seed(0)
    model = initial_model(cfg)
    train = load_run_split(cfg, root, "train")
    with torch.random.fork_rng():
        train_local(model, train, cfg=cfg, preset=preset_for(cfg), device=torch.device("cpu"), seed=1)
    secret, public = create_key_pair(base / "keys")
    return {"run_config": run_config, "cfg": cfg, "arrays": ArrayRecord(state_dict_to_cpu(model)), "model": model,
            "secret": secret, "public": public}  # fmt: skip


def _plaintext(setting: dict[str, Any]) -> tuple[FederatedCalibration, RecordingGrid]:
    nodes = [{"partition-id": i, "num-partitions": HOSPITALS} for i in range(HOSPITALS)]
    grid = RecordingGrid(app, nodes, setting["run_config"])
    roster = NodeRoster({n: 10 for n in range(1, HOSPITALS + 1)}, {}, None)
    return FederatedCalibration(setting["cfg"], grid, roster=roster, base_config=ConfigRecord(), public=None), grid


def _validation_logits(setting: dict[str, Any], hospitals: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each hospital's validation logits and labels, scored here, outside the federation."""
    cfg = setting["cfg"]
    out = []
    for pid in range(hospitals):
        val = hospital_data(cfg, {"partition-id": pid, "num-partitions": hospitals}).val
        transform = build_transform(preset_for(cfg), train=False)
        logits = predict_logits(setting["model"], val, transform, device=torch.device("cpu"), precision=FP32)
        out.append((logits, val.labels.numpy()))
    return out


def test_the_federated_temperature_and_threshold_equal_the_pooled_fit(setting: dict[str, Any]) -> None:
    calibration, _ = _plaintext(setting)
    fitted, record = calibration.fit(setting["arrays"])
    parts = _validation_logits(setting, HOSPITALS)
    z = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])

    def pooled_nll(t: float) -> float:
        return float(-log_softmax(z / t, axis=1)[np.arange(len(y)), y].sum())

    pooled = minimize_scalar(pooled_nll, bounds=(0.05, 20.0), method="bounded", options={"xatol": 1e-6}).x
    assert abs(fitted.temperature[0] - pooled) < 0.02
    assert fitted.temperature[0] > 1.0  # trained on these very images: over-confident
    scores = softmax(z / fitted.temperature[0], axis=1)[:, 1]
    positive = y == 1
    expected = max(e for e in SCORE_EDGES if np.mean(scores[positive] >= e) >= 0.9)
    assert fitted.threshold == (expected,) and fitted.positive == ("PNEUMONIA",)
    assert record["validation_images"] == len(y) and record["nll"]["hospitals"] == HOSPITALS
    assert record["validation_sensitivity"][0] == pytest.approx(np.mean(scores[positive] >= expected))


def _sizes(record: ArrayRecord) -> dict[str, tuple[int, ...]]:
    return {name: tuple(array.shape) for name, array in record.items()}


def test_hospitals_send_fixed_size_sums_never_a_logit_or_an_image(setting: dict[str, Any]) -> None:
    calibration, grid = _plaintext(setting)
    calibration.fit(setting["arrays"])
    sizes = {len(hospital_data(setting["cfg"], {"partition-id": i, "num-partitions": HOSPITALS}).val)
             for i in range(HOSPITALS)}  # fmt: skip
    assert len(sizes) > 1  # the hospitals hold different numbers of validation images
    assert len(grid.replies) == 2 * HOSPITALS
    for reply, stage in zip(grid.replies, ["nll"] * HOSPITALS + ["histograms"] * HOSPITALS, strict=True):
        content = reply.content
        assert set(content.keys()) == {rk.STATISTICS, rk.HOSPITAL} and not content.metric_records
        assert dict(content[rk.HOSPITAL]) == {"name": f"hospital-{reply.metadata.src_node_id - 1}"}
        assert _sizes(content[rk.STATISTICS]) == statistic_shapes(stage, outputs=2, multilabel=False)


def test_under_he_the_server_adds_ciphertexts_and_only_the_evaluator_reads_the_sum(setting: dict[str, Any]) -> None:
    run_config = {**setting["run_config"], "he-enabled": True, "he-secret-context": str(setting["secret"])}
    cfg = parse_run_config(run_config)
    public = load_public_context(setting["public"])
    nodes = [{"partition-id": i, "num-partitions": HOSPITALS + 1} for i in range(HOSPITALS + 1)]  # last: evaluator
    grid = RecordingGrid(app, nodes, run_config)
    roster = NodeRoster({n: 20 for n in range(1, HOSPITALS + 1)}, {}, HOSPITALS + 1)
    base = ConfigRecord({rk.HE_KEY_ID: public.key_id, rk.NUM_EXAMPLES_TOTAL: roster.total_examples})
    encrypted, record = FederatedCalibration(cfg, grid, roster=roster, base_config=base, public=public).fit(
        setting["arrays"]
    )
    plain, _ = _plaintext(setting)[0].fit(setting["arrays"])
    assert encrypted.temperature == pytest.approx(plain.temperature, abs=1e-4)
    assert encrypted.threshold == plain.threshold and record["encrypted"]
    hospitals = [r for r in grid.replies if r.metadata.src_node_id != roster.evaluator]
    readings = [r for r in grid.replies if r.metadata.src_node_id == roster.evaluator]
    assert len(hospitals) == 2 * HOSPITALS and len(readings) == 2
    for reply in hospitals:
        statistics = reply.content[rk.STATISTICS]
        assert is_encrypted(statistics) and set(reply.content.keys()) == {rk.STATISTICS, rk.HOSPITAL}
        assert EncryptedPayload.from_record(statistics).kind == "statistics"
    for stage in (hospitals[:HOSPITALS], hospitals[HOSPITALS:]):  # the same bytes from every hospital
        assert len({sum(len(a.data) for a in r.content[rk.STATISTICS].values()) for r in stage}) == 1
    for reading in readings:  # the evaluator answers with what it read: one value per label, no array
        assert set(reading.content.keys()) == {rk.CALIBRATION} and not reading.content.array_records
        assert all(len(values) == 1 for values in reading.content[rk.CALIBRATION].values())


def test_a_hospital_that_fails_is_left_out_and_a_malformed_sum_is_refused(setting: dict[str, Any]) -> None:
    calibration, _ = _plaintext(setting)
    calibration.roster = NodeRoster({1: 10, 2: 10, 3: 10, 9: 10}, {}, None)  # node 9 does not exist
    fitted, record = calibration.fit(setting["arrays"])
    assert fitted.temperature and record["nll"]["hospitals"] == HOSPITALS
    assert [f["node_id"] for f in record["nll"]["failures"]] == [9]
    summed = _Summed(statistic_shapes("nll", outputs=2, multilabel=False), None)
    good = {"nll-sum": np.ones(161), "count": np.array([4.0])}
    assert summed.problem(ArrayRecord({k: Array(v) for k, v in good.items()})) is None
    per_image = {**good, "nll-sum": np.ones(4)}
    assert "expected float64 (161,)" in str(summed.problem(ArrayRecord({k: Array(v) for k, v in per_image.items()})))
    negative = {**good, "count": np.array([-1.0])}
    assert "negative" in str(summed.problem(ArrayRecord({k: Array(v) for k, v in negative.items()})))


class _Unreachable:
    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        raise AssertionError("no hospital is asked when there is nothing to fit")


@pytest.mark.parametrize(
    ("keys", "why"),
    [
        ({"local-val-fraction": 0.0}, "not fitted: the hospitals hold no validation images (local-val-fraction = 0)"),
        ({"calibrate": False}, "not fitted: calibrate = false"),
    ],
)
def test_nothing_to_fit_asks_no_hospital_and_says_why(keys: dict[str, object], why: str) -> None:
    cfg = parse_run_config(keys)
    roster = NodeRoster({1: 10}, {}, None)
    grid: Any = _Unreachable()
    calibration = FederatedCalibration(cfg, grid, roster=roster, base_config=ConfigRecord(), public=None)
    fitted, record = calibration.fit(ArrayRecord())
    assert fitted.temperature == () and fitted.threshold == () and fitted.source == why
    assert record["source"] == why and record["validation_images"] == 0 and "nll" not in record


def test_the_runs_last_line_leads_with_macro_auroc_and_f1_in_multilabel_runs() -> None:
    labels = {"task": "multilabel", "accuracy": 0.92, "macro": {"auroc": 0.71, "f1": 0.33}}
    assert _headline(labels) == "central macro AUROC 0.7100, macro F1 0.3300 at the labels' thresholds"
    found = {"value": 0.96, "low": 0.91, "high": 0.98}
    classes = {"accuracy": 0.9, "macro": {}, "operating_point": {"threshold": 0.31, "sensitivity": found}}
    assert _headline(classes) == "central accuracy 0.9000, sensitivity 0.960 (95% CI 0.910-0.980) at threshold 0.31"
