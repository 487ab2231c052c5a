"""Encrypted FedAvg on the server: the sum of ciphertexts equals plaintext FedAvg."""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from old_codec import codec1_copy

from common.config import ConfigError, parse_run_config
from common.he.codec import ParamLayout, decrypt_chunks, encrypt_vector
from common.he.keys import create_key_pair, load_public_context, load_secret_context
from common.he.payload import EncryptedPayload
from common.run_outcome import read_outcome
from server.encrypted_strategy import EncryptedFedAvg
from server.history import RunHistory
from server.keys import check_public_key, refuse_secret_keys
from server.roster import NodeRoster

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    secret_path, public_path = create_key_pair(tmp_path_factory.mktemp("keys"))
    return load_secret_context(secret_path), load_public_context(public_path)


def _reply(node: int, content: RecordDict) -> Message:
    sent = Message(
        content=RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node, message_type="train"
    )
    return Message(content, reply_to=sent)


def _hospital_reply(secret, node: int, state: dict[str, torch.Tensor], n_k: int, n_total: int) -> Message:
    layout = ParamLayout.of(state)
    blobs = encrypt_vector(secret, layout.flatten(state, scale=n_k / n_total))
    payload = EncryptedPayload("update", secret.params.fingerprint(), secret.key_id, layout, blobs)
    metrics = MetricRecord({"num-examples": n_k, "train-loss": 0.5})
    return _reply(
        node,
        RecordDict({"arrays": payload.to_record(), "metrics": metrics, "hospital": ConfigRecord({"name": f"h{node}"})}),
    )


def _strategy(keys, layout: ParamLayout, roster: NodeRoster, tmp_path: Path) -> EncryptedFedAvg:
    _, public = keys
    return EncryptedFedAvg(
        history=RunHistory(tmp_path / "history.json"),
        public=public,
        layout=layout,
        roster=roster,
        base_config=ConfigRecord(),
        seed=0,
        min_train_nodes=1,
        min_available_nodes=1,
    )


def _decrypt(secret, record: ArrayRecord, layout: ParamLayout) -> np.ndarray:
    payload = EncryptedPayload.from_record(record)
    return decrypt_chunks(secret, payload.chunks, size=layout.size) * payload.factor


@pytest.mark.parametrize("arrived", [10, 7])
def test_encrypted_sum_equals_plaintext_fedavg(keys, tmp_path: Path, arrived: int) -> None:
    secret, _ = keys
    rng = np.random.default_rng(arrived)
    states = [
        {"conv": torch.from_numpy(rng.normal(size=(64, 3, 5, 5))), "bias": torch.from_numpy(rng.normal(size=(10,)))}
        for _ in range(10)
    ]
    counts = [int(c) for c in rng.integers(20, 400, size=10)]
    layout = ParamLayout.of(states[0])
    roster = NodeRoster({100 + i: n for i, n in enumerate(counts)}, {}, evaluator=99)
    strategy = _strategy(keys, layout, roster, tmp_path)
    replies = [_hospital_reply(secret, 100 + i, states[i], counts[i], sum(counts)) for i in range(arrived)]
    record, metrics = strategy.aggregate_train(1, replies)
    assert metrics is not None and record is not None
    # Independent reference: plaintext FedAvg of the hospitals that arrived.
    weights = np.array(counts[:arrived], dtype=np.float64)
    reference = sum(w * layout.flatten(s) for w, s in zip(weights / weights.sum(), states[:arrived], strict=True))
    error = np.abs(_decrypt(secret, record, layout) - reference).max()
    assert error <= 1e-6, error
    assert strategy.history.round(1)["failures"] == []


