"""medsilo ServerApp: FedAvg over the hospitals, central evaluation, run directory."""

from __future__ import annotations

import logging
import time

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from common.config import ConfigError, parse_run_config
from common.experiment import initial_model, model_spec, resolve_path
from common.logs import use_flower_logging
from common.models import state_dict_to_cpu
from server.central import CentralEvaluator
from server.history import RunHistory
from server.run_directory import RunDirectory
from server.strategy import MedsiloFedAvg

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Validate the config, run FedAvg with central evaluation, write the run directory."""
    use_flower_logging()
    start = time.perf_counter()
    try:
        cfg = parse_run_config(context.run_config)
    except ConfigError as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    run_dir = RunDirectory.create(cfg, run_id=context.run_id, output_dir=resolve_path(cfg.output_dir, key="output-dir"))
    history = RunHistory(run_dir.history_file)
    evaluator = CentralEvaluator(cfg, history=history, run_dir=run_dir)
    model = initial_model(cfg)
    strategy = MedsiloFedAvg(
        history=history,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_train_nodes,
        min_evaluate_nodes=cfg.min_evaluate_nodes if cfg.fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.min_train_nodes,
    )
    log.info(
        "run %s: %s on %s, %d rounds -> %s", context.run_id, cfg.model, cfg.dataset, cfg.num_server_rounds, run_dir.path
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(state_dict_to_cpu(model)),
        num_rounds=cfg.num_server_rounds,
        train_config=ConfigRecord(),
        evaluate_fn=evaluator,
    )
    final = evaluator.latest
    if final is None:
        raise RuntimeError("the strategy finished without a central evaluation")
    hospitals = sorted({h for r in history.rounds.values() for h in r["hospitals"]})
    summary = {
        "dataset": f"{cfg.dataset} ({cfg.data_root})",
        "hospitals": f"{len(hospitals)} ({', '.join(hospitals)}), partitioner {cfg.partitioner}",
        "rounds": cfg.num_server_rounds,
        "model": f"{cfg.model} at {cfg.image_size} px",
        "local training": f"{cfg.local_epochs} epoch(s), {cfg.optimizer} lr {cfg.learning_rate}, "
        f"batch {cfg.batch_size}",
        "privacy": "DP off",
        "encryption": "HE off",
        "duration": f"{time.perf_counter() - start:.1f} s",
    }
    run_dir.finish(
        model=evaluator.model,
        spec=model_spec(cfg),
        report=final.report,
        test=evaluator.test,
        probabilities=final.probabilities,
        summary=summary,
    )
    history.flush()
    log.info("central accuracy %.4f; report: %s", final.report["accuracy"], run_dir.path / "report.md")
