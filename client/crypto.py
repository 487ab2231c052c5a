"""The hospital's side of encrypted FedAvg: decrypt the global model, encrypt the update."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord

from common import records as rk
from common.calibration_fit import STATISTICS_KIND, STATISTICS_SUM_KIND
from common.config import ConfigError, RunConfig
from common.he.codec import ParamLayout, decrypt_chunks, encrypt_vector
from common.he.keys import SECRET_FILE, HEContext, load_secret_context
from common.he.payload import EncryptedPayload, is_encrypted
from common.node_config import parse_node_config

__all__ = ["decode_global", "decrypt_statistics", "encrypt_statistics", "encrypt_update", "secret_context"]

log = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def _load(path: str) -> HEContext:
    return load_secret_context(path)


def secret_context(node_config: Mapping[str, object], config: ConfigRecord, cfg: RunConfig) -> HEContext:
    """Load (once per process) this key-holder's secret context and check it is the run's key.

    A deployed node reads its node config's ``he-secret-context`` and nothing else. A simulated
    node reads the run config's ``he-secret-context`` (explicit keys: the server's ``he-keys-dir``
    holds ``public.ctx`` only), or, when the server generated the run's key pair, ``secret.ctx``
    in the run's keys folder that the server names.
    """
    node = parse_node_config(node_config)
    path = node.he_secret_context
    if not path and not node.deployed:
        if cfg.he_secret_context:
            path = cfg.he_secret_context
        elif cfg.he_keys_dir:
            raise ConfigError(
                "run config: 'he-secret-context' is empty; expected the path of secret.ctx for the simulated "
                "key-holders when 'he-keys-dir' is set (that folder is the server's and holds public.ctx only)"
            )
        elif rk.HE_KEYS_DIR in config:
            path = str(Path(str(config[rk.HE_KEYS_DIR])) / SECRET_FILE)
    if not path:
        raise ConfigError("node config: 'he-secret-context' is missing; expected the path of this node's secret.ctx")
    try:
        ctx = _load(str(path))
    except ValueError as err:
        raise ConfigError(f"'he-secret-context' = {str(path)!r}: {err}") from None
    expected = config.get(rk.HE_KEY_ID)
    if expected is not None and ctx.key_id != expected:
        raise ConfigError(f"{path} holds key {ctx.key_id}, but this run encrypts under key {expected}")
    return ctx


def decode_global(
    arrays: ArrayRecord, *, layout: ParamLayout, ctx: HEContext | None, workers: int
) -> tuple[dict[str, torch.Tensor], float]:
    """The global state dict from plaintext weights or an encrypted aggregate.

    Returns:
        The state dict and the seconds spent decrypting (0 for plaintext).
    """
    if not is_encrypted(arrays):
        return arrays.to_torch_state_dict(), 0.0
    if ctx is None:
        raise ValueError("the global model is encrypted, but he-enabled is false on this node")
    start = time.perf_counter()
    payload = EncryptedPayload.from_record(arrays)
    payload.check_against(ctx, kind="aggregate", layout=layout)
    vector = decrypt_chunks(ctx, payload.chunks, size=layout.size, workers=workers) * payload.factor
    return layout.unflatten(vector), time.perf_counter() - start


def _check_headroom(vector: np.ndarray, ctx: HEContext) -> None:
    """Refuse values so large that the encrypted sum could wrap around the first CKKS prime.

    Pre-weighted updates sum to a weighted mean, so no decoded sum exceeds the largest value
    any hospital holds; a coefficient stays below 2^(first prime - 1) while every value stays
    below 2^(first prime - scale - 2).
    """
    params = ctx.params
    limit = 2.0 ** (params.coeff_mod_bit_sizes[0] - params.scale_bits - 2)
    peak = float(np.abs(vector).max()) if vector.size else 0.0
    if not peak < limit:
        raise ValueError(
            f"the update holds a value of magnitude {peak:.4g}; these CKKS keys (first prime "
            f"{params.coeff_mod_bit_sizes[0]} bits, scale 2^{params.scale_bits}) carry at most {limit:.4g}: "
            "use keys with a larger first prime or a smaller scale"
        )


def encrypt_update(
    state: Mapping[str, torch.Tensor], *, ctx: HEContext, weight: float, workers: int
) -> tuple[ArrayRecord, float]:
    """Pre-weight the state dict by ``weight`` (n_k / n_total) and encrypt it in chunks.

    Returns:
        The encrypted ``ArrayRecord`` and the seconds spent encrypting.
    """
    start = time.perf_counter()
    layout = ParamLayout.of(state)
    vector = layout.flatten(state)
    _check_headroom(vector, ctx)
    chunks = encrypt_vector(ctx, vector * weight, workers=workers)
    payload = EncryptedPayload(
        kind="update", params_fingerprint=ctx.params.fingerprint(), key_id=ctx.key_id, layout=layout, chunks=chunks
    )
    seconds = time.perf_counter() - start
    log.info("encrypted %d values into %d chunks in %.2fs", layout.size, len(chunks), seconds)
    return payload.to_record(), seconds


def encrypt_statistics(stats: Mapping[str, np.ndarray], *, ctx: HEContext, scale: float) -> ArrayRecord:
    """Encrypt a hospital's calibration statistics, each multiplied by ``scale``, as one payload.

    ``scale`` is 1 / n_total (the run's training images): the sum over hospitals stays well inside
    the range the CKKS keys carry, and the key-holder that decrypts the sum multiplies it back.
    """
    layout = ParamLayout.of_shapes({name: tuple(v.shape) for name, v in stats.items()})
    vector = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in stats.values()]) * scale
    _check_headroom(vector, ctx)
    payload = EncryptedPayload(
        kind=STATISTICS_KIND,
        params_fingerprint=ctx.params.fingerprint(),
        key_id=ctx.key_id,
        layout=layout,
        chunks=encrypt_vector(ctx, vector),
    )
    return payload.to_record()


def decrypt_statistics(arrays: ArrayRecord, *, ctx: HEContext, layout: ParamLayout) -> dict[str, np.ndarray]:
    """The evaluator's side: the server's encrypted sum of statistics, decrypted and multiplied by its factor.

    Raises:
        ValueError: the payload is not a sum of statistics of ``layout`` under this run's key.
    """
    payload = EncryptedPayload.from_record(arrays, what="the summed calibration statistics")
    payload.check_against(ctx, kind=STATISTICS_SUM_KIND, layout=layout)
    vector = decrypt_chunks(ctx, payload.chunks, size=layout.size) * payload.factor
    return {name: tensor.numpy() for name, tensor in layout.unflatten(vector).items()}
