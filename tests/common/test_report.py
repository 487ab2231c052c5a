"""The report package on a run directory written by hand, checked against scikit-learn and the parsed HTML."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from report_page import flatten, read_page
from sklearn.metrics import confusion_matrix, roc_auc_score
from typer.testing import CliRunner

from common.calibration import Calibration, write_calibration
from common.calibration_metrics import calibrated_report
from common.cli import app
from common.config import parse_run_config
from common.metrics import classification_report
from common.models import ModelSpec, build_from_spec, save_model_dir
from common.report import build_report, sections
from common.report.content import Note
from common.report.figures import row_normalised
from common.report.gradcam import select_examples
from common.report.summary import run_summary
from common.run_files import read_predictions_csv, write_json, write_predictions_csv

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
FIGURES = {
    "confusion_matrix.png",
    "roc_curves.png",
    "pr_curves.png",
    "reliability.png",
    "learning_curves.png",
    "class_distribution.png",
    "privacy_epsilon.png",
    "gradcam.png",
}


CALIBRATION = Calibration(
    temperature=(1.7,), threshold=(0.45,), positive=("glioma", "meningioma", "pituitary"), target_sensitivity=0.9,
    source="fitted on 40 validation images of 2 hospital(s)",
)  # fmt: skip


def _predictions(n: int = 36, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the first three classes only (pituitary never occurs) and noisy probabilities."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), y] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def _hospital(examples: int, counts: list[int], eps: float, acc: float) -> dict[str, Any]:
    return {
        "node_id": 7,
        "examples": examples,
        "train_loss": 1.3 - acc,
        "train_accuracy": acc,
        "class_counts": counts,
        "skipped_images": 1,
        "bytes_sent": 4_000_000,
        "encrypt_seconds": 0.4,
        "decrypt_seconds": 0.2,
        "epsilon": eps,
        "delta": 1e-5,
        "noise_multiplier": 1.1,
        "sample_rate": 0.125,
        "steps": 8,
        "max_grad_norm": 1.0,
        "eval_examples": 4,
        "eval_loss": 1.0,
        "eval_accuracy": acc,
    }


def _history() -> dict[str, Any]:
    def central(acc: float) -> dict[str, Any]:
        return {
            "accuracy": acc,
            "balanced_accuracy": acc,
            "loss": 1.5 - acc,
            "macro_f1": acc - 0.1,
            "macro_auroc": 0.6,
            "skipped_images": 2,
        }

    timings = {"train_s": 3.0, "aggregate_s": 0.1, "federated_evaluate_s": 0.5, "central_evaluate_s": 0.4}
    return {
        "started_at": "2026-01-01T10:00:00+00:00",
        "finished_at": "2026-01-01T10:01:40+00:00",
        "duration_s": 100.0,
        "resumed": [{"after_round": 1, "at": "2026-01-01T10:01:00+00:00", "stopped": "round 3: 2 of 2 hospitals ...",
                     "declined": [{"round": 3, "hospital": "hospital-0", "reason": "the global step jumped"}]}],
        "rounds": [
            {"round": 0, "central": central(0.3), "federated_train": None, "federated_evaluate": None,
             "hospitals": {}, "failures": [], "timings": {"central_evaluate_s": 0.4}},
            {"round": 1, "central": central(0.5), "federated_train": {}, "federated_evaluate": {"eval-accuracy": 0.5},
             "hospitals": {"hospital-0": _hospital(30, [20, 6, 4, 0], 1.5, 0.5),
                           "hospital-1": _hospital(24, [2, 10, 12, 0], 1.6, 0.45)},
             "failures": [], "timings": timings},
            {"round": 2, "central": central(0.6), "federated_train": {}, "federated_evaluate": {"eval-accuracy": 0.6},
             "hospitals": {"hospital-0": {**_hospital(30, [20, 6, 4, 0], 2.5, 0.6), "step_ratio": 0.84},
                           "hospital-1": {"declined": "privacy budget: 3.1 > 3.0", "step_ratio": 0.91}},
             "failures": [{"node_id": 8, "stage": "train", "reason": "declined: privacy budget"}], "timings": timings},
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished DP run: config, history, report, predictions, a cnn3 model and the test images."""
    base = tmp_path_factory.mktemp("report")
    data_root = base / "data"
    y, probs = _predictions()
    paths = [f"test/{CLASSES[label]}/img_{i:02d}.png" for i, label in enumerate(y)]
    rng = np.random.default_rng(1)
    for path in paths:
        (data_root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(data_root / path)
    run = base / "run"
    run.mkdir()
    config = {"model": "cnn3", "image-size": 32, "dp-enabled": True, "dp-target-epsilon": 3.0, "num-server-rounds": 2}
    write_json(run / "config.json", parse_run_config({**config, "data-root": str(data_root)}).to_run_config())
    write_json(run / "history.json", _history())
    report, probs = calibrated_report(y, probs, CLASSES, CALIBRATION, loss=0.9, multilabel=False)
    write_json(run / "report.json", report)
    write_predictions_csv(run / "predictions.csv", paths=paths, y_true=y.tolist(), probabilities=probs, classes=CLASSES)
    spec = ModelSpec("cnn3", tuple(CLASSES), 32, 1, (0.5,), (0.25,))
    write_calibration(save_model_dir(run / "model", build_from_spec(spec, seed=0), spec), CALIBRATION)
    build_report(run, title="medsilo central evaluation")
    return run


def _copy(run: Path, tmp_path: Path, *, drop: tuple[str, ...] = ()) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run, target)
    for name in drop:
        path = target / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return target


