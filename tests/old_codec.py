"""Key files as medsilo wrote them before HE codec 2 (no ``codec`` or ``packing`` in the header)."""

from __future__ import annotations

import json
from pathlib import Path


def rewrite_key_header(path: Path, out: Path, **change: object) -> Path:
    """Copy the key file ``path`` to ``out`` with header fields changed (``None`` removes one)."""
    magic, header, body = path.read_bytes().split(b"\n", 2)
    fields = {k: v for k, v in {**json.loads(header), **change}.items() if v is not None}
    out.write_bytes(magic + b"\n" + json.dumps(fields).encode() + b"\n" + body)
    out.chmod(path.stat().st_mode & 0o777)
    return out


def codec1_copy(path: Path, out: Path) -> Path:
    """``path`` as a codec-1 key file at ``out``."""
    return rewrite_key_header(path, out, codec=None, packing=None)
