"""Process-pool workers for CKKS: SEAL holds the GIL, so chunks go to processes.

Each worker process loads the context once, in its initializer.
"""

from __future__ import annotations

import numpy as np
import tenseal as ts

from common.he.ckks import CKKSCodec

_codec: CKKSCodec | None = None


def init(context_bytes: bytes, scale_bits: int) -> None:
    """Load the TenSEAL context in this worker process."""
    global _codec
    _codec = CKKSCodec(ts.context_from(context_bytes), scale_bits)


def encrypt(chunks: list[np.ndarray]) -> list[bytes]:
    """Encrypt each chunk of up to ``values_per_ciphertext`` reals."""
    assert _codec is not None
    return [_codec.encrypt(chunk) for chunk in chunks]


def decrypt(blobs: list[bytes]) -> list[np.ndarray]:
    """Decrypt each ciphertext into its ``values_per_ciphertext`` reals."""
    assert _codec is not None
    return [_codec.decrypt(blob) for blob in blobs]
