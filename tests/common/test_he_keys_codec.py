"""CKKS keys, parameter checks, the chunk codec and encrypted payload checks."""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array
from old_codec import codec1_copy, rewrite_key_header

from common.he.codec import ParamLayout, decrypt_chunks, encrypt_vector
from common.he.keys import HEParams, create_key_pair, load_public_context, load_secret_context
from common.he.payload import EncryptedPayload


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return create_key_pair(tmp_path_factory.mktemp("keys"))


def test_key_files_have_the_right_modes_and_roles(keys: tuple[Path, Path]) -> None:
    secret_path, public_path = keys
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    secret, public = load_secret_context(secret_path), load_public_context(public_path)
    assert secret.context.is_private() and not public.context.is_private()
    assert secret.key_id == public.key_id and secret.params == public.params == HEParams()
    assert public_path.stat().st_size < 1000 < secret_path.stat().st_size


def test_the_server_side_loader_refuses_a_secret_key(keys: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="holds a secret key"):
        load_public_context(keys[0])
    with pytest.raises(ValueError, match="holds no secret key"):
        load_secret_context(keys[1])


def test_missing_damaged_and_foreign_key_files(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_secret_context(tmp_path / "nope.ctx")
    (tmp_path / "raw.ctx").write_bytes(b"not a key")
    with pytest.raises(ValueError, match="not a medsilo CKKS key file"):
        load_public_context(tmp_path / "raw.ctx")
    other_secret, _ = create_key_pair(tmp_path / "other")
    forged = keys[0].read_bytes().split(b"\n", 2)[:2] + [other_secret.read_bytes().split(b"\n", 2)[2]]
    (tmp_path / "forged.ctx").write_bytes(b"\n".join(forged))
    with pytest.raises(ValueError, match="does not match the key id"):
        load_secret_context(tmp_path / "forged.ctx")
    with pytest.raises(ValueError, match="already exists"):
        create_key_pair(keys[0].parent)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"poly_modulus_degree": 1000}, "poly_modulus_degree"),
        ({"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": (60, 60)}, "at most 109 bits"),
        ({"coeff_mod_bit_sizes": (60, 60, 60, 60)}, "at most 218 bits"),
        ({"coeff_mod_bit_sizes": (60,)}, "two or more primes"),
        ({"coeff_mod_bit_sizes": (70, 60)}, "20..60 bits"),
        ({"scale_bits": 20}, "enough precision"),
        ({"scale_bits": 55}, "headroom"),
    ],
)
def test_insecure_or_imprecise_parameters_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HEParams(**kwargs)  # type: ignore[arg-type]


def test_other_secure_parameters_work(tmp_path: Path) -> None:
    params = HEParams(poly_modulus_degree=16384, coeff_mod_bit_sizes=(60, 40, 60), scale_bits=40)
    secret = load_secret_context(create_key_pair(tmp_path, params)[0])
    vector = np.linspace(-1, 1, 20000)
    blobs = encrypt_vector(secret, vector)
    assert len(blobs) == 2  # 16384 values per ciphertext
    np.testing.assert_allclose(decrypt_chunks(secret, blobs, size=20000), vector, atol=1e-6)


@pytest.mark.parametrize("workers", [1, 2])
def test_encrypt_decrypt_round_trip(keys: tuple[Path, Path], workers: int) -> None:
    secret = load_secret_context(keys[0])
    vector = np.random.default_rng(0).normal(size=8192 * 70 + 11)
    blobs = encrypt_vector(secret, vector, workers=workers)
    assert len(blobs) == 71  # two reals per complex slot: 8192 values per ciphertext
    assert max(abs(len(b) / 8192 - 8) for b in blobs[:-1]) < 0.05  # seeded: one polynomial and a seed
    np.testing.assert_allclose(decrypt_chunks(secret, blobs, size=len(vector), workers=workers), vector, atol=1e-6)
    with pytest.raises(ValueError, match="expected 1 for 5 values"):
        decrypt_chunks(secret, blobs[:2], size=5)
    public = load_public_context(keys[1])
    with pytest.raises(ValueError, match="secret-key context"):
        encrypt_vector(public, vector)


