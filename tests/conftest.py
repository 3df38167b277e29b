"""Shared fixtures: an in-process dtr app on a temporary data folder, and fresh migrated
metadata databases on SQLite and on one real PostgreSQL started once per session
(``tests/support/peers``). A fresh database is a copy of one migrated template — a file
copy or ``CREATE DATABASE … TEMPLATE`` — not a migration run."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from dtr.app import create_app
from dtr.config import Settings, load_settings
from dtr.db.migrate import upgrade
from tests.support import peers

PG_TEMPLATE = "dtr_template"


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for an embedded registry in ``data_dir`` (no environment read).

    Authentication is off unless ``auth={"enabled": True, ...}`` is passed: protocol tests
    exercise the OCI API itself; access-control tests switch it on.
    """
    tree: dict[str, Any] = {"server": {"data_dir": str(data_dir)},
                            "storage": {"filesystem": {"fsync": False}},
                            "auth": {"enabled": False}}
    for section, values in overrides.items():
        tree.setdefault(section, {}).update(values)
    settings = load_settings(env={}, overrides=tree)
    upgrade(settings.database_url)
    return settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[peers.Postgres]:
    """One PostgreSQL for the session, holding a migrated template database."""
    with peers.postgres() as pg:
        upgrade(pg.create_db(PG_TEMPLATE))
        yield pg


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file to copy."""
    path = tmp_path_factory.mktemp("sqlite-template") / "dtr.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh migrated database on each backend dtr supports."""
    if request.param == "postgresql":
        pg: peers.Postgres = request.getfixturevalue("postgres_server")
        return pg.create_db(f"t_{uuid.uuid4().hex[:12]}", template=PG_TEMPLATE)
    target = tmp_path / "dtr.db"
    shutil.copy(request.getfixturevalue("sqlite_template"), target)
    return f"sqlite+aiosqlite:///{target}"
