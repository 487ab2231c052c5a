"""Early stopping counts rounds without a lower validation loss and keeps the best round."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord

from common import records as rk
from common.config import ConfigError, parse_run_config
from server.early_stopping import EarlyStopping


def _arrays(value: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.full(2, value, dtype=np.float32))})


def test_patience_counts_rounds_since_the_best_loss() -> None:
    stopping = EarlyStopping(patience=2)
    losses = [0.9, 0.7, 0.75, 0.71, 0.5]
    stops = [
        stopping.should_stop(r, MetricRecord({rk.EVAL_LOSS: v}), _arrays(r), None) for r, v in enumerate(losses, 1)
    ]
    assert stops == [False, False, False, True, False]  # round 4 is the 2nd without a loss below 0.7
    assert stopping.stopped_after == 4 and stopping.best_round == 5  # (a caller stops at the first True)
    assert stopping.to_json()["best_validation_loss"] == pytest.approx(0.5)


def test_a_round_without_a_validation_loss_is_no_improvement() -> None:
    stopping = EarlyStopping(patience=1)
    assert not stopping.should_stop(1, MetricRecord({rk.EVAL_LOSS: 0.4}), _arrays(1), None)
    assert stopping.should_stop(2, None, _arrays(2), None)
    assert stopping.best_round == 1 and float(stopping.best_arrays["w"].numpy()[0]) == 1.0
    nan = EarlyStopping(patience=1)
    assert nan.should_stop(1, MetricRecord({rk.EVAL_LOSS: float("nan")}), _arrays(1), None)
    assert nan.to_json()["best_round"] is None and nan.to_json()["best_validation_loss"] is None


@pytest.mark.parametrize("keys", [{"fraction-evaluate": 0.0}, {"local-val-fraction": 0.0}])
def test_patience_needs_the_hospitals_validation_images(keys: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="'early-stopping-patience' = 3 is invalid; expected 0 unless the hospitals"):
        parse_run_config({"early-stopping-patience": 3, **keys})
