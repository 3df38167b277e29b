"""The hot read path: the three lookups every pull makes (manifest by tag, manifest by
digest, blob size), the upload lookups every PATCH and PUT of a push makes, and the policy
version every token request checks, compiled once from the models and run on the bare
driver.

SQLAlchemy's async layer costs several hundred microseconds per query (a thread hop per
call with aiosqlite; greenlet and pool bookkeeping with asyncpg), more than the query itself.
These reads run on a plain ``sqlite3`` connection inline (WAL readers never wait for
writers; a query takes microseconds) or on an ``asyncpg`` pool with prepared statements.
Writes stay on SQLAlchemy sessions. Outages raise ``dtr.errors.Unavailable``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.sql import ClauseElement

from dtr.db.models import (
    Blob,
    Manifest,
    PolicyState,
    Repository,
    RepositoryBlob,
    Tag,
    Upload,
    UploadPart,
)
from dtr.errors import Unavailable

ManifestRow = tuple[str, str, bytes]
UploadParts = tuple[int, list[tuple[str, int]]]


def _manifest_by_tag() -> ClauseElement:
    return (select(Manifest.digest, Manifest.media_type, Manifest.content)
            .join(Tag, Tag.manifest_id == Manifest.id)
            .join(Repository, Repository.id == Manifest.repository_id)
            .where(Repository.name == "r", Tag.name == "t"))


def _manifest_by_digest() -> ClauseElement:
    return (select(Manifest.digest, Manifest.media_type, Manifest.content)
            .join(Repository, Repository.id == Manifest.repository_id)
            .where(Repository.name == "r", Manifest.digest == "d"))


def _blob_size() -> ClauseElement:
    return (select(Blob.size)
            .join(RepositoryBlob, RepositoryBlob.digest == Blob.digest)
            .join(Repository, Repository.id == RepositoryBlob.repository_id)
            .where(Repository.name == "r", Blob.digest == "d", Blob.state == "present"))


def _upload_size() -> ClauseElement:
    return (select(Upload.size)
            .join(Repository, Repository.id == Upload.repository_id)
            .where(Repository.name == "r", Upload.id == "u"))


def _upload_parts() -> ClauseElement:
    return (select(Upload.size, UploadPart.key, UploadPart.size)
            .join(Repository, Repository.id == Upload.repository_id)
            .outerjoin(UploadPart, UploadPart.upload_id == Upload.id)
            .where(Repository.name == "r", Upload.id == "u")
            .order_by(UploadPart.offset))


def _policy_version() -> ClauseElement:
    return select(PolicyState.version).where(PolicyState.id == 1)


def _parts(rows: list[Any]) -> UploadParts | None:
    if not rows:
        return None
    return int(rows[0][0]), [(str(r[1]), int(r[2])) for r in rows if r[1] is not None]


def _sql(stmt: ClauseElement, dialect: Dialect) -> str:
    """The statement as SQL text in the dialect's positional parameter style."""
    compiled = stmt.compile(dialect=dialect)
    return str(compiled)


@dataclass(frozen=True)
class _Statements:
    """The pull-path statements as SQL text for one dialect, compiled once."""

    by_tag: str
    by_digest: str
    blob: str
    upload_size: str
    upload_parts: str
    policy_version: str

    @classmethod
    def of(cls, dialect: Dialect) -> _Statements:
        return cls(_sql(_manifest_by_tag(), dialect), _sql(_manifest_by_digest(), dialect),
                   _sql(_blob_size(), dialect), _sql(_upload_size(), dialect),
                   _sql(_upload_parts(), dialect), _sql(_policy_version(), dialect))


