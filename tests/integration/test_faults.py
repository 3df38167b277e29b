"""Bad input and faults: a storage error during commit, a client that disconnects mid-upload,
a database that dies, a schema that is behind, a broken configuration. The client gets a
clear error; no partial blob becomes visible; nothing already stored is lost."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from dtr.app import create_app
from dtr.db.migrate import head_revision
from dtr.storage.base import StorageError
from dtr.storage.filesystem import FilesystemDriver
from tests.conftest import make_settings
from tests.support import peers
from tests.support.oci import OciClient, sha256


class FlakyDriver(FilesystemDriver):
    """A filesystem driver whose ``move``/``compose`` fail while ``broken`` is set."""

    broken = False

    async def move(self, src: str, dest: str) -> None:
        if self.broken:
            raise StorageError("injected: disk gone")
        await super().move(src, dest)

    async def compose(self, sources: list[str], dest: str) -> int:
        if self.broken:
            raise StorageError("injected: disk gone")
        return await super().compose(sources, dest)


def test_storage_error_during_commit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    driver = FlakyDriver(settings.filesystem_root, fsync=False)
    with TestClient(create_app(settings, driver)) as c:
        oci = OciClient(c)
        kept = oci.push_blob("r", b"already stored")
        data = os.urandom(100_000)
        loc = c.post("/v2/r/blobs/uploads/").headers["location"]
        driver.broken = True
        r = c.put(f"{loc}?digest={sha256(data)}", content=data)
        assert r.status_code == 503
        assert "retry" in r.text
        assert r.headers["retry-after"]
        assert c.head(f"/v2/r/blobs/{sha256(data)}").status_code == 404
        driver.broken = False
        assert c.get(f"/v2/r/blobs/{kept}").content == b"already stored"
        # the upload is still there and can be finished once storage is back
        r = c.put(f"{loc}?digest={sha256(data)}")
        assert r.status_code == 201, r.text
        assert c.get(f"/v2/r/blobs/{sha256(data)}").content == data


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with peers.dtr_server(tmp_path_factory.mktemp("live"), workers=1) as server:
        yield server


def _raw_partial_request(addr: tuple[str, int], path: str, total: int, sent: int) -> None:
    with socket.create_connection(addr) as s:
        head = (f"PATCH {path} HTTP/1.1\r\nHost: {addr[0]}\r\nContent-Length: {total}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n")
        s.sendall(head.encode())
        s.sendall(b"x" * sent)
    # socket closed with the body incomplete


def test_client_disconnect_mid_upload(live: Any) -> None:
    with httpx.Client(base_url=live.url) as c:
        oci = OciClient(c)
        kept_digest, kept_body = oci.push_image("fault/r", "kept")
        loc = c.post("/v2/fault/r/blobs/uploads/").headers["location"]
        _raw_partial_request(("127.0.0.1", live.port), loc, 8 * 1024 * 1024, 3 * 1024 * 1024)
        # nothing of the partial body was committed: the upload is still empty
        r = c.get(loc)
        assert r.status_code == 204
        assert r.headers["range"] == "0-0"
        # the upload can continue normally
        data = os.urandom(2 * 1024 * 1024)
        r = c.patch(loc, content=data, headers={"Content-Range": f"0-{len(data) - 1}"})
        assert r.status_code == 202
        r = c.put(f"{r.headers['location']}?digest={sha256(data)}")
        assert r.status_code == 201
        assert c.get(f"/v2/fault/r/blobs/{sha256(data)}").content == data
        assert c.get(f"/v2/fault/r/manifests/{kept_digest}").content == kept_body
    # no partial object under blobs/
    for f in (live.data_dir / "storage" / "blobs").rglob("*"):
        if f.is_file():
            assert not f.name.startswith(".tmp-"), f


def test_database_outage_gives_503_and_loses_nothing(tmp_path: Path) -> None:
    with peers.postgres() as pg:
        url = pg.create_db("outage")
        with peers.dtr_server(tmp_path, workers=1, database_url=url) as server, \
                httpx.Client(base_url=server.url, timeout=30) as c:
            digest, body = OciClient(c).push_image("o/r", "v1")
            runas = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
            subprocess.run([*runas, str(peers.PG_BIN / "pg_ctl"), "-D", str(pg.datadir),
                            "-m", "immediate", "stop"], check=True, capture_output=True)
            r = c.get("/v2/o/r/manifests/v1")
            assert r.status_code == 503
            assert "database unavailable" in r.text
            ready = c.get("/health/ready")  # a load balancer takes the replica out
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"]["status"] == "unavailable"
            assert ready.json()["checks"]["storage"]["status"] == "ok"
            assert c.get("/health/live").status_code == 200
            subprocess.run([*runas, str(peers.PG_BIN / "pg_ctl"), "-D", str(pg.datadir),
                            "-l", str(pg.datadir.parent / "log2"), "-w", "-o",
                            f"-c listen_addresses=127.0.0.1 -p {pg.port} "
                            f"-k {pg.datadir.parent}", "start"],
                           check=True, capture_output=True)
            for _ in range(3):  # the pool notices the dead connections and reconnects
                r = c.get("/v2/o/r/manifests/v1")
                if r.status_code == 200:
                    break
            assert r.status_code == 200
            assert r.content == body
            assert r.headers["docker-content-digest"] == digest
            assert c.get("/health/ready").status_code == 200


def test_serve_refuses_schema_behind(tmp_path: Path) -> None:
    env = peers.dtr_env(tmp_path)
    r = subprocess.run([sys.executable, "-m", "dtr", "serve", "--no-migrate", "--port",
                        str(peers.free_port())], env=env, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode != 0
    assert "dtr db upgrade" in r.stderr
    peers.dtr("db", "upgrade", env=env)
    r = peers.dtr("db", "current", env=env)
    assert f"current {head_revision()}" in r.stdout
    peers.dtr("db", "downgrade", "base", env=env)
    r = peers.dtr("db", "current", env=env, check=False)
    assert r.returncode == 1
    assert "run `dtr db upgrade`" in r.stdout


def test_config_verify(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text("server:\n  port: 5050\nstorage:\n  backend: s3\n  s3:\n"
                    "    endpoint: 127.0.0.1:9000\n    access_key: a\n    secret_key: s3cr3t\n")
    r = peers.dtr("config", "verify", "--config", str(good), env=peers.dtr_env(tmp_path))
    assert "port: 5050" in r.stdout
    assert "s3cr3t" not in r.stdout
    cases = {
        "server:\n  port: 99999\n": "server.port",
        "storage:\n  backend: s3\n": "storage.s3.endpoint",
        "nosuchsection: 1\n": "nosuchsection",
        "registry:\n  max_manifest_bytes: 10\n": "max_manifest_bytes",
        "database:\n  url: mysql://x\n": "database.url",
    }
    for text, needle in cases.items():
        bad = tmp_path / "bad.yml"
        bad.write_text(text)
        r = peers.dtr("config", "verify", "--config", str(bad), env=peers.dtr_env(tmp_path),
                      check=False)
        assert r.returncode != 0, text
        assert needle in r.stderr, (text, r.stderr)
    env = {**peers.dtr_env(tmp_path), "DTR_SERVER_WORKERZ": "2"}
    r = peers.dtr("config", "verify", env=env, check=False)
    assert r.returncode != 0
    assert "DTR_SERVER_WORKERZ" in r.stderr
