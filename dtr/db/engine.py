"""Async engine and session factory built from a database URL; SQLite tuned for several
processes (WAL, busy timeout); schema-revision check used at start-up.
"""

from __future__ import annotations

from sqlalchemy import event, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry


def sqlite_pragmas(dbapi_conn: DBAPIConnection, _rec: ConnectionPoolEntry) -> None:
    """Connect hook for SQLite: WAL, ``synchronous=NORMAL``, 30 s busy timeout, foreign keys."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> AsyncEngine:
    """Create the async engine.

    SQLite gets WAL journaling, ``synchronous=NORMAL``, a 30 s busy timeout and foreign
    keys on, so several worker processes can write without "database is locked".
    """
    if url.startswith("sqlite"):
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        return engine
    return create_async_engine(url, echo=echo, pool_size=pool_size, max_overflow=pool_size,
                               pool_pre_ping=True)



async def current_revision(engine: AsyncEngine) -> str | None:
    """The Alembic revision the database is at, or None for an empty database."""
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
    except SQLAlchemyError:
        return None
    return str(row[0]) if row else None

