"""``history.json``'s run timing and the per-round log line."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from server.history import RunHistory


def test_history_json_has_run_timing_next_to_rounds(tmp_path: Path) -> None:
    history = RunHistory(tmp_path / "history.json")
    history.round(0)["central"] = {"accuracy": 0.25, "macro_f1": None}
    history.flush()
    unfinished = json.loads((tmp_path / "history.json").read_text())
    assert unfinished["finished_at"] is None and unfinished["duration_s"] is None
    assert [r["round"] for r in unfinished["rounds"]] == [0]
    history.finish()
    history.flush()
    data = json.loads((tmp_path / "history.json").read_text())
    started, finished = (datetime.fromisoformat(data[k]) for k in ("started_at", "finished_at"))
    assert started.utcoffset() is not None and started <= finished
    assert 0 <= data["duration_s"] < 60 and list(data) == ["started_at", "finished_at", "duration_s", "rounds"]


def test_round_summary_says_what_happened_and_how_long_it_took(tmp_path: Path) -> None:
    history = RunHistory(tmp_path / "history.json")
    history.round(0)["central"] = {"accuracy": 0.25, "macro_f1": None}
    history.round(0)["timings"]["central_evaluate_s"] = 2.04
    assert history.round_summary(0, 10) == "round 0/10: central accuracy 0.250, macro F1 n/a, macro AUROC n/a (2.0 s)"
    record = history.round(3)
    record["timings"].update(train_s=12.31, aggregate_s=0.104, federated_evaluate_s=0.9, central_evaluate_s=2.0)
    for name in ("a", "b", "c", "d"):
        history.hospital(3, name)["examples"] = 10
    history.hospital(3, "e")["declined"] = "privacy budget"
    history.fail(3, node_id=5, stage="train", reason="declined: privacy budget")
    record["federated_evaluate"] = {"eval-accuracy": 0.5}
    record["central"] = {"accuracy": 0.7123, "macro_f1": 0.7, "macro_auroc": 0.8125}
    assert history.round_summary(3, 10) == (
        "round 3/10: 4 hospital(s) trained in 12.3 s (1 failed or declined), aggregated in 0.10 s, "
        "hospital evaluation accuracy 0.500 (0.9 s), central accuracy 0.712, macro F1 0.700, macro AUROC 0.812 (2.0 s)"
    )
    assert history.round_summary(4, 10).endswith("no central evaluation")


def test_a_multilabel_round_line_leads_with_macro_auroc_and_f1(tmp_path: Path) -> None:
    history = RunHistory(tmp_path / "history.json", multilabel=True)
    history.round(0)["central"] = {"accuracy": 0.92, "macro_f1": 0.0, "macro_auroc": 0.61}
    history.round(0)["timings"]["central_evaluate_s"] = 1.0
    assert history.round_summary(0, 5) == (
        "round 0/5: central macro AUROC 0.610, macro F1 0.000, label-wise accuracy 0.920 (1.0 s)"
    )
