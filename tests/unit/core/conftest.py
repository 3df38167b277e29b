"""Fixtures for core unit tests: a Registry built by the composition root over filesystem
storage in a temporary folder and a freshly migrated database — the embedded SQLite file,
and a PostgreSQL database on a server started once per session (``tests/support/peers``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dtr.app import build_registry, close_registry
from dtr.config import Settings, load_settings
from dtr.core.registry import Registry
from dtr.db import migrate
from tests.support import peers


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_settings(data_dir: Path, database_url: str = "") -> Settings:
    """Settings for a registry in ``data_dir``; the schema is upgraded (blocking)."""
    tree: dict[str, Any] = {"server": {"data_dir": str(data_dir)},
                            "storage": {"filesystem": {"fsync": False}}}
    if database_url:
        tree["database"] = {"url": database_url}
    settings = load_settings(env={}, overrides=tree)
    migrate.upgrade(settings.database_url)
    return settings


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings over each metadata database dtr supports (sync: migrations block)."""
    url = ""
    if request.param == "postgresql":
        server: peers.Postgres = request.getfixturevalue("postgres_server")
        url = server.create_db(f"gc_{uuid.uuid4().hex[:12]}")
    return make_settings(tmp_path, url)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """Settings for the embedded default (SQLite in ``tmp_path``), for CLI subprocesses."""
    return make_settings(tmp_path)


@pytest.fixture
async def registry(settings: Settings, anyio_backend: str) -> AsyncIterator[Registry]:
    reg = build_registry(settings)
    try:
        yield reg
    finally:
        await close_registry(reg)
