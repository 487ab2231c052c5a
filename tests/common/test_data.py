"""Tests for common.data: image loading, MedMNIST npz, synth, check."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.data.check import check_data_root
from common.data.images import ImageSet, TensorImageDataset, load_folder, load_npz, load_split, resolve_test_folder
from common.data.synth import write_synthetic_tree
from common.data.transforms import build_transform
from common.presets import PRESETS

MRI = PRESETS["brain-mri"]
HISTO = PRESETS["histology"]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # flwr-datasets Dirichlet resampling notes


def _tree(
    tmp_path: Path,
    modality: str = "brain-mri",
    *,
    train: int = 2,
    test: int = 1,
    size: int = 32,
    seed: int = 0,
    name: str = "root",
) -> Path:
    return write_synthetic_tree(
        tmp_path / name, modality=modality, train_per_class=train, test_per_class=test, size=size, seed=seed
    )


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _class_of(rel_path: str) -> str:
    return Path(rel_path).parts[-2]


# ---------------------------------------------------------------- load_split / load_folder


def test_gray_preset_loads_uint8_one_channel(tmp_path):
    root = _tree(tmp_path, train=2, test=1, size=32)
    assert MRI.channels == 1
    train = load_split(root, "train", classes=MRI.classes, channels=MRI.channels, size=32)
    assert train.images.shape == (8, 1, 32, 32)
    assert train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64
    assert train.classes == MRI.classes
    assert train.skipped == ()
    assert train.class_counts() == [2, 2, 2, 2]
    test = load_split(root, "test", classes=MRI.classes, channels=1, size=40)
    assert test.images.shape == (4, 1, 40, 40)


def test_rgb_preset_loads_uint8_three_channels(tmp_path):
    root = _tree(tmp_path, "histology", train=1, test=1, size=32)
    assert HISTO.channels == 3
    train = load_split(root, "train", classes=HISTO.classes, channels=HISTO.channels, size=48)
    assert train.images.shape == (5, 3, 48, 48)
    assert train.images.dtype == torch.uint8


def test_pixels_equal_pil_decode_at_native_size(tmp_path):
    root = _tree(tmp_path, "histology", train=1, test=0, size=32)
    train = load_split(root, "train", classes=HISTO.classes, channels=3, size=32)
    for image, rel in zip(train.images, train.paths, strict=True):
        expected = np.asarray(Image.open(root / rel).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(image.numpy(), expected)


def test_labels_follow_preset_order_not_folder_listing(tmp_path):
    # histology's preset order (normal, adenoma, ...) is not the alphabetical listing
    root = _tree(tmp_path, "histology", train=2, test=0, size=32)
    assert sorted(HISTO.classes) != list(HISTO.classes)
    train = load_split(root, "train", classes=HISTO.classes, channels=3, size=32)
    for label, rel in zip(train.labels.tolist(), train.paths, strict=True):
        assert HISTO.classes[label] == _class_of(rel)
    assert train.labels[[_class_of(p) == "normal" for p in train.paths]].unique().tolist() == [0]


def test_labels_follow_a_custom_class_order(tmp_path):
    root = _tree(tmp_path, train=1, test=0)
    reversed_classes = tuple(reversed(MRI.classes))
    train = load_split(root, "train", classes=reversed_classes, channels=1, size=32)
    assert {_class_of(p): label for p, label in zip(train.paths, train.labels.tolist(), strict=True)} == {
        "pituitary": 0,
        "notumor": 1,
        "meningioma": 2,
        "glioma": 3,
    }


def test_hospital_lacking_a_class_keeps_label_indices(tmp_path):
    root = _tree(tmp_path, train=2, test=0)
    shutil.rmtree(root / "train" / "glioma")
    train = load_split(root, "train", classes=MRI.classes, channels=1, size=32)
    by_class = {_class_of(p): label for p, label in zip(train.paths, train.labels.tolist(), strict=True)}
    assert by_class == {"meningioma": 1, "notumor": 2, "pituitary": 3}
    assert train.class_counts() == [0, 2, 2, 2]


def test_unknown_class_folder_raises_naming_it(tmp_path):
    root = _tree(tmp_path, train=1, test=0)
    (root / "train" / "craniopharyngioma").mkdir()
    with pytest.raises(ValueError, match="craniopharyngioma"):
        load_split(root, "train", classes=MRI.classes, channels=1, size=32)


def test_hidden_folders_are_ignored(tmp_path):
    root = _tree(tmp_path, train=1, test=0)
    (root / "train" / ".ipynb_checkpoints").mkdir()
    assert len(load_split(root, "train", classes=MRI.classes, channels=1, size=32)) == 4


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    root = _tree(tmp_path, train=2, test=0)
    folder = root / "train" / "glioma"
    png = sorted(folder.glob("*.png"))[0].read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / "whole.jpg", quality=90)
    jpg = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "noise.png").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    (folder / "notes.txt").write_text("not an image")
    train = load_split(root, "train", classes=MRI.classes, channels=1, size=32)
    skipped = {Path(p).name for p, _ in train.skipped}
    assert skipped == {"truncated.png", "truncated.jpg", "empty.jpg", "noise.png", "notes.txt"}
    assert all(reason for _, reason in train.skipped)
    # the readable images all load: 2 synthetic per class + whole.jpg
    assert len(train) == 9 and train.images.shape == (9, 1, 32, 32)
    assert train.class_counts() == [3, 2, 2, 2]
    assert not any(Path(p).name in skipped for p in train.paths)


def _png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims ``width x height`` but holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


def test_oversized_image_header_is_skipped_not_fatal(tmp_path):
    root = _tree(tmp_path, train=1, test=0)
    (root / "train" / "glioma" / "bomb.png").write_bytes(_png_header_only(20000, 20000))
    train = load_split(root, "train", classes=MRI.classes, channels=1, size=32)
    assert [Path(p).name for p, _ in train.skipped] == ["bomb.png"]
    assert len(train) == 4


def test_sixteen_bit_png_keeps_its_dynamic_range(tmp_path):
    folder = tmp_path / "root" / "train" / "glioma"
    folder.mkdir(parents=True)
    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(gradient).save(folder / "sixteen.png")
    with Image.open(folder / "sixteen.png") as img:
        assert img.mode.startswith("I")  # really stored as 16-bit
    image = load_split(tmp_path / "root", "train", classes=MRI.classes, channels=1, size=64).images[0, 0]
    expected = gradient.astype(np.float64) / 257.0  # the same full range, linearly in 8 bits
    assert np.abs(image.numpy().astype(np.float64) - expected).max() <= 2.0


def test_split_with_only_unreadable_files_gives_empty_set(tmp_path):
    folder = tmp_path / "root" / "train" / "glioma"
    folder.mkdir(parents=True)
    (folder / "bad.png").write_bytes(b"\x89PNG")
    train = load_split(tmp_path / "root", "train", classes=MRI.classes, channels=1, size=32)
    assert train.images.shape == (0, 1, 32, 32) and len(train.skipped) == 1


def test_load_split_missing_root_raises(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_split(tmp_path / "nowhere", "train", classes=MRI.classes, channels=1, size=32)


def test_load_split_missing_split_folder_raises(tmp_path):
    (tmp_path / "root" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="does not exist"):
        load_split(tmp_path / "root", "test", classes=MRI.classes, channels=1, size=32)


def test_load_folder_paths_relative_to_root(tmp_path):
    root = _tree(tmp_path, train=1, test=1)
    test = load_folder(root / "test", classes=MRI.classes, channels=1, size=32, root=root)
    assert all(p.startswith("test/") for p in test.paths)
    assert all((root / p).is_file() for p in test.paths)


def test_resolve_test_folder(tmp_path):
    root = _tree(tmp_path, train=1, test=1)
    assert resolve_test_folder(root) == root / "test"
    assert resolve_test_folder(root / "train") == root / "train"


def test_image_set_subset_and_dataset(tmp_path):
    root = _tree(tmp_path, train=1, test=0)
    train = load_split(root, "train", classes=MRI.classes, channels=1, size=32)
    sub = train.subset([3, 0])
    assert sub.paths == (train.paths[3], train.paths[0])
    assert torch.equal(sub.images[0], train.images[3]) and sub.labels.tolist() == [3, 0]
    dataset = TensorImageDataset(sub, build_transform(MRI, train=False))
    x, label = dataset[1]
    assert len(dataset) == 2 and label == 0 and type(label) is int
    assert x.dtype == torch.float32 and x.shape == (1, 32, 32)


# ---------------------------------------------------------------- MedMNIST npz


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _gray_npz(tmp_path: Path, n: int = 6) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 4).reshape(n, 1).astype(np.uint8)
    return _npz(tmp_path / "mri.npz", train_images=images, train_labels=labels), images, labels


def test_npz_gray_shapes_labels_and_pixels(tmp_path):
    path, images, labels = _gray_npz(tmp_path)
    got = load_split(path, "train", classes=MRI.classes, channels=1, size=28)
    assert got.images.shape == (6, 1, 28, 28) and got.images.dtype == torch.uint8
    assert np.array_equal(got.images[:, 0].numpy(), images)  # no resize: identical pixels
    assert got.labels.dtype == torch.int64 and got.labels.tolist() == labels.reshape(-1).tolist()
    assert got.classes == MRI.classes and len(set(got.paths)) == 6


def test_npz_rgb_keeps_channel_order(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (5, 28, 28, 3), dtype=np.uint8)
    path = _npz(tmp_path / "histo.npz", train_images=images, train_labels=np.arange(5).reshape(5, 1))
    got = load_npz(path, "train", classes=HISTO.classes, channels=3, size=28)
    assert got.images.shape == (5, 3, 28, 28)
    assert np.array_equal(got.images.numpy(), images.transpose(0, 3, 1, 2))
    assert got.labels.tolist() == [0, 1, 2, 3, 4]


def test_npz_resizing(tmp_path):
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[0] = 77  # constant image stays constant
    images[1, :, 14:] = 255  # dark left half, bright right half
    path = _npz(tmp_path / "r.npz", train_images=images, train_labels=np.array([[0], [1]]))
    got = load_npz(path, "train", classes=MRI.classes, channels=1, size=64).images
    assert got.shape == (2, 1, 64, 64)
    assert (got[0] == 77).all()
    assert (got[1, 0, :, :28] == 0).all() and (got[1, 0, :, 36:] == 255).all()


def test_npz_gray_to_rgb_and_rgb_to_gray(tmp_path):
    gray = np.full((1, 28, 28), 90, dtype=np.uint8)
    path = _npz(tmp_path / "g.npz", train_images=gray, train_labels=np.array([[0]]))
    as_rgb = load_npz(path, "train", classes=HISTO.classes, channels=3, size=28).images
    assert as_rgb.shape == (1, 3, 28, 28) and (as_rgb == 90).all()
    rgb = np.zeros((1, 28, 28, 3), dtype=np.uint8)
    rgb[...] = (200, 100, 50)
    path = _npz(tmp_path / "c.npz", train_images=rgb, train_labels=np.array([[0]]))
    as_gray = load_npz(path, "train", classes=MRI.classes, channels=1, size=28).images
    luma = 200 * 299 / 1000 + 100 * 587 / 1000 + 50 * 114 / 1000  # ITU-R 601-2, = 124.2
    assert as_gray.shape == (1, 1, 28, 28) and (as_gray.int() - round(luma)).abs().max() <= 1


def test_npz_missing_keys_raise(tmp_path):
    path = _npz(tmp_path / "m.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="train_labels"):
        load_npz(path, "train", classes=MRI.classes, channels=1, size=28)
    full, _, _ = _gray_npz(tmp_path)
    with pytest.raises(ValueError, match="test_images"):
        load_split(full, "test", classes=MRI.classes, channels=1, size=28)


@pytest.mark.parametrize("bad", [4, -1])
def test_npz_label_out_of_range_raises(tmp_path, bad):
    labels = np.array([[0], [1], [bad]], dtype=np.int64)
    path = _npz(tmp_path / "l.npz", train_images=np.zeros((3, 28, 28), np.uint8), train_labels=labels)
    with pytest.raises(ValueError, match="labels"):
        load_npz(path, "train", classes=MRI.classes, channels=1, size=28)


def test_npz_mismatched_lengths_raise(tmp_path):
    path = _npz(tmp_path / "n.npz", train_images=np.zeros((3, 28, 28), np.uint8), train_labels=np.zeros((2, 1)))
    with pytest.raises(ValueError, match="shape"):
        load_npz(path, "train", classes=MRI.classes, channels=1, size=28)


def test_npz_wrong_image_rank_raises(tmp_path):
    path = _npz(tmp_path / "k.npz", train_images=np.zeros((3, 28), np.uint8), train_labels=np.zeros((3, 1)))
    with pytest.raises(ValueError, match="shape"):
        load_npz(path, "train", classes=MRI.classes, channels=1, size=28)


def test_load_split_missing_npz_raises(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_split(tmp_path / "absent.npz", "train", classes=MRI.classes, channels=1, size=28)


# ---------------------------------------------------------------- synthetic generator


def test_synth_is_deterministic_by_seed(tmp_path):
    a = _files(_tree(tmp_path, train=2, test=1, seed=3, name="a"))
    b = _files(_tree(tmp_path, train=2, test=1, seed=3, name="b"))
    c = _files(_tree(tmp_path, train=2, test=1, seed=4, name="c"))
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


@pytest.mark.parametrize("modality", ["brain-mri", "histology"])
def test_synth_writes_preset_classes(tmp_path, modality):
    preset = PRESETS[modality]
    root = _tree(tmp_path, modality, train=2, test=1, size=36)
    for split, count in (("train", 2), ("test", 1)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(preset.classes)
        for name in preset.classes:
            files = list((root / split / name).glob("*.png"))
            assert len(files) == count
            with Image.open(files[0]) as img:
                assert img.size == (36, 36)
                assert img.mode == ("L" if preset.channels == 1 else "RGB")


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 31}, {"train_per_class": 0}, {"test_per_class": -1}, {"modality": "ct-scan"}],
)
def test_synth_bad_arguments_raise(tmp_path, kwargs):
    args = {"modality": "brain-mri", "train_per_class": 1, "test_per_class": 0, "size": 32} | kwargs
    with pytest.raises(ValueError):
        write_synthetic_tree(tmp_path / "x", **args)


# ---------------------------------------------------------------- data check


def test_check_counts_unreadable_and_duplicates(tmp_path):
    root = _tree(tmp_path, train=3, test=2, size=32)
    train, test = root / "train", root / "test"
    # unreadable files
    (train / "glioma" / "empty.jpg").write_bytes(b"")
    (train / "glioma" / "readme.txt").write_text("x")
    png = sorted((train / "notumor").glob("*.png"))[1].read_bytes()
    (test / "notumor" / "cut.png").write_bytes(png[: len(png) // 2])
    # duplicate within train
    src_within = sorted((train / "meningioma").glob("*.png"))[0]
    shutil.copy(src_within, train / "meningioma" / "copy.png")
    # train image copied into test, and another re-saved losslessly under another name and format
    src_across = sorted((train / "pituitary").glob("*.png"))[0]
    shutil.copy(src_across, test / "pituitary" / "leak.png")
    src_resaved = sorted((train / "glioma").glob("*.png"))[2]
    with Image.open(src_resaved) as img:
        img.save(test / "glioma" / "renamed.bmp")

    result = check_data_root(root)
    assert result["splits"] == {
        "train": {"glioma": 3, "meningioma": 4, "notumor": 3, "pituitary": 3},
        "test": {"glioma": 3, "meningioma": 2, "notumor": 2, "pituitary": 3},
    }
    assert sorted(u["path"] for u in result["unreadable"]) == [
        "test/notumor/cut.png",
        "train/glioma/empty.jpg",
        "train/glioma/readme.txt",
    ]
    rel = lambda p: str(p.relative_to(root))  # noqa: E731
    assert result["duplicates_within"] == {"train": [sorted([rel(src_within), "train/meningioma/copy.png"])]}
    across = sorted(sorted(group) for group in result["duplicates_across"])
    assert across == sorted(
        [
            sorted([rel(src_across), "test/pituitary/leak.png"]),
            sorted([rel(src_resaved), "test/glioma/renamed.bmp"]),
        ]
    )


def test_check_clean_tree_has_no_findings(tmp_path):
    root = _tree(tmp_path, "histology", train=2, test=1, size=32)
    result = check_data_root(root)
    assert result["unreadable"] == [] and result["duplicates_within"] == {} and result["duplicates_across"] == []
    assert result["splits"]["train"] == dict.fromkeys(HISTO.classes, 2)


def test_check_reports_oversized_image_header_as_unreadable(tmp_path):
    root = _tree(tmp_path, train=1, test=1)
    (root / "test" / "notumor" / "bomb.png").write_bytes(_png_header_only(20000, 20000))
    result = check_data_root(root)
    assert [u["path"] for u in result["unreadable"]] == ["test/notumor/bomb.png"]


def test_check_missing_root_raises(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        check_data_root(tmp_path / "nowhere")


def test_check_root_without_splits_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no split"):
        check_data_root(tmp_path / "empty")


def test_load_never_mutates_files(tmp_path):
    root = _tree(tmp_path, train=1, test=1)
    before = {k: (v, os.stat(root / k).st_mtime_ns) for k, v in _files(root).items()}
    load_split(root, "train", classes=MRI.classes, channels=1, size=32)
    check_data_root(root)
    assert {k: (v, os.stat(root / k).st_mtime_ns) for k, v in _files(root).items()} == before


def test_image_set_class_counts_uses_fixed_classes():
    s = ImageSet(torch.zeros((3, 1, 32, 32), dtype=torch.uint8), torch.tensor([2, 2, 0]), ("a", "b", "c"), MRI.classes)
    assert s.class_counts() == [1, 0, 2, 0]

