"""medsilo ClientApp: a hospital, or (under HE) the evaluator. Unpack, call, reply."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.calibration_stats import hospital_statistics, read_statistics_sum, statistics_record
from client.config_errors import config_errors_as_one_line
from client.crypto import decode_global, encrypt_update, secret_context
from client.hostile import SCALED_FROM_ROUND, flipped_labels, scaled_update
from client.local_baseline import compare_with_local_only
from client.optimizer_state import load_optimizer_state, save_optimizer_state
from client.site import central_test_set, hospital_data, node_identity, state_dir
from client.step_guard import StepCheck, guard_global_step
from client.training import non_finite_reason, non_finite_weights, round_seed, split_scores, train_local
from common import records as rk
from common.calibration_fit import PICK_PREFIX
from common.config import RunConfig, parse_run_config
from common.data import build_transform
from common.experiment import model_spec, preset_for
from common.he.codec import ParamLayout
from common.he.keys import HEContext
from common.inference import predict, resolve_device
from common.logs import use_flower_logging
from common.models import ModelSpec, build_from_spec, state_dict_to_cpu
from common.node_config import parse_node_config
from common.precision import Precision, cpu_bf16_flags, resolve_precision

log = logging.getLogger(__name__)

app = ClientApp(mods=[config_errors_as_one_line])
use_flower_logging()


@dataclass(frozen=True)
class _Setup:
    cfg: RunConfig
    model: torch.nn.Module
    ctx: HEContext | None
    device: torch.device
    precision: Precision
    decrypt_seconds: float


@lru_cache(maxsize=2)
def _model(spec: ModelSpec) -> torch.nn.Module:
    """The run's architecture, built once per process; each message loads its weights into it."""
    return build_from_spec(spec)


@lru_cache(maxsize=64)
def _precision(preference: str, device: torch.device, *, dp: bool, node: str) -> Precision:
    """The precision this node trains and scores in, logged once per node and process.

    DP-SGD always trains in float32: see ``common.privacy.dpsgd.train_private``.
    """
    chosen = resolve_precision(preference, device)
    where = "CUDA" if device.type == "cuda" else f"CPU, native bf16 flags: {', '.join(cpu_bf16_flags()) or 'none'}"
    if dp and chosen.name != "fp32":
        log.info("%s: precision %r resolves to %s on %s; DP-SGD trains in fp32", node, preference, chosen.name, where)
    else:
        log.info("%s: precision %r: training in %s (%s)", node, preference, chosen.name, where)
    return chosen


def _setup(msg: Message, context: Context) -> _Setup:
    """Validate the config, build the model and load the global weights (decrypting them)."""
    cfg = parse_run_config(context.run_config)
    config = msg.content.config_records.get(rk.CONFIG, ConfigRecord())
    ctx = secret_context(context.node_config, config, cfg) if cfg.he_enabled else None
    model = _model(model_spec(cfg))
    state, seconds = decode_global(
        msg.content[rk.ARRAYS], layout=ParamLayout.of(model.state_dict()), ctx=ctx, workers=cfg.he_workers
    )
    model.load_state_dict(state, strict=True)
    device = resolve_device(cfg.device)
    node = node_identity(cfg, context.node_config).name
    return _Setup(cfg, model, ctx, device, _precision(cfg.precision, device, dp=cfg.dp_enabled, node=node), seconds)


@app.query(rk.DESCRIBE)
def describe(msg: Message, context: Context) -> Message:
    """Tell the server this node's role, name and training-set size (before round 1)."""
    cfg = parse_run_config(context.run_config)
    identity = node_identity(cfg, context.node_config)
    n = len(hospital_data(cfg, context.node_config).train) if identity.role == "hospital" else 0
    source = "own" if identity.node.deployed else "simulated"
    info = ConfigRecord({rk.ROLE: identity.role, "name": identity.name, rk.DATA_SOURCE: source})
    content = RecordDict({rk.METRICS: MetricRecord({rk.NUM_EXAMPLES: n}), rk.HOSPITAL: info})
    return Message(content=content, reply_to=msg)


def _step_info(step: StepCheck | None) -> dict[str, float | bool]:
    """The global step this hospital saw, for the server's history (nothing when the guard is off or had no base)."""
    if step is None:
        return {}
    info: dict[str, float | bool] = {rk.STEP_DECLINED: True} if step.declined is not None else {}
    if step.norm is not None:
        info[rk.STEP_NORM] = step.norm
    if step.ratio is not None:
        info[rk.STEP_RATIO] = step.ratio
    return info


