"""CKKS on SEAL itself (``tenseal.sealapi``): seeded symmetric ciphertexts, complex packing.

Each ciphertext carries ``poly_modulus_degree`` real values: the encoder packs two reals
into each of its ``N/2`` complex slots (the first half of a chunk in the real parts, the
second in the imaginary parts; ``decode_complex`` gives both back). Hospitals encrypt with
the secret key, which SEAL writes in seeded form: one polynomial plus the seed of the
other, 8 bytes per value with the default parameters. The server loads (expands) them with
the public parameters alone and adds them; a sum cannot be seeded, so the aggregate is
16 bytes per value.

SEAL's binding saves and loads through file paths only, so every blob passes through one
temporary file per process, in a RAM-backed folder (``/dev/shm``) when there is one. Only
ciphertexts ever touch it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence, Sized
from multiprocessing import util
from pathlib import Path

import numpy as np
import tenseal as ts
from tenseal import sealapi

__all__ = ["CKKSCodec", "CiphertextSum", "ReleasedSum"]

_RAM_DIR = Path("/dev/shm")
_scratch_paths: dict[int, str] = {}


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


def _scratch() -> str:
    """This process's temporary file for SEAL's path-only save and load; removed at exit."""
    pid = os.getpid()
    if pid not in _scratch_paths:
        folder = str(_RAM_DIR) if _RAM_DIR.is_dir() and os.access(_RAM_DIR, os.W_OK) else None
        fd, path = tempfile.mkstemp(prefix="medsilo-ct-", dir=folder)
        os.close(fd)
        _scratch_paths[pid] = path
        util.Finalize(None, _remove, args=(path,), exitpriority=0)  # also runs in pool workers
    return _scratch_paths[pid]


def _save(obj: sealapi.Ciphertext | sealapi.SerializableCiphertext) -> bytes:
    path = _scratch()
    obj.save(path)
    with open(path, "rb") as fh:
        return fh.read()


class CKKSCodec:
    """Encode, encrypt, load, add and decrypt with one TenSEAL context's SEAL objects."""

    def __init__(self, context: ts.Context, scale_bits: int) -> None:
        self.seal = context.seal_context().data
        self.scale = 2.0**scale_bits
        self.slots = self.seal.first_context_data().parms().poly_modulus_degree() // 2
        self.values_per_ciphertext = 2 * self.slots
        self._data_level = list(self.seal.first_parms_id())
        self._encoder = sealapi.CKKSEncoder(self.seal)
        self.evaluator = sealapi.Evaluator(self.seal)
        self._encryptor: sealapi.Encryptor | None = None
        self._decryptor: sealapi.Decryptor | None = None
        if context.is_private():
            secret = context.secret_key().data
            self._encryptor = sealapi.Encryptor(self.seal, secret)
            self._decryptor = sealapi.Decryptor(self.seal, secret)

    def encrypt(self, values: np.ndarray) -> bytes:
        """Up to ``values_per_ciphertext`` reals as one seeded, complex-packed ciphertext."""
        if self._encryptor is None:
            raise ValueError("encryption needs the secret-key context (secret.ctx)")
        if len(values) > self.values_per_ciphertext:
            raise ValueError(f"{len(values)} values; one ciphertext holds at most {self.values_per_ciphertext}")
        padded = np.zeros(self.values_per_ciphertext)
        padded[: len(values)] = values
        plain = sealapi.Plaintext()
        self._encoder.encode((padded[: self.slots] + 1j * padded[self.slots :]).tolist(), self.scale, plain)
        return _save(self._encryptor.encrypt_symmetric(plain))

    def load(self, blob: bytes) -> sealapi.Ciphertext:
        """A ciphertext from its bytes; ``ValueError`` unless it is a fresh one for these parameters."""
        path = _scratch()
        with open(path, "wb") as fh:
            fh.write(blob)
        ciphertext = sealapi.Ciphertext()
        try:
            ciphertext.load(self.seal, path)
        except (RuntimeError, ValueError, TypeError) as err:
            raise ValueError(f"not a ciphertext for this run's CKKS parameters ({err})") from None
        if ciphertext.size() != 2 or list(ciphertext.parms_id()) != self._data_level or ciphertext.scale != self.scale:
            raise ValueError("a ciphertext at another level, scale or size than a fresh encryption")
        return ciphertext

    def decrypt(self, blob: bytes) -> np.ndarray:
        """The ``values_per_ciphertext`` reals of one ciphertext (padding included)."""
        if self._decryptor is None:
            raise ValueError("decryption needs the secret-key context (secret.ctx)")
        plain = sealapi.Plaintext()
        self._decryptor.decrypt(self.load(blob), plain)
        packed = np.asarray(self._encoder.decode_complex(plain))
        return np.concatenate([packed.real, packed.imag])

    def save(self, ciphertext: sealapi.Ciphertext) -> bytes:
        """The bytes of a ciphertext that is not seeded, such as a sum."""
        return _save(ciphertext)


class CiphertextSum:
    """A running sum of encrypted vectors, added one vector (its chunks) at a time.

    Only the sum and one chunk are ever loaded: a vector is added chunk by chunk, and if a
    chunk turns out unreadable the chunks already added are subtracted again (CKKS addition
    is exact modular arithmetic, so the sum is restored bit for bit).
    """

    def __init__(self, codec: CKKSCodec) -> None:
        self.codec = codec
        self.chunks: list[sealapi.Ciphertext] | None = None

    def add(self, blobs: Sequence[bytes]) -> None:
        """Add one encrypted vector; on ``ValueError`` (an unreadable chunk) the sum is unchanged."""
        if self.chunks is None:
            self.chunks = [self.codec.load(b) for b in blobs]
            return
        if len(blobs) != len(self.chunks):
            raise ValueError(f"{len(blobs)} ciphertext chunks; the sum has {len(self.chunks)}")
        for i, blob in enumerate(blobs):
            try:
                chunk = self.codec.load(blob)
            except ValueError:
                for j in range(i):
                    self.codec.evaluator.sub_inplace(self.chunks[j], self.codec.load(blobs[j]))
                raise
            self.codec.evaluator.add_inplace(self.chunks[i], chunk)

    def release(self) -> ReleasedSum:
        """Hand the sum over for writing; this object is empty afterwards."""
        if self.chunks is None:
            raise ValueError("nothing has been added")
        chunks, self.chunks = self.chunks, None
        return ReleasedSum(self.codec, chunks)


class ReleasedSum(Sized, Iterable[bytes]):
    """A sum's chunks, written as bytes one at a time when iterated (once); each is freed once written.

    Whoever stores the bytes (an ``ArrayRecord``) so never holds the whole sum twice.
    """

    def __init__(self, codec: CKKSCodec, chunks: list[sealapi.Ciphertext]) -> None:
        self._codec = codec
        self._chunks = chunks
        self._count = len(chunks)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[bytes]:
        if len(self._chunks) != self._count:
            raise ValueError("a released sum can be written only once")
        while self._chunks:
            yield self._codec.save(self._chunks.pop(0))
