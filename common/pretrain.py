"""``medsilo pretrain``: a starting model trained centrally, without DP, on images the consortium may use freely.

One process holds every image, so this is a plain supervised loop: the run's loss without
logit adjustment (cross-entropy; BCE for a multi-label preset), the run's learning-rate
schedule with epochs in place of rounds, and the run's precision (bf16 autocast where the
hardware has it). It writes a model directory whose ``model.json`` records what the model
was pretrained on (``pretrained_on``), and the head input's statistics on the pretraining images
(``feature_stats.safetensors``, for ``feature-standardization``); ``pretrained-weights`` accepts it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from common.config import RunConfig
from common.data import ImageSet, build_transform
from common.experiment import load_run_split, model_spec, preset_for
from common.feature_standardization import feature_statistics, write_feature_stats
from common.inference import loader
from common.models import Pretraining, build_from_spec, save_model_dir
from common.optimizers import build_optimizer, lr_factor
from common.precision import backward_step, channels_last, resolve_precision
from common.presets import DatasetPreset
from common.pretrained import load_pretrained, pretrained_on
from common.report.summary import pretraining_text
from common.tasks import AUX_LOSS_WEIGHT, hits, split_outputs, task_loss

__all__ = ["EpochResult", "pretrain", "pretrain_classes", "write_public_feature_stats"]


@dataclass(frozen=True)
class EpochResult:
    """One epoch of pretraining: mean training loss and accuracy, the last step's learning rate, its time."""

    epoch: int
    epochs: int
    loss: float
    accuracy: float
    learning_rate: float
    seconds: float

    def line(self) -> str:
        """The epoch's line, as ``medsilo pretrain`` prints it."""
        return (
            f"epoch {self.epoch}/{self.epochs}: loss {self.loss:.4f}, accuracy {self.accuracy:.4f}, "
            f"lr {self.learning_rate:.2e}, {self.seconds:.1f} s"
        )


def pretrain_classes(root: Path, preset: DatasetPreset) -> tuple[str, ...]:
    """The classes to pretrain on, when none are given.

    The preset's list (its label order) when ``ROOT/train``'s class folders are all among its
    classes, when ``ROOT`` is an ``.npz`` or the preset is multi-label; otherwise the class
    folders of ``ROOT/train``, sorted.

    Raises:
        ValueError: ``ROOT/train`` is missing or holds fewer than two class folders of its own.
    """
    if preset.multilabel or root.suffix == ".npz":
        return preset.classes
    train = root / "train"
    if not train.is_dir():
        raise ValueError(f"--data {str(root)!r} has no train/ folder; expected ROOT/train/<class>/<images>")
    folders = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if folders and set(folders) <= set(preset.classes):
        return preset.classes
    if len(folders) < 2:
        raise ValueError(f"{train} holds {len(folders)} class folder(s); expected at least two, one per class")
    return tuple(folders)