def test_writes_markdown_html_and_valid_pngs(run_dir: Path) -> None:
    assert (run_dir / "report.md").is_file() and (run_dir / "report.html").is_file()
    assert {p.name for p in (run_dir / "figures").iterdir()} == FIGURES
    for name in FIGURES:
        with Image.open(run_dir / "figures" / name) as img:
            img.verify()
            assert img.format == "PNG" and min(img.size) > 200
    markdown = (run_dir / "report.md").read_text()
    for name in FIGURES:
        assert f"(figures/{name})" in markdown


def test_html_is_self_contained(run_dir: Path) -> None:
    text = (run_dir / "report.html").read_text()
    page = read_page(run_dir)
    assert not re.search(r"https?://", text)
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    for tag, name, value in page.attrs:
        if name == "src":
            assert tag == "img" and value.startswith("data:image/png;base64,")
            Image.open(io.BytesIO(base64.b64decode(value.split(",", 1)[1]))).verify()
        if name == "href":
            assert value.startswith("#") and value[1:] in page.sections
        assert not value.startswith("//")
    assert sum(1 for tag, name, _ in page.attrs if name == "src") == len(FIGURES)
    assert "default-src 'none'" in text


def test_every_report_number_is_in_the_html(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    numbers = {k: v for k, v in flatten(report).items() if not isinstance(v, str | bool)}  # names, rules, flags
    expected = {k: v for k, v in numbers.items() if not k.startswith("classes.")}
    assert {"calibration.after.ece", "operating_point.sensitivity.low", "operating_point.threshold"} <= set(expected)
    page = read_page(run_dir)
    assert set(page.keyed) == set(expected)
    for key, value in expected.items():
        raw, shown = page.keyed[key]
        if value is None:
            assert raw == "null" and shown == "n/a", key
        else:
            assert float(raw) == value, key
            assert shown == (str(value) if isinstance(value, int) else f"{value:.3f}"), key
    assert report["per_class"]["pituitary"]["auroc"] is None  # the undefined case is covered


def test_roc_legend_auc_matches_sklearn(run_dir: Path) -> None:
    _, y, probs, _ = read_predictions_csv(run_dir / "predictions.csv")  # the calibrated probabilities
    alt = read_page(run_dir).alts["figure-roc_curves"]
    legend = dict(re.findall(r"(\w+) \(AUC ([0-9.]+|n/a)\)", alt))
    assert set(legend) == set(CLASSES)
    for i, name in enumerate(CLASSES[:3]):
        assert legend[name] == f"{roc_auc_score(y == i, probs[:, i]):.3f}"
    assert legend["pituitary"] == "n/a"


def test_row_normalised_confusion_matrix_matches_sklearn(run_dir: Path) -> None:
    y, probs = _predictions()
    report = json.loads((run_dir / "report.json").read_text())
    normalised = row_normalised(report["confusion_matrix"])
    reference = np.nan_to_num(confusion_matrix(y, probs.argmax(1), labels=range(4), normalize="true"))
    np.testing.assert_allclose(normalised, reference, atol=1e-12)
    np.testing.assert_allclose(normalised.sum(axis=1), [1, 1, 1, 0])  # pituitary has no true case


def test_markdown_has_privacy_table_summary_and_gradcam(run_dir: Path) -> None:
    markdown = (run_dir / "report.md").read_text()
    assert "## Privacy: epsilon spent per hospital" in markdown
    assert "| 1 | 1.500 | 1.600 |" in markdown and "| 2 | 2.500 | declined |" in markdown
    assert "- **privacy**: DP-SGD, target ε=3.0" in markdown and "hospital-0 ε=2.50" in markdown
    assert "- **duration**: 100.0 s" in markdown and "- **encryption**: HE off" in markdown
    assert "| hospital-0 | 30 | 20 | 6 | 4 | 0 | 1 |" in markdown  # class histogram with skipped files
    assert "## Grad-CAM: where the model looked" in markdown and "## Encryption" not in markdown


def test_markdown_shows_every_decline_and_the_largest_step(run_dir: Path) -> None:
    """Declines of the kept rounds and of the rounds a resume abandoned; the guard's largest ratio."""
    markdown = (run_dir / "report.md").read_text()
    section = markdown.split("## Declined rounds", 1)[1].split("\n## ", 1)[0]
    assert "| 3 (abandoned: resumed after 1) | hospital-0 | the global step jumped |" in section
    assert "| 2 | hospital-1 | privacy budget: 3.1 > 3.0 |" in section
    assert "update-norm-limit 2.5; the largest step ratio a hospital saw was 0.91." in section


def test_select_examples_picks_confident_correct_then_wrong() -> None:
    y = np.array([0, 0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.95, 0.05]])
    picked = [(e.index, e.correct) for e in select_examples(y, probs, per_class=1)]
    assert picked == [(0, True), (2, False), (3, True), (4, False)]