def test_layout_round_trip_rounds_integer_buffers() -> None:
    state = {"w": torch.randn(3, 4), "n": torch.tensor(7, dtype=torch.int64), "h": torch.randn(2).half()}
    layout = ParamLayout.of(state)
    vector = layout.flatten(state, scale=0.5)
    assert vector.shape == (15,) and layout.size == 15
    back = layout.unflatten(vector * 2 + 1e-7)
    assert back["n"].dtype == torch.int64 and int(back["n"]) == 7
    assert back["h"].dtype == torch.float16
    torch.testing.assert_close(back["w"], state["w"], atol=1e-6, rtol=0)
    assert ParamLayout.from_json(layout.to_json()) == layout
    with pytest.raises(ValueError, match="expected \\(15,\\)"):
        layout.unflatten(np.zeros(3))


def test_payload_checks_name_the_mismatch(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    secret = load_secret_context(keys[0])
    public = load_public_context(keys[1])
    layout = ParamLayout.of({"w": torch.zeros(9000)})
    blobs = encrypt_vector(secret, np.zeros(9000))
    good = EncryptedPayload("update", public.params.fingerprint(), public.key_id, layout, blobs)
    EncryptedPayload.from_record(good.to_record()).check_against(public, kind="update", layout=layout)
    other = load_public_context(create_key_pair(tmp_path / "o")[1])
    cases = [
        (good, other, "this run uses key"),
        (EncryptedPayload("aggregate", public.params.fingerprint(), public.key_id, layout, blobs), public, "kind"),
        (EncryptedPayload("update", "0" * 16, public.key_id, layout, blobs), public, "CKKS parameters"),
        (EncryptedPayload("update", public.params.fingerprint(), public.key_id, layout, blobs[:1]), public, "chunks"),
    ]
    for payload, ctx, match in cases:
        with pytest.raises(ValueError, match=match):
            EncryptedPayload.from_record(payload.to_record()).check_against(ctx, kind="update", layout=layout)
    record = good.to_record()
    del record["he-000001"]
    with pytest.raises(ValueError, match="announces 2"):
        EncryptedPayload.from_record(record)
    assert public.codec.load(blobs[0]).size() == 2  # the server expands a seeded ciphertext without a key


def test_key_files_of_the_old_codec_get_one_line(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    for path, loader in ((keys[0], load_secret_context), (keys[1], load_public_context)):
        old = codec1_copy(path, tmp_path / path.name)
        with pytest.raises(ValueError, match=r"uses medsilo HE codec 1; this version reads codec 2") as err:
            loader(old)
        assert "\n" not in str(err.value) and "medsilo keys init" in str(err.value)
    rewrite_key_header(keys[1], tmp_path / "real.ctx", packing="real")
    with pytest.raises(ValueError, match="packs 'real'; expected 'complex'"):
        load_public_context(tmp_path / "real.ctx")


def test_a_payload_of_the_old_codec_gets_one_line(keys: tuple[Path, Path]) -> None:
    secret = load_secret_context(keys[0])
    layout = ParamLayout.of({"w": torch.zeros(10)})
    record = EncryptedPayload(
        "update", secret.params.fingerprint(), secret.key_id, layout, encrypt_vector(secret, np.zeros(10))
    ).to_record()
    header = json.loads(record["he-header"].numpy().tobytes())
    del header["codec"]
    record["he-header"] = Array(np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
    with pytest.raises(ValueError, match="the update of node 7 uses medsilo HE codec 1"):
        EncryptedPayload.from_record(record, what="the update of node 7")


def test_the_fingerprint_covers_codec_and_packing(keys: tuple[Path, Path]) -> None:
    params = load_public_context(keys[1]).params
    legacy = hashlib.sha256(json.dumps(asdict(params), sort_keys=True).encode()).hexdigest()[:16]
    assert params.fingerprint() != legacy  # a payload from codec 1 never passes the parameter check
