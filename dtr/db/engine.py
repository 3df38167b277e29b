"""Async engine and session factory built from a database URL; SQLite tuned for several
processes (WAL, busy timeout); schema-revision check used at start-up.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry


def make_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> AsyncEngine:
    """Create the async engine.

    SQLite gets WAL journaling, ``synchronous=NORMAL``, a 30 s busy timeout and foreign
    keys on, so several worker processes can write without "database is locked".
    """
    if url.startswith("sqlite"):
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: DBAPIConnection, _rec: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_async_engine(url, echo=echo, pool_size=pool_size, max_overflow=pool_size,
                               pool_pre_ping=True)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The Alembic revision the database is at, or None for an empty database."""
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
    except SQLAlchemyError:
        return None
    return str(row[0]) if row else None


def sync_url(url: str) -> str:
    """The URL Alembic's synchronous-looking env uses (same async driver, run via greenlet)."""
    return url


def engine_kwargs(url: str) -> dict[str, Any]:
    """Extra keyword arguments for engines built outside :func:`make_engine`."""
    return {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
