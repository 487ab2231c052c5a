"""SEAL-level CKKS: seeded ciphertexts that travel between processes, and sums checked in float64."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.he.ckks import CiphertextSum
from common.he.keys import HEParams, create_key_pair, load_public_context, load_secret_context

REPO = Path(__file__).resolve().parents[2]

HOSPITAL = """
import sys
import numpy as np
from common.he.keys import load_secret_context
codec = load_secret_context(sys.argv[1]).codec
vectors = np.load(sys.argv[2])
np.savez(sys.argv[3], *[np.frombuffer(codec.encrypt(v), dtype=np.uint8) for v in vectors])
"""


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return create_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.mark.slow
def test_ciphertexts_saved_by_another_process_sum_correctly(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """Hospitals encrypt in their own process; the server loads and adds with the public context only."""
    rng = np.random.default_rng(3)
    vectors = rng.normal(scale=0.5, size=(3, 8192))
    np.save(tmp_path / "plain.npy", vectors)
    subprocess.run(
        [sys.executable, "-c", HOSPITAL, str(keys[0]), str(tmp_path / "plain.npy"), str(tmp_path / "ct.npz")],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    with np.load(tmp_path / "ct.npz") as saved:
        blobs = [saved[f"arr_{i}"].tobytes() for i in range(3)]
    public = load_public_context(keys[1])
    total = CiphertextSum(public.codec)
    for blob in blobs:
        total.add([blob])
    (aggregate,) = total.release()
    assert len(aggregate) / 8192 < 16.1  # a sum is not seeded: two polynomials
    decrypted = load_secret_context(keys[0]).codec.decrypt(aggregate)
    assert np.abs(decrypted - vectors.sum(axis=0)).max() <= 1e-6


def test_a_damaged_ciphertext_is_refused_and_the_sum_kept(keys: tuple[Path, Path]) -> None:
    secret, public = load_secret_context(keys[0]), load_public_context(keys[1])
    good = [secret.codec.encrypt(np.full(8192, 0.25)), secret.codec.encrypt(np.full(100, -1.0))]
    total = CiphertextSum(public.codec)
    total.add(good)
    damaged = [good[0], good[1][: len(good[1]) // 2]]
    with pytest.raises(ValueError, match="not a ciphertext for this run's CKKS parameters"):
        total.add(damaged)
    with pytest.raises(ValueError, match="1 ciphertext chunks; the sum has 2"):
        total.add(good[:1])
    first, second = (secret.codec.decrypt(b) for b in total.release())
    np.testing.assert_allclose(first, 0.25, atol=1e-6)
    np.testing.assert_allclose(second[:100], -1.0, atol=1e-6)
    np.testing.assert_allclose(second[100:], 0.0, atol=1e-6)  # the padding decrypts to zero


def test_a_ciphertext_for_other_parameters_is_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    params = HEParams(poly_modulus_degree=16384, coeff_mod_bit_sizes=(60, 40, 60), scale_bits=40)
    other = load_secret_context(create_key_pair(tmp_path, params)[0])
    with pytest.raises(ValueError, match="CKKS parameters"):
        load_public_context(keys[1]).codec.load(other.codec.encrypt(np.zeros(4)))
    with pytest.raises(ValueError, match="at most 8192"):
        load_secret_context(keys[0]).codec.encrypt(np.zeros(8193))
    with pytest.raises(ValueError, match="secret-key context"):
        load_public_context(keys[1]).codec.encrypt(np.zeros(4))


def test_100_hospitals_sum_within_1e_6_of_float64_fedavg(keys: tuple[Path, Path]) -> None:
    """Pre-weighted updates at the largest magnitudes a model holds (BatchNorm variances, step counts)."""
    secret, public = load_secret_context(keys[0]), load_public_context(keys[1])
    rng = np.random.default_rng(100)
    counts = rng.integers(10, 1000, size=100).astype(np.float64)
    weights = counts / counts.sum()
    updates = rng.normal(scale=1.0, size=(100, 8192))
    updates[:, :16] = 5000.0 + rng.normal(size=(100, 16))  # num_batches_tracked-like counters
    updates[:, 16:32] = rng.uniform(0, 50, size=(100, 16))  # running variances
    total = CiphertextSum(public.codec)
    for w, u in zip(weights, updates, strict=True):
        total.add([secret.codec.encrypt(w * u)])
    reference = (weights[:, None] * updates).sum(axis=0)
    (aggregate,) = total.release()
    assert np.abs(secret.codec.decrypt(aggregate) - reference).max() <= 1e-6
