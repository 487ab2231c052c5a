"""CKKS key files and parameters.

``secret.ctx`` (mode 0600) holds the secret key: hospitals and the evaluator only.
``public.ctx`` holds the parameters and no key at all: the aggregation server. Encryption
is symmetric (with the secret key), so SEAL writes seeded ciphertexts; the server only ever
adds ciphertexts, which needs no key (``common.he.ckks``).

Each file is one header line (``MEDSILO-CKKS 1``), one JSON line (parameters, codec version,
packing, key id, whether it holds the secret) and then TenSEAL's own serialisation of the
context. The key id is a hash of the secret context, so a hospital with another key pair is
caught before it encrypts. Key files of an older codec are refused with one line.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import tenseal as ts

from common.he.ckks import CKKSCodec

__all__ = [
    "CODEC_VERSION",
    "HEContext",
    "HEParams",
    "create_key_pair",
    "load_public_context",
    "load_secret_context",
    "old_codec_problem",
]

MAGIC = b"MEDSILO-CKKS 1\n"
SECRET_FILE = "secret.ctx"
PUBLIC_FILE = "public.ctx"

# Largest total coefficient modulus (bits) for 128-bit classical security, from the
# Homomorphic Encryption Standard (as used by SEAL's CoeffModulus::MaxBitCount).
MAX_COEFF_BITS_128 = {4096: 109, 8192: 218, 16384: 438, 32768: 881}
MIN_SCALE_BITS = 30
# Version 2: SEAL's seeded symmetric ciphertexts, two reals per complex slot (8 B/value up).
# Version 1 (no "codec" in the header): TenSEAL's CKKSVector, one real per slot (32 B/value).
CODEC_VERSION = 2
PACKING = "complex"


def old_codec_problem(found: object, what: str) -> str | None:
    """One line when ``what`` was made by another codec version than this medsilo's, else ``None``."""
    if found == CODEC_VERSION:
        return None
    version = 1 if found is None else found
    return (
        f"{what} uses medsilo HE codec {version}; this version reads codec {CODEC_VERSION} only "
        "(seeded, complex-packed ciphertexts): make a new key pair with 'medsilo keys init --out DIR', "
        "give every key-holder the new secret.ctx and start a new run"
    )


@dataclass(frozen=True)
class HEParams:
    """CKKS parameters; construction raises ``ValueError`` on an insecure or imprecise set."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 60)
    scale_bits: int = 40

    def __post_init__(self) -> None:
        limit = MAX_COEFF_BITS_128.get(self.poly_modulus_degree)
        if limit is None:
            raise ValueError(
                f"poly_modulus_degree = {self.poly_modulus_degree} is invalid; expected one of "
                f"{', '.join(map(str, MAX_COEFF_BITS_128))}"
            )
        sizes = tuple(self.coeff_mod_bit_sizes)
        if len(sizes) < 2 or any(not 20 <= b <= 60 for b in sizes):
            raise ValueError(
                f"coeff_mod_bit_sizes = {list(sizes)} is invalid; expected two or more primes of 20..60 bits"
            )
        if sum(sizes) > limit:
            raise ValueError(
                f"coeff_mod_bit_sizes = {list(sizes)} total {sum(sizes)} bits; expected at most {limit} bits "
                f"for 128-bit security at poly_modulus_degree {self.poly_modulus_degree}"
            )
        if not MIN_SCALE_BITS <= self.scale_bits <= min(sizes[0], sizes[-1]) - 10:
            raise ValueError(
                f"scale_bits = {self.scale_bits} is invalid; "
                f"expected {MIN_SCALE_BITS}..{min(sizes[0], sizes[-1]) - 10} "
                "(enough precision for 1e-6, and headroom below the first and last primes)"
            )
        object.__setattr__(self, "coeff_mod_bit_sizes", sizes)

    @property
    def values_per_ciphertext(self) -> int:
        """Reals per ciphertext: two per complex slot, so the polynomial degree."""
        return self.poly_modulus_degree

    def fingerprint(self) -> str:
        """A short hash of the parameters, codec version and packing, carried by every payload."""
        described = {**asdict(self), "codec": CODEC_VERSION, "packing": PACKING}
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class HEContext:
    """A loaded key file: the TenSEAL context, its parameters, key id and role."""

    context: ts.Context = field(repr=False)
    params: HEParams
    key_id: str
    secret: bool

    @cached_property
    def codec(self) -> CKKSCodec:
        """SEAL's encoder, evaluator and (for a key-holder) encryptor and decryptor for this key."""
        return CKKSCodec(self.context, self.params.scale_bits)

    def serialized(self) -> bytes:
        """TenSEAL bytes of this context (with the secret key only if it holds one)."""
        return self.context.serialize(
            save_public_key=False, save_secret_key=self.secret, save_galois_keys=False, save_relin_keys=False
        )


