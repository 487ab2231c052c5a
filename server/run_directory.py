"""The run directory of DESIGN: ``output-dir/<run-name>/`` and everything in it."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from safetensors.numpy import save_file

from common.calibration import Calibration, write_calibration
from common.config import RunConfig
from common.he.model_dir import save_encrypted_dir
from common.he.payload import is_encrypted
from common.models import ModelSpec, save_model_dir
from common.run_files import write_json, write_predictions_csv

__all__ = ["CHECKPOINTS_KEPT", "SERVER_STATE_FILE", "SIMULATION_ONLY_KEYS", "RunDirectory"]

SIMULATION_ONLY_KEYS = ("partitioner", "dirichlet-alpha", "he-secret-context")
"""Run-config keys that only simulated hospitals read (deployed ones use their node config)."""

CHECKPOINTS_KEPT = 2
"""Rounds whose global model stays in ``checkpoints/``: the latest, and the last good one should it be declined."""

SERVER_STATE_FILE = "server-state.safetensors"
"""A checkpoint's server-optimiser state (FedAvgM momentum, FedAdam/FedYogi/FedAdagrad moments)."""

log = logging.getLogger(__name__)


def _save_global(directory: Path, arrays: ArrayRecord, spec: ModelSpec) -> Path:
    """Plaintext weights as a model directory; an encrypted aggregate stays encrypted."""
    if is_encrypted(arrays):
        return save_encrypted_dir(directory, arrays, spec)
    return save_model_dir(directory, arrays.to_torch_state_dict(), spec)


@dataclass(frozen=True)
class RunDirectory:
    """Paths of one run's outputs, created on :meth:`create`."""

    path: Path

    @classmethod
    def create(cls, cfg: RunConfig, *, run_id: int, output_dir: Path) -> RunDirectory:
        """Make ``output_dir/<run-name>`` and write ``config.json``."""
        name = cfg.run_name or f"{cfg.dataset}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{run_id}"
        path = output_dir / name
        path.mkdir(parents=True, exist_ok=True)
        run_dir = cls(path)
        run_dir.write_config(cfg)
        return run_dir

    @classmethod
    def reopen(cls, path: Path, cfg: RunConfig) -> RunDirectory:
        """A stopped run's directory, to resume in place; ``config.json`` takes the new config."""
        run_dir = cls(path)
        run_dir.write_config(cfg)
        return run_dir

    def write_config(self, cfg: RunConfig, *, deployed: bool = False, central_on_node: bool = False) -> None:
        """``config.json``: the run config; a deployed run's leaves out the simulation keys it never used.

        Deployed hospitals train on their own node-config ``data-path``, so the partitioner and the
        simulation's key paths mean nothing; ``data-root`` only when the evaluator node holds the test set.
        """
        config = cfg.to_run_config()
        if deployed:
            unused = SIMULATION_ONLY_KEYS + (("data-root",) if central_on_node else ())
            config = {key: value for key, value in config.items() if key not in unused}
        write_json(self.path / "config.json", config)

    @property
    def history_file(self) -> Path:
        """``history.json``."""
        return self.path / "history.json"

    def checkpoint(
        self, server_round: int, arrays: ArrayRecord, spec: ModelSpec, *, server_state: dict[str, np.ndarray]
    ) -> Path:
        """Save the global model (and the server optimiser's state) after ``server_round``.

        The latest :data:`CHECKPOINTS_KEPT` rounds are kept: when the hospitals decline the latest
        model (``update-norm-limit``), the one before it is the last good checkpoint. The folder
        is written under a temporary name and renamed, so a stopped server never leaves a partial
        ``round-NNNN``.
        """
        target = self.path / "checkpoints" / f"round-{server_round:04d}"
        partial = target.with_name(f".partial-{target.name}")
        shutil.rmtree(partial, ignore_errors=True)
        _save_global(partial, arrays, spec)
        if server_state:
            save_file(server_state, str(partial / SERVER_STATE_FILE))
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
        for old in sorted((self.path / "checkpoints").glob("round-*"))[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old)
        return target

    def set_aside(self, server_round: int) -> Path | None:
        """Move round ``server_round``'s checkpoint to ``checkpoints/rejected-round-NNNN`` (kept for a look).

        ``resume-from`` then continues from the checkpoint before it.

        Returns:
            The latest checkpoint left (the last good one), or ``None`` when there is none.
        """
        folder = self.path / "checkpoints"
        source = folder / f"round-{server_round:04d}"
        if source.is_dir():
            target = folder / f"rejected-{source.name}"
            if target.exists():
                shutil.rmtree(target)
            source.rename(target)
        left = sorted(folder.glob("round-*"))
        return left[-1] if left else None

    def finish(
        self,
        *,
        arrays: ArrayRecord,
        spec: ModelSpec,
        calibration: Calibration,
        report: dict[str, Any],
        paths: tuple[str, ...],
        y_true: np.ndarray,
        probabilities: np.ndarray,
    ) -> Path:
        """Write ``model/`` (its ``model.json`` with ``calibration``), ``report.json`` and ``predictions.csv``,
        then the report built from them.

        ``report`` and ``probabilities`` are the calibrated model's. ``history.json`` must be written
        first: the report's summary and curves come from it.

        Returns:
            The path of ``report.html``.
        """
        write_calibration(_save_global(self.path / "model", arrays, spec), calibration)
        write_json(self.path / "report.json", report)
        write_predictions_csv(
            self.path / "predictions.csv",
            paths=paths,
            y_true=y_true,
            probabilities=probabilities,
            classes=spec.classes,
        )
        from common.report import build_report  # matplotlib: imported once the rounds are over

        html = build_report(self.path, title="medsilo central evaluation")
        log.info("run directory complete: %s", self.path)
        return html
