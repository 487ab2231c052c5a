"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs site built once, strictly (``mkdocs build --strict``), for every docs test."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture()
def offline_torch_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No download, and an empty ``$TORCH_HOME``: the ``hub/checkpoints`` folder torch.hub reads ImageNet weights from.

    torch.hub's ``urlopen`` (its own reference) and urllib's refuse, so a test that reaches for
    the network gets the offline error instead.
    """
    import urllib.error
    import urllib.request

    import torch.hub

    def refuse(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in the tests")

    monkeypatch.setattr(torch.hub, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    assert torch.hub.get_dir() == str(tmp_path / "torch-home" / "hub")  # read from $TORCH_HOME at each call
    return tmp_path / "torch-home" / "hub" / "checkpoints"
