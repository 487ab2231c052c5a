"""The server's side of the keys: it loads ``public.ctx`` and nothing else."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from common.config import ConfigError, RunConfig
from common.experiment import resolve_path
from common.he.keys import PUBLIC_FILE, HEContext, load_public_context

__all__ = ["check_public_key", "refuse_secret_keys", "server_context"]

log = logging.getLogger(__name__)


def refuse_secret_keys(cfg: RunConfig) -> None:
    """Stop a run whose ``he-keys-dir`` (the server's own folder) holds anything but ``public.ctx``.

    Every other ``*.ctx`` there is taken for a secret key by its name, without being opened,
    so a secret never enters the server process even to be recognised.

    Raises:
        ConfigError: one line naming the file and what to do with it.
    """
    if not cfg.he_enabled or not cfg.he_keys_dir:
        return
    keys_dir = resolve_path(cfg.he_keys_dir)
    extra = sorted(p.name for p in keys_dir.glob("*.ctx") if p.name != PUBLIC_FILE)
    if extra:
        raise ConfigError(
            f"run config: 'he-keys-dir' = {str(keys_dir)!r} holds {extra[0]!r}, which may be a secret key; "
            f"expected {PUBLIC_FILE} only: move {extra[0]} out of the server's folder, to the key-holders "
            "(node config 'he-secret-context'; in simulation, run config 'he-secret-context')"
        )


def check_public_key(cfg: RunConfig) -> None:
    """Load the run's ``public.ctx`` once before anything runs, so a bad or old key file is one line.

    Raises:
        ConfigError: the file is missing, damaged, holds a secret, or was made by another codec.
    """
    if not cfg.he_enabled or not cfg.he_keys_dir:
        return
    try:
        load_public_context(resolve_path(cfg.he_keys_dir) / PUBLIC_FILE)
    except ValueError as err:
        raise ConfigError(f"run config: 'he-keys-dir' = {cfg.he_keys_dir!r}: {err}") from None


def server_context(cfg: RunConfig, run_dir: Path) -> tuple[HEContext, Path]:
    """Load the run's public context; in simulation, generate a key pair when none is given.

    A fresh pair is made by a separate ``medsilo keys init`` process under
    ``run_dir/keys``, so the secret key never enters the server process.

    Returns:
        The public context and the keys directory.
    """
    if cfg.he_keys_dir:
        keys_dir = resolve_path(cfg.he_keys_dir)
    elif (run_dir / "keys" / PUBLIC_FILE).is_file():  # a resumed simulation keeps its key pair
        keys_dir = run_dir / "keys"
    else:
        keys_dir = run_dir / "keys"
        subprocess.run(
            [sys.executable, "-m", "common.cli", "keys", "init", "--out", str(keys_dir)],
            check=True,
            capture_output=True,
            text=True,
        )
        log.info("he-keys-dir is empty: generated a fresh CKKS key pair in %s (simulation only)", keys_dir)
    public = load_public_context(keys_dir / PUBLIC_FILE)
    if public.context.is_private():
        raise RuntimeError("the aggregation server must never hold a secret key")
    return public, keys_dir