def test_without_history_or_config_sections_are_left_out(run_dir: Path, tmp_path: Path) -> None:
    run = _copy(run_dir, tmp_path, drop=("history.json", "config.json", "figures"))
    build_report(run, title="T", images_root=run_dir.parent / "data")
    markdown = (run / "report.md").read_text()
    assert "## Learning curves\n\n_Left out: this directory has no history.json" in markdown
    assert "Privacy" not in markdown and (run / "figures" / "gradcam.png").is_file()
    assert not (run / "figures" / "learning_curves.png").exists()
    assert "- **run settings**: unknown: no config.json in this directory" in markdown


def test_encrypted_run_shows_encryption_and_how_to_decrypt(run_dir: Path, tmp_path: Path) -> None:
    run = _copy(run_dir, tmp_path, drop=("model",))
    (run / "model").mkdir()
    (run / "model" / "encrypted.json").write_text("{}")
    config = json.loads((run / "config.json").read_text())
    write_json(run / "config.json", {**config, "he-enabled": True})
    build_report(run, title="T")
    markdown = (run / "report.md").read_text()
    assert "| 1 | 2 | 8.00 | 0.40 | 0.20 | 0.10 | n/a |" in markdown
    assert f"medsilo model decrypt --model {run / 'model'}" in markdown and "--model DECRYPTED" in markdown
    assert {p.name for p in (run / "figures").iterdir()} == FIGURES - {"gradcam.png"} | {"encryption.png"}


