"""docker/make-pki.sh, run for real: the CA, the SuperLink certificate, the SuperNode keys."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docker" / "make-pki.sh"
NODES = ("hospital-a", "hospital-b", "evaluator")

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("ssh-keygen") is None,
    reason="openssl or ssh-keygen is missing (Debian: apt-get install openssl openssh-client; `make system-deps`)",
)


def _make_pki(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args, str(out), *NODES], capture_output=True, text=True, timeout=120)


def _openssl(*args: str) -> str:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "pki"
    done = _make_pki(out, "--san", "DNS:fl.example.org")
    assert done.returncode == 0, done.stderr
    return out


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_superlink_certificate_chains_to_the_ca(pki: Path) -> None:
    assert _openssl("verify", "-CAfile", str(pki / "ca.crt"), str(pki / "superlink.crt")).strip().endswith(": OK")
    ca = _openssl("x509", "-in", str(pki / "ca.crt"), "-noout", "-ext", "basicConstraints")
    assert "CA:TRUE" in ca


def test_the_superlink_certificate_names_every_address_flower_uses(pki: Path) -> None:
    text = _openssl("x509", "-in", str(pki / "superlink.crt"), "-noout", "-ext", "subjectAltName")
    for san in ("IP Address:127.0.0.1", "DNS:localhost", "DNS:superlink", "DNS:fl.example.org"):
        assert san in text
    usage = _openssl("x509", "-in", str(pki / "superlink.crt"), "-noout", "-ext", "extendedKeyUsage,basicConstraints")
    assert "TLS Web Server Authentication" in usage and "CA:FALSE" in usage


def test_supernode_keys_are_ecdsa_openssh_and_private_keys_are_0600(pki: Path) -> None:
    assert _mode(pki / "ca.key") == 0o600 and _mode(pki / "superlink.key") == 0o600
    assert sorted(p.name for p in (pki / "nodes").iterdir()) == sorted(NODES)
    for node in NODES:
        key, pub = pki / "nodes" / node / "node.key", pki / "nodes" / node / "node.key.pub"
        assert _mode(key) == 0o600
        assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert pub.read_text().startswith("ecdsa-sha2-nistp384 ")
        fingerprint = subprocess.run(
            ["ssh-keygen", "-l", "-f", str(key)], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        assert fingerprint.startswith("384 ") and fingerprint.rstrip().endswith("(ECDSA)")


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    assert _make_pki(out).returncode == 0
    before = (out / "ca.crt").read_bytes()
    (out / "keep.txt").write_text("not the script's")

    again = _make_pki(out)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    assert (out / "ca.crt").read_bytes() == before

    forced = _make_pki(out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "ca.crt").read_bytes() != before
    assert (out / "keep.txt").read_text() == "not the script's"
    assert not list(tmp_path.glob("*.partial.*"))


def test_bad_node_names_and_options_are_refused(tmp_path: Path) -> None:
    for args in (["--san", "URI:x"], ["--bogus"]):
        done = subprocess.run(["bash", str(SCRIPT), *args, str(tmp_path / "a")], capture_output=True, text=True)
        assert done.returncode != 0
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "b"), "../x"], capture_output=True, text=True)
    assert done.returncode != 0 and "node name" in done.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "nodes").exists()
