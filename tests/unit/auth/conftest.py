"""Fixtures for auth tests: a ``Database`` over a fresh migrated metadata database per test
(``db_url`` from ``tests/conftest.py``: SQLite and a real PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dtr.db.database import Database


@pytest.fixture
async def db(db_url: str, anyio_backend: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    try:
        yield database
    finally:
        await database.close()
