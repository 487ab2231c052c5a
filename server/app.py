"""medsilo ServerApp: FedAvg (plain or encrypted), central evaluation, run directory."""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from common import records as rk
from common.config import ConfigError, RunConfig, parse_run_config
from common.experiment import initial_model, model_spec, resolve_path
from common.he.codec import ParamLayout
from common.logs import use_flower_logging
from common.models import state_dict_to_cpu
from server.central import CentralEvaluator, EvaluatorNodeScorer, LocalScorer
from server.encrypted_strategy import EncryptedFedAvg, NodeRoster
from server.history import RunHistory
from server.keys import server_context
from server.run_directory import RunDirectory
from server.strategy import MedsiloFedAvg

log = logging.getLogger(__name__)

app = ServerApp()

MESSAGE_TIMEOUT_S = 3600.0


def _strategy(
    cfg: RunConfig, grid: Grid, history: RunHistory, run_dir: RunDirectory, layout: ParamLayout
) -> tuple[MedsiloFedAvg, CentralEvaluator]:
    """The plaintext or the encrypted strategy, with the matching central evaluation."""
    sampling = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_train_nodes,
        "min_evaluate_nodes": cfg.min_evaluate_nodes if cfg.fraction_evaluate > 0 else 0,
        "min_available_nodes": cfg.min_train_nodes,
    }
    spec = model_spec(cfg)
    if not cfg.he_enabled:
        evaluator = CentralEvaluator(cfg, scorer=LocalScorer(cfg, spec), history=history, run_dir=run_dir)
        return MedsiloFedAvg(history=history, **sampling), evaluator
    public, keys_dir = server_context(cfg, run_dir.path)
    roster = NodeRoster.discover(grid, min_hospitals=cfg.min_train_nodes, timeout=MESSAGE_TIMEOUT_S)
    base = ConfigRecord(
        {rk.HE_KEYS_DIR: str(keys_dir), rk.HE_KEY_ID: public.key_id, rk.NUM_EXAMPLES_TOTAL: roster.total_examples}
    )
    scorer = EvaluatorNodeScorer(grid, node_id=roster.evaluator, base_config=base, timeout=MESSAGE_TIMEOUT_S)
    evaluator = CentralEvaluator(cfg, scorer=scorer, history=history, run_dir=run_dir)
    strategy = EncryptedFedAvg(
        history=history, public=public, layout=layout, roster=roster, base_config=base, seed=cfg.seed, **sampling
    )
    return strategy, evaluator


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Validate the config, run FedAvg with central evaluation, write the run directory."""
    use_flower_logging()
    try:
        cfg = parse_run_config(context.run_config)
    except ConfigError as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    run_dir = RunDirectory.create(cfg, run_id=context.run_id, output_dir=resolve_path(cfg.output_dir))
    history = RunHistory(run_dir.history_file)
    state = state_dict_to_cpu(initial_model(cfg))
    strategy, evaluator = _strategy(cfg, grid, history, run_dir, ParamLayout.of(state))
    log.info(
        "run %s: %s on %s, %d rounds -> %s", context.run_id, cfg.model, cfg.dataset, cfg.num_server_rounds, run_dir.path
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(state),
        num_rounds=cfg.num_server_rounds,
        timeout=MESSAGE_TIMEOUT_S,
        train_config=ConfigRecord({rk.RUN_DIR: str(run_dir.path)}),
        evaluate_fn=evaluator,
    )
    final = evaluator.latest
    if final is None or evaluator.latest_arrays is None:
        raise RuntimeError("the run ended without any central evaluation; see the log for the evaluator's error")
    history.finish()
    history.flush()
    html = run_dir.finish(
        arrays=evaluator.latest_arrays,
        spec=model_spec(cfg),
        report=final.report,
        paths=final.scored.paths,
        y_true=final.scored.y_true,
        probabilities=final.scored.probabilities,
    )
    log.info("central accuracy %.4f after %.1f s; report: %s", final.report["accuracy"], history.duration_s, html)
