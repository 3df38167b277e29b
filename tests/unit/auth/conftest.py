"""Fixtures for auth tests: a freshly migrated metadata database per test, on SQLite and on
a real PostgreSQL (started once per session, ``tests/support/peers``). Each test's
database is a copy of one migrated template, so a test costs a file copy or a
``CREATE DATABASE … TEMPLATE``, not a migration run.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dtr.db import migrate
from dtr.db.database import Database
from tests.support import peers

TEMPLATE = "auth_template"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[peers.Postgres]:
    with peers.postgres() as pg:
        url = pg.create_db(TEMPLATE)
        migrate.upgrade(url)
        yield pg


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth-template") / "dtr.db"
    migrate.upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh migrated database on each backend (sync: the templates migrate blocking)."""
    if request.param == "postgresql":
        pg: peers.Postgres = request.getfixturevalue("postgres_server")
        name = f"auth_{uuid.uuid4().hex[:12]}"
        subprocess.run([str(peers.PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(pg.port),
                        "-U", "postgres", "-qc",
                        f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"'], check=True)
        return pg.url(name)
    template: Path = request.getfixturevalue("sqlite_template")
    target = tmp_path / "dtr.db"
    shutil.copy(template, target)
    return f"sqlite+aiosqlite:///{target}"


@pytest.fixture
async def db(db_url: str, anyio_backend: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    try:
        yield database
    finally:
        await database.close()
