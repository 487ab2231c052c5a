"""A hospital's data set-up: fixed label indices, natural splits, and clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from flwr.app import ConfigRecord

from client import site
from client.site import central_test_set, hospital_data, node_identity, state_dir
from common.config import ConfigError, parse_run_config
from common.data.partition import partition_indices
from common.data.synth import write_synthetic_tree

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def _natural_root(tmp_path: Path) -> Path:
    """``ROOT/train/<hospital>/<class>``: hospital 'b' has no glioma images at all."""
    source = write_synthetic_tree(
        tmp_path / "src", modality="brain-mri", train_per_class=6, test_per_class=2, size=32, seed=1
    )
    root = tmp_path / "natural"
    for hospital in ("a", "b"):
        for cls in CLASSES:
            if hospital == "b" and cls == "glioma":
                continue
            shutil.copytree(source / "train" / cls, root / "train" / hospital / cls)
    shutil.copytree(source / "test", root / "test")
    return root


def test_a_hospital_missing_a_class_keeps_the_shared_label_indices(tmp_path: Path) -> None:
    root = _natural_root(tmp_path)
    cfg = parse_run_config(
        {"partitioner": "natural", "data-root": str(root), "image-size": 32, "local-val-fraction": 0.0}
    )
    site = hospital_data(cfg, {"partition-id": 1, "num-partitions": 2})
    assert site.name == "b"
    assert site.train.classes == CLASSES
    assert site.train.class_counts() == [0, 6, 6, 6]
    for path, label in zip(site.train.paths, site.train.labels.tolist(), strict=True):
        assert Path(path).parts[1] == CLASSES[label]


def test_natural_split_needs_one_folder_per_hospital(tmp_path: Path) -> None:
    root = _natural_root(tmp_path)
    cfg = parse_run_config({"partitioner": "natural", "data-root": str(root), "image-size": 32})
    with pytest.raises(ValueError, match="found 2 hospital folder"):
        hospital_data(cfg, {"partition-id": 0, "num-partitions": 3})


def test_dirichlet_hospitals_partition_the_training_set(tmp_path: Path) -> None:
    root = write_synthetic_tree(
        tmp_path / "d", modality="brain-mri", train_per_class=10, test_per_class=2, size=32, seed=2
    )
    cfg = parse_run_config({"data-root": str(root), "image-size": 32, "dirichlet-alpha": 0.3})
    sites = [hospital_data(cfg, {"partition-id": i, "num-partitions": 3}) for i in range(3)]
    paths = [p for s in sites for p in (*s.train.paths, *s.val.paths)]
    assert len(paths) == len(set(paths)) == 40
    assert all(len(s.val) >= 1 for s in sites)


def test_a_process_splits_the_set_once_for_all_its_hospitals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Serving hospital after hospital must not re-split the whole set per message (scale: issue 16)."""
    root = write_synthetic_tree(tmp_path / "d", modality="brain-mri", train_per_class=10, test_per_class=2, size=32)
    cfg = parse_run_config({"data-root": str(root), "image-size": 32, "partitioner": "iid"})
    calls = []
    monkeypatch.setattr(site, "partition_indices", lambda *a, **k: calls.append(1) or real(*a, **k))
    real = partition_indices
    sizes = [len(hospital_data(cfg, {"partition-id": i, "num-partitions": 20}).train) for i in (0, 7, 19, 7, 0)]
    assert len(calls) == 1 and all(n >= 1 for n in sizes)


@pytest.mark.parametrize(
    "node_config", [{}, {"partition-id": 3, "num-partitions": 2}, {"partition-id": "x", "num-partitions": 2}]
)
def test_bad_node_config_is_one_clear_error(tmp_path: Path, node_config: dict[str, object]) -> None:
    cfg = parse_run_config({"data-root": str(tmp_path)})
    with pytest.raises(ValueError, match="node config: .*'partition-id'"):
        hospital_data(cfg, node_config)


def test_missing_data_root_names_the_path(tmp_path: Path) -> None:
    cfg = parse_run_config({"data-root": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match="nowhere.*does not exist"):
        hospital_data(cfg, {"partition-id": 0, "num-partitions": 2})


def test_a_deployed_hospital_reads_only_its_own_folder(tmp_path: Path) -> None:
    root = write_synthetic_tree(tmp_path / "a", modality="brain-mri", train_per_class=5, test_per_class=2, size=32)
    other = write_synthetic_tree(tmp_path / "b", modality="brain-mri", train_per_class=9, test_per_class=2, size=32)
    cfg = parse_run_config({"data-root": str(other), "image-size": 32, "local-val-fraction": 0.2})
    node = {"role": "hospital", "data-path": str(root), "hospital-name": "st-mary"}
    site = hospital_data(cfg, node)
    assert site.name == "st-mary"
    assert len(site.train) + len(site.val) == 20  # its own train/ only: not the run's data-root, not test/
    assert all(p.startswith("train/") for p in (*site.train.paths, *site.val.paths))
    flat = {"role": "hospital", "data-path": str(root / "train")}  # DATA/<class>/* works too
    assert hospital_data(cfg, flat).name == "train"


def test_the_deployed_evaluator_holds_the_central_test_set(tmp_path: Path) -> None:
    root = write_synthetic_tree(tmp_path / "e", modality="brain-mri", train_per_class=3, test_per_class=4, size=32)
    cfg = parse_run_config({"data-root": str(tmp_path / "nowhere"), "image-size": 32, "he-enabled": True})
    evaluator = {"role": "evaluator", "data-path": str(root)}
    assert node_identity(cfg, evaluator).name == "evaluator"
    assert len(central_test_set(cfg, evaluator)) == 16
    with pytest.raises(ValueError, match="evaluator node holds no training data"):
        hospital_data(cfg, evaluator)


def test_a_deployed_hospital_without_images_is_one_clear_error(tmp_path: Path) -> None:
    cfg = parse_run_config({"image-size": 32})
    with pytest.raises(ValueError, match="'data-path' = .* holds no readable images"):
        hospital_data(cfg, {"role": "hospital", "data-path": str(tmp_path)})


def test_a_deployed_hospital_without_state_dir_never_writes_under_the_servers_run_path(tmp_path: Path) -> None:
    config = ConfigRecord({"run-dir": "/server/runs/brain-mri-1"})
    deployed = {"role": "hospital", "data-path": str(tmp_path), "hospital-name": "hospital-a"}
    with pytest.raises(ConfigError, match=r"^node config: 'state-dir' is missing; expected a folder this hospital"):
        state_dir(deployed, config, "hospital-a")
    own = state_dir({**deployed, "state-dir": str(tmp_path / "state")}, config, "hospital-a")
    assert own == tmp_path / "state" / "brain-mri-1"
    simulated = {"partition-id": 0, "num-partitions": 4}
    assert state_dir(simulated, config, "hospital-0") == Path("/server/runs/brain-mri-1/state/hospital-0")
