"""The hospital's key handling: missing or foreign keys stop with one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from old_codec import codec1_copy

from client.crypto import decode_global, encrypt_update, secret_context
from common.config import ConfigError, parse_run_config
from common.he.codec import ParamLayout
from common.he.keys import HEParams, create_key_pair, load_secret_context
from common.he.payload import EncryptedPayload


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    create_key_pair(directory)
    return directory


SIMULATED = {"partition-id": 0, "num-partitions": 3}
GENERATED = parse_run_config({"he-enabled": True})  # the server made the run's key pair


def test_a_node_without_a_secret_key_is_told_what_to_set(keys_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'he-secret-context' is missing"):
        secret_context(SIMULATED, ConfigRecord(), GENERATED)
    deployed = {"role": "hospital", "data-path": str(tmp_path)}
    with pytest.raises(ValueError, match="'he-secret-context' is missing"):  # never a path the server names
        secret_context(deployed, ConfigRecord({"he-keys-dir": str(keys_dir)}), GENERATED)
    deployed_key = {**deployed, "he-secret-context": str(keys_dir / "secret.ctx")}
    assert secret_context(deployed_key, ConfigRecord(), GENERATED).key_id


def test_simulated_key_holders_with_explicit_keys_read_the_run_configs_secret(keys_dir: Path, tmp_path: Path) -> None:
    """With he-keys-dir set, the server's folder holds public.ctx only: the secret comes from he-secret-context."""
    server_folder = ConfigRecord({"he-keys-dir": str(tmp_path)})  # what the server names: no secret.ctx there
    explicit = parse_run_config({"he-enabled": True, "he-keys-dir": str(tmp_path)})
    with pytest.raises(ValueError, match="run config: 'he-secret-context' is empty; expected the path of secret.ctx"):
        secret_context(SIMULATED, server_folder, explicit)
    with_secret = parse_run_config(
        {"he-enabled": True, "he-keys-dir": str(tmp_path), "he-secret-context": str(keys_dir / "secret.ctx")}
    )
    expected = load_secret_context(keys_dir / "secret.ctx").key_id
    assert secret_context(SIMULATED, server_folder, with_secret).key_id == expected


def test_a_foreign_key_is_refused(keys_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    create_key_pair(other)
    run_key = load_secret_context(keys_dir / "secret.ctx").key_id
    config = ConfigRecord({"he-keys-dir": str(keys_dir), "he-key-id": run_key})
    assert secret_context(SIMULATED, config, GENERATED).key_id == run_key
    with pytest.raises(ValueError, match="but this run encrypts under key"):
        secret_context({**SIMULATED, "he-secret-context": str(other / "secret.ctx")}, config, GENERATED)
    with pytest.raises(ValueError, match="holds no secret key"):
        secret_context({**SIMULATED, "he-secret-context": str(keys_dir / "public.ctx")}, config, GENERATED)


def test_update_round_trip_through_an_aggregate(keys_dir: Path) -> None:
    ctx = load_secret_context(keys_dir / "secret.ctx")
    state = {"w": torch.randn(6000), "n": torch.tensor(3)}
    record, seconds = encrypt_update(state, ctx=ctx, weight=0.25, workers=1)
    assert seconds > 0
    update = EncryptedPayload.from_record(record)
    aggregate = EncryptedPayload(
        "aggregate", update.params_fingerprint, update.key_id, update.layout, update.chunks, factor=4.0
    )
    decoded, _ = decode_global(aggregate.to_record(), layout=ParamLayout.of(state), ctx=ctx, workers=1)
    torch.testing.assert_close(decoded["w"], state["w"], atol=1e-6, rtol=0)
    assert int(decoded["n"]) == 3
    with pytest.raises(ValueError, match="kind 'update'; expected 'aggregate'"):
        decode_global(record, layout=ParamLayout.of(state), ctx=ctx, workers=1)
    with pytest.raises(ValueError, match="he-enabled is false"):
        decode_global(aggregate.to_record(), layout=ParamLayout.of(state), ctx=None, workers=1)
    plain = {"w": torch.from_numpy(np.arange(3.0))}
    assert decode_global(ArrayRecord(plain), layout=ParamLayout.of(plain), ctx=None, workers=1)[1] == 0.0


def test_values_beyond_the_keys_headroom_are_refused_before_encryption(tmp_path: Path) -> None:
    """Smaller keys ([45, 60] bits, scale 2^35: 6.7 B/value) carry values below 2^8; larger ones would wrap."""
    params = HEParams(coeff_mod_bit_sizes=(45, 60), scale_bits=35)
    ctx = load_secret_context(create_key_pair(tmp_path, params)[0])
    fits = {"w": torch.full((10,), 255.0, dtype=torch.float64), "n": torch.tensor(-200)}
    record, _ = encrypt_update(fits, ctx=ctx, weight=1.0, workers=1)
    update = EncryptedPayload.from_record(record)
    aggregate = EncryptedPayload("aggregate", update.params_fingerprint, update.key_id, update.layout, update.chunks)
    decoded, _ = decode_global(aggregate.to_record(), layout=ParamLayout.of(fits), ctx=ctx, workers=1)
    torch.testing.assert_close(decoded["w"], fits["w"], atol=1e-6, rtol=0)
    with pytest.raises(
        ValueError, match=r"magnitude 300; these CKKS keys \(first prime 45 bits, scale 2\^35\) carry at most 256"
    ):
        encrypt_update({"n": torch.tensor(300)}, ctx=ctx, weight=0.5, workers=1)


def test_a_secret_key_of_the_old_codec_is_a_config_error(keys_dir: Path, tmp_path: Path) -> None:
    old = codec1_copy(keys_dir / "secret.ctx", tmp_path / "old.ctx")
    deployed = {"role": "hospital", "data-path": str(tmp_path), "he-secret-context": str(old)}
    with pytest.raises(ConfigError, match=r"'he-secret-context' = '.*old.ctx': key file .* uses medsilo HE codec 1"):
        secret_context(deployed, ConfigRecord(), GENERATED)
