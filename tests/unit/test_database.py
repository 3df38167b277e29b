"""``Database.run`` on SQLite: short writes run on the calling thread only when the write
lock is free at once, and otherwise behave exactly like any other write (they wait on a
thread, never on the event loop); results, errors and rollbacks are the same either way.
``Database.run_short`` (the bare driver) keeps every one of those promises too: each test
of a short write runs both ways.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from dtr.db import database as dbmod
from dtr.db.database import Database
from dtr.db.short import ShortTx, Statement
from dtr.errors import Unavailable

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    await database.run(lambda s: s.execute(text("CREATE TABLE t (v INTEGER)")))
    yield database
    await database.close()


def _insert(value: int) -> dbmod.TxFn[int]:
    def fn(s: Connection) -> int:
        s.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})
        return threading.get_ident()
    return fn


_INSERT = Statement(text("INSERT INTO t (v) VALUES (:v)"))


def _insert_short(value: int) -> dbmod.ShortFn[int]:
    def fn(tx: ShortTx) -> int:
        tx.execute(_INSERT, {"v": value})
        return threading.get_ident()
    return fn


ShortWrite = Callable[[Database, int], Awaitable[int]]


async def _by_run(db: Database, value: int) -> int:
    return await db.run(_insert(value), short=True)


async def _by_run_short(db: Database, value: int) -> int:
    return await db.run_short(_insert_short(value))


@pytest.fixture(params=[_by_run, _by_run_short], ids=["run", "run_short"])
def short(request: pytest.FixtureRequest) -> ShortWrite:
    """A short write of one value into ``t``, returning the thread it ran on."""
    write: ShortWrite = request.param
    return write


async def _values(db: Database) -> list[int]:
    rows = await db.run(lambda s: s.execute(text("SELECT v FROM t ORDER BY v")).all(),
                        write=False)
    return [r[0] for r in rows]


async def test_a_short_write_runs_on_the_calling_thread_when_the_lock_is_free(
        db: Database, short: ShortWrite) -> None:
    assert await short(db, 1) == threading.get_ident()
    assert await db.run(_insert(2)) != threading.get_ident()  # not short: a thread
    assert await _values(db) == [1, 2]


async def test_a_short_write_waits_on_a_thread_while_another_process_holds_the_lock(
        db: Database, short: ShortWrite) -> None:
    fd = os.open(db._writer.path, os.O_RDWR | os.O_CREAT)  # another dtr process's flock
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        task = asyncio.ensure_future(short(db, 3))
        await asyncio.sleep(0.2)
        assert not task.done()  # waiting, and the event loop is free (we are running)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert await task != threading.get_ident()
    assert await _values(db) == [3]


async def test_a_short_write_waits_on_a_thread_for_a_writer_that_takes_no_flock(
        db: Database, tmp_path: Path, short: ShortWrite) -> None:
    other = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # SQLite's own write lock, no dtr flock
    try:
        task = asyncio.ensure_future(short(db, 4))
        await asyncio.sleep(0.2)
        assert not task.done()
    finally:
        other.execute("COMMIT")
        other.close()
    assert await task != threading.get_ident()
    assert await _values(db) == [4]


async def test_a_failing_short_write_rolls_back_and_raises(db: Database) -> None:
    def fail(s: Connection) -> None:
        _insert(5)(s)
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await db.run(fail, short=True)
    assert await _values(db) == []
    await db.run(_insert(6), short=True)  # the connection is usable again
    assert await _values(db) == [6]


async def test_a_failing_run_short_rolls_back_and_raises(db: Database) -> None:
    def fail(tx: ShortTx) -> None:
        _insert_short(5)(tx)
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await db.run_short(fail)
    assert await _values(db) == []
    assert await db.run_short(_insert_short(6)) == threading.get_ident()  # usable again
    assert await _values(db) == [6]


async def test_a_failing_statement_in_run_short_rolls_back_the_ones_before(
        db: Database) -> None:
    await db.run(lambda s: s.execute(text("CREATE TABLE once (v INTEGER UNIQUE)")))
    twice = Statement(text("INSERT INTO once (v) VALUES (1), (1)"))

    def half(tx: ShortTx) -> None:
        _insert_short(8)(tx)
        tx.execute(twice, {})

    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        await db.run_short(half)
    assert await _values(db) == []
    await db.run_short(_insert_short(9))
    assert await _values(db) == [9]


async def test_run_short_says_unavailable_when_the_database_cannot_be_opened(
        tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    database = Database(f"sqlite+aiosqlite:///{folder / 'x.db'}")
    folder.rmdir()
    try:
        with pytest.raises(Unavailable, match="metadata database unavailable"):
            await database.run_short(_insert_short(1))
    finally:
        await database.close()


async def test_commit_hooks_run_inside_a_short_write(db: Database) -> None:
    db.before_commit.append(lambda s: s.execute(text("INSERT INTO t (v) VALUES (99)")))
    await db.run(_insert(7), short=True)
    assert await _values(db) == [7, 99]


async def test_short_writes_start_a_wal_checkpoint_every_so_often(
        db: Database, monkeypatch: pytest.MonkeyPatch, short: ShortWrite) -> None:
    started: list[object] = []
    monkeypatch.setattr(dbmod, "_checkpoint", started.append)
    # counted are commits on the calling thread (one that found the lock taken by a
    # checkpoint went to a thread instead)
    for i in range(dbmod._CHECKPOINT_EVERY * 4):
        if db._commits_now == dbmod._CHECKPOINT_EVERY * 2:
            break
        await short(db, i)
    assert db._commits_now == dbmod._CHECKPOINT_EVERY * 2
    for _ in range(50):  # submitted to the pool: give it a moment
        if len(started) == 2:
            break
        await asyncio.sleep(0.01)
    assert started == [db._write, db._write]  # under the write lock (holding)


_FAT = Statement(text("INSERT INTO big (b) VALUES (zeroblob(8000))"))


@pytest.mark.parametrize("bare", [False, True], ids=["run", "run_short"])
async def test_short_writes_keep_the_wal_bounded(db: Database, tmp_path: Path,
                                                 bare: bool) -> None:
    """Their connection never checkpoints; the ones started on a thread must really run
    (a checkpoint inside a transaction does nothing), or the WAL grows without end."""
    await db.run(lambda s: s.execute(text("CREATE TABLE big (b BLOB)")))
    wal = tmp_path / "x.db-wal"

    async def fat() -> None:
        if bare:
            await db.run_short(lambda tx: tx.execute(_FAT, {}))
        else:
            await db.run(lambda s: s.execute(_FAT.on("sqlite")), short=True)

    for _ in range(dbmod._CHECKPOINT_EVERY * 16):  # ~3 pages each: ~24 MB of WAL unchecked
        await fat()
        await asyncio.sleep(0)  # let a started checkpoint run now and then
    await asyncio.sleep(0.2)
    for _ in range(3):
        await fat()
    # a few checkpoint cycles (one may miss its restart when a write races it), not all
    assert wal.stat().st_size < 8 * 1024 * 1024


@pytest.mark.parametrize("bare", [False, True], ids=["run", "run_short"])
async def test_short_writes_never_checkpoint_on_the_calling_thread(
        db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bare: bool) -> None:
    """A checkpoint fsyncs the database file: it must not happen inside a commit on the
    event loop (SQLite's own autocheckpoint would, past 1,000 pages of WAL)."""
    monkeypatch.setattr(dbmod, "_CHECKPOINT_EVERY", 10**9)
    await db.run(lambda s: s.execute(text("CREATE TABLE big (b BLOB)")))
    for _ in range(600):  # ~3 pages each: ~1,800 pages
        if bare:
            await db.run_short(lambda tx: tx.execute(_FAT, {}))
        else:
            await db.run(lambda s: s.execute(_FAT.on("sqlite")), short=True)
    assert db._commits_now == 600
    assert (tmp_path / "x.db-wal").stat().st_size > 1_500 * 4096  # never restarted


async def test_the_checkpoint_copies_the_wal_into_the_database(db: Database,
                                                               tmp_path: Path) -> None:
    await db.run(lambda s: s.execute(text("CREATE TABLE big (b BLOB)")))
    for _ in range(100):  # fewer than _CHECKPOINT_EVERY: nothing checkpoints on its own
        await db.run(lambda s: s.execute(text("INSERT INTO big (b) VALUES (zeroblob(8000))")),
                     short=True)
    before = (tmp_path / "x.db").stat().st_size
    db._writer.holding(dbmod._checkpoint, db._write)
    assert (tmp_path / "x.db").stat().st_size - before > 100 * 8000
