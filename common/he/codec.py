"""Flatten a state dict into slot-sized chunks, encrypt them in parallel, and back.

Integer buffers (BatchNorm's ``num_batches_tracked``) are encrypted and averaged like every
other tensor and rounded to the nearest integer after decryption, so both the plaintext
and the encrypted FedAvg give every tensor the same weighted mean.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import numpy as np
import torch

from common.he import _worker
from common.he.keys import HEContext

__all__ = ["PARALLEL_MIN_CHUNKS", "ParamLayout", "decrypt_chunks", "encrypt_vector"]

PARALLEL_MIN_CHUNKS = 64
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and dtypes of a state dict, in order: how to rebuild it from a vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor]) -> ParamLayout:
        """The layout of ``state``."""
        return cls(
            tuple(state),
            tuple(tuple(t.shape) for t in state.values()),
            tuple(str(t.dtype).removeprefix("torch.") for t in state.values()),
        )

    @classmethod
    def of_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> ParamLayout:
        """The layout of float64 arrays of these names and shapes (statistics rather than weights)."""
        return cls(tuple(shapes), tuple(tuple(s) for s in shapes.values()), ("float64",) * len(shapes))

    @property
    def size(self) -> int:
        """Total number of values."""
        return int(sum(int(np.prod(s)) for s in self.shapes))

    def flatten(self, state: Mapping[str, torch.Tensor], *, scale: float = 1.0) -> np.ndarray:
        """``(size,)`` float64 vector of every tensor, multiplied by ``scale``."""
        if tuple(state) != self.names:
            raise ValueError("state dict keys differ from the layout")
        return np.concatenate([t.detach().cpu().double().reshape(-1).numpy() for t in state.values()]) * scale

    def unflatten(self, vector: np.ndarray) -> dict[str, torch.Tensor]:
        """Rebuild the state dict; integer tensors are rounded to the nearest integer."""
        if vector.shape != (self.size,):
            raise ValueError(f"vector has shape {vector.shape}; expected ({self.size},)")
        out, offset = {}, 0
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes, strict=True):
            n = int(np.prod(shape))
            values = torch.from_numpy(vector[offset : offset + n].copy()).reshape(shape)
            target = getattr(torch, dtype)
            out[name] = values.round().to(target) if not target.is_floating_point else values.to(target)
            offset += n
        return out

    def to_json(self) -> dict[str, list[object]]:
        """JSON form for payload headers."""
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes], "dtypes": list(self.dtypes)}

    @classmethod
    def from_json(cls, data: Mapping[str, Sequence[object]]) -> ParamLayout:
        """Inverse of :meth:`to_json`."""
        return cls(
            tuple(map(str, data["names"])),
            tuple(tuple(int(v) for v in s) for s in data["shapes"]),  # type: ignore[union-attr]
            tuple(map(str, data["dtypes"])),
        )


def _split(items: Sequence[T], parts: int) -> list[list[T]]:
    size = -(-len(items) // parts)
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


@lru_cache(maxsize=1)
def _pool(key_id: str, context_bytes: bytes, scale_bits: int, workers: int) -> ProcessPoolExecutor:
    """One pool per process and key, reused every round (forked: no re-import of torch)."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_worker.init,
        initargs=(context_bytes, scale_bits),
    )


def _map(ctx: HEContext, workers: int, fn: Callable[[list[T]], list[R]], items: Sequence[T]) -> list[R]:
    pool = _pool(ctx.key_id, ctx.serialized(), ctx.params.scale_bits, workers)
    return [out for part in pool.map(fn, _split(items, workers * 4)) for out in part]


def encrypt_vector(ctx: HEContext, vector: np.ndarray, *, workers: int = 1) -> list[bytes]:
    """Encrypt a float vector as ``ceil(len / values_per_ciphertext)`` seeded CKKS ciphertexts.

    Chunks go to ``workers`` processes when there are at least ``PARALLEL_MIN_CHUNKS``.
    """
    if not ctx.secret:
        raise ValueError("encryption needs the secret-key context (secret.ctx)")
    step = ctx.params.values_per_ciphertext
    chunks = [vector[i : i + step] for i in range(0, len(vector), step)]
    if workers <= 1 or len(chunks) < PARALLEL_MIN_CHUNKS:
        return [ctx.codec.encrypt(c) for c in chunks]
    return _map(ctx, workers, _worker.encrypt, chunks)


def decrypt_chunks(ctx: HEContext, blobs: Sequence[bytes], *, size: int, workers: int = 1) -> np.ndarray:
    """Decrypt ciphertexts back into a ``(size,)`` float64 vector (the last chunk's padding dropped)."""
    if not ctx.secret:
        raise ValueError("decryption needs the secret-key context (secret.ctx)")
    expected = -(-size // ctx.params.values_per_ciphertext)
    if len(blobs) != expected:
        raise ValueError(f"{len(blobs)} ciphertext chunks; expected {expected} for {size} values")
    if workers <= 1 or len(blobs) < PARALLEL_MIN_CHUNKS:
        parts = [ctx.codec.decrypt(b) for b in blobs]
    else:
        parts = _map(ctx, workers, _worker.decrypt, list(blobs))
    return np.concatenate(parts)[:size] if parts else np.empty(0)
