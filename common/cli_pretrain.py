"""``medsilo pretrain``: train a starting model centrally on freely usable images (:mod:`common.pretrain`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from common.architectures import ARCHITECTURES
from common.cli_errors import one_line_errors
from common.presets import PRESETS

__all__ = ["pretrain"]


def pretrain(
    data: Annotated[
        Path, typer.Option(help="data root of images the consortium may use freely: ROOT/train/<class>/*, or an .npz")
    ],
    out: Annotated[Path, typer.Option(help="folder for the model directory (model.safetensors + model.json)")],
    model: Annotated[str, typer.Option(help=f"architecture: {', '.join(ARCHITECTURES)}")] = "resnet18",
    dataset: Annotated[
        str, typer.Option(help=f"preset for channels, normalisation and augmentation: {', '.join(PRESETS)}")
    ] = "brain-mri",
    classes: Annotated[
        str,
        typer.Option(
            help="comma-separated class list ('': the preset's if ROOT/train's class folders are all among them, "
            "else those folders, sorted)"
        ),
    ] = "",
    image_size: Annotated[int, typer.Option(min=32, max=1024, help="training size in pixels (square)")] = 96,
    epochs: Annotated[int, typer.Option(min=1, max=10_000, help="passes over ROOT/train")] = 10,
    batch_size: Annotated[int, typer.Option(min=1, max=4096)] = 32,
    learning_rate: Annotated[float, typer.Option(help="peak of the cosine schedule")] = 1e-3,
    optimizer: Annotated[str, typer.Option(help="sgd, adam or adamw")] = "adam",
    weight_decay: Annotated[float, typer.Option(min=0.0)] = 0.0,
    warmup_epochs: Annotated[int, typer.Option(min=0, help="epochs of linear learning-rate warm-up")] = 1,
    norm_layer: Annotated[
        str, typer.Option(help="batch, or group: the GroupNorm variant a DP run builds, so every tensor carries over")
    ] = "batch",
    seed: Annotated[int, typer.Option(min=0, help="seeds the initial weights, shuffling and augmentation")] = 42,
    pretrained_weights: Annotated[
        str,
        typer.Option(
            help="start from these weights: a model directory (another pretraining's), a weights file, or imagenet "
            "('': fresh); a source of other classes leaves the class outputs fresh"
        ),
    ] = "",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast where native), fp32, bf16 or fp16")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="write into a non-empty --out, replacing its model files")] = False,
) -> None:
    """Train a starting model centrally, without DP, for ``pretrained-weights``.

    Prints one line per epoch and writes a model directory whose ``model.json`` records what it
    was pretrained on (``pretrained_on``); a run's report names it.
    """
    from common import pretrain as pretraining
    from common.config import parse_run_config
    from common.experiment import preset_for
    from common.inference import resolve_device

    console = Console(soft_wrap=True, highlight=False)
    values = {
        "model": model,
        "dataset": dataset,
        "classes": classes,
        "image-size": image_size,
        "num-server-rounds": epochs,
        "batch-size": batch_size,
        "learning-rate": learning_rate,
        "optimizer": optimizer,
        "weight-decay": weight_decay,
        "lr-warmup-rounds": warmup_epochs,
        "lr-schedule": "cosine",
        "loss": "cross-entropy",
        "norm-layer": norm_layer,
        "seed": seed,
        "pretrained-weights": pretrained_weights,
        "device": device,
        "precision": precision,
    }
    with one_line_errors():
        cfg = parse_run_config(values, source="medsilo pretrain")
        if not classes:
            found = ",".join(pretraining.pretrain_classes(data, preset_for(cfg)))
            cfg = parse_run_config({**values, "classes": found}, source="medsilo pretrain")
        written = pretraining.pretrain(
            data,
            out,
            cfg=cfg,
            device=resolve_device(device),
            overwrite=overwrite,
            on_epoch=lambda result: console.print(result.line()),
        )
    console.print(
        f"wrote {written}: {cfg.model} pretrained on {data.resolve().name} ({len(cfg.class_names)} classes, "
        f'{epochs} epochs at {image_size} px); start a run from it with pretrained-weights = "{written}"'
    )