def _check_out_dir(out: Path, *, overwrite: bool) -> None:
    """Refuse to write over a file or, without ``overwrite``, into a non-empty folder."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; expected a folder for the model directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {str(out)!r} is not empty; expected a new or empty folder, or --overwrite")


def _train(
    model: nn.Module,
    images: ImageSet,
    *,
    cfg: RunConfig,
    device: torch.device,
    on_epoch: Callable[[EpochResult], None],
) -> None:
    """Train ``model`` in place for ``cfg.num_server_rounds`` epochs (the schedule's rounds)."""
    epochs = cfg.num_server_rounds
    precision = resolve_precision(cfg.precision, device)
    transform = build_transform(preset_for(cfg), train=True)
    model.to(device).train()
    with channels_last(model, enabled=precision.channels_last(cfg.image_size)):
        optimizer = build_optimizer(
            model.parameters(),
            cfg.optimizer,
            lr=cfg.learning_rate,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        scaler = precision.grad_scaler()
        layout = precision.memory_format(cfg.image_size)
        step = 0
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            batches = loader(
                images,
                transform,
                batch_size=cfg.batch_size,
                device=device,
                shuffle=True,
                drop_last=len(images) > cfg.batch_size,
                seed=cfg.seed + epoch,
            )
            seen, loss_sum, correct, lr = 0, 0.0, 0.0, cfg.learning_rate
            for x, y in batches:
                x = x.to(device, non_blocking=True, memory_format=layout)
                y = y.to(device, non_blocking=True)
                lr = cfg.learning_rate * lr_factor(cfg, step=step, steps_per_round=len(batches))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                with precision.autocast():
                    logits, aux = split_outputs(model(x))
                loss = task_loss(logits.float(), y)
                objective = loss + AUX_LOSS_WEIGHT * task_loss(aux.float(), y) if aux is not None else loss
                backward_step(objective, optimizer, scaler)
                step += 1
                seen += len(y)
                loss_sum += float(loss.detach()) * len(y)
                correct += hits(logits.detach(), y)
            mean_loss = loss_sum / max(seen, 1)
            if not math.isfinite(mean_loss):
                raise ValueError(
                    f"training diverged in epoch {epoch}: loss is {mean_loss}; expected a smaller --learning-rate"
                )
            on_epoch(EpochResult(epoch, epochs, mean_loss, correct / max(seen, 1), lr, time.perf_counter() - start))
    model.eval()


def pretrain(
    root: Path,
    out: Path,
    *,
    cfg: RunConfig,
    device: torch.device,
    overwrite: bool = False,
    on_epoch: Callable[[EpochResult], None] = lambda result: None,
) -> Path:
    """Train ``cfg``'s model on ``ROOT``'s train split and write it to ``out`` as a model directory.

    Epochs are ``cfg.num_server_rounds`` (the schedule's rounds), each a full pass over the
    images; warm-up is ``cfg.lr_warmup_rounds`` epochs. ``cfg.norm_layer = "group"`` trains the
    GroupNorm variant that a DP run builds. ``model.json``'s ``pretrained_on`` records ROOT's
    name, the classes, the image count, the epochs, the image size and the day. With
    ``cfg.pretrained_weights`` training starts from those weights (a model directory, a weights
    file or ``imagenet``; another source's class outputs start fresh), and the record says what
    they were trained on (``started_from``): public data of another modality, then of this one.

    Returns:
        ``out``.

    Raises:
        ValueError: ``out`` is a file or not empty (without ``overwrite``), no readable training
            image, or training that diverged.
    """
    _check_out_dir(out, overwrite=overwrite)
    images = load_run_split(cfg, root, "train")
    if len(images) == 0:
        raise ValueError(
            f"--data {str(root)!r} holds no readable training image of the classes {', '.join(cfg.class_names)}"
        )
    spec = model_spec(cfg)
    model = build_from_spec(spec, seed=cfg.seed)
    started_from = ""
    if cfg.pretrained_weights:
        load_pretrained(model, cfg.pretrained_weights, spec=spec)
        before = pretrained_on(cfg.pretrained_weights, architecture=cfg.model)
        started_from = pretraining_text(asdict(before)) if before else Path(cfg.pretrained_weights).name
    torch.manual_seed(cfg.seed)  # the augmentation's draws
    _train(model, images, cfg=cfg, device=device, on_epoch=on_epoch)
    record = Pretraining(
        data=root.resolve().name,
        classes=cfg.class_names,
        images=len(images),
        epochs=cfg.num_server_rounds,
        image_size=cfg.image_size,
        date=datetime.now(UTC).date().isoformat(),
        started_from=started_from,
    )
    directory = save_model_dir(out, model, replace(spec, pretrained_on=record))
    write_public_feature_stats(directory, model, images, cfg=cfg, device=device)
    return directory


def write_public_feature_stats(
    directory: Path, model: nn.Module, images: ImageSet, *, cfg: RunConfig, device: torch.device
) -> Path:
    """Write the head input's statistics on ``images`` (the pretraining set, unaugmented) into ``directory``.

    ``feature-standardization`` reads them: public statistics, so a DP run that uses them spends nothing.
    """
    model.to(device).eval()
    batches = loader(images, build_transform(preset_for(cfg), train=False), batch_size=cfg.batch_size, device=device)
    moved = ((x.to(device), y) for x, y in batches)
    mean, scale = feature_statistics(model, cfg.model, moved)
    return write_feature_stats(directory, mean, scale, images=len(images))
