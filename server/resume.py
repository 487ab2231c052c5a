"""Resuming a stopped run from its run directory: config check, last checkpoint, history so far."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

from common.config import ConfigError, RunConfig
from common.he.model_dir import load_encrypted_dir
from common.models import MODEL_FILE
from server.run_directory import SERVER_STATE_FILE

__all__ = ["ResumePoint", "load_resume_point"]

log = logging.getLogger(__name__)

# Keys that define the model, its data or its privacy guarantee: a resumed run must keep them.
MUST_MATCH = (
    "model",
    "dataset",
    "classes",
    "image-size",
    "partitioner",
    "dirichlet-alpha",
    "local-val-fraction",
    "seed",
    "he-enabled",
    "dp-enabled",
    "dp-target-epsilon",
    "dp-delta",
    "dp-max-grad-norm",
    "dp-noise-multiplier",
    "strategy",
    "optimizer",
    "optimizer-state",
    "norm-layer",
    "norm-groups",
    "weight-standardization",
    "feature-standardization",
    "batch-size",
    "dp-sample-rate",
    "train-from-block",
    "trainable-params",
)


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run starts: after ``last_round``, from ``arrays``, with the history so far.

    ``resumed`` holds the run's earlier resumes; ``abandoned`` what the stopped run did after
    ``last_round`` that its record must keep: why it stopped, and every hospital's decline.
    """

    run_dir: Path
    last_round: int
    arrays: ArrayRecord
    rounds: list[dict[str, Any]]
    server_state: dict[str, np.ndarray]
    resumed: list[dict[str, Any]]
    abandoned: dict[str, Any]


def _abandoned(history: dict[str, Any], last_round: int) -> dict[str, Any]:
    """Why the stopped run stopped, and the declines of the rounds after ``last_round`` (dropped on resume)."""
    declined = [
        {"round": r["round"], "hospital": name, "reason": h["declined"]}
        for r in history.get("rounds", [])
        if r["round"] > last_round
        for name, h in sorted(r.get("hospitals", {}).items())
        if h.get("declined")
    ]
    found = {"stopped": history.get("stopped"), "declined": declined}
    return {key: value for key, value in found.items() if value}


def _checkpoint_arrays(directory: Path) -> ArrayRecord:
    """A checkpoint's global model: plaintext weights, or the encrypted aggregate as it was sent."""
    if (directory / MODEL_FILE).is_file():
        return ArrayRecord(load_file(directory / MODEL_FILE))
    payload, _ = load_encrypted_dir(directory)
    return payload.to_record()


def _check_config(previous: dict[str, Any], cfg: RunConfig, run_dir: Path) -> None:
    current = cfg.to_run_config()
    for key in MUST_MATCH:
        if key in previous and previous[key] != current[key]:
            raise ConfigError(
                f"run config: 'resume-from' = {str(run_dir)!r} ran with {key} = {previous[key]!r}; "
                f"expected the same {key}, got {current[key]!r}"
            )
    if cfg.dp_enabled and previous.get("num-server-rounds") != cfg.num_server_rounds:
        raise ConfigError(
            f"run config: 'num-server-rounds' = {cfg.num_server_rounds} differs from the resumed run's "
            f"{previous.get('num-server-rounds')}; expected the same under DP (the noise was planned for it)"
        )
    changed = sorted(k for k, v in current.items() if k in previous and previous[k] != v and k != "resume-from")
    if changed:
        log.info("resuming with changed settings: %s", ", ".join(changed))


def load_resume_point(run_dir: Path, cfg: RunConfig) -> ResumePoint:
    """Read ``run_dir``'s config, latest checkpoint and history up to that checkpoint.

    Raises:
        ConfigError: not a run directory, no checkpoint, a model- or privacy-defining key
            changed, or the run already has every round ``num-server-rounds`` asks for.
    """
    where = f"run config: 'resume-from' = {str(run_dir)!r}"
    config_file, history_file = run_dir / "config.json", run_dir / "history.json"
    if not config_file.is_file() or not history_file.is_file():
        raise ConfigError(f"{where} is not a run directory; expected config.json and history.json in it")
    _check_config(json.loads(config_file.read_text()), cfg, run_dir)
    checkpoints = sorted((run_dir / "checkpoints").glob("round-*"))
    if not checkpoints:
        raise ConfigError(f"{where} has no checkpoint; expected checkpoints/round-NNNN from a completed round")
    last = checkpoints[-1]
    last_round = int(last.name.removeprefix("round-"))
    if last_round >= cfg.num_server_rounds:
        raise ConfigError(
            f"run config: 'num-server-rounds' = {cfg.num_server_rounds}; the resumed run already completed "
            f"round {last_round}, expected more rounds than that"
        )
    try:
        arrays = _checkpoint_arrays(last)
        state_file = last / SERVER_STATE_FILE
        server_state = load_numpy(str(state_file)) if state_file.is_file() else {}
    except Exception as err:  # safetensors' own error type is not exported
        raise ConfigError(f"{where}: its checkpoint {last.name} is unreadable ({err})") from None
    history = json.loads(history_file.read_text())
    rounds = [r for r in history.get("rounds", []) if r["round"] <= last_round]
    return ResumePoint(
        run_dir, last_round, arrays, rounds, server_state, history.get("resumed", []), _abandoned(history, last_round)
    )
