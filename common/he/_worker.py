"""Process-pool workers for CKKS: TenSEAL holds the GIL, so chunks go to processes.

Each worker process loads the context once, in its initializer.
"""

from __future__ import annotations

import numpy as np
import tenseal as ts

_context: ts.Context | None = None


def init(context_bytes: bytes) -> None:
    """Load the TenSEAL context in this worker process."""
    global _context
    _context = ts.context_from(context_bytes)


def encrypt(chunks: list[np.ndarray]) -> list[bytes]:
    """Encrypt each ``(slots,)`` float64 chunk and serialise it."""
    return [ts.ckks_vector(_context, chunk).serialize() for chunk in chunks]


def decrypt(blobs: list[bytes]) -> list[np.ndarray]:
    """Deserialise and decrypt each ciphertext."""
    return [np.asarray(ts.ckks_vector_from(_context, blob).decrypt(), dtype=np.float64) for blob in blobs]
