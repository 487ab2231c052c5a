"""The accuracy benchmark's operating point: the hospitals' hold-out, and the threshold target-sensitivity picks.

References: the hold-out is ``client/site.py``'s (``split_train_val`` with the seed ``seed + partition``);
sensitivity and specificity come from scikit-learn's confusion matrix and recall, the threshold
being the largest of the product's candidate edges whose validation recall meets the target.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, recall_score

from common.calibration_fit import SCORE_EDGES
from common.config import parse_run_config
from common.data import ImageSet, load_split
from common.data.partition import partition_indices, split_train_val
from common.data.synth import write_synthetic_tree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import accuracy  # noqa: E402
import accuracy_scoring  # noqa: E402

CLASSES = ("NORMAL", "PNEUMONIA")


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageSet, ImageSet]:
    root = write_synthetic_tree(tmp_path_factory.mktemp("chest"), modality="chest-xray", train_per_class=30,
                                test_per_class=40, size=32, seed=5)  # fmt: skip
    kwargs = {"classes": CLASSES, "channels": 1, "size": 32}
    return load_split(root, "train", **kwargs), load_split(root, "test", **kwargs)


def _cfg(**keys: Any) -> Any:
    return parse_run_config({"dataset": "chest-xray", "model": "cnn3", "image-size": 32, "seed": 0, **keys})


def test_the_threshold_and_its_scores_match_scikit_learn(
    chest: tuple[ImageSet, ImageSet], monkeypatch: pytest.MonkeyPatch
) -> None:
    train, test = chest
    rng = np.random.default_rng(0)

    def scores_for(images: ImageSet) -> np.ndarray:  # an imperfect model: abnormal images score higher, overlapping
        y = images.labels.numpy()
        return 1.0 / (1.0 + np.exp(-(2.0 * y - 1.0 + rng.normal(0.0, 1.2, len(y)))))

    probabilities = {id(train): scores_for(train), id(test): scores_for(test)}
    monkeypatch.setattr(accuracy_scoring, "_probabilities", lambda model, images, cfg: (
        np.stack([1 - probabilities[id(images)], probabilities[id(images)]], axis=1), 0.0))  # fmt: skip
    target = 0.9
    scores = accuracy_scoring.score_sets(None, {"evaluation": test, "operating_point": accuracy_scoring.OperatingPoint(
        train, target)}, _cfg())  # fmt: skip

    # the largest candidate edge at which the validation sensitivity (sklearn's recall) is at least the target
    y, p = train.labels.numpy(), probabilities[id(train)]
    i = int(np.flatnonzero(SCORE_EDGES == scores["op_threshold"])[0])
    assert recall_score(y, p >= SCORE_EDGES[i]) == pytest.approx(scores["op_validation_sensitivity"])
    assert scores["op_validation_sensitivity"] >= target > recall_score(y, p >= SCORE_EDGES[i + 1])

    called = (probabilities[id(test)] >= scores["op_threshold"]).astype(int)
    tn, fp, fn, tp = confusion_matrix(test.labels.numpy(), called).ravel()
    assert scores["op_sensitivity"] == pytest.approx(tp / (tp + fn))
    assert scores["op_specificity"] == pytest.approx(tn / (tn + fp))
    assert scores["op_accuracy"] == pytest.approx((tp + tn) / len(called))
    assert scores["accuracy"] == pytest.approx(float(((probabilities[id(test)] > 0.5) == test.labels.numpy()).mean()))


def test_hospitals_train_without_their_hold_out_and_the_threshold_is_picked_on_it(
    chest: tuple[ImageSet, ImageSet], monkeypatch: pytest.MonkeyPatch
) -> None:
    train, test = chest
    seen: dict[str, Any] = {}

    def record(cfg: Any, shards: list[ImageSet], evaluation: dict[str, Any], rounds: int, **_: Any) -> Any:
        seen.update(shards=shards, evaluation=evaluation)
        curve = [{"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 0.5, "recall": {c: 0.5 for c in CLASSES},
                  "op_threshold": 0.4, "op_validation_sensitivity": 0.95, "op_sensitivity": s, "op_specificity": 0.7,
                  "op_accuracy": 0.8} for s in (0.9, 1.0)]  # fmt: skip
        return accuracy.Trained(curve, 1.0, [])

    monkeypatch.setattr(accuracy, "_train_rounds", record)
    cfg = _cfg(partitioner="dirichlet", **{"dirichlet-alpha": 0.5})
    parts = partition_indices(train.labels.tolist(), num_partitions=accuracy.HOSPITALS, partitioner="dirichlet",
                              alpha=0.5, seed=0)  # fmt: skip
    expected = [split_train_val(p, val_fraction=cfg.local_val_fraction, seed=i) for i, p in enumerate(parts)]
    run = dict(train=train, evaluation={"evaluation": test}, epochs=2, checkpoint=lambda label: None)

    result = accuracy._run_setting("best-dirichlet", cfg, 1, target_sensitivity=0.95, **run)
    assert [s.paths for s in seen["shards"]] == [train.subset(kept).paths for kept, _ in expected]
    point = seen["evaluation"]["operating_point"]
    assert point.target_sensitivity == 0.95
    assert sorted(point.validation.paths) == sorted(p for _, val in expected for p in train.subset(val).paths)
    assert result["best-dirichlet"]["operating_point"]["sensitivity"] == pytest.approx(0.95)

    accuracy._run_setting("centralised", cfg, 1, target_sensitivity=0.95, **run)
    (pooled,) = seen["shards"]
    assert sorted(pooled.paths) == sorted(p for kept, _ in expected for p in train.subset(kept).paths)
    assert not set(pooled.paths) & set(seen["evaluation"]["operating_point"].validation.paths)

    accuracy._run_setting("best-dirichlet", cfg, 1, **run)  # without an operating point: whole shards
    assert [s.paths for s in seen["shards"]] == [train.subset(p).paths for p in parts]
    assert "operating_point" not in seen["evaluation"]

    with pytest.raises(SystemExit, match="not local-only"):
        accuracy._run_setting("local-only", cfg, 1, target_sensitivity=0.95, **run)