def test_missing_images_give_a_note(run_dir: Path, tmp_path: Path) -> None:
    run = _copy(run_dir, tmp_path)
    build_report(run, title="T", images_root=tmp_path / "elsewhere")
    y, probs = _predictions()
    right = probs.argmax(1) == y
    selected = sum(min(3, (right & (y == k)).sum()) + min(3, (~right & (y == k)).sum()) for k in range(4))
    assert f"none of the {selected} selected test images was readable" in (run / "report.md").read_text()
    assert not (run / "figures" / "gradcam.png").exists()


def test_cli_compare_adds_the_privacy_utility_section(run_dir: Path, tmp_path: Path) -> None:
    other = _copy(run_dir, tmp_path, drop=("figures", "report.md", "report.html"))
    write_json(other / "config.json", {**json.loads((other / "config.json").read_text()), "dp-enabled": False})
    run = shutil.copytree(run_dir, tmp_path / "dp")
    result = CliRunner().invoke(app, ["report", str(run), "--compare", str(other), "--images", str(tmp_path / "no")])
    assert result.exit_code == 0, result.output
    markdown = (run / "report.md").read_text()
    assert "none of the" in markdown and "selected test images was readable" in markdown
    assert "## Privacy–utility trade-off" in markdown and "| copy | off | n/a | n/a |" in markdown
    assert "| dp | on | 3.0 | 2.500 |" in markdown and (run / "figures" / "privacy_utility.png").is_file()


def _one_line_error(run: Path, match: str, **kwargs: Any) -> None:
    with pytest.raises(ValueError, match=match) as err:
        build_report(run, title="T", **kwargs)
    assert "\n" not in str(err.value)


def test_bad_inputs_raise_one_line(run_dir: Path, tmp_path: Path) -> None:
    _one_line_error(tmp_path / "missing", "is not a directory")
    run = _copy(run_dir, tmp_path)
    _one_line_error(run, "is not a finished medsilo run|has no config.json", compare=[tmp_path / "missing"])
    spec = ModelSpec("cnn3", ("a", "b"), 32, 1, (0.5,), (0.25,))
    other_model = save_model_dir(tmp_path / "other-model", build_from_spec(spec), spec)
    _one_line_error(run, "the report's classes are", model_dir=other_model)
    _one_line_error(run, "is not a model directory", model_dir=tmp_path / "missing")
    (run / "history.json").write_text('{"rounds": 3}')
    _one_line_error(run, "has no 'rounds' list")
    (run / "history.json").write_text("[]")
    _one_line_error(run, "history.json holds a list; expected a JSON dict")
    (run / "history.json").unlink()
    (run / "config.json").write_text('"cnn3"')
    _one_line_error(run, "config.json holds a str; expected a JSON dict")
    (run / "config.json").unlink()
    (run / "predictions.csv").write_text("path,y_true,y_pred,p_a,p_b\nx.png,0,0,0.5,0.5\n")
    _one_line_error(run, "predictions.csv has the classes")
    (run / "predictions.csv").write_text("name,label\n")
    _one_line_error(run, "predictions.csv is unreadable")
    (run / "report.json").write_text('{"accuracy": 0.5}')
    _one_line_error(run, "report.json lacks classes, n, balanced_accuracy")
    (run / "report.json").write_text("{oops")
    _one_line_error(run, "report.json is not valid JSON")
    (run / "report.json").unlink()
    _one_line_error(run, "has no report.json")


def test_bad_class_counts_raise_one_line(run_dir: Path, tmp_path: Path) -> None:
    run = _copy(run_dir, tmp_path)
    history = _history()
    history["rounds"][1]["hospitals"]["hospital-0"]["class_counts"] = [1, 2]
    write_json(run / "history.json", history)
    _one_line_error(run, "class counts of hospital-0 do not have 4 entries")