class FastReads(Protocol):
    """The pull-path lookups."""

    async def manifest(self, repository: str, reference: str,
                       by_digest: bool) -> ManifestRow | None:
        """(digest, media type, bytes) of the manifest a tag or digest names, or None."""
        ...

    async def blob_size(self, repository: str, digest: str) -> int | None:
        """Size of a blob linked in the repository and present, or None."""
        ...

    async def upload_size(self, repository: str, upload_id: str) -> int | None:
        """Committed size of an upload of the repository, or None."""
        ...

    async def upload_parts(self, repository: str, upload_id: str) -> UploadParts | None:
        """(size, [(segment key, segment size)] in offset order) of an upload of the
        repository, read in one statement, or None.
        """
        ...

    async def policy_version(self) -> int:
        """The current ``policy_state.version`` (-1 if the row is missing)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class ReadOnlySqlite:
    """One read-only ``sqlite3`` connection per process (opened on first use, autocommit,
    ``query_only``), for reads run inline on the event loop: WAL readers never wait for
    writers. Also used by the login reads (``dtr.auth.loginreads``).

    Args:
        path: the SQLite database file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, timeout=2,
                                   isolation_level=None)
            conn.execute("PRAGMA query_only=ON")
            self._conn = conn
        return self._conn

    def one(self, sql: str, params: Any) -> Any:
        """The first row of ``sql`` (raw), or None.

        Raises:
            Unavailable: the database cannot be read.
        """
        try:
            return self._db().execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise Unavailable("metadata database unavailable") from exc

    def all(self, sql: str, params: Any) -> list[Any]:
        """Every row of ``sql`` (raw).

        Raises:
            Unavailable: the database cannot be read.
        """
        try:
            return self._db().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise Unavailable("metadata database unavailable") from exc

    def close(self) -> None:
        """Close the connection (it reopens on the next read)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class SqliteReads:
    """Reads on one ``sqlite3`` connection per process, run inline on the event loop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sqlite = ReadOnlySqlite(path)
        self._q = _Statements.of(sqlite.dialect(paramstyle="qmark"))

    def _one(self, sql: str, params: tuple[Any, ...]) -> Any:
        return self._sqlite.one(sql, params)

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        return self._sqlite.all(sql, params)

    async def manifest(self, repository: str, reference: str,
                       by_digest: bool) -> ManifestRow | None:
        """See :class:`FastReads`."""
        row = self._one(self._q.by_digest if by_digest else self._q.by_tag,
                        (repository, reference))
        return (row[0], row[1], bytes(row[2])) if row else None

    async def blob_size(self, repository: str, digest: str) -> int | None:
        """See :class:`FastReads`."""
        row = self._one(self._q.blob, (repository, digest, "present"))
        return int(row[0]) if row else None

    async def upload_size(self, repository: str, upload_id: str) -> int | None:
        """See :class:`FastReads`."""
        row = self._one(self._q.upload_size, (repository, upload_id))
        return int(row[0]) if row else None

    async def upload_parts(self, repository: str, upload_id: str) -> UploadParts | None:
        """See :class:`FastReads`."""
        return _parts(self._all(self._q.upload_parts, (repository, upload_id)))

    async def policy_version(self) -> int:
        """See :class:`FastReads`."""
        row = self._one(self._q.policy_version, (1,))
        return int(row[0]) if row else -1

    async def close(self) -> None:
        """Close the connection."""
        self._sqlite.close()


class PostgresReads:
    """Reads on an ``asyncpg`` pool (statements are prepared once per connection)."""

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn, self.size = dsn, size
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._q = _Statements.of(
            postgresql.dialect(paramstyle="numeric_dollar"))  # type: ignore[no-untyped-call]

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self.dsn, min_size=1, max_size=self.size,
                        max_inactive_connection_lifetime=60)
        return self._pool

    async def _one(self, sql: str, *args: Any) -> Any:
        try:
            pool = await self._get_pool()
            return await pool.fetchrow(sql, *args)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                asyncpg.CannotConnectNowError, TimeoutError) as exc:
            raise Unavailable("metadata database unavailable") from exc

    async def _all(self, sql: str, *args: Any) -> list[Any]:
        try:
            pool = await self._get_pool()
            return list(await pool.fetch(sql, *args))
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                asyncpg.CannotConnectNowError, TimeoutError) as exc:
            raise Unavailable("metadata database unavailable") from exc

    async def manifest(self, repository: str, reference: str,
                       by_digest: bool) -> ManifestRow | None:
        """See :class:`FastReads`."""
        row = await self._one(self._q.by_digest if by_digest else self._q.by_tag,
                              repository, reference)
        return (row[0], row[1], bytes(row[2])) if row else None

    async def blob_size(self, repository: str, digest: str) -> int | None:
        """See :class:`FastReads`."""
        row = await self._one(self._q.blob, repository, digest, "present")
        return int(row[0]) if row else None

    async def upload_size(self, repository: str, upload_id: str) -> int | None:
        """See :class:`FastReads`."""
        row = await self._one(self._q.upload_size, repository, upload_id)
        return int(row[0]) if row else None

    async def upload_parts(self, repository: str, upload_id: str) -> UploadParts | None:
        """See :class:`FastReads`."""
        return _parts(await self._all(self._q.upload_parts, repository, upload_id))

    async def policy_version(self) -> int:
        """See :class:`FastReads`."""
        row = await self._one(self._q.policy_version, 1)
        return int(row[0]) if row else -1

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def make_fast_reads(url: str, pool_size: int = 10) -> FastReads:
    """The fast read path for a SQLAlchemy URL (``sqlite+aiosqlite`` or ``postgresql+asyncpg``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return SqliteReads(parsed.database or ":memory:")
    dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    return PostgresReads(dsn, pool_size)
