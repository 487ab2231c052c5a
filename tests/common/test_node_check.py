"""``medsilo node check``: a SuperNode's node config, checked before it starts, one line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from old_codec import codec1_copy
from typer.testing import CliRunner

from common.cli import app
from common.data.synth import write_synthetic_tree
from common.he.keys import create_key_pair

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    """A hospital's data folder (3 images per class), its secret key (0600) and a state folder."""
    data = write_synthetic_tree(
        tmp_path / "hospital-a", modality="brain-mri", train_per_class=3, test_per_class=0, size=32, seed=1
    )
    create_key_pair(tmp_path / "keys")
    (tmp_path / "keys" / "secret.ctx").chmod(0o600)
    return {"data": data, "secret": tmp_path / "keys" / "secret.ctx", "state": tmp_path / "state"}


def _check(config: str) -> object:
    return CliRunner().invoke(app, ["node", "check", "--node-config", config])


def _config(node: dict[str, Path], **changes: str) -> str:
    values = {
        "role": "hospital",
        "data-path": str(node["data"]),
        "he-secret-context": str(node["secret"]),
        "state-dir": str(node["state"]),
        "hospital-name": "hospital-a",
        **changes,
    }
    return " ".join(f"{k}='{v}'" for k, v in values.items() if v)


def _one_line_error(result: object) -> str:
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, lines  # type: ignore[attr-defined]
    return lines[0]


def test_a_good_node_config_prints_what_the_node_holds(node: dict[str, Path]) -> None:
    result = _check(_config(node))
    assert result.exit_code == 0, result.output
    files = {c: len(list((node["data"] / "train" / c).iterdir())) for c in CLASSES}  # counted independently
    assert files == dict.fromkeys(CLASSES, 3)
    assert "node config: ok (hospital 'hospital-a')" in result.output
    assert f"12 images ({', '.join(f'{c} 3' for c in CLASSES)}); 0 unreadable" in result.output


def test_a_typo_in_a_key_is_one_line(node: dict[str, Path]) -> None:
    config = _config(node, **{"data-path": ""}) + f" data-pth='{node['data']}'"
    assert "'data-pth'" in _one_line_error(_check(config))


def test_a_missing_data_folder_is_one_line(node: dict[str, Path], tmp_path: Path) -> None:
    line = _one_line_error(_check(_config(node, **{"data-path": str(tmp_path / "nowhere")})))
    assert "'data-path'" in line and "nowhere" in line and "is not a folder" in line


def test_an_empty_class_folder_is_one_line(node: dict[str, Path]) -> None:
    for image in (node["data"] / "train" / "meningioma").iterdir():
        image.unlink()
    line = _one_line_error(_check(_config(node)))
    assert "meningioma" in line and "holds no readable image" in line


def test_a_class_this_node_does_not_have_is_fine(node: dict[str, Path]) -> None:
    for image in (node["data"] / "train" / "pituitary").iterdir():
        image.unlink()
    (node["data"] / "train" / "pituitary").rmdir()
    result = _check(_config(node))
    assert result.exit_code == 0 and "no folder for: pituitary" in result.output


def test_a_secret_key_others_can_read_is_one_line(node: dict[str, Path]) -> None:
    node["secret"].chmod(0o644)
    line = _one_line_error(_check(_config(node)))
    assert "readable by others (mode 0644)" in line and f"chmod 600 {node['secret']}" in line


def test_a_secret_key_of_the_old_codec_is_one_line(node: dict[str, Path]) -> None:
    old = codec1_copy(node["secret"], node["secret"].with_name("old.ctx"))
    line = _one_line_error(_check(_config(node, **{"he-secret-context": str(old)})))
    assert "uses medsilo HE codec 1; this version reads codec 2" in line and "medsilo keys init" in line


def test_an_unparsable_node_config_and_a_missing_role_are_one_line(node: dict[str, Path]) -> None:
    assert "does not parse" in _one_line_error(_check("role=hospital"))
    line = _one_line_error(_check(f"data-path='{node['data']}'"))
    assert "'role'" in line and "missing" in line


def test_a_hospital_without_a_state_folder_is_one_line(node: dict[str, Path]) -> None:
    line = _one_line_error(_check(_config(node, **{"state-dir": ""})))
    assert line == "error: node config: 'state-dir' is missing; expected a folder this hospital may write for its " \
        "optimizer state (optimizer-state = 'keep', the default), its global-step guard (update-norm-limit) and its " \
        "DP ledgers: it never writes under another party's path"
    evaluator = _check(_config(node, role="evaluator", **{"state-dir": "", "hospital-name": ""}))
    assert "state-dir" not in evaluator.output  # the evaluator keeps no training state
