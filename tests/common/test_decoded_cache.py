"""Tests for the decoded-image cache: held once in memory under the bound, decoded per read above it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from client.training import train_local
from common.config import parse_run_config
from common.data.images import DecodedOnRead, TensorImageDataset, load_folder, load_split
from common.data.synth import write_synthetic_tree
from common.data.transforms import build_transform
from common.experiment import initial_model, load_run_split, preset_for
from common.presets import PRESETS

MRI = PRESETS["brain-mri"]
SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "brain-mri"


def test_the_cache_equals_decoding_per_epoch_pixel_for_pixel_on_the_shipped_sample() -> None:
    kwargs = {"classes": MRI.classes, "channels": 1, "size": 64}
    cached = load_split(SAMPLE, "test", **kwargs)
    per_epoch = load_split(SAMPLE, "test", cache_mb=0, **kwargs)
    assert isinstance(cached.images, torch.Tensor) and isinstance(per_epoch.images, DecodedOnRead)
    assert len(cached) == len(per_epoch) == 240 and per_epoch.images.shape == tuple(cached.images.shape)
    assert cached.paths == per_epoch.paths and torch.equal(cached.labels, per_epoch.labels)
    for i in range(len(cached)):
        assert torch.equal(cached.images[i], per_epoch.images[i]), cached.paths[i]
    evaluation = build_transform(MRI, train=False)  # before augmentation: what the model sees at evaluation
    first, second = TensorImageDataset(cached, evaluation), TensorImageDataset(per_epoch, evaluation)
    for i in (0, 117, 239):
        assert torch.equal(first[i][0], second[i][0]) and first[i][1] == second[i][1]


def test_a_subset_of_a_per_read_set_decodes_the_same_images(tmp_path: Path) -> None:
    root = write_synthetic_tree(tmp_path / "root", modality="brain-mri", train_per_class=3, test_per_class=1, size=32)
    cached = load_split(root, "train", classes=MRI.classes, channels=1, size=32)
    per_read = load_split(root, "train", classes=MRI.classes, channels=1, size=32, cache_mb=0)
    picked = [7, 0, 11, 3]
    sub = per_read.subset(picked)
    assert isinstance(sub.images, DecodedOnRead) and len(sub) == 4
    assert sub.paths == tuple(cached.paths[i] for i in picked)
    for j, i in enumerate(picked):
        assert torch.equal(sub.images[j], cached.images[i])


def test_unreadable_files_are_skipped_and_counted_the_same_in_both_modes(tmp_path: Path) -> None:
    root = write_synthetic_tree(tmp_path / "root", modality="brain-mri", train_per_class=2, test_per_class=1, size=32)
    (root / "train" / "glioma" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "train" / "notumor" / "notes.txt").write_text("not an image")
    kwargs = {"classes": MRI.classes, "channels": 1, "size": 32}
    cached = load_split(root, "train", **kwargs)
    per_read = load_split(root, "train", cache_mb=0, **kwargs)
    assert len(cached) == len(per_read) == 8
    assert sorted(cached.skipped) == sorted(per_read.skipped)
    assert {path for path, _ in cached.skipped} == {"train/glioma/truncated.png", "train/notumor/notes.txt"}


def test_a_set_over_the_bound_falls_back_with_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_synthetic_tree(tmp_path / "root", modality="brain-mri", train_per_class=2, test_per_class=1, size=32)
    with caplog.at_level(logging.INFO, logger="common.data.images"):
        fits = load_folder(root / "train", classes=MRI.classes, channels=1, size=32, cache_mb=1)
        assert not caplog.records
        over = load_folder(root / "train", classes=MRI.classes, channels=1, size=32, cache_mb=0)
    assert isinstance(fits.images, torch.Tensor) and isinstance(over.images, DecodedOnRead)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "8 images at 32 px need 0 MiB, over decoded-cache-mb = 0: decoding them again every epoch" in lines[0]


def test_a_run_trains_on_a_set_decoded_per_epoch(tmp_path: Path) -> None:
    root = write_synthetic_tree(tmp_path / "root", modality="brain-mri", train_per_class=4, test_per_class=1, size=32)
    keys = {"model": "cnn3", "image-size": 32, "batch-size": 8, "local-steps": 2, "data-root": str(root), "seed": 3}
    cfg = parse_run_config({**keys, "decoded-cache-mb": 0})
    images = load_run_split(cfg, root, "train")
    assert isinstance(images.images, DecodedOnRead)
    cpu = torch.device("cpu")
    result = train_local(initial_model(cfg), images, cfg=cfg, preset=preset_for(cfg), device=cpu, seed=1)
    cached_cfg = parse_run_config(keys)
    reference = train_local(
        initial_model(cached_cfg),
        load_run_split(cached_cfg, root, "train"),
        cfg=cached_cfg,
        preset=preset_for(cached_cfg),
        device=cpu,
        seed=1,
    )
    assert result.num_examples == reference.num_examples == 16
    assert result.loss == pytest.approx(reference.loss, rel=1e-6)  # the same pixels, the same seed
