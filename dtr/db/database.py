"""``Database``: runs one transaction function against the metadata database.

Core writes its transactions as plain functions of a synchronous SQLAlchemy ``Connection``
(``fn(conn) -> result``; Core statements only — the ORM unit of work costs more than the
SQL); ``Database.run`` executes one such function as one transaction:

* **SQLite** (embedded default): in a worker thread, on a synchronous ``sqlite3`` engine —
  one thread hop per transaction instead of one per statement (aiosqlite), and the write
  lock (``BEGIN IMMEDIATE``) is held only while the function runs, never across event-loop
  turns, so concurrent pushes from several worker processes do not queue behind each other.
* **PostgreSQL**: on the asyncpg engine through ``AsyncConnection.run_sync`` (greenlet;
  no threads).

Failures that mean the database cannot be reached raise ``dtr.errors.Unavailable``.

Write transactions end with the ``before_commit`` hooks (the audit log chains the events
the transaction recorded there, so its lock is held only while committing), and each
transaction has a scratch dictionary (:func:`tx_state`) that lives exactly as long as it.
The caller's context variables (the request context) reach the transaction's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from dtr.db.engine import make_engine, sqlite_pragmas
from dtr.errors import Unavailable

T = TypeVar("T")
TxFn = Callable[[Connection], T]
CommitHook = Callable[[Connection], None]
_TX_KEY = "dtr.tx"


def tx_state(conn: Connection) -> dict[str, Any]:
    """Scratch space of the transaction open on ``conn`` (emptied when it ends).

    Raises:
        RuntimeError: ``conn`` has no transaction run by :meth:`Database.run`.
    """
    try:
        state: dict[str, Any] = conn.info[_TX_KEY]
    except KeyError:
        raise RuntimeError("not inside Database.run") from None
    return state


def _transaction(fn: TxFn[T], hooks: list[CommitHook]) -> TxFn[T]:
    """``fn`` with a fresh scratch space, then the commit hooks (write transactions)."""
    def run(conn: Connection) -> T:
        conn.info[_TX_KEY] = {}
        try:
            result = fn(conn)
            for hook in hooks:
                hook(conn)
            return result
        finally:
            # never mask the real outcome (a cancellation mid-statement leaves the
            # connection invalid, and reading its info then raises)
            with contextlib.suppress(SQLAlchemyError):
                conn.info.pop(_TX_KEY, None)

    return run


def unavailable(exc: BaseException) -> bool:
    """True if ``exc`` means the database cannot be reached (not a bug or a conflict)."""
    if isinstance(exc, DBAPIError):
        return isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated
    return isinstance(exc, OSError | TimeoutError)


def _sqlite_engine(path: str, begin: str, echo: bool) -> Engine:
    engine = create_engine(f"sqlite+pysqlite:///{path}", echo=echo,
                           connect_args={"timeout": 30, "check_same_thread": False},
                           pool_size=16, max_overflow=16)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: DBAPIConnection, _rec: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself
        sqlite_pragmas(dbapi_conn, _rec)

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Database:
    """The metadata database as core uses it.

    Args:
        url: SQLAlchemy URL (``sqlite+aiosqlite:///…`` or ``postgresql+asyncpg://…``).
        pool_size: connections per process (PostgreSQL).
        echo: log SQL.
    """

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_postgres = parsed.get_backend_name() == "postgresql"
        self.engine: AsyncEngine = make_engine(url, pool_size=pool_size, echo=echo)
        self.async_sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._threads: ThreadPoolExecutor | None = None
        self.before_commit: list[CommitHook] = []
        """Run, in order, at the end of every write transaction, inside it."""
        if not self.is_postgres:
            path = parsed.database or ":memory:"
            self._write = _sqlite_engine(path, "BEGIN IMMEDIATE", echo)
            self._read = _sqlite_engine(path, "BEGIN", echo)
            self._threads = ThreadPoolExecutor(16, thread_name_prefix="dtr-db")
            self._writer = _WriterLock(f"{path}.writelock")

    async def run(self, fn: TxFn[T], *, write: bool = True) -> T:
        """Run ``fn(session)`` as one transaction and return its result.

        Committed when ``fn`` returns, rolled back when it raises (the exception
        propagates). ``write=False`` marks a read-only transaction (on SQLite it does not
        take the write lock).

        Raises:
            Unavailable: the database cannot be reached.
        """
        fn = _transaction(fn, self.before_commit if write else [])
        try:
            if self._threads is not None:
                loop = asyncio.get_running_loop()
                ctx = contextvars.copy_context()
                if write:
                    return await loop.run_in_executor(self._threads, ctx.run, self._writer.run,
                                                      self._write, fn)
                return await loop.run_in_executor(self._threads, ctx.run, _in_thread,
                                                  self._read, fn)
            async with self.engine.begin() as conn:
                return await conn.run_sync(fn)
        except (DBAPIError, OSError, TimeoutError) as exc:
            if unavailable(exc):
                raise Unavailable("metadata database unavailable") from exc
            raise

    async def close(self) -> None:
        """Dispose of every engine and thread."""
        await self.engine.dispose()
        if self._threads is not None:
            self._write.dispose()
            self._read.dispose()
            self._threads.shutdown(wait=False)


class _WriterLock:
    """Serialises SQLite write transactions of every dtr process on this host.

    SQLite's own busy handler polls with sleeps that grow to 100 ms, so writers of two
    worker processes waiting on each other lose most of their time asleep. A thread lock
    plus an ``flock`` on a file beside the database hands the write lock over as soon as
    it is free (the kernel wakes the waiter); SQLite's busy timeout stays as the fallback
    for processes that do not take this lock.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    def run(self, engine: Engine, fn: TxFn[T]) -> T:
        with self._thread_lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                return _in_thread(engine, fn)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


def _in_thread(engine: Engine, fn: TxFn[T]) -> T:
    with engine.begin() as conn:
        return fn(conn)
