"""What every core service shares: the session factory, the storage driver, the hooks and
the limits; plus the two guards that turn database and storage failures into
``Unavailable`` and the repository lookups every service needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from dtr.core.hooks import Hooks
from dtr.db.models import Repository
from dtr.db.reads import FastReads
from dtr.errors import DtrError, NameUnknown, Unavailable
from dtr.storage.base import PathNotFound, StorageDriver, StorageError, WriteAborted


@dataclass(frozen=True, slots=True)
class Limits:
    """Registry limits the services enforce."""

    max_manifest_bytes: int = 4 * 1024 * 1024
    max_blob_bytes: int = 64 * 1024**3
    max_tags_per_request: int = 32
    page_size: int = 1000
    delete_enabled: bool = True


@dataclass(slots=True)
class Store:
    """Shared dependencies of the core services (built by the composition root)."""

    sessions: async_sessionmaker[AsyncSession]
    storage: StorageDriver
    reads: FastReads
    hooks: Hooks = field(default_factory=Hooks)
    limits: Limits = field(default_factory=Limits)

    @property
    def is_postgres(self) -> bool:
        """True when the metadata database is PostgreSQL."""
        bind = self.sessions.kw.get("bind")
        return bool(bind is not None and bind.dialect.name == "postgresql")

    def insert(self, table: type) -> object:
        """A dialect-specific INSERT that supports ``on_conflict_do_nothing``."""
        return (pg_insert if self.is_postgres else sqlite_insert)(table)

    def bytewise(self, column: ColumnElement[str] | InstrumentedAttribute[str],
                 ) -> ColumnElement[str]:
        """``column`` under byte-order collation (tags and names sort like Go's sort.Strings)."""
        return column.collate("C" if self.is_postgres else "BINARY")

    @contextlib.asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction; database outages become ``Unavailable``.

        On SQLite the transaction starts with ``BEGIN IMMEDIATE``: the driver otherwise
        defers ``BEGIN`` to the first INSERT/UPDATE/DELETE, so the reads before it run
        outside the transaction and ``FOR UPDATE`` is a no-op — another worker process
        could change rows between a service's check and its write.
        """
        try:
            async with self.sessions() as session, session.begin():
                if not self.is_postgres:
                    await session.execute(text("BEGIN IMMEDIATE"))
                yield session
        except (DBAPIError, OSError, TimeoutError) as exc:
            _raise_unavailable(exc)
            raise

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads (no explicit transaction; rolled back at exit)."""
        try:
            async with self.sessions() as session:
                yield session
        except (DBAPIError, OSError, TimeoutError) as exc:
            _raise_unavailable(exc)
            raise

    async def repo_id(self, session: AsyncSession, name: str) -> int:
        """The id of an existing repository.

        Raises:
            NameUnknown: no such repository.
        """
        rid = (await session.execute(
            select(Repository.id).where(Repository.name == name))).scalar()
        if rid is None:
            raise NameUnknown(f"repository {name} is not known", {"name": name})
        return int(rid)

    async def ensure_repo(self, session: AsyncSession, name: str) -> int:
        """The id of the repository, creating it if needed (safe under concurrency)."""
        rid = (await session.execute(
            select(Repository.id).where(Repository.name == name))).scalar()
        if rid is not None:
            return int(rid)
        stmt = self.insert(Repository).values(name=name)  # type: ignore[attr-defined]
        await session.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))
        rid = (await session.execute(
            select(Repository.id).where(Repository.name == name))).scalar_one()
        return int(rid)


def _raise_unavailable(exc: BaseException) -> None:
    """Raise ``Unavailable`` if ``exc`` means the database cannot be reached."""
    if isinstance(exc, DBAPIError) and not (
            isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated):
        return  # integrity and programming errors are bugs or races, not outages
    raise Unavailable("metadata database unavailable") from exc


@contextlib.contextmanager
def storage_guard() -> Iterator[None]:
    """Turn backend failures into ``Unavailable``; ``PathNotFound`` passes through."""
    try:
        yield
    except PathNotFound:
        raise
    except WriteAborted as exc:
        if isinstance(exc.__cause__, DtrError):
            raise exc.__cause__ from None
        raise Unavailable(f"upload aborted: {exc}") from exc
    except StorageError as exc:
        raise Unavailable(f"object storage unavailable: {exc}") from exc
