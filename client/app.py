"""medsilo ClientApp: one hospital. Unpack the message, train or evaluate, reply."""

from __future__ import annotations

import logging

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.site import hospital_data
from client.training import train_local
from common import records as rk
from common.config import parse_run_config
from common.data import build_transform
from common.experiment import model_spec, preset_for
from common.inference import predict, resolve_device
from common.logs import use_flower_logging
from common.models import build_model, state_dict_to_cpu

log = logging.getLogger(__name__)

app = ClientApp()
use_flower_logging()


def _model_from(msg: Message, context: Context) -> tuple[torch.nn.Module, object, object, torch.device]:
    cfg = parse_run_config(context.run_config)
    spec = model_spec(cfg)
    model = build_model(spec.architecture, num_classes=len(spec.classes), in_channels=spec.channels)
    model.load_state_dict(msg.content[rk.ARRAYS].to_torch_state_dict(), strict=True)
    return model, cfg, hospital_data(cfg, context.node_config), resolve_device(cfg.device)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global model on this hospital's shard and reply with the new weights."""
    model, cfg, site, device = _model_from(msg, context)
    server_round = int(msg.content[rk.CONFIG][rk.SERVER_ROUND])
    result = train_local(
        model, site.train, cfg=cfg, preset=preset_for(cfg), device=device, seed=cfg.seed + 7919 * server_round
    )
    log.info(
        "%s round %d: %d images, loss %.4f, %.1fs",
        site.name,
        server_round,
        result.num_examples,
        result.loss,
        result.seconds,
    )
    metrics = MetricRecord(
        {
            rk.NUM_EXAMPLES: result.num_examples,
            rk.TRAIN_LOSS: result.loss,
            rk.TRAIN_ACCURACY: result.accuracy,
            rk.TRAIN_SECONDS: result.seconds,
            rk.SKIPPED_IMAGES: len(site.train.skipped),
        }
    )
    info = ConfigRecord({"name": site.name, rk.CLASS_COUNTS: site.train.class_counts()})
    content = RecordDict({rk.ARRAYS: ArrayRecord(state_dict_to_cpu(model)), rk.METRICS: metrics, rk.HOSPITAL: info})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the global model on this hospital's local test split."""
    model, cfg, site, device = _model_from(msg, context)
    if len(site.val) == 0:
        metrics = MetricRecord({rk.NUM_EXAMPLES: 0, rk.EVAL_LOSS: 0.0, rk.EVAL_ACCURACY: 0.0})
    else:
        probs, loss = predict(
            model, site.val, build_transform(preset_for(cfg), train=False), batch_size=cfg.batch_size, device=device
        )
        accuracy = float((probs.argmax(1) == site.val.labels.numpy()).mean())
        metrics = MetricRecord({rk.NUM_EXAMPLES: len(site.val), rk.EVAL_LOSS: loss, rk.EVAL_ACCURACY: accuracy})
    content = RecordDict({rk.METRICS: metrics, rk.HOSPITAL: ConfigRecord({"name": site.name})})
    return Message(content=content, reply_to=msg)
