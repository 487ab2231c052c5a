"""Rebuild ``data/samples/brain-mri`` from the full brain tumour MRI set.

Usage: ``python data/samples/make_brain_mri_sample.py ../shared/data/brain-mri``

Takes a seeded, class-balanced subset, drops every image whose pixels also occur in the
other split (the upstream set has train/test duplicates), converts to 8-bit gray and
resizes to 128 px, so the sample stays small and the default run stays fast.
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

from PIL import Image

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
PER_CLASS = {"train": 260, "test": 60}
SIZE = 128
SEED = 20261125


def _pixel_hash(path: Path) -> str:
    with Image.open(path) as img:
        return hashlib.sha256(img.convert("L").tobytes()).hexdigest()


def main(source: Path, out: Path) -> None:
    """Write the sample under ``out`` from the full set under ``source``."""
    rng = random.Random(SEED)
    hashes = {split: {p: _pixel_hash(p) for p in sorted((source / split).rglob("*.jpg"))} for split in PER_CLASS}
    seen: set[str] = set()
    for split, per_class in PER_CLASS.items():
        other = set().union(*(set(h.values()) for s, h in hashes.items() if s != split))
        for cls in CLASSES:
            files = sorted((source / split / cls).glob("*.jpg"))
            rng.shuffle(files)
            kept = 0
            (out / split / cls).mkdir(parents=True, exist_ok=True)
            for path in files:
                digest = hashes[split][path]
                if digest in other or digest in seen:
                    continue
                seen.add(digest)
                with Image.open(path) as img:
                    small = img.convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
                small.save(out / split / cls / path.name, quality=85)
                kept += 1
                if kept == per_class:
                    break


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).parent / "brain-mri")
