"""Session fixtures for the end-to-end tests: live ``dtr serve`` processes on loopback and
an isolated environment for the real clients (crane, oras, regctl, helm, skopeo).

* ``embedded`` — the embedded default: SQLite + filesystem storage in a temp folder.
* ``embedded_auth`` — the same with authentication on (clients log in as the admin).
* ``pg_minio`` — PostgreSQL 15 (initdb in a temp folder) + MinIO (S3 storage driver).

Clients never see the real home folder: ``client`` points HOME, the XDG folders,
DOCKER_CONFIG, REGISTRY_AUTH_FILE, helm's folders and containers' registries.conf at a
session temp folder, and runs every command with a timeout, failing with its output.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.peers import DtrServer, dtr_server, minio, peer, postgres


def server_log_tail(server: DtrServer, lines: int = 60) -> str:
    """The last lines of a live server's log (for failure messages)."""
    log = server.data_dir / f"dtr-{server.port}.log"
    if not log.exists():
        return "(no server log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DtrServer]:
    """A live dtr on its embedded default (SQLite + filesystem), 2 workers."""
    with dtr_server(tmp_path_factory.mktemp("embedded")) as server:
        yield server


@pytest.fixture(scope="session")
def embedded_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DtrServer]:
    """The embedded default with authentication on (as shipped), 2 workers."""
    with dtr_server(tmp_path_factory.mktemp("embedded-auth"), auth=True) as server:
        yield server


@pytest.fixture(scope="session")
def pg_minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DtrServer]:
    """A live dtr on PostgreSQL 15 + MinIO, 2 workers."""
    with postgres() as pg, minio() as s3:
        url = pg.create_db("dtr_e2e")
        with dtr_server(tmp_path_factory.mktemp("pg-minio"), database_url=url,
                        s3=s3, bucket="dtr-e2e") as server:
            yield server


@dataclass
class Client:
    """Runs peer clients in an isolated home folder."""

    home: Path
    env: dict[str, str]
    policy: Path
    """containers-policy.json accepting anything (skopeo ``--policy``)."""

    def run(self, tool: str, *args: str, cwd: Path | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run ``tool`` (a peer name or a binary on PATH); fail with its output unless rc 0."""
        return self.run_any([peer(tool), *args], cwd=cwd, timeout=timeout, check=True)

    def run_any(self, argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 180,
                check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command; with ``check`` fail (with stdout and stderr) unless rc 0."""
        proc = subprocess.run(list(argv), env=self.env, cwd=cwd or self.home,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            pytest.fail(f"`{' '.join(argv)}` exited {proc.returncode}\n"
                        f"--- stdout ---\n{proc.stdout[-4000:]}\n"
                        f"--- stderr ---\n{proc.stderr[-4000:]}", pytrace=False)
        return proc

    def output_bytes(self, tool: str, *args: str, stdin: bytes | None = None) -> bytes:
        """The binary stdout of ``tool`` (e.g. a blob), fed ``stdin``; fail unless rc 0."""
        return self._bytes([peer(tool), *args], stdin)

    def _bytes(self, argv: list[str], stdin: bytes | None = None) -> bytes:
        proc = subprocess.run(argv, env=self.env, cwd=self.home, input=stdin,
                              capture_output=True, timeout=180, check=False)
        if proc.returncode != 0:
            pytest.fail(f"`{' '.join(argv)}` exited {proc.returncode}\n"
                        f"{proc.stderr.decode(errors='replace')[-4000:]}", pytrace=False)
        return proc.stdout

    def skopeo_argv(self) -> list[str]:
        """skopeo with the accept-anything policy, an empty registries.d and a private
        temp folder (as root it still keeps its blob-info cache in /var/lib/containers)."""
        return [peer("skopeo"), "--policy", str(self.policy), "--registries.d",
                str(self.home / "containers" / "registries.d"), "--tmpdir",
                str(self.home / "containers" / "tmp")]

    def skopeo(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run skopeo (see :meth:`skopeo_argv`); fail unless rc 0."""
        return self.run_any([*self.skopeo_argv(), *args], cwd=cwd, check=True)

    def skopeo_bytes(self, *args: str) -> bytes:
        """The binary stdout of a skopeo command (e.g. ``inspect --raw``)."""
        return self._bytes([*self.skopeo_argv(), *args])


@pytest.fixture(scope="session")
def client(tmp_path_factory: pytest.TempPathFactory) -> Client:
    """An isolated environment for the client binaries."""
    home = tmp_path_factory.mktemp("client-home")
    for sub in (".config", ".cache", ".local/share", ".docker", "helm/config", "helm/cache",
                "helm/data", "containers/registries.d", "containers/tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    policy = home / "containers" / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    registries = home / "containers" / "registries.conf"
    registries.write_text("")
    auth = home / "containers" / "auth.json"
    auth.write_text("{}")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DOCKER_", "REGISTRY_", "HELM_", "XDG_", "OCI_", "REGCTL_",
                                "CONTAINERS_", "ORAS_"))}
    env.update({
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_RUNTIME_DIR": str(home / ".cache"),
        "DOCKER_CONFIG": str(home / ".docker"),
        "REGISTRY_AUTH_FILE": str(auth),
        "CONTAINERS_REGISTRIES_CONF": str(registries),
        "HELM_CONFIG_HOME": str(home / "helm/config"),
        "HELM_CACHE_HOME": str(home / "helm/cache"),
        "HELM_DATA_HOME": str(home / "helm/data"),
        "HELM_REGISTRY_CONFIG": str(home / "helm/config/registry.json"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY",
                "all_proxy"):
        env.pop(var, None)
    return Client(home, env, policy)


@pytest.fixture
def http(embedded: DtrServer) -> Iterator[httpx.Client]:
    """A plain HTTP client on the embedded server (to read what the clients stored)."""
    with httpx.Client(base_url=embedded.url, timeout=30) as c:
        yield c
