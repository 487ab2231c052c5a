"""Centralised training on a whole data root, epoch by epoch, timed: what ``train_throughput.py`` compares.

One model, one process, medsilo's own ``train_local`` (the ClientApp's loop) for one epoch at a
time, the optimizer's state carried across epochs and the learning rate on the run's schedule,
then the test split scored after every epoch under the same precision. Loading (decoding) is
timed apart from the epochs. ``compile`` wraps the model in ``torch.compile`` first: its compile
time falls into the epochs it happens in.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from client.training import train_local
from common.config import RunConfig
from common.data import build_transform
from common.experiment import initial_model, load_run_split, preset_for
from common.inference import predict, resolve_device
from common.metrics import classification_report
from common.precision import resolve_precision

__all__ = ["centralised_epochs"]


def centralised_epochs(cfg: RunConfig, *, compile_model: bool = False) -> dict[str, Any]:
    """Train on ``cfg.data_root``'s ``train/`` for ``cfg.num_server_rounds`` epochs; test accuracy after each.

    Returns ``load_s`` (decoding ``train/``), ``epoch_s`` and ``test_accuracy`` per epoch,
    ``last2_mean`` (the mean test accuracy of the last 2 epochs) and the ``precision`` trained in.
    """
    start = time.perf_counter()
    train = load_run_split(cfg, cfg.data_root, "train")
    load_s = time.perf_counter() - start
    test = load_run_split(cfg, cfg.data_root, "test")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model: torch.nn.Module = initial_model(cfg)
    if compile_model:
        model = torch.compile(model)  # type: ignore[assignment]
    state, epoch_s, accuracy = None, [], []
    for epoch in range(1, cfg.num_server_rounds + 1):
        start = time.perf_counter()
        result = train_local(
            model, train, cfg=cfg, preset=preset_for(cfg), device=device, seed=cfg.seed + 7919 * epoch,
            server_round=epoch, optimizer_state=state, precision=precision,
        )
        epoch_s.append(time.perf_counter() - start)
        state = result.optimizer_state
        probs, loss = predict(model, test, build_transform(preset_for(cfg), train=False), batch_size=64,
                              device=device, precision=precision)
        accuracy.append(classification_report(test.labels.numpy(), probs, test.classes, loss=loss)["accuracy"])
        logging.info("%s%s epoch %d: %.1f s, test accuracy %.4f", precision.name, " compiled" * compile_model,
                     epoch, epoch_s[-1], accuracy[-1])
    return {
        "precision": precision.name,
        "compiled": compile_model,
        "train_images": len(train),
        "test_images": len(test),
        "load_s": round(load_s, 2),
        "epoch_s": [round(s, 2) for s in epoch_s],
        "test_accuracy": [round(a, 4) for a in accuracy],
        "last2_mean": round(statistics.fmean(accuracy[-2:]), 4),
    }


def data_root_of(path: Path) -> str:
    """``path`` as an absolute data root, checked to hold ``train/`` and ``test/``."""
    if not (path / "train").is_dir() or not (path / "test").is_dir():
        raise SystemExit(f"--data-root {str(path)!r} needs train/ and test/ class folders")
    return str(path.resolve())
