"""Encrypted payloads inside Flower ``ArrayRecord``s, tagged and checked.

Ciphertext chunks travel as ``uint8`` arrays (``he-000000``, …) beside a JSON header
(``he-header``) that names the scheme, the codec version, the parameter fingerprint, the key id, the kind
(``update`` from a hospital, ``aggregate`` from the server), the parameter layout and, for
an aggregate, the renormalisation factor the key-holders apply after decrypting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
from flwr.app import Array, ArrayRecord

from common.he.ckks import ReleasedSum
from common.he.codec import ParamLayout
from common.he.keys import CODEC_VERSION, HEContext, old_codec_problem

__all__ = ["EncryptedPayload", "HEADER_KEY", "is_encrypted"]

HEADER_KEY = "he-header"
_CHUNK = "he-{:06d}"


class _RecordChunks(Sequence[bytes]):
    """The ciphertext chunks of an ``ArrayRecord``, read one at a time (no copy of the whole payload)."""

    def __init__(self, record: ArrayRecord, count: int) -> None:
        self._record = record
        self._count = count

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise IndexError(index)
        return self._record[_CHUNK.format(index % self._count)].numpy().tobytes()


def is_encrypted(record: ArrayRecord) -> bool:
    """Whether ``record`` carries an encrypted payload rather than plaintext weights."""
    return HEADER_KEY in record


@dataclass(frozen=True)
class EncryptedPayload:
    """Ciphertext chunks plus the header that says what they are."""

    kind: str
    params_fingerprint: str
    key_id: str
    layout: ParamLayout
    chunks: Sequence[bytes] | ReleasedSum = field(repr=False)
    factor: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        """The JSON header (everything but the ciphertexts)."""
        return {
            "scheme": "ckks",
            "codec": CODEC_VERSION,
            "kind": self.kind,
            "params_fingerprint": self.params_fingerprint,
            "key_id": self.key_id,
            "num_chunks": len(self.chunks),
            "num_params": self.layout.size,
            "layout": self.layout.to_json(),
            "factor": self.factor,
            **self.extra,
        }

    def to_record(self) -> ArrayRecord:
        """Pack into an ``ArrayRecord``."""
        arrays = {HEADER_KEY: Array(np.frombuffer(json.dumps(self.header()).encode(), dtype=np.uint8))}
        for i, blob in enumerate(self.chunks):
            arrays[_CHUNK.format(i)] = Array(np.frombuffer(blob, dtype=np.uint8))
        return ArrayRecord(arrays)

    @classmethod
    def from_record(cls, record: ArrayRecord, *, what: str = "the encrypted payload") -> EncryptedPayload:
        """Unpack and check the structure; ``ValueError`` says what is wrong with ``what``."""
        if HEADER_KEY not in record:
            raise ValueError("no 'he-header': the payload is not encrypted")
        try:
            header = json.loads(record[HEADER_KEY].numpy().tobytes())
            num_chunks = int(header["num_chunks"])
            layout = ParamLayout.from_json(header["layout"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"unreadable 'he-header': {err}") from None
        if header.get("scheme") != "ckks":
            raise ValueError(f"scheme {header.get('scheme')!r}; expected 'ckks'")
        problem = old_codec_problem(header.get("codec"), what)
        if problem is not None:
            raise ValueError(problem)
        expected_keys = {HEADER_KEY, *(_CHUNK.format(i) for i in range(num_chunks))}
        if set(record.keys()) != expected_keys:
            raise ValueError(f"{len(record) - 1} ciphertext chunks; the header announces {num_chunks}")
        chunks = _RecordChunks(record, num_chunks)
        known = {
            "scheme",
            "codec",
            "kind",
            "params_fingerprint",
            "key_id",
            "num_chunks",
            "num_params",
            "layout",
            "factor",
        }
        return cls(
            kind=str(header.get("kind")),
            params_fingerprint=str(header.get("params_fingerprint")),
            key_id=str(header.get("key_id")),
            layout=layout,
            chunks=chunks,
            factor=float(header.get("factor", 1.0)),
            extra={k: v for k, v in header.items() if k not in known},
        )

    def check_against(self, ctx: HEContext, *, kind: str, layout: ParamLayout | None = None) -> None:
        """Raise ``ValueError`` unless the payload matches this run's context, kind and layout."""
        if self.kind != kind:
            raise ValueError(f"payload kind {self.kind!r}; expected {kind!r}")
        if self.params_fingerprint != ctx.params.fingerprint():
            raise ValueError("CKKS parameters differ from this run's context")
        if self.key_id != ctx.key_id:
            raise ValueError(f"encrypted under key {self.key_id}; this run uses key {ctx.key_id}")
        if layout is not None and self.layout != layout:
            raise ValueError("parameter layout differs from the global model's")
        expected = -(-self.layout.size // ctx.params.values_per_ciphertext)
        if len(self.chunks) != expected:
            raise ValueError(f"{len(self.chunks)} ciphertext chunks; expected {expected} for {self.layout.size} values")
