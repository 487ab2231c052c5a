"""The Grad-CAM grid: a few correct and a few wrong central-test images per class, heat map over each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from common.config import ConfigError
from common.explain import class_probabilities, gradcam, load_image, overlay
from common.models import ModelSpec, load_model_dir
from common.precision import Precision, resolve_precision
from common.report.content import Block, Cell, Figure, Note, Paragraph, Section, Table
from common.report.figures import new_figure, save
from common.report.inputs import Predictions

__all__ = ["Example", "gradcam_section", "plaintext_model", "resolve_image", "select_examples"]

TITLE = "Grad-CAM: where the model looked"


@dataclass(frozen=True)
class Example:
    """One test image picked for the grid: its row in ``predictions.csv`` and whether it was right."""

    index: int
    true_class: int
    correct: bool


def select_examples(y_true: np.ndarray, probabilities: np.ndarray, *, per_class: int) -> list[Example]:
    """Per true class: up to ``per_class`` correct images (most confident first), then as many wrong ones.

    Wrong images are ordered by the probability of the (wrong) predicted class, so the
    grid shows the model's most confident mistakes.
    """
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(y_true)), predicted]
    picked: list[Example] = []
    for k in range(probabilities.shape[1]):
        for correct in (True, False):
            rows = np.flatnonzero((y_true == k) & ((predicted == k) == correct))
            order = rows[np.argsort(-confidence[rows], kind="stable")][:per_class]
            picked += [Example(int(i), k, correct) for i in order]
    return picked


def resolve_image(path: str, root: Path) -> Path | None:
    """The file of a ``predictions.csv`` path: relative to the data root or to its ``test/`` folder."""
    for candidate in (root / path, root / "test" / path):
        if candidate.is_file():
            return candidate
    return None


def plaintext_model(model_dir: Path, classes: Sequence[str]) -> tuple[nn.Module, ModelSpec]:
    """Load the model for the grid and check it predicts the report's classes.

    Raises:
        ValueError: not a plaintext model directory, or other classes than the report's.
    """
    model, spec = load_model_dir(model_dir)
    if list(spec.classes) != list(classes):
        raise ValueError(f"{model_dir} predicts {list(spec.classes)}; the report's classes are {list(classes)}")
    return model, spec


@dataclass(frozen=True)
class _Explained:
    example: Example
    heat: np.ndarray
    predicted: int
    probability: float


def _precision(name: str, model: nn.Module) -> Precision:
    """The run's precision on the device the report is drawn on (an fp16 GPU run drawn on a CPU: ``auto``)."""
    device = next(model.parameters()).device
    try:
        return resolve_precision(name, device)
    except ConfigError:
        return resolve_precision("auto", device)


def _explain(
    model: nn.Module,
    spec: ModelSpec,
    examples: Sequence[Example],
    paths: Sequence[str],
    images_root: Path,
    precision: Precision,
) -> list[_Explained]:
    """Grad-CAM of the predicted class for every example whose image is found and readable."""
    explained = []
    for example in examples:
        file = resolve_image(paths[example.index], images_root)
        if file is None:
            continue
        try:
            image = load_image(file, spec)
        except ValueError:
            continue
        probs = class_probabilities(model, spec, image)
        predicted = int(probs.argmax())
        heat = overlay(image, gradcam(model, spec, image, target_class=predicted, precision=precision))
        explained.append(_Explained(example, heat, predicted, float(probs[predicted])))
    return explained


def _grid(explained: Sequence[_Explained], classes: Sequence[str], path: Path, *, per_class: int) -> Figure:
    """Rows = true class; the correct images on the left, the wrong ones on the right."""
    fig, axes = new_figure(3.4 * per_class + 0.6, 1.9 * len(classes) + 0.4, rows=len(classes), cols=2 * per_class)
    for ax in axes.ravel():
        ax.axis("off")
    used = {(k, c): 0 for k in range(len(classes)) for c in (True, False)}
    for item in explained:
        k, correct = item.example.true_class, item.example.correct
        ax = axes[k, used[(k, correct)] + (0 if correct else per_class)]
        used[(k, correct)] += 1
        ax.imshow(item.heat)
        ax.set_title(
            f"true {classes[k]}\npred {classes[item.predicted]} {item.probability:.2f}",
            fontsize=7,
            color="darkgreen" if item.predicted == k else "firebrick",
        )
    fig.suptitle(f"Grad-CAM of the predicted class: {per_class} correct (left) and {per_class} wrong (right) per class")
    alt = f"Grad-CAM heat maps over {len(explained)} test images; rows = true class, each labelled with the prediction."
    return save(fig, path, alt)


def gradcam_section(
    model: nn.Module,
    spec: ModelSpec,
    images_root: Path,
    predictions: Predictions,
    out: Path,
    *,
    per_class: int,
    precision: str = "fp32",
) -> Section:
    """Grad-CAM of the predicted class over test images, labelled true / predicted / probability.

    ``precision`` is the run's ``precision`` key: the heat maps are computed as the run evaluated.
    """
    examples = select_examples(predictions.y_true, predictions.probabilities, per_class=per_class)
    explained = _explain(model, spec, examples, predictions.paths, images_root, _precision(precision, model))
    if not explained:
        reason = f"none of the {len(examples)} selected test images was readable under {images_root}"
        return Section(TITLE, (Note(f"Left out: {reason}."),))
    classes = spec.classes
    rows = tuple(
        (
            Cell(predictions.paths[item.example.index]),
            Cell(classes[item.example.true_class]),
            Cell(classes[item.predicted]),
            Cell(f"{item.probability:.3f}"),
        )
        for item in explained
    )
    blocks: list[Block] = [
        Paragraph(
            (
                f"Up to {per_class} correctly and {per_class} wrongly classified test images per true class "
                "(the most confident ones), with the Grad-CAM heat map of the predicted class over each.",
            )
        ),
        _grid(explained, classes, out / "gradcam.png", per_class=per_class),
        Table(("image", "true", "predicted", "probability"), rows),
    ]
    missing = len(examples) - len(explained)
    if missing:
        blocks.append(Note(f"{missing} selected image(s) were not found or unreadable under {images_root}."))
    return Section(TITLE, tuple(blocks))
