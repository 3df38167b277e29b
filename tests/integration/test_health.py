"""The health probes: ``/health/live`` answers while a worker serves; ``/health/ready``
answers 200 only when the database and the object store answer, names the one that does
not (503), within its timeout, and never says why (that goes to the log)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from litestar.testing import TestClient

from dtr.app import create_app
from dtr.core.health import PROBE_KEY, HealthService
from dtr.storage.base import ObjectInfo, StorageError
from dtr.storage.filesystem import FilesystemDriver
from tests.conftest import make_settings


class SickDriver(FilesystemDriver):
    """A filesystem driver whose ``stat`` fails (``broken``) or hangs (``hang`` seconds)."""

    broken = False
    hang = 0.0

    async def stat(self, path: str) -> ObjectInfo:
        if self.broken:
            raise StorageError("injected: secret-bucket at 10.9.8.7 refused")
        if self.hang:
            await asyncio.sleep(self.hang)
        return await super().stat(path)


def _app(tmp_path: Path) -> tuple[Any, SickDriver]:
    settings = make_settings(tmp_path, auth={"enabled": True})
    driver = SickDriver(settings.filesystem_root, fsync=False)
    return create_app(settings, driver), driver


def test_probes_are_public_and_ready_when_both_answer(tmp_path: Path) -> None:
    app, _ = _app(tmp_path)
    with TestClient(app) as c:
        live = c.get("/health/live")
        assert live.status_code == 200
        assert live.json() == {"status": "ok"}
        r = c.get("/health/ready")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ok"
        assert {k: v["status"] for k, v in body["checks"].items()} == {
            "database": "ok", "storage": "ok"}
        assert all(v["ms"] >= 0 for v in body["checks"].values())
        # a fresh store answers the probe key with "not found": it is no blob or upload key
        assert not PROBE_KEY.startswith(("blobs/", "uploads/"))
        assert r.headers["cache-control"] == "no-store"
        assert live.headers["cache-control"] == "no-store"
        # the registry itself still wants credentials
        assert c.get("/v2/").status_code == 401


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_failing_object_store_makes_the_replica_unready(tmp_path: Path) -> None:
    app, driver = _app(tmp_path)
    logged = _Lines()  # the app's logging configuration replaces pytest's capture handler
    logger = logging.getLogger("dtr.health")
    logger.addHandler(logged)
    try:
        with TestClient(app) as c:
            driver.broken = True
            r = c.get("/health/ready")
            assert r.status_code == 503
            body = r.json()
            assert body["status"] == "unavailable"
            assert body["checks"]["storage"]["status"] == "unavailable"
            assert body["checks"]["database"]["status"] == "ok"
            assert "10.9.8.7" not in r.text
            assert "secret-bucket" not in r.text
            assert any("injected: secret-bucket" in line for line in logged.lines)
            assert c.get("/health/live").status_code == 200
            driver.broken = False
            assert c.get("/health/ready").status_code == 200
    finally:
        logger.removeHandler(logged)


def test_a_hanging_dependency_is_unavailable_after_the_timeout(tmp_path: Path) -> None:
    app, driver = _app(tmp_path)
    with TestClient(app):
        driver.hang = 5.0
        health = HealthService(app.state.registry.store, timeout=0.2)
        state = asyncio.run(health.check())
        assert not state.ready
        assert state.checks["storage"].status == "unavailable"
        assert 150 <= state.checks["storage"].ms < 2000
        assert state.checks["database"].status == "ok"
