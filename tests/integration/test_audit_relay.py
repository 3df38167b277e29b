"""The audit relay under a live ``dtr serve`` (2 workers; SQLite and PostgreSQL): every pull
is recorded
exactly once whether the relay takes it, is killed in the middle (the workers write the
events themselves, ``dtr serve`` restarts it) or the server stops right after a burst (the
relay writes what the workers sent last); the chain verifies; with ``audit.relay: false``
there is no relay and nothing changes for the audit log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest
from sqlalchemy import Connection, func, select

from dtr.audit.chain import ChainWalker
from dtr.db.database import Database
from dtr.db.models import AuditEvent
from tests.support.peers import DtrServer, dtr_server

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
T = TypeVar("T")


def relays(server: DtrServer) -> list[psutil.Process]:
    """The relay processes ``dtr serve`` started."""
    assert server.proc is not None
    return [p for p in psutil.Process(server.proc.pid).children()
            if "dtr.audit.relay" in " ".join(p.cmdline())]


def push_image(client: httpx.Client, repo: str) -> None:
    config = b'{"architecture":"amd64","os":"linux"}'
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    loc = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    client.put(loc, params={"digest": digest}, content=config).raise_for_status()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest,
        "size": len(config)}, "layers": []}).encode()
    client.put(f"/v2/{repo}/manifests/v1", content=manifest,
               headers={"content-type": MANIFEST}).raise_for_status()


def pull(client: httpx.Client, repo: str, times: int) -> None:
    for _ in range(times):
        client.get(f"/v2/{repo}/manifests/v1", headers={"accept": MANIFEST}).raise_for_status()


class Log:
    """The server's ``audit_event`` table, read directly."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _read(self, fn: Callable[[Connection], T]) -> T:
        async def run() -> T:
            db = Database(self.url)
            try:
                return await db.run(fn, write=False)
            finally:
                await db.close()

        return asyncio.run(run())

    def pulls(self, repo: str) -> int:
        return self._read(lambda conn: int(conn.execute(
            select(func.count()).select_from(AuditEvent).where(
                AuditEvent.action == "manifest.pulled",
                AuditEvent.repository == repo)).scalar_one()))

    def wait_pulls(self, repo: str, want: int, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while (got := self.pulls(repo)) < want and time.monotonic() < deadline:
            time.sleep(0.05)
        return got

    def verify(self) -> None:
        rows: list[dict[str, Any]] = self._read(lambda conn: [
            dict(r._mapping) for r in conn.execute(select(AuditEvent).order_by(AuditEvent.seq))])
        assert rows
        assert list(ChainWalker().walk(rows)) == []


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[DtrServer]:
    with dtr_server(tmp_path / "data", workers=2, database_url=db_url) as srv:
        yield srv


def test_pulls_go_through_the_relay_and_survive_its_death(server: DtrServer,
                                                          db_url: str) -> None:
    log = Log(db_url)
    found = relays(server)
    assert len(found) == 1
    first = found[0]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        push_image(client, "acme/app")
        pull(client, "acme/app", 200)
        assert log.wait_pulls("acme/app", 200) == 200

        first.send_signal(signal.SIGKILL)  # while pulls go on: the workers write them
        first.wait(10)
        pull(client, "acme/app", 200)
        assert log.wait_pulls("acme/app", 400) == 400

        deadline = time.monotonic() + 20
        while not (now := relays(server)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert now, "dtr serve did not restart its relay"
        assert now[0].pid != first.pid
        time.sleep(RETRY_AFTER)  # the workers try the relay again
        pull(client, "acme/app", 200)
        assert log.wait_pulls("acme/app", 600) == 600
    time.sleep(0.5)
    assert log.pulls("acme/app") == 600, "an event was recorded twice"
    log.verify()


RETRY_AFTER = 1.5


def test_a_burst_right_before_stopping_is_written(tmp_path: Path, db_url: str) -> None:
    data = tmp_path / "data"
    with dtr_server(data, workers=2, database_url=db_url) as srv:
        assert srv.proc is not None
        relay = relays(srv)[0]
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            push_image(client, "acme/burst")
            pull(client, "acme/burst", 300)
        os.killpg(srv.proc.pid, signal.SIGTERM)  # at once, as the fixture would
        srv.proc.wait(30)
        relay.wait(30)
    log = Log(db_url)
    assert log.pulls("acme/burst") == 300
    log.verify()
    said = "".join(f.read_text() for f in data.glob("dtr-*.log"))
    assert "audit relay stopped: 300 events received, 0 lost" in said, said[-2000:]


def test_without_the_relay_events_are_written_by_the_workers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with dtr_server(data, workers=2, extra={"DTR_AUDIT_RELAY": "false"}) as srv:
        assert relays(srv) == []
        log = Log(f"sqlite+aiosqlite:///{data / 'dtr.db'}")
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            push_image(client, "acme/plain")
            pull(client, "acme/plain", 100)
        assert log.wait_pulls("acme/plain", 100) == 100
        log.verify()