def test_bad_encrypted_replies_are_rejected_one_by_one(keys, tmp_path: Path) -> None:
    secret, _ = keys
    state = {"w": torch.ones(9000, dtype=torch.float64)}
    layout = ParamLayout.of(state)
    roster = NodeRoster({i: 10 for i in range(1, 8)}, {}, evaluator=9)
    strategy = _strategy(keys, layout, roster, tmp_path)
    other_secret = load_secret_context(create_key_pair(tmp_path / "other")[0])
    truncated = _hospital_reply(secret, 3, state, 10, 50)
    arrays = truncated.content["arrays"]
    del arrays["he-000001"]
    wrong_layout = _hospital_reply(secret, 5, {"v": torch.ones(9000, dtype=torch.float64)}, 10, 50)
    damaged = _hospital_reply(secret, 6, state, 10, 50)
    chunk = damaged.content["arrays"]["he-000001"].numpy()
    damaged.content["arrays"]["he-000001"] = Array(chunk[: len(chunk) // 2].copy())
    old_codec = _hospital_reply(secret, 7, state, 10, 50)
    header = json.loads(old_codec.content["arrays"]["he-header"].numpy().tobytes())
    del header["codec"]
    old_codec.content["arrays"]["he-header"] = Array(np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
    replies = [
        _hospital_reply(secret, 1, state, 10, 50),
        _hospital_reply(other_secret, 2, state, 10, 50),
        truncated,
        _hospital_reply(secret, 4, state, 11, 50),
        wrong_layout,
        damaged,
        old_codec,
        _hospital_reply(secret, 8, state, 10, 50),
    ]
    record, _ = strategy.aggregate_train(1, iter(replies))  # as the server gets them: one at a time
    failures = {f["node_id"]: f["reason"] for f in strategy.history.round(1)["failures"]}
    assert sorted(failures) == [2, 3, 4, 5, 6, 7, 8]
    assert "this run uses key" in failures[2] and "announces" in failures[3] and "declared 10" in failures[4]
    assert "layout" in failures[5] and "roster" in failures[8]
    assert failures[6].startswith("undecodable ciphertext: not a ciphertext for this run's CKKS parameters")
    assert "uses medsilo HE codec 1; this version reads codec 2" in failures[7]
    # Only node 1 counted: the factor renormalises its 10 of the roster's 70 examples.
    np.testing.assert_allclose(_decrypt(secret, record, layout), np.full(9000, 70 / 50), atol=1e-6)
    assert "arrays" not in replies[0].content  # the summed ciphertexts were dropped as they were added
    hospital = strategy.history.round(1)["hospitals"]["h1"]
    assert hospital["bytes_sent"] == sum(
        len(a.data) for a in _hospital_reply(secret, 1, state, 10, 50).content["arrays"].values()
    )


def test_the_server_refuses_a_secret_context(keys, tmp_path: Path) -> None:
    secret, _ = keys
    with pytest.raises(RuntimeError, match="never hold a secret key"):
        EncryptedFedAvg(
            history=RunHistory(tmp_path / "h.json"),
            public=secret,
            layout=ParamLayout.of({"w": torch.zeros(1)}),
            roster=NodeRoster({}, {}, None),
            base_config=ConfigRecord(),
            seed=0,
        )


@pytest.mark.parametrize("name", ["secret.ctx", "hospital-a.ctx"])
def test_a_keys_folder_holding_more_than_the_public_key_stops_the_run(tmp_path: Path, name: str) -> None:
    (tmp_path / "public.ctx").write_bytes(b"public")
    (tmp_path / name).write_bytes(b"never opened")
    cfg = parse_run_config({"he-enabled": True, "he-keys-dir": str(tmp_path)})
    with pytest.raises(ConfigError) as err:
        refuse_secret_keys(cfg)
    assert str(err.value).count("\n") == 0 and f"holds '{name}'" in str(err.value) and "move" in str(err.value)
    (tmp_path / name).unlink()
    refuse_secret_keys(cfg)  # public.ctx alone passes
    refuse_secret_keys(parse_run_config({"he-enabled": True}))  # keys the server generates (simulation)


def test_a_simulation_with_the_secret_in_the_servers_keys_folder_stops_before_anything_runs(
    tmp_path: Path, server_main_records: Callable[[Context], list[logging.LogRecord]]
) -> None:
    """The ServerApp's own entry point: one error line, no run directory, no message to any node."""
    create_key_pair(tmp_path / "keys")
    run_config = {
        "he-enabled": True,
        "he-keys-dir": str(tmp_path / "keys"),
        "he-secret-context": str(tmp_path / "keys" / "secret.ctx"),
        "output-dir": str(tmp_path / "runs"),
    }
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    records = server_main_records(context)
    messages = [r.getMessage() for r in records]
    assert len(messages) == 1 and records[0].levelno == logging.ERROR, messages
    assert "holds 'secret.ctx'" in messages[0] and "move secret.ctx" in messages[0] and "\n" not in messages[0]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [".outcomes"]  # no run directory: only how it ended
    assert read_outcome(tmp_path / "runs", 1) == {"run_id": 1, "status": "failed", "line": messages[0], "run_dir": ""}


def test_an_old_public_key_stops_the_run_before_anything_runs(tmp_path: Path) -> None:
    _, public = create_key_pair(tmp_path / "keys")
    (tmp_path / "server-keys").mkdir()
    codec1_copy(public, tmp_path / "server-keys" / "public.ctx")
    cfg = parse_run_config({"he-enabled": True, "he-keys-dir": str(tmp_path / "server-keys")})
    with pytest.raises(
        ConfigError, match=r"'he-keys-dir' = '.*server-keys': key file .* uses medsilo HE codec 1"
    ) as err:
        check_public_key(cfg)
    assert "\n" not in str(err.value)
    (tmp_path / "server-keys" / "public.ctx").write_bytes(public.read_bytes())
    check_public_key(cfg)  # the current codec passes


def test_server_code_never_loads_a_secret_key() -> None:
    """No module of the server package can reach the secret-key loader or decryption."""
    forbidden = {"load_secret_context", "decrypt_chunks", "decrypt_model_dir", "SECRET_FILE", "decode_global"}
    for path in (REPO / "server").glob("*.py"):
        names = {
            alias.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        assert not names & forbidden, f"{path.name} imports {names & forbidden}"
        calls = {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
        used = calls & {"decrypt", "decryptor", "secret_key"}
        assert not used, f"{path.name} uses {used}"
        assert "client" not in {
            n.module.split(".")[0]
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.ImportFrom) and n.module
        }


def test_the_servers_codec_cannot_decrypt(keys) -> None:
    """What the server loads (public.ctx) builds SEAL's evaluator only: no decryptor, no encryptor."""
    secret, public = keys
    blob = secret.codec.encrypt(np.ones(3))
    assert public.codec.load(blob).size() == 2
    with pytest.raises(ValueError, match="decryption needs the secret-key context"):
        public.codec.decrypt(blob)
    with pytest.raises(ValueError, match="encryption needs the secret-key context"):
        public.codec.encrypt(np.ones(3))
