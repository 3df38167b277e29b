"""Real peers for tests, started on 127.0.0.1: PostgreSQL (initdb in a temp folder), MinIO,
distribution v3, and live ``dtr serve`` processes. Binaries come from
``scripts/install-peers.sh`` (``~/.cache/dtr/peers``); a missing peer is an error, never a
skip, because CI must not hide it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = Path(os.environ.get("DTR_PEERS_DIR", Path.home() / ".cache/dtr/peers"))
PG_BIN = Path("/usr/lib/postgresql/15/bin")

PINS = {
    "minio": ("minio-v0.0.0-20260212201848-7aac2a2c5b7c", "minio"),
    "distribution": ("distribution-v3.1.1", "registry"),
    "conformance": ("conformance-v0.0.0-20260831232431-97274622c111", "conformance"),
    "crane": ("crane-v0.21.9", "crane"),
    "oras": ("oras-v1.3.6", "oras"),
    "regctl": ("regctl-v0.11.5", "regctl"),
    "helm": ("helm-v3.21.4", "helm"),
    "cosign": ("cosign-v3.1.2", "cosign"),
    "notation": ("notation-v1.3.2", "notation"),
}


def peer(name: str) -> str:
    """Absolute path of a peer binary; installs it if missing."""
    if name in PINS:
        folder, binary = PINS[name]
        path = PEERS_DIR / folder / binary
        if not path.exists():
            subprocess.run([str(ROOT / "scripts/install-peers.sh"), name], check=True)
        return str(path)
    found = shutil.which(name)
    if found is None:
        subprocess.run([str(ROOT / "scripts/install-peers.sh"), name], check=True)
        found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"peer {name} is not installed and could not be installed")
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None,
              ok: tuple[int, ...] = (200,)) -> None:
    """Poll ``url`` until it answers one of ``ok``; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code in ok:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout}s: {last}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Postgres:
    """A running PostgreSQL server."""

    port: int
    datadir: Path

    def url(self, db: str = "postgres") -> str:
        """An asyncpg SQLAlchemy URL for database ``db``."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{db}"

    def create_db(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` (a copy of ``template`` if given); return its URL."""
        copy = f' TEMPLATE "{template}"' if template else ""
        subprocess.run([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                        "postgres", "-qc", f'CREATE DATABASE "{name}"{copy}'], check=True)
        return self.url(name)


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """Start PostgreSQL 15 as the ``postgres`` account in a temp folder (trust auth)."""
    if not (PG_BIN / "postgres").exists():
        subprocess.run([str(ROOT / "scripts/install-peers.sh"), "postgresql"], check=True)
    base = Path(tempfile.mkdtemp(prefix="dtr-pg-"))
    shutil.chown(base, "postgres", "postgres")
    datadir = base / "data"
    port = free_port()
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*run_as, str(PG_BIN / "initdb"), "-D", str(datadir), "-U", "postgres",
                    "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([*run_as, str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-l",
                    str(base / "log"), "-w", "-o",
                    f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off "
                    "-c max_connections=300", "start"], check=True, stdout=subprocess.DEVNULL)
    try:
        yield Postgres(port, datadir)
    finally:
        subprocess.run([*run_as, str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate",
                        "stop"], check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Minio:
    """A running MinIO server."""

    endpoint: str
    access_key: str = "dtr-test-access"
    secret_key: str = "dtr-test-secret-key"


@contextlib.contextmanager
def minio() -> Iterator[Minio]:
    """Start a MinIO server on 127.0.0.1 with a temp data folder."""
    binary = peer("minio")
    data = Path(tempfile.mkdtemp(prefix="dtr-minio-"))
    port, console = free_port(), free_port()
    info = Minio(f"127.0.0.1:{port}")
    env = {**os.environ, "MINIO_ROOT_USER": info.access_key,
           "MINIO_ROOT_PASSWORD": info.secret_key, "MINIO_BROWSER": "off", "CI": "true",
           "MINIO_UPDATE": "off"}
    proc = subprocess.Popen([binary, "server", str(data), "--address", info.endpoint,
                             "--console-address", f"127.0.0.1:{console}", "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_http(f"http://{info.endpoint}/minio/health/live", 60, proc)
        yield info
    finally:
        _stop(proc)
        shutil.rmtree(data, ignore_errors=True)


@dataclass
class DtrServer:
    """A live ``dtr serve`` process."""

    host: str
    port: int
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    admin_password: str = ""

    @property
    def addr(self) -> str:
        """``127.0.0.1:<port>`` (what clients call the registry)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.addr}"


ADMIN_PASSWORD = "admin-test-password-1"


def dtr_env(data_dir: Path, *, database_url: str = "", s3: Minio | None = None,
            bucket: str = "dtr", extra: dict[str, str] | None = None,
            auth: bool = False) -> dict[str, str]:
    """Environment for a dtr process on the given backends.

    ``auth=False`` (the default for protocol tests) switches authentication off; with
    ``auth=True`` the bootstrap admin's password is :data:`ADMIN_PASSWORD`.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTR_")}
    env["DTR_SERVER_DATA_DIR"] = str(data_dir)
    env["DTR_AUTH_ENABLED"] = "true" if auth else "false"
    if auth:
        env["DTR_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    if database_url:
        env["DTR_DATABASE_URL"] = database_url
    if s3 is not None:
        env.update({"DTR_STORAGE_BACKEND": "s3", "DTR_STORAGE_S3_ENDPOINT": s3.endpoint,
                    "DTR_STORAGE_S3_ACCESS_KEY": s3.access_key,
                    "DTR_STORAGE_S3_SECRET_KEY": s3.secret_key,
                    "DTR_STORAGE_S3_BUCKET": bucket, "DTR_STORAGE_S3_SECURE": "false"})
    env.update(extra or {})
    return env


def dtr(*args: str, env: dict[str, str], check: bool = True,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a ``dtr`` CLI command (``python -m dtr``) and capture its output."""
    return subprocess.run([sys.executable, "-m", "dtr", *args], env=env, check=check,
                          capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def dtr_server(data_dir: Path, *, workers: int = 2, database_url: str = "",
               s3: Minio | None = None, bucket: str = "dtr",
               extra: dict[str, str] | None = None, auth: bool = False,
               args: tuple[str, ...] = ()) -> Iterator[DtrServer]:
    """Start ``dtr serve`` on a free port; migrate first; stop it afterwards."""
    env = dtr_env(data_dir, database_url=database_url, s3=s3, bucket=bucket, extra=extra,
                  auth=auth)
    dtr("db", "upgrade", env=env)
    port = free_port()
    server = DtrServer("127.0.0.1", port, data_dir, env,
                       admin_password=ADMIN_PASSWORD if auth else "")
    log = open(data_dir / f"dtr-{port}.log", "wb")  # noqa: SIM115 - closed below
    server.proc = subprocess.Popen(
        [sys.executable, "-m", "dtr", "serve", "--port", str(port), "--workers", str(workers),
         *args],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"{server.url}/v2/", 60, server.proc, ok=(200, 401))
        yield server
    finally:
        _stop(server.proc)
        log.close()


@contextlib.contextmanager
def distribution(root: Path, *, s3: Minio | None = None,
                 bucket: str = "distribution") -> Iterator[str]:
    """Start the reference registry (distribution v3) on a free port; yields host:port."""
    binary = peer("distribution")
    port = free_port()
    cfg = root / "distribution.yml"
    if s3 is None:
        storage = f"  filesystem:\n    rootdirectory: {root / 'data'}\n"
    else:
        storage = (f"  s3:\n    accesskey: {s3.access_key}\n    secretkey: {s3.secret_key}\n"
                   f"    region: us-east-1\n    regionendpoint: http://{s3.endpoint}\n"
                   f"    bucket: {bucket}\n    forcepathstyle: true\n    secure: false\n"
                   "    v4auth: true\n")
    cfg.write_text("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                   f"storage:\n{storage}  delete:\n    enabled: true\n"
                   f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([binary, "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/", 60, proc)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)