def _decline(msg: Message, name: str, reason: str, step: StepCheck | None = None) -> Message:
    """A reply that sends no weights and says why (budget spent, training diverged, the global step jumped)."""
    info = ConfigRecord({"name": name, rk.DECLINED: reason, **_step_info(step)})
    return Message(RecordDict({rk.METRICS: MetricRecord({rk.NUM_EXAMPLES: 0}), rk.HOSPITAL: info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global model on this hospital's shard; reply with the (encrypted) weights."""
    setup = _setup(msg, context)
    cfg, config = setup.cfg, msg.content[rk.CONFIG]
    site = hospital_data(cfg, context.node_config)
    server_round = int(config[rk.SERVER_ROUND])
    hostile = parse_node_config(context.node_config).hostile  # a test-and-benchmark fixture, never in production
    train_set = flipped_labels(site.train) if hostile == "label-flip" else site.train
    received = state_dict_to_cpu(setup.model) if hostile == "scaled" and server_round >= SCALED_FROM_ROUND else None
    unusable = non_finite_weights(setup.model)
    if unusable is not None:
        return _decline(msg, site.name, f"the global model is unusable: {unusable}")
    seed = round_seed(cfg, server_round)
    privacy: dict[str, float] = {}
    keep = cfg.optimizer_state == "keep"
    # This hospital's folder for this run: its privacy ledger, kept optimiser state and global-step guard.
    needs_folder = keep or cfg.dp_enabled or cfg.update_norm_limit > 0
    folder = state_dir(context.node_config, config, site.name) if needs_folder else None
    step = None
    if cfg.update_norm_limit > 0 and folder is not None:
        step = guard_global_step(
            folder, setup.model.state_dict(), server_round=server_round, limit=cfg.update_norm_limit
        )
        if step.declined is not None:
            log.warning("%s round %d: declining: %s", site.name, server_round, step.declined)
            return _decline(msg, site.name, step.declined, step)
    kept = load_optimizer_state(folder, before_round=server_round) if keep and folder else None
    if cfg.dp_enabled and folder is not None:
        from client.privacy import train_within_budget  # Opacus is imported only when DP is on (1.2 s)

        outcome = train_within_budget(
            setup.model,
            train_set,
            cfg=cfg,
            ledger_dir=folder,
            seed=seed,
            device=setup.device,
            optimizer_state=kept,
            server_round=server_round,
        )
        if isinstance(outcome, str):
            return _decline(msg, site.name, outcome, step)
        result, privacy = outcome.result, outcome.metrics
    else:
        result = train_local(
            setup.model,
            train_set,
            cfg=cfg,
            preset=preset_for(cfg),
            device=setup.device,
            seed=seed,
            server_round=server_round,
            optimizer_state=kept,
            precision=setup.precision,
        )
    diverged = non_finite_reason(result.loss, setup.model)
    if diverged is not None:
        log.warning("%s round %d: declining: %s", site.name, server_round, diverged)
        return _decline(msg, site.name, diverged, step)
    if keep and folder is not None and result.optimizer_state is not None:
        save_optimizer_state(folder, server_round=server_round, state=result.optimizer_state)
    log.info(
        "%s round %d: %d images, loss %.4f, %.1fs",
        site.name,
        server_round,
        result.num_examples,
        result.loss,
        result.seconds,
    )
    state = state_dict_to_cpu(setup.model)
    if received is not None:
        state = scaled_update(state, received, parameters={name for name, _ in setup.model.named_parameters()})
    encrypt_seconds = 0.0
    if setup.ctx is None:
        arrays = ArrayRecord(state)
    else:
        weight = result.num_examples / float(config[rk.NUM_EXAMPLES_TOTAL])
        arrays, encrypt_seconds = encrypt_update(state, ctx=setup.ctx, weight=weight, workers=cfg.he_workers)
    metrics = MetricRecord(
        {
            rk.NUM_EXAMPLES: result.num_examples,
            rk.TRAIN_LOSS: result.loss,
            rk.TRAIN_ACCURACY: result.accuracy,
            rk.TRAIN_SECONDS: result.seconds,
            rk.SKIPPED_IMAGES: len(site.train.skipped),
            rk.ENCRYPT_SECONDS: encrypt_seconds,
            rk.DECRYPT_SECONDS: setup.decrypt_seconds,
            **privacy,
        }
    )
    info = ConfigRecord(
        {
            "name": site.name,
            rk.CLASS_COUNTS: site.train.class_counts(),
            rk.PRECISION: result.precision,
            **_step_info(step),
        }
    )
    content = RecordDict({rk.ARRAYS: arrays, rk.METRICS: metrics, rk.HOSPITAL: info})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the global model on this hospital's local test split."""
    setup = _setup(msg, context)
    site = hospital_data(setup.cfg, context.node_config)
    metrics = MetricRecord({rk.NUM_EXAMPLES: 0, rk.EVAL_LOSS: 0.0, rk.EVAL_ACCURACY: 0.0})
    if len(site.val):
        accuracy, loss = split_scores(
            setup.model,
            site.val,
            cfg=setup.cfg,
            preset=preset_for(setup.cfg),
            device=setup.device,
            precision=setup.precision,
        )
        metrics = MetricRecord({rk.NUM_EXAMPLES: len(site.val), rk.EVAL_LOSS: loss, rk.EVAL_ACCURACY: accuracy})
    content = RecordDict({rk.METRICS: metrics, rk.HOSPITAL: ConfigRecord({"name": site.name})})
    return Message(content=content, reply_to=msg)


@app.evaluate(rk.CENTRAL)
def evaluate_central(msg: Message, context: Context) -> Message:
    """The evaluator: decrypt the aggregate, score the central test set, return predictions only."""
    setup = _setup(msg, context)
    if node_identity(setup.cfg, context.node_config).role != "evaluator":
        raise ValueError(
            "central evaluation was sent to a hospital; only the evaluator node holds the central test set"
        )
    unusable = non_finite_weights(setup.model)
    if unusable is not None:  # the server cannot look inside the aggregate; the key-holder can
        reason = f"the decrypted aggregate is unusable: {unusable}"
        log.warning("evaluator: %s", reason)
        return _decline(msg, "evaluator", reason)
    test = central_test_set(setup.cfg, context.node_config)
    transform = build_transform(preset_for(setup.cfg), train=False)
    probs, loss = predict(
        setup.model, test, transform, batch_size=setup.cfg.batch_size, device=setup.device, precision=setup.precision
    )
    predictions = ArrayRecord(
        {"probabilities": Array(np.ascontiguousarray(probs)), "labels": Array(test.labels.numpy().astype(np.int64))}
    )
    metrics = MetricRecord({rk.NUM_EXAMPLES: len(test), rk.EVAL_LOSS: loss, rk.DECRYPT_SECONDS: setup.decrypt_seconds})
    info = ConfigRecord({"paths": list(test.paths), "skipped": len(test.skipped)})
    content = RecordDict({rk.PREDICTIONS: predictions, rk.METRICS: metrics, rk.HOSPITAL: info})
    return Message(content=content, reply_to=msg)


@app.query(rk.CALIBRATE)
def calibrate(msg: Message, context: Context) -> Message:
    """After the last round: this hospital's calibration statistics of its validation split (fixed-size sums).

    Under HE the evaluator gets ``pick-<stage>`` instead: it decrypts the server's sum of the
    hospitals' statistics and answers with what it reads there (temperature, thresholds).
    """
    cfg = parse_run_config(context.run_config)
    config = msg.content[rk.CONFIG]
    stage = str(config[rk.CALIBRATION_STAGE])
    identity = node_identity(cfg, context.node_config)
    if stage.startswith(PICK_PREFIX):
        if identity.role != "evaluator":
            raise ValueError("the summed calibration statistics were sent to a hospital; only the evaluator reads them")
        ctx = secret_context(context.node_config, config, cfg)
        picked = read_statistics_sum(msg.content[rk.STATISTICS], ctx=ctx, cfg=cfg, stage=stage[len(PICK_PREFIX) :])
        return Message(RecordDict({rk.CALIBRATION: picked}), reply_to=msg)
    setup = _setup(msg, context)
    site = hospital_data(cfg, context.node_config)
    stats = hospital_statistics(
        setup.model, site.val, cfg=cfg, config=config, device=setup.device, precision=setup.precision
    )
    record = statistics_record(stats, ctx=setup.ctx, config=config)
    log.info("%s: calibration %s statistics of %d validation images", site.name, stage, len(site.val))
    return Message(RecordDict({rk.STATISTICS: record, rk.HOSPITAL: ConfigRecord({"name": site.name})}), reply_to=msg)


@app.query(rk.LOCAL_BASELINE)
def local_baseline(msg: Message, context: Context) -> Message:
    """After the last round: this hospital's validation accuracy of a local-only model and of the global model."""
    setup = _setup(msg, context)
    site = hospital_data(setup.cfg, context.node_config)
    config = msg.content[rk.CONFIG]
    rounds = [int(r) for r in config[rk.BASELINE_ROUNDS]]  # type: ignore[union-attr]
    starting = msg.content[rk.STARTING_WEIGHTS].to_torch_state_dict()
    scores = compare_with_local_only(
        setup.model,
        starting,
        site.train,
        site.val,
        cfg=setup.cfg,
        rounds=rounds,
        device=setup.device,
        precision=setup.precision,
        name=site.name,
    )
    log.info(
        "%s: validation accuracy %.4f local-only (%d rounds), %.4f global",
        site.name,
        scores.local_only,
        len(rounds),
        scores.global_model,
    )
    metrics = MetricRecord(
        {
            rk.NUM_EXAMPLES: scores.validation_images,
            rk.LOCAL_ONLY_ACCURACY: scores.local_only,
            rk.GLOBAL_ACCURACY: scores.global_model,
        }
    )
    return Message(RecordDict({rk.METRICS: metrics, rk.HOSPITAL: ConfigRecord({"name": site.name})}), reply_to=msg)
