"""Image loading: ImageFolder trees and MedMNIST ``.npz`` files, decoded once.

Images are decoded, converted to the preset's channels and resized once per process,
then held as one ``uint8`` tensor ``(N, C, S, S)``. Training epochs and rounds reuse it
and only apply the (cheap) tensor augmentation. A split larger than the decoded cache
(``decoded-cache-mb``) is held as :class:`DecodedOnRead` instead: its files are decoded
again on every read, the same pixels, with bounded memory. An unreadable or truncated file
is skipped and counted, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

__all__ = [
    "DECODED_CACHE_MB",
    "IMAGE_SUFFIXES",
    "DecodedOnRead",
    "ImageSet",
    "TensorImageDataset",
    "decode_files",
    "decode_image",
    "load_folder",
    "load_npz",
    "load_split",
    "resolve_test_folder",
    "resolve_train_folder",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
DECODED_CACHE_MB = 4096
"""The default bound, in MiB, on one decoded split held in memory (``decoded-cache-mb``)."""


class DecodedOnRead:
    """Images decoded from their files at every read: a split too large for the decoded cache.

    Indexed like the ``uint8 (N, C, S, S)`` tensor it stands for: an integer gives one
    ``(C, S, S)`` image, decoded now; a sequence of indices gives the subset, still undecoded.
    """

    def __init__(self, files: Sequence[str], *, channels: int, size: int) -> None:
        self.files = tuple(files)
        self.channels, self.size = channels, size

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, C, S, S)``, as the decoded tensor would have."""
        return (len(self.files), self.channels, self.size, self.size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int | Sequence[int] | torch.Tensor) -> torch.Tensor | DecodedOnRead:
        if isinstance(index, int) or (isinstance(index, torch.Tensor) and index.ndim == 0):
            return decode_image(self.files[int(index)], channels=self.channels, size=self.size)
        positions = index.tolist() if isinstance(index, torch.Tensor) else list(index)
        return DecodedOnRead([self.files[i] for i in positions], channels=self.channels, size=self.size)