def _key_id(secret_bytes: bytes) -> str:
    return hashlib.sha256(b"medsilo-key-id" + secret_bytes).hexdigest()[:16]


def _write(path: Path, header: dict[str, Any], payload: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload)
    os.chmod(path, mode)


def create_key_pair(out: str | Path, params: HEParams | None = None) -> tuple[Path, Path]:
    """Generate a CKKS key pair and write ``out/secret.ctx`` (0600) and ``out/public.ctx``.

    Refuses to overwrite existing key files.
    """
    params = params or HEParams()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    secret_path, public_path = out / SECRET_FILE, out / PUBLIC_FILE
    for path in (secret_path, public_path):
        if path.exists():
            raise ValueError(f"{path} already exists; remove it or choose another --out")
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    context.global_scale = 2.0**params.scale_bits
    secret_bytes = context.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    public_bytes = context.serialize(
        save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    header = {
        "scheme": "ckks",
        **asdict(params),
        "codec": CODEC_VERSION,
        "packing": PACKING,
        "key_id": _key_id(secret_bytes),
    }
    _write(secret_path, {**header, "secret": True}, secret_bytes, 0o600)
    _write(public_path, {**header, "secret": False}, public_bytes, 0o644)
    return secret_path, public_path


def _read(path: str | Path) -> tuple[dict[str, Any], ts.Context]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"key file {str(path)!r} does not exist; create keys with 'medsilo keys init --out DIR'")
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        raise ValueError(f"{path} is not a medsilo CKKS key file; create keys with 'medsilo keys init --out DIR'")
    header_line, _, payload = raw[len(MAGIC) :].partition(b"\n")
    header = json.loads(header_line)
    problem = old_codec_problem(header.get("codec"), f"key file {path}")
    if problem is None and header.get("packing") != PACKING:
        problem = f"key file {path} packs {header.get('packing')!r}; expected {PACKING!r}"
    if problem is not None:
        raise ValueError(problem)
    return header, ts.context_from(payload)


def _params(header: dict[str, Any]) -> HEParams:
    return HEParams(
        poly_modulus_degree=header["poly_modulus_degree"],
        coeff_mod_bit_sizes=tuple(header["coeff_mod_bit_sizes"]),
        scale_bits=header["scale_bits"],
    )


def load_public_context(path: str | Path) -> HEContext:
    """Load the server's context; refuse any file or context that holds a secret key."""
    header, context = _read(path)
    if header.get("secret") or context.is_private():
        raise ValueError(f"{path} holds a secret key; the aggregation server must only get {PUBLIC_FILE}")
    return HEContext(context, _params(header), header["key_id"], secret=False)


def load_secret_context(path: str | Path) -> HEContext:
    """Load a key-holder's context; it must hold the secret key its header names."""
    header, context = _read(path)
    if not context.is_private():
        raise ValueError(f"{path} holds no secret key; hospitals and the evaluator need {SECRET_FILE}")
    secret_bytes = context.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    if _key_id(secret_bytes) != header.get("key_id"):
        raise ValueError(f"{path}: the secret key does not match the key id in its header; the file is damaged")
    return HEContext(context, _params(header), header["key_id"], secret=True)