def test_cli_report_rebuilds_and_bad_run_dir_exits_2(run_dir: Path, tmp_path: Path) -> None:
    run = _copy(run_dir, tmp_path, drop=("figures", "report.md", "report.html"))
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "report.html").is_file() and {p.name for p in (run / "figures").iterdir()} == FIGURES
    (run / "report.json").unlink()
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 2
    assert "error:" in result.output and "has no report.json" in result.output and "Traceback" not in result.output


def test_cli_evaluate_writes_the_same_report(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "evaluated"
    data = run_dir.parent / "data"
    result = CliRunner().invoke(
        app, ["evaluate", "--model", str(run_dir / "model"), "--data", str(data), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    figures = {p.name for p in (out / "figures").iterdir()}
    assert figures == {"confusion_matrix.png", "roc_curves.png", "pr_curves.png", "reliability.png", "gradcam.png"}
    markdown = (out / "report.md").read_text()
    assert "# medsilo evaluation" in markdown and "- **skipped files**: 0" in markdown
    assert "## Learning curves\n\n_Left out:" in markdown
    page = read_page(out)
    report = json.loads((out / "report.json").read_text())
    assert float(page.keyed["accuracy"][0]) == report["accuracy"]


def test_run_summary_shows_the_precision_setting_and_what_each_hospital_trained_in() -> None:
    history = _history()
    history["rounds"][1]["hospitals"]["hospital-0"]["precision"] = "bf16"
    history["rounds"][1]["hospitals"]["hospital-1"]["precision"] = "fp32"
    history["rounds"][2]["hospitals"]["hospital-0"]["precision"] = "bf16"
    report = classification_report(*_predictions(), CLASSES, loss=0.9)
    summary = run_summary({"precision": "auto"}, history, report)
    assert summary["precision"] == "auto: bf16 (hospital-0); fp32 (hospital-1)"
    assert run_summary({}, {"rounds": []}, report)["precision"] == "fp32 (the run predates the precision key)"


def test_run_summary_names_the_starting_weights_and_what_they_were_trained_on() -> None:
    report = classification_report(*_predictions(), CLASSES, loss=0.9)

    def starting(config: dict[str, Any], record: dict[str, Any] | None = None) -> str:
        return run_summary(config, {"rounds": []}, report, pretrained_on=record)["starting weights"]

    assert starting({"pretrained-weights": "", "seed": 7}) == "fresh (seed 7)"
    assert starting({"pretrained-weights": "weights.pt"}) == "weights.pt"
    imagenet = {"data": "ImageNet-1k (torchvision ResNet18_Weights.IMAGENET1K_V1)", "classes": [], "images": 0}
    expected = "imagenet, pretrained on ImageNet-1k (torchvision ResNet18_Weights.IMAGENET1K_V1)"
    assert starting({"pretrained-weights": "imagenet"}, imagenet) == expected
    record = {"data": "public-mri", "classes": ["a", "b"], "images": 24, "epochs": 2, "image_size": 32, "date": "d"}
    described = "m, pretrained on public-mri (24 images; 2 classes: a, b; 2 epochs; 32 px; d)"
    assert starting({"pretrained-weights": "m"}, record) == described


def test_the_declines_section_needs_a_decline_or_a_judged_step() -> None:
    quiet = {"rounds": [{"round": 1, "hospitals": {"a": {"examples": 3}}}]}
    assert not sections.has_declines_or_steps(quiet) and not sections.has_declines_or_steps(None)
    guarded = {"rounds": [{"round": 5, "hospitals": {"a": {"examples": 3, "step_ratio": 1.25}}}]}
    assert sections.has_declines_or_steps(guarded)
    section = sections.declines_section({"update-norm-limit": 3.0}, guarded)
    texts = [b.text for b in section.blocks if isinstance(b, Note)]
    assert texts == ["No hospital declined a round."]
    assert "update-norm-limit 3.0; the largest step ratio a hospital saw was 1.25." in str(section.blocks[1])