@dataclass(frozen=True)
class ImageSet:
    """Decoded images of one split.

    Attributes:
        images: ``uint8`` tensor ``(N, C, S, S)``, or (a split over the decoded cache) the
            same images as :class:`DecodedOnRead`.
        labels: ``int64`` tensor ``(N,)`` of indices into ``classes``, or (multi-label)
            ``(N, L)`` of 0/1 flags, one column per entry of ``classes``.
        paths: the source of each image, relative to the data root.
        classes: the fixed class (label) list (preset or config), never a folder listing.
        skipped: ``(path, reason)`` of every file that could not be read.
        groups: each image's patient, when the source names them (a labels CSV); else empty.
    """

    images: torch.Tensor | DecodedOnRead
    labels: torch.Tensor
    paths: tuple[str, ...]
    classes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = field(default=())
    groups: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> ImageSet:
        """The images at ``indices``, in that order."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return ImageSet(
            images=self.images[index],
            labels=self.labels[index],
            paths=tuple(self.paths[i] for i in index.tolist()),
            classes=self.classes,
            skipped=self.skipped,
            groups=tuple(self.groups[i] for i in index.tolist()) if self.groups else (),
        )

    @property
    def multilabel(self) -> bool:
        """Whether each image carries a 0/1 flag per label rather than one class."""
        return self.labels.ndim == 2

    def class_counts(self) -> list[int]:
        """Number of images per class (multi-label: with each label), in class order."""
        if self.multilabel:
            return self.labels.sum(dim=0).tolist()
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


class TensorImageDataset(Dataset[tuple[torch.Tensor, int | torch.Tensor]]):
    """A map-style dataset over an :class:`ImageSet`, applying ``transform`` per item.

    The target is the class index, or (multi-label) the ``float32`` flag vector BCE expects.
    """

    def __init__(self, images: ImageSet, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        label = self.images.labels[index]
        target = label.float() if self.images.multilabel else int(label)
        return self.transform(self.images.images[index]), target  # type: ignore[arg-type]


def _to_8bit(img: Image.Image) -> Image.Image:
    """Min-max rescale 16-bit, 32-bit integer and float images to 8 bits (no clipping)."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    array = np.asarray(img, dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def decode_image(path: str | Path, *, channels: int, size: int) -> torch.Tensor:
    """Decode one image file into a ``uint8`` tensor ``(channels, size, size)``.

    Raises:
        OSError: the file is unreadable, truncated or not an image.
    """
    try:
        with Image.open(path) as img:
            img.load()
            converted = _to_8bit(img).convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError) as err:
        raise OSError(str(err)) from err
    resized = converted.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def decode_files(
    files: Sequence[Path], *, channels: int, size: int, cache_mb: int, name: str
) -> tuple[torch.Tensor | DecodedOnRead, list[int], list[tuple[int, str]]]:
    """Decode every file once: the pixels, the readable files' positions, the others' ``(position, reason)``.

    The pixels are one ``uint8 (N, C, S, S)`` tensor of the readable files when all of
    ``files`` fit in ``cache_mb`` MiB; otherwise a :class:`DecodedOnRead` over them (each
    file is still decoded once here, so unreadable ones are found and counted up front) and
    one log line naming ``name`` says so.
    """
    needed = len(files) * channels * size * size
    keep = needed <= cache_mb * 2**20
    if not keep:
        log.info(
            "%s: %d images at %d px need %.0f MiB, over decoded-cache-mb = %d: decoding them again every epoch",
            name, len(files), size, needed / 2**20, cache_mb,
        )
    decoded: list[torch.Tensor] = []
    readable: list[int] = []
    unreadable: list[tuple[int, str]] = []
    for position, path in enumerate(files):
        try:
            image = decode_image(path, channels=channels, size=size)
        except OSError as err:
            unreadable.append((position, f"unreadable: {err}"))
            continue
        readable.append(position)
        if keep:
            decoded.append(image)
    if not keep:
        return DecodedOnRead([str(files[i]) for i in readable], channels=channels, size=size), readable, unreadable
    pixels = torch.stack(decoded) if decoded else torch.empty((0, channels, size, size), dtype=torch.uint8)
    return pixels, readable, unreadable


def _class_dirs(folder: Path, classes: Sequence[str]) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        raise ValueError(f"data folder {str(folder)!r} does not exist; expected <folder>/<class>/<images>")
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in dirs if p.name not in classes]
    if unknown:
        raise ValueError(
            f"{folder}: class folder(s) {', '.join(map(repr, unknown))} not in the class list; "
            f"expected only: {', '.join(classes)}"
        )
    return [(classes.index(p.name), p) for p in dirs]


def _tree_stamp(folder: Path) -> tuple[tuple[str, int], ...]:
    """Modification times of ``folder`` and its class folders: a changed tree misses the cache."""
    if not folder.is_dir():
        return ()
    dirs = [folder, *(p for p in folder.iterdir() if p.is_dir())]
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in dirs))


