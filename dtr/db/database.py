"""``Database``: runs one transaction function against the metadata database.

Core writes its transactions as plain functions of a synchronous SQLAlchemy ``Connection``
(``fn(conn) -> result``; Core statements only — the ORM unit of work costs more than the
SQL); ``Database.run`` executes one such function as one transaction:

* **SQLite** (embedded default): in a worker thread, on a synchronous ``sqlite3`` engine —
  one thread hop per transaction instead of one per statement (aiosqlite), and the write
  lock (``BEGIN IMMEDIATE``) is held only while the function runs, never across event-loop
  turns, so concurrent pushes from several worker processes do not queue behind each other.
  A write the caller marks ``short`` (a few statements on a few rows, as a push makes)
  runs on the calling thread when the write lock is free at once, as reads do: a thread
  hop costs 0.1-0.3 ms of wake-ups on a small VM, more than such a transaction. When any
  process holds the lock it goes to the thread like any other write, so the event loop
  never waits for a lock; that connection never checkpoints the WAL itself (a checkpoint
  fsyncs the database file): every 128 of its commits one is started on a thread, under
  the write lock. The push path's short transactions (:meth:`Database.run_short`, written
  against ``dtr.db.short.ShortTx``) run there on the bare ``sqlite3`` driver.
* **PostgreSQL**: on the asyncpg engine through ``AsyncConnection.run_sync`` (greenlet;
  no threads).

Failures that mean the database cannot be reached raise ``dtr.errors.Unavailable``.

Write transactions of :meth:`Database.run` end with the ``before_commit`` hooks (the audit
log chains the events the transaction recorded there, so its lock is held only while
committing; a :meth:`Database.run_short` transaction cannot record events), and each
transaction has a scratch dictionary (:func:`tx_state`) that lives exactly as long as it.
The caller's context variables (the request context) reach the transaction's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from dtr.db.engine import make_engine, sqlite_pragmas
from dtr.db.short import ConnectionTx, ShortFn, SqliteTx
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


def _sqlite_engine(path: str, begin: str, echo: bool, *, now: bool = False) -> Engine:
    """A synchronous engine; ``now``: for transactions on the calling thread (one
    connection that never waits for SQLite's lock and never checkpoints the WAL).
    """
    engine = create_engine(f"sqlite+pysqlite:///{path}", echo=echo,
                           connect_args={"timeout": 30, "check_same_thread": False},
                           pool_size=1 if now else 16, max_overflow=1 if now else 16)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: DBAPIConnection, _rec: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself
        sqlite_pragmas(dbapi_conn, _rec)
        if now:
            cur = dbapi_conn.cursor()
            for pragma in _NOW_PRAGMAS:
                cur.execute(f"PRAGMA {pragma}")
            cur.close()

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
        """Run, in order, at the end of every write transaction of :meth:`run`, inside it."""
        if not self.is_postgres:
            path = parsed.database or ":memory:"
            self._write = _sqlite_engine(path, "BEGIN IMMEDIATE", echo)
            self._read = _sqlite_engine(path, "BEGIN", echo)
            self._now = _sqlite_engine(path, "BEGIN IMMEDIATE", echo, now=True)
            self._raw_now = _RawNow(path)
            self._threads = ThreadPoolExecutor(16, thread_name_prefix="dtr-db")
            self._writer = _WriterLock(f"{path}.writelock")
            self._commits_now = 0

    async def run(self, fn: TxFn[T], *, write: bool = True, short: bool = False) -> T:
        """Run ``fn(session)`` as one transaction and return its result.

        Committed when ``fn`` returns, rolled back when it raises (the exception
        propagates). ``write=False`` marks a read-only transaction (on SQLite it does not
        take the write lock). ``short=True`` says a write transaction is a few statements
        on a few rows: SQLite may then run it on the calling thread, without blocking
        (see the module docstring); results, errors and hooks are the same.

        Raises:
            Unavailable: the database cannot be reached.
        """
        fn = _transaction(fn, self.before_commit if write else [])
        try:
            if self._threads is not None:
                if write and short:
                    ran, result = self._writer.try_now(partial(_if_free, self._now, fn))
                    if ran:
                        self._after_commit_now()
                        return cast(T, result)  # ran: fn's result
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

    async def run_short(self, fn: ShortFn[T]) -> T:
        """Run ``fn`` as one short write transaction (a few statements on a few rows) and
        return its result; committed when ``fn`` returns, rolled back when it raises.

        On SQLite it runs on the calling thread on the bare driver when the write lock is
        free at once, else as :meth:`run` runs a write; on PostgreSQL as
        ``run(..., short=True)``. The ``before_commit`` hooks do not run on the bare
        driver (``fn`` gets no ``Connection``, so it records nothing for them).

        Raises:
            Unavailable: the database cannot be reached.
        """
        if self._threads is None:
            return await self.run(lambda conn: fn(ConnectionTx(conn)), short=True)
        try:
            ran, result = self._writer.try_now(partial(self._raw_now.attempt, fn))
        except (sqlite3.OperationalError, sqlite3.InterfaceError, OSError) as exc:
            raise Unavailable("metadata database unavailable") from exc
        if ran:
            self._after_commit_now()
            return cast(T, result)  # ran: fn's result
        return await self.run(lambda conn: fn(ConnectionTx(conn)))

    def _after_commit_now(self) -> None:
        """Count a commit on the calling thread; every 128th starts a WAL checkpoint on a
        thread (that connection does not checkpoint itself: see the module docstring).
        """
        self._commits_now += 1
        if self._commits_now % _CHECKPOINT_EVERY == 0 and self._threads is not None:
            with contextlib.suppress(RuntimeError):  # the pool is shut down: closing
                self._threads.submit(self._writer.holding, _checkpoint, self._write)

    async def close(self) -> None:
        """Dispose of every engine and thread."""
        await self.engine.dispose()
        if self._threads is not None:
            self._now.dispose()
            self._raw_now.close()
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
        """``fn`` as a transaction on ``engine``, holding the lock (waits for it)."""
        return cast("T", self.holding(_in_thread, engine, fn))

    def holding(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` while holding the lock (waits for it)."""
        with self._thread_lock:
            fd = self._descriptor()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                return fn(*args)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def try_now(self, attempt: Callable[[], tuple[bool, T | None]]) -> tuple[bool, T | None]:
        """``attempt()`` (a transaction that does not wait for SQLite's lock, as
        :func:`_if_free` and :meth:`_RawNow.attempt` run one) only if no thread of this
        process and no process holds the write lock, without waiting; ``(False, None)`` if
        it is held (nothing ran).
        """
        if not self._thread_lock.acquire(blocking=False):
            return False, None
        try:
            fd = self._descriptor()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False, None
            try:
                return attempt()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _descriptor(self) -> int:
        """The lock file, opened once (call holding the thread lock)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd


#: What a connection that runs transactions on the calling thread sets: it never waits for
#: SQLite's lock and never checkpoints the WAL itself (a checkpoint fsyncs the database).
_NOW_PRAGMAS = ("busy_timeout=0", "wal_autocheckpoint=0")
#: Commits on the calling thread between two WAL checkpoints started on a thread.
_CHECKPOINT_EVERY = 128
#: SQLite's answers to ``BEGIN IMMEDIATE`` while another connection writes.
_LOCK_HELD = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _lock_held(code: int | None) -> bool:
    """True for SQLite's (extended) result codes that mean another connection writes."""
    return code is not None and code & 0xFF in _LOCK_HELD


def _in_thread(engine: Engine, fn: TxFn[T]) -> T:
    with engine.begin() as conn:
        return fn(conn)


def _if_free(engine: Engine, fn: TxFn[T]) -> tuple[bool, T | None]:
    """``fn`` in a transaction on ``engine`` (whose busy timeout is 0), or ``(False, None)``
    if SQLite's write lock is held (by a process that does not take :class:`_WriterLock`).
    """
    with engine.connect() as conn:
        try:
            tx = conn.begin()
        except OperationalError as exc:
            if _lock_held(getattr(exc.orig, "sqlite_errorcode", None)):
                return False, None
            raise
        with tx:
            return True, fn(conn)


class _RawNow:
    """The bare ``sqlite3`` connection short transactions run on, on the event loop's
    thread (opened on first use): like the ``now`` engine's, it never waits for SQLite's
    lock and never checkpoints the WAL itself.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                                   check_same_thread=False)
            try:
                # connection settings only (no lock needed); the database is in WAL mode
                # since its first migration (the mode is stored in the file)
                for pragma in ("synchronous=NORMAL", "foreign_keys=ON", *_NOW_PRAGMAS):
                    conn.execute(f"PRAGMA {pragma}")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def attempt(self, fn: ShortFn[T]) -> tuple[bool, T | None]:
        """``fn`` as a transaction, or ``(False, None)`` if SQLite's write lock is held (by
        a process that does not take :class:`_WriterLock`). Rolled back when ``fn`` or the
        commit raises.
        """
        conn = self._db()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _lock_held(exc.sqlite_errorcode):
                return False, None
            raise
        try:
            result = fn(SqliteTx(conn))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return True, result

    def close(self) -> None:
        """Close the connection (it reopens on the next transaction)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _checkpoint(engine: Engine) -> None:
    """A passive WAL checkpoint (best effort: the next one catches up), on a raw
    connection: not inside a transaction, where SQLite cannot checkpoint. Run holding the
    write lock, so no commit lands meanwhile: a checkpoint that backfills every frame lets
    the next writer start the WAL over (what bounds its size).
    """
    with contextlib.suppress(SQLAlchemyError, sqlite3.Error):
        conn = engine.raw_connection()
        try:
            conn.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").close()
        finally:
            conn.close()
