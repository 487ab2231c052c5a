"""medsilo ServerApp: FedAvg (plain or encrypted), central evaluation, run directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from common import records as rk
from common.calibration_metrics import calibrated_report
from common.config import RunConfig, parse_run_config
from common.experiment import initial_model, model_spec, resolve_path, saved_spec
from common.he.codec import ParamLayout
from common.logs import use_flower_logging
from common.models import state_dict_to_cpu
from common.run_outcome import Outcome, write_outcome
from server.calibration import FederatedCalibration
from server.central import CentralEvaluator, EvaluatorNodeScorer, LocalScorer, Scorer
from server.early_stopping import EarlyStopping
from server.encrypted_strategy import EncryptedFedAvg
from server.history import RunHistory
from server.keys import check_public_key, refuse_secret_keys, server_context
from server.local_baseline import LocalBaseline
from server.resume import ResumePoint, load_resume_point
from server.roster import NodeRoster
from server.rounds import run_rounds
from server.run_directory import RunDirectory
from server.server_steps import load_server_state, make_strategy, server_state
from server.strategy import GlobalStepRejected, MedsiloFedAvg, RunStopped

log = logging.getLogger(__name__)

app = ServerApp()


def _strategy(
    cfg: RunConfig, grid: Grid, history: RunHistory, run_dir: RunDirectory, layout: ParamLayout, first_round: int
) -> tuple[MedsiloFedAvg, CentralEvaluator, FederatedCalibration, LocalBaseline | None]:
    """The plaintext or the encrypted strategy, with the matching central evaluation, calibration and local baseline.

    A ``query.describe`` first learns every node's role and n_k. The central test set is
    scored on the evaluator node when there is one (always under HE; in deployment it
    holds the test set), otherwise by the server itself (plaintext simulation).
    """
    sampling = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_train_nodes,
        "min_evaluate_nodes": cfg.min_evaluate_nodes if cfg.fraction_evaluate > 0 else 0,
        "round_timeout": cfg.round_timeout,
        "seed": cfg.seed,
    }
    try:
        roster = NodeRoster.discover(
            grid, min_hospitals=cfg.min_train_nodes, timeout=cfg.round_timeout, evaluator=cfg.he_enabled
        )
    except RuntimeError as err:
        raise RunStopped(str(err)) from None
    history.set_nodes(roster.to_json(), first_round=first_round)
    if roster.deployed:
        run_dir.write_config(cfg, deployed=True, central_on_node=roster.evaluator is not None)
    public = None
    if not cfg.he_enabled:
        base = ConfigRecord()
        strategy = make_strategy(cfg, history=history, roster=roster, **sampling)
    else:
        public, keys_dir = server_context(cfg, run_dir.path)
        base = ConfigRecord(
            {rk.HE_KEYS_DIR: str(keys_dir), rk.HE_KEY_ID: public.key_id, rk.NUM_EXAMPLES_TOTAL: roster.total_examples}
        )
        strategy = EncryptedFedAvg(
            history=history, public=public, layout=layout, roster=roster, base_config=base, **sampling
        )
    if roster.evaluator is None:
        scorer: Scorer = LocalScorer(cfg, model_spec(cfg))
    else:
        scorer = EvaluatorNodeScorer(grid, node_id=roster.evaluator, base_config=base, timeout=cfg.round_timeout)
    evaluator = CentralEvaluator(
        cfg, scorer=scorer, history=history, run_dir=run_dir, server_state=lambda: server_state(strategy)
    )
    calibration = FederatedCalibration(cfg, grid, roster=roster, base_config=base, public=public)
    baseline = LocalBaseline(cfg, grid, roster=roster, base_config=base) if cfg.local_baseline else None
    return strategy, evaluator, calibration, baseline


def _in_model_order(arrays: ArrayRecord, state: dict[str, object]) -> ArrayRecord:
    """A plaintext checkpoint's arrays in the model's own order, as a fresh run sends them.

    safetensors stores names sorted; FedAvgM's momentum is a list in the order of the arrays
    sent, so a resumed run must send them in the same order as the run that saved it.
    """
    if set(arrays.keys()) != set(state):
        return arrays  # an encrypted aggregate: one payload, no per-parameter order
    return ArrayRecord({key: arrays[key] for key in state})


def _start(cfg: RunConfig, run_id: int) -> tuple[RunDirectory, RunHistory, ResumePoint | None]:
    """A fresh run directory, or (``resume-from``) the stopped run's directory and history."""
    if not cfg.resume_from:
        run_dir = RunDirectory.create(cfg, run_id=run_id, output_dir=resolve_path(cfg.output_dir))
        return run_dir, RunHistory(run_dir.history_file, multilabel=cfg.multilabel), None
    point = load_resume_point(resolve_path(cfg.resume_from), cfg)
    run_dir = RunDirectory.reopen(point.run_dir, cfg)
    history = RunHistory(run_dir.history_file, multilabel=cfg.multilabel)
    history.restore(point.rounds, after_round=point.last_round, resumed=point.resumed, abandoned=point.abandoned)
    log.info("resuming %s after round %d", run_dir.path, point.last_round)
    return run_dir, history, point


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation; record how it ended in ``<output-dir>/.outcomes/<run id>.json`` for scripts."""
    use_flower_logging()
    output_dir = resolve_path(str(context.run_config.get("output-dir", "runs")))
    try:
        status, line, run_dir = _run(grid, context)
    except Exception as err:
        _record(output_dir, context.run_id, "failed", f"{type(err).__name__}: {err}".splitlines()[0], None)
        raise
    _record(output_dir, context.run_id, status, line, run_dir)


def _record(output_dir: Path, run_id: int, status: Outcome, line: str, run_dir: Path | None) -> None:
    try:
        write_outcome(output_dir, run_id, status=status, line=line, run_dir=run_dir)
    except OSError as err:  # the run itself is not lost for it
        log.warning("could not record the run's outcome under %s: %s", output_dir, err)


def _stop_line(err: RunStopped, run_dir: RunDirectory) -> str:
    """One line: why the run stopped, the checkpoint it keeps and how to continue it.

    When the hospitals declined the global model, its checkpoint is set aside, so the run
    continues from the last good one.
    """
    resume = f"--run-config \"resume-from='{run_dir.path}'\""
    if not isinstance(err, GlobalStepRejected):
        return (
            f"run stopped: {err}. The last completed round's checkpoint is in {run_dir.path / 'checkpoints'}; "
            f"continue it with {resume} once enough hospitals are back"
        )
    good = run_dir.set_aside(err.rejected_round)
    aside = f"its checkpoint is set aside as checkpoints/rejected-round-{err.rejected_round:04d}"
    if good is None:
        return f"run stopped: {err}; {aside} and no earlier one is kept: start the run again"
    return (
        f"run stopped: {err}; {aside}. The last good checkpoint is {good}: leave out the hospital that sent "
        f"round {err.rejected_round}'s outlying update, then continue with {resume}"
    )


def _run(grid: Grid, context: Context) -> tuple[Outcome, str, Path | None]:
    """Validate the config, run FedAvg with central evaluation, write the run directory; how it ended."""
    try:
        cfg = parse_run_config(context.run_config)
        refuse_secret_keys(cfg)
        check_public_key(cfg)
        state = state_dict_to_cpu(initial_model(cfg))  # starting weights that cannot be read stop it here
        run_dir, history, point = _start(cfg, context.run_id)
    except ValueError as err:  # a ConfigError, or pretrained-weights unreadable or (imagenet, offline) not downloadable
        log.error("%s", err)  # returning (not exiting) lets Flower ship this line to `flwr run` and `flwr log`
        return "failed", str(err), None
    first_round = point.last_round + 1 if point is not None else 1
    log.info(
        "run %s: %s on %s, rounds %d-%d -> %s",
        context.run_id,
        cfg.model,
        cfg.dataset,
        first_round,
        cfg.num_server_rounds,
        run_dir.path,
    )
    try:
        strategy, evaluator, calibrator, baseline = _strategy(
            cfg, grid, history, run_dir, ParamLayout.of(state), first_round
        )
        if point is not None:
            load_server_state(strategy, point.server_state)
        stopping = EarlyStopping(cfg.early_stopping_patience) if cfg.early_stopping_patience else None
        run_rounds(
            strategy,
            grid,
            arrays=_in_model_order(point.arrays, state) if point is not None else ArrayRecord(state),
            first_round=first_round,
            last_round=cfg.num_server_rounds,
            train_config=ConfigRecord({rk.RUN_DIR: str(run_dir.path)}),
            evaluate_fn=evaluator,
            stop_after=(
                (lambda r, fed, arrays: stopping.should_stop(r, fed, arrays, evaluator.latest)) if stopping else None
            ),
        )
    except RunStopped as err:
        history.stop(str(err))
        history.flush()
        line = _stop_line(err, run_dir)
        log.error("%s", line)
        return "stopped", line, run_dir.path
    final, arrays = evaluator.latest, evaluator.latest_arrays
    if stopping is not None:
        history.early_stopping = stopping.to_json()
        if stopping.best_evaluation is not None and stopping.best_arrays is not None:  # the best round's model
            final, arrays = stopping.best_evaluation, stopping.best_arrays
    if final is None or arrays is None:
        raise RuntimeError("the run ended without any central evaluation; see the log for the evaluator's error")
    calibration, history.calibration = calibrator.fit(arrays)
    if baseline is not None:
        history.local_baseline = baseline.compare(arrays, ArrayRecord(state), history)
    history.finish()
    history.flush()
    spec = saved_spec(cfg)
    scored = final.scored
    report, probabilities = calibrated_report(
        scored.y_true,
        scored.probabilities,
        spec.classes,
        calibration,
        loss=scored.loss,
        multilabel=cfg.multilabel,
        label_thresholds=cfg.thresholds if cfg.multilabel else None,
    )
    html = run_dir.finish(
        arrays=arrays,
        spec=spec,
        calibration=calibration,
        report=report,
        paths=scored.paths,
        y_true=scored.y_true,
        probabilities=probabilities,
    )
    line = f"{_headline(report)} after {history.duration_s:.1f} s; report: {html}"
    log.info("%s", line)
    return "completed", line, run_dir.path


def _headline(report: dict[str, Any]) -> str:
    """The run's last line: accuracy, or in multi-label runs macro AUROC and macro F1 at the fitted thresholds."""
    macro = report["macro"]
    if report.get("task") == "multilabel":
        auroc = "n/a" if macro["auroc"] is None else f"{macro['auroc']:.4f}"
        f1 = "n/a" if macro["f1"] is None else f"{macro['f1']:.4f}"
        return f"central macro AUROC {auroc}, macro F1 {f1} at the labels' thresholds"
    line = f"central accuracy {report['accuracy']:.4f}"
    point = report.get("operating_point")
    if point is not None and point["sensitivity"]["value"] is not None:
        found = point["sensitivity"]
        line += (
            f", sensitivity {found['value']:.3f} (95% CI {found['low']:.3f}-{found['high']:.3f}) "
            f"at threshold {point['threshold']:.4g}"
        )
    return line
