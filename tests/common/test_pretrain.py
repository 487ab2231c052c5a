"""``medsilo pretrain``: its model directory loads through ``pretrained-weights``, and the report names its data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from common.cli import app
from common.config import parse_run_config
from common.data.synth import write_synthetic_tree
from common.experiment import initial_model, saved_spec
from common.models import load_model_dir, save_model_dir
from common.presets import get_preset
from common.pretrain import pretrain_classes
from common.report import build_report
from common.report.summary import pretraining_text
from common.run_files import write_json
from common.tasks import evaluation_report

CLASSES = get_preset("brain-mri").classes
TINY = ["--model", "cnn3", "--image-size", "32", "--batch-size", "8"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["pretrain", *args])


def _one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Freely usable images: 6 synthetic brain MRIs per class to train on and 2 to test, in a root named public-mri."""
    root = tmp_path_factory.mktemp("data") / "public-mri"
    return write_synthetic_tree(root, modality="brain-mri", train_per_class=6, test_per_class=2, size=32)


@pytest.fixture(scope="module")
def pretrained(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``medsilo pretrain`` for 2 epochs: its model directory and what it printed."""
    out = tmp_path_factory.mktemp("start") / "model"
    result = _invoke("--data", str(data_root), "--out", str(out), "--epochs", "2", *TINY)
    assert result.exit_code == 0, result.output
    return out, result.stdout


def test_it_prints_one_line_per_epoch_and_records_what_it_trained_on(pretrained) -> None:
    out, printed = pretrained
    lines = printed.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["epoch 1/2", "epoch 2/2"]
    assert re.fullmatch(r"epoch 1/2: loss \d+\.\d{4}, accuracy \d\.\d{4}, lr \S+, \d+\.\d s", lines[0])
    assert lines[2].startswith(f"wrote {out}: cnn3 pretrained on public-mri (4 classes, 2 epochs at 32 px)")
    record = json.loads((out / "model.json").read_text())["pretrained_on"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", record.pop("date"))
    assert record == {"data": "public-mri", "classes": list(CLASSES), "images": 24, "epochs": 2, "image_size": 32,
                      "started_from": ""}  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["feature_stats.safetensors", "model.json", "model.safetensors"]


def test_its_model_loads_through_pretrained_weights_and_the_report_names_its_data(pretrained, tmp_path) -> None:
    out, _ = pretrained
    trained, spec = load_model_dir(out)
    cfg = parse_run_config({"model": "cnn3", "image-size": 32, "pretrained-weights": str(out)})
    start = initial_model(cfg).state_dict()
    assert all(np.array_equal(start[k].numpy(), v.numpy()) for k, v in trained.state_dict().items())
    run_spec = saved_spec(cfg)
    assert run_spec.pretrained_on == spec.pretrained_on and run_spec.pretrained_on is not None
    run = tmp_path / "run"  # what a finished run leaves, its model saved with the server's spec
    run.mkdir()
    write_json(run / "config.json", cfg.to_run_config())
    probs = np.full((4, 4), 0.1) + 0.6 * np.eye(4)
    write_json(run / "report.json", evaluation_report(np.arange(4), probs, CLASSES, loss=0.5))
    save_model_dir(run / "model", trained, run_spec)
    build_report(run, title="medsilo central evaluation")
    expected = (
        f"- **starting weights**: {out}, pretrained on public-mri (24 images; 4 classes: {', '.join(CLASSES)}; "
        f"2 epochs; 32 px; {run_spec.pretrained_on.date})"
    )
    assert expected in (run / "report.md").read_text().splitlines()
    assert "pretrained on public-mri (24 images;" in (run / "report.html").read_text()


def test_evaluate_names_what_the_model_was_pretrained_on(pretrained, data_root, tmp_path) -> None:
    out, _ = pretrained
    args = ["evaluate", "--model", str(out), "--data", str(data_root), "--out", str(tmp_path / "eval")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "eval" / "report.md").read_text().splitlines()
    assert any(line.startswith("- **pretrained on**: public-mri (24 images; 4 classes: ") for line in lines)


def test_a_non_empty_out_is_refused_unless_overwrite(pretrained, data_root) -> None:
    out, _ = pretrained
    before = (out / "model.safetensors").read_bytes()
    line = _one_line_error(_invoke("--data", str(data_root), "--out", str(out), *TINY))
    assert line == f"error: --out '{out}' is not empty; expected a new or empty folder, or --overwrite"
    assert (out / "model.safetensors").read_bytes() == before
    result = _invoke("--data", str(data_root), "--out", str(out), "--overwrite", "--epochs", "1", "--seed", "3", *TINY)
    assert result.exit_code == 0, result.output
    assert load_model_dir(out)[1].pretrained_on.epochs == 1  # type: ignore[union-attr]


def test_group_norm_pretraining_carries_every_tensor_into_a_dp_run(data_root, tmp_path) -> None:
    out = tmp_path / "group"
    result = _invoke("--data", str(data_root), "--out", str(out), "--epochs", "1", "--norm-layer", "group", *TINY)
    assert result.exit_code == 0, result.output
    trained, spec = load_model_dir(out)
    assert spec.dp_compatible
    cfg = parse_run_config({"model": "cnn3", "image-size": 32, "dp-enabled": True, "pretrained-weights": str(out)})
    start = initial_model(cfg).state_dict()
    assert start.keys() == trained.state_dict().keys()
    assert all(np.array_equal(start[k].numpy(), v.numpy()) for k, v in trained.state_dict().items())


def test_a_diverged_training_writes_nothing(data_root, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("common.pretrain.task_loss", lambda logits, y: logits.sum() * float("nan"))
    out = tmp_path / "diverged"
    line = _one_line_error(_invoke("--data", str(data_root), "--out", str(out), "--epochs", "1", *TINY))
    assert line == "error: training diverged in epoch 1: loss is nan; expected a smaller --learning-rate"
    assert not out.exists()


def _tree(root: Path, classes: list[str], *, readable: bool = True) -> Path:
    for name in classes:
        (root / "train" / name).mkdir(parents=True)
        if readable:
            Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / "train" / name / "a.png")
        else:
            (root / "train" / name / "a.png").write_bytes(b"not a png")
    return root


BAD_INPUT = {
    "no-train": r"--data '.*' has no train/ folder; expected ROOT/train/<class>/<images>",
    "one-class": r".*train holds 1 class folder\(s\); expected at least two, one per class",
    "unreadable": r"--data '.*' holds no readable training image of the classes cats, dogs",
    "bad-model": r"medsilo pretrain: 'model' = 'resnet99' is invalid; expected one of 'cnn3', .*",
    "bad-classes": r"medsilo pretrain: 'classes' = 'cats' is invalid; expected at least two class names",
    "out-is-a-file": r"--out '.*' is a file; expected a folder for the model directory",
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_gives_one_line(tmp_path, case) -> None:
    root, out, extra = tmp_path / "root", tmp_path / "out", list(TINY)
    if case == "one-class":
        _tree(root, ["cats"])
    elif case == "unreadable":
        _tree(root, ["cats", "dogs"], readable=False)
    elif case != "no-train":
        _tree(root, ["cats", "dogs"])
    if case == "bad-model":
        extra[1] = "resnet99"
    if case == "bad-classes":
        extra += ["--classes", "cats"]
    if case == "out-is-a-file":
        out.write_text("a file")
    line = _one_line_error(_invoke("--data", str(root), "--out", str(out), *extra))
    assert re.fullmatch("error: " + BAD_INPUT[case], line), line


def test_the_classes_are_the_presets_when_the_folders_are_among_them_else_the_folders(tmp_path) -> None:
    preset = get_preset("brain-mri")
    assert pretrain_classes(_tree(tmp_path / "a", ["pituitary", "glioma"]), preset) == preset.classes
    assert pretrain_classes(_tree(tmp_path / "b", ["tumour", "clear"]), preset) == ("clear", "tumour")
    assert pretrain_classes(tmp_path / "c.npz", preset) == preset.classes


def test_pretraining_can_start_from_another_pretraining_and_records_it(pretrained, tmp_path) -> None:
    first, _ = pretrained
    other = write_synthetic_tree(tmp_path / "public-xray", modality="chest-xray", train_per_class=6,
                                 test_per_class=2, size=32)  # fmt: skip
    out = tmp_path / "chained"
    result = _invoke("--data", str(other), "--out", str(out), "--dataset", "chest-xray", "--epochs", "1",
                     "--learning-rate", "1e-12", "--pretrained-weights", str(first), *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    trained, spec = load_model_dir(out)
    source, _ = load_model_dir(first)
    fresh = initial_model(parse_run_config({"model": "cnn3", "image-size": 32, "dataset": "chest-xray", "seed": 42}))
    body = [k for k, _ in source.named_parameters() if not k.startswith("classifier")]
    for name in body:  # a rate of 1e-12 leaves the first pretraining's weights as they were (not BatchNorm's means)
        np.testing.assert_allclose(trained.state_dict()[name].numpy(), source.state_dict()[name].numpy(), atol=1e-6)
    assert any(not np.allclose(fresh.state_dict()[k].numpy(), source.state_dict()[k].numpy()) for k in body)
    assert trained.state_dict()["classifier.weight"].shape[0] == 2  # NORMAL, PNEUMONIA: a fresh head
    assert spec.pretrained_on is not None and spec.pretrained_on.data == "public-xray"
    assert spec.pretrained_on.started_from.startswith("public-mri (24 images; 4 classes: ")
    summary = pretraining_text(json.loads((out / "model.json").read_text())["pretrained_on"])
    assert summary.startswith("public-xray (12 images; 2 classes: NORMAL, PNEUMONIA; 1 epochs; 32 px; ")
    assert "; after public-mri (24 images; 4 classes: " in summary


def test_a_missing_starting_model_for_pretraining_is_one_line(data_root, tmp_path) -> None:
    result = _invoke("--data", str(data_root), "--out", str(tmp_path / "m"), "--pretrained-weights",
                     str(tmp_path / "nowhere"), *TINY)  # fmt: skip
    assert "nowhere" in _one_line_error(result)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())
