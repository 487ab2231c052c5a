"""The server's starting weights: an unreadable source stops the run with one line; saved models keep their record."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, RecordDict

from common.config import parse_run_config
from common.models import ModelSpec, Pretraining, build_from_spec, read_spec, save_model_dir
from common.run_outcome import read_outcome
from server.central import CentralEvaluator, Scored
from server.history import RunHistory
from server.run_directory import RunDirectory

RECORD = Pretraining("public-mri", ("a", "b"), images=24, epochs=2, image_size=32, date="2026-05-01")


def test_offline_imagenet_stops_the_run_with_one_line_before_any_run_directory(
    tmp_path: Path, offline_torch_home: Path, server_main_records: Callable[[Context], list[logging.LogRecord]]
) -> None:
    run_config = {"model": "resnet18", "image-size": 32, "pretrained-weights": "imagenet", "output-dir": str(tmp_path)}
    context = Context(run_id=4, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    records = server_main_records(context)
    messages = [r.getMessage() for r in records]
    assert len(messages) == 1 and records[0].levelno == logging.ERROR, messages
    assert "cannot download resnet18-f37072fd.pth" in messages[0] and "\n" not in messages[0]
    assert f"in $TORCH_HOME/hub/checkpoints/, here {offline_torch_home}/" in messages[0]
    assert [p.name for p in tmp_path.iterdir() if p.name != "torch-home"] == [".outcomes"]
    assert read_outcome(tmp_path, 4) == {"run_id": 4, "status": "failed", "line": messages[0], "run_dir": ""}


def test_checkpoints_record_what_the_starting_weights_were_trained_on(tmp_path: Path) -> None:
    spec = ModelSpec("cnn3", ("a", "b"), 32, 1, (0.5,), (0.25,))
    model = build_from_spec(spec, seed=0)
    start = save_model_dir(tmp_path / "start", model, replace(spec, pretrained_on=RECORD))
    cfg = parse_run_config({"model": "cnn3", "image-size": 32, "classes": "a,b", "pretrained-weights": str(start)})
    run_dir = RunDirectory.create(cfg, run_id=1, output_dir=tmp_path / "runs")

    def score(arrays: ArrayRecord) -> Scored:
        return Scored(("a.png", "b.png"), np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), 0.3, 0)

    evaluator = CentralEvaluator(cfg, scorer=score, history=RunHistory(run_dir.history_file), run_dir=run_dir)
    evaluator(0, ArrayRecord(model.state_dict()))
    assert read_spec(run_dir.path / "checkpoints" / "round-0000").pretrained_on == RECORD
