"""An encrypted model directory: ``model.json`` + ``encrypted.json`` + ``ciphertexts.safetensors``.

This is what the aggregation server keeps (checkpoints and the final ``model/``) under
HE: it can never hold plaintext weights. A key-holder turns it into a plaintext model
directory with ``medsilo model decrypt``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from safetensors.torch import load_file, save_file

from common.calibration import read_calibration, write_calibration
from common.he.codec import decrypt_chunks
from common.he.keys import HEContext
from common.he.payload import HEADER_KEY, EncryptedPayload
from common.models import ModelSpec, read_spec, save_model_dir, write_spec

__all__ = ["decrypt_model_dir", "load_encrypted_dir", "save_encrypted_dir"]

HEADER_FILE = "encrypted.json"
CIPHERTEXT_FILE = "ciphertexts.safetensors"


def save_encrypted_dir(directory: str | Path, record: ArrayRecord, spec: ModelSpec) -> Path:
    """Write an encrypted aggregate (an ``ArrayRecord`` payload) and its model spec."""
    payload = EncryptedPayload.from_record(record)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"chunk-{i:06d}": torch.frombuffer(bytearray(b), dtype=torch.uint8) for i, b in enumerate(payload.chunks)
    }
    save_file(tensors, directory / CIPHERTEXT_FILE)
    (directory / HEADER_FILE).write_text(json.dumps(payload.header(), indent=2))
    write_spec(directory, spec)
    return directory


def load_encrypted_dir(directory: str | Path) -> tuple[EncryptedPayload, ModelSpec]:
    """Read an encrypted model directory back (no decryption)."""
    directory = Path(directory)
    if not (directory / HEADER_FILE).is_file() or not (directory / CIPHERTEXT_FILE).is_file():
        raise ValueError(
            f"{directory} is not an encrypted model directory; expected {HEADER_FILE} and {CIPHERTEXT_FILE}"
        )
    header = json.loads((directory / HEADER_FILE).read_text())
    tensors = load_file(directory / CIPHERTEXT_FILE)
    arrays = {HEADER_KEY: Array(np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))}
    for i in range(int(header["num_chunks"])):
        name = f"chunk-{i:06d}"
        if name not in tensors:
            raise ValueError(f"{directory / CIPHERTEXT_FILE} lacks {name}")
        arrays[f"he-{i:06d}"] = Array(tensors[name].numpy())
    return EncryptedPayload.from_record(ArrayRecord(arrays), what=f"encrypted model {directory}"), read_spec(directory)


def decrypt_model_dir(directory: str | Path, ctx: HEContext, out: str | Path, *, workers: int = 1) -> Path:
    """Decrypt an encrypted model directory into a plaintext one at ``out``, its calibration kept."""
    payload, spec = load_encrypted_dir(directory)
    calibration = read_calibration(directory)
    payload.check_against(ctx, kind="aggregate")
    vector = decrypt_chunks(ctx, payload.chunks, size=payload.layout.size, workers=workers) * payload.factor
    plaintext = save_model_dir(out, payload.layout.unflatten(vector), spec)
    write_calibration(plaintext, calibration)
    return plaintext