@lru_cache(maxsize=8)
def _load_folder_cached(
    folder: str,
    root: str,
    classes: tuple[str, ...],
    channels: int,
    size: int,
    cache_mb: int,
    stamp: tuple[tuple[str, int], ...],
) -> ImageSet:
    files: list[Path] = []
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    for label, class_dir in _class_dirs(Path(folder), classes):
        for path in sorted(class_dir.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((str(path.relative_to(root)), "not an image file"))
                continue
            files.append(path)
            labels.append(label)
    pixels, readable, unreadable = decode_files(files, channels=channels, size=size, cache_mb=cache_mb, name=folder)
    skipped += [(str(files[i].relative_to(root)), reason) for i, reason in unreadable]
    if skipped:
        log.warning("%s: skipped %d unreadable or non-image file(s)", folder, len(skipped))
    paths = tuple(str(files[i].relative_to(root)) for i in readable)
    kept = torch.tensor([labels[i] for i in readable], dtype=torch.long)
    return ImageSet(pixels, kept, paths, classes, tuple(skipped))


def load_folder(
    folder: str | Path,
    *,
    classes: Sequence[str],
    channels: int,
    size: int,
    root: str | Path | None = None,
    cache_mb: int = DECODED_CACHE_MB,
) -> ImageSet:
    """Load ``folder/<class>/*`` with labels from the fixed ``classes`` list.

    A class missing from the folder simply has no images; its label index is unchanged.
    A folder named after no class in ``classes`` raises ``ValueError``. Paths are stored
    relative to ``root`` (default: the parent of ``folder``). A folder whose decoded images
    exceed ``cache_mb`` MiB is decoded per read (:class:`DecodedOnRead`).
    """
    folder = Path(folder).resolve()
    root_path = Path(root).resolve() if root is not None else folder.parent
    return _load_folder_cached(
        str(folder), str(root_path), tuple(classes), channels, size, cache_mb, _tree_stamp(folder)
    )


def load_npz(path: str | Path, split: str, *, classes: Sequence[str], channels: int, size: int) -> ImageSet:
    """Load one split of a MedMNIST-style ``.npz`` (``{split}_images``, ``{split}_labels``)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as archive:
        keys = (f"{split}_images", f"{split}_labels")
        missing = [k for k in keys if k not in archive]
        if missing:
            raise ValueError(f"{path.name}: missing array(s) {', '.join(missing)}; expected MedMNIST keys {keys}")
        raw, raw_labels = archive[keys[0]], archive[keys[1]].reshape(-1)
    if raw.ndim not in (3, 4) or len(raw) != len(raw_labels):
        raise ValueError(
            f"{path.name}: {keys[0]} has shape {raw.shape}; expected (N, H, W) or (N, H, W, C) matching {keys[1]}"
        )
    if raw_labels.size and (raw_labels.min() < 0 or raw_labels.max() >= len(classes)):
        raise ValueError(
            f"{path.name}: labels span {raw_labels.min()}..{raw_labels.max()}; expected 0..{len(classes) - 1}"
        )
    mode = "L" if channels == 1 else "RGB"
    images = []
    for array in raw:
        img = Image.fromarray(array.squeeze().astype(np.uint8)).convert(mode)
        resized = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
        images.append(torch.from_numpy(resized.reshape(size, size, -1).copy()).permute(2, 0, 1))
    stacked = torch.stack(images) if images else torch.empty((0, channels, size, size), dtype=torch.uint8)
    paths = tuple(f"{path.name}#{split}/{i}" for i in range(len(images)))
    return ImageSet(stacked, torch.as_tensor(raw_labels, dtype=torch.long), paths, tuple(classes))


def load_split(
    root: str | Path, split: str, *, classes: Sequence[str], channels: int, size: int, cache_mb: int = DECODED_CACHE_MB
) -> ImageSet:
    """Load ``split`` (``train`` or ``test``) of a data root: an ImageFolder tree or an ``.npz``.

    An ``.npz`` is held decoded whatever its size (its pixels are in memory already).
    """
    root = Path(root)
    if root.suffix == ".npz":
        if not root.is_file():
            raise ValueError(f"data-root {str(root)!r} does not exist; expected a MedMNIST .npz file")
        return load_npz(root, split, classes=classes, channels=channels, size=size)
    if not root.is_dir():
        raise ValueError(f"data-root {str(root)!r} does not exist; expected a folder with train/ and test/")
    return load_folder(root / split, classes=classes, channels=channels, size=size, root=root, cache_mb=cache_mb)


def resolve_test_folder(path: str | Path) -> Path:
    """``PATH/test`` when it exists, else ``PATH`` (both are ``<class>/*`` trees)."""
    path = Path(path)
    return path / "test" if (path / "test").is_dir() else path


def resolve_train_folder(path: str | Path) -> Path:
    """``PATH/train`` when it exists, else ``PATH`` (a deployed hospital's own ``data-path``)."""
    path = Path(path)
    return path / "train" if (path / "train").is_dir() else path
