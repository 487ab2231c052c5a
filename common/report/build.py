"""Build ``report.md``, ``report.html`` and ``figures/*.png`` from what a run directory holds."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from torch import nn

from common.experiment import resolve_path
from common.he.model_dir import HEADER_FILE
from common.models import SPEC_FILE, ModelSpec
from common.privacy.utility import compare_runs
from common.report import clinical, sections
from common.report.content import Note, Section
from common.report.gradcam import TITLE as GRADCAM_TITLE
from common.report.gradcam import gradcam_section, plaintext_model
from common.report.hospital_gain import hospital_gain_section
from common.report.html import render_html
from common.report.inputs import ReportInputs, is_multilabel, read_inputs
from common.report.markdown import render_markdown
from common.report.summary import dp_enabled, he_enabled, run_summary

__all__ = ["build_report"]

log = logging.getLogger(__name__)

GRADCAM_PER_CLASS = 3


def _left_out(title: str, reason: str) -> Section:
    return Section(title, (Note(f"Left out: {reason}."),))


def _gradcam(
    inputs: ReportInputs, model: tuple[nn.Module, ModelSpec] | None, images_root: Path | None, out: Path
) -> Section:
    """The Grad-CAM grid, or why it is left out (no predictions, an encrypted model, unknown images)."""
    if inputs.predictions is None:
        return _left_out(GRADCAM_TITLE, "this directory has no predictions.csv")
    if model is None:
        model_dir = inputs.directory / "model"
        if (model_dir / HEADER_FILE).is_file():
            return _left_out(
                GRADCAM_TITLE,
                f"the run's model is encrypted. A key-holder draws the grid with 'medsilo model decrypt --model "
                f"{model_dir} --keys secret.ctx --out DECRYPTED', then 'medsilo report {inputs.directory} "
                f"--model DECRYPTED'",
            )
        if not (model_dir / SPEC_FILE).is_file():
            return _left_out(GRADCAM_TITLE, f"no model directory at {model_dir}; pass one with --model")
        model = plaintext_model(model_dir, inputs.report["classes"])
    if images_root is None:
        data_root = (inputs.config or {}).get("data-root")
        if not data_root:
            return _left_out(GRADCAM_TITLE, "the test images' folder is unknown (no config.json); pass --images")
        images_root = resolve_path(str(data_root))
    precision = str((inputs.config or {}).get("precision", "fp32"))  # runs from before the key trained in fp32
    return gradcam_section(
        *model, images_root, inputs.predictions, out, per_class=GRADCAM_PER_CLASS, precision=precision
    )


def _steps(
    inputs: ReportInputs,
    model: tuple[nn.Module, ModelSpec] | None,
    images_root: Path | None,
    comparison: list[dict[str, Any]] | None,
    out: Path,
) -> list[tuple[str, Callable[[], Section]]]:
    """What to draw, in report order, each with a progress description."""
    report, history, config = inputs.report, inputs.history, inputs.config
    rounds = history["rounds"] if history is not None else []
    classes = report["classes"]
    multilabel = is_multilabel(report)
    steps: list[tuple[str, Callable[[], Section]]] = []
    if not multilabel:  # a multi-label run has no single predicted class to tabulate
        steps.append(("confusion matrix", lambda: sections.confusion_section(report, out)))
    steps.append(("ROC and PR curves", lambda: sections.curves_section(classes, inputs.predictions, out)))
    steps.append(("calibration", lambda: clinical.calibration_section(report, inputs.predictions, out)))
    if "operating_point" in report:
        steps.append(("operating point", lambda: clinical.operating_point_section(report)))
    if history is None:
        missing = "this directory has no history.json (a medsilo evaluate output has none)"
        steps += [
            ("learning curves", lambda: _left_out("Learning curves", missing)),
            ("data", lambda: _left_out("Data", missing)),
        ]
    else:
        steps += [
            ("learning curves", lambda: sections.learning_section(rounds, out)),
            ("data", lambda: sections.data_section(rounds, classes, out)),
        ]
    if history is not None and isinstance(history.get("local_baseline"), dict):
        steps.append(("hospital gains", lambda: hospital_gain_section(history["local_baseline"])))
    if history is not None and sections.has_declines_or_steps(history):
        steps.append(("declines", lambda: sections.declines_section(config, history)))
    if dp_enabled(config, rounds):
        steps.append(("privacy", lambda: sections.privacy_section(config, rounds, out)))
    if he_enabled(config):
        steps.append(("encryption", lambda: sections.encryption_section(rounds, out)))
    if multilabel:
        why = "a multi-label run has no single predicted class per image; run 'medsilo explain' per label instead"
        steps.append(("Grad-CAM grid", lambda: _left_out(GRADCAM_TITLE, why)))
    else:
        steps.append(("Grad-CAM grid", lambda: _gradcam(inputs, model, images_root, out)))
    if comparison is not None:
        steps.append(("privacy–utility", lambda: sections.privacy_utility_section(comparison, out)))
    return steps


def build_report(
    directory: str | Path,
    *,
    title: str,
    summary: Mapping[str, str] | None = None,
    model_dir: Path | None = None,
    images_root: Path | None = None,
    compare: Sequence[Path] = (),
    progress: bool = False,
) -> Path:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` into ``directory``.

    Args:
        directory: holds ``report.json`` (required) and whatever of ``config.json``,
            ``history.json`` and ``predictions.csv`` exists; sections that need a missing
            file are left out with a one-line note.
        title: the report's heading.
        summary: run facts; default: derived from ``config.json`` and ``history.json``.
        model_dir: a plaintext model for the Grad-CAM grid; default: the run's ``model/``.
        images_root: where ``predictions.csv``'s paths live; default: the run's data root.
        compare: other run directories for the privacy–utility section.
        progress: show a rich progress bar (for the command line).

    Returns:
        The path of ``report.html``.

    Raises:
        ValueError: a missing or malformed ``report.json``, unreadable inputs, or a model
            or comparison run that does not fit.
    """
    inputs = read_inputs(directory)
    # A bad --model or comparison run fails here, before anything is drawn or replaced.
    model = plaintext_model(model_dir, inputs.report["classes"]) if model_dir is not None else None
    comparison = compare_runs([inputs.directory, *compare]) if compare else None
    out = inputs.directory / "figures"
    out.mkdir(exist_ok=True)
    for stale in out.glob("*.png"):
        stale.unlink()
    steps = _steps(inputs, model, images_root, comparison, out)
    facts = (
        dict(summary)
        if summary is not None
        else run_summary(inputs.config, inputs.history, inputs.report, pretrained_on=inputs.pretrained_on)
    )
    built: list[Section] = []
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("report", total=len(steps) + 1)
        for description, make in steps:
            bar.update(task, description=f"report: {description}")
            built.append(make())
            bar.advance(task)
        bar.update(task, description="report: writing report.md and report.html")
        markdown = render_markdown(inputs.report, title=title, summary=facts, sections=built, base=inputs.directory)
        (inputs.directory / "report.md").write_text(markdown)
        html_path = inputs.directory / "report.html"
        html_path.write_text(render_html(inputs.report, title=title, summary=facts, sections=built))
        bar.advance(task)
    log.info("report: %s (%d sections, %d figures)", html_path, len(built) + 1, len(list(out.glob("*.png"))))
    return html_path
