"""The push path's short transactions (``dtr.db.short``) on every executor they run on:
SQLite's bare driver (``Database.run_short`` with the lock free), a SQLAlchemy
``Connection`` on SQLite (the same transaction when it has to wait on a thread) and on
PostgreSQL. Each must store what SQLAlchemy's own execution of the statement stores (the
same rows, times in the column type's own form) and keep the compare-and-set answers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection, select, text, update

from dtr.core import blobs as blobs_mod
from dtr.core import store as store_mod
from dtr.core import uploads as uploads_mod
from dtr.core.blobs import _link_present, claim_row
from dtr.core.store import ensure_repo
from dtr.core.uploads import _NEW_UPLOAD, _advance, _advance_and_claim
from dtr.db.database import Database
from dtr.db.models import Blob, Repository, RepositoryBlob, Upload, UploadPart
from dtr.db.short import ConnectionTx, ShortTx

pytestmark = pytest.mark.anyio

T = TypeVar("T")
Runner = Callable[[Callable[[ShortTx], T]], Awaitable[T]]
NOW = dt.datetime(2026, 11, 30, 16, 20, 31, 123456, dt.UTC)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    yield database
    await database.close()


@pytest.fixture(params=["run_short", "connection"])
def run(request: pytest.FixtureRequest, db: Database) -> Runner[Any]:
    """Runs a short transaction on one executor (``run_short`` is the bare driver on
    SQLite, a ``Connection`` on PostgreSQL)."""
    if request.param == "run_short":
        return db.run_short

    async def on_connection(fn: Callable[[ShortTx], Any]) -> Any:
        return await db.run(lambda conn: fn(ConnectionTx(conn)))
    return on_connection


@pytest.fixture(autouse=True)
def fixed_time(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (blobs_mod, store_mod, uploads_mod):
        monkeypatch.setattr(module, "utcnow", lambda: NOW)


async def _push(run: Runner[Any], repository: str, upload_id: str, digest: str) -> None:
    """An upload started, one 10-byte body appended, its blob claimed and linked."""
    def start(tx: ShortTx) -> None:
        tx.execute(_NEW_UPLOAD, {"id": upload_id, "repository_id": ensure_repo(tx, repository),
                                 "now": NOW})

    await run(start)
    assert await run(lambda tx: _advance(tx, upload_id, 0, 4, f"{upload_id}/a"))
    assert await run(lambda tx: _advance_and_claim(tx, upload_id, 4, 6, f"{upload_id}/b",
                                                   digest)) == (True, True)
    assert await run(lambda tx: _link_present(tx, repository, digest, None))


async def _rows(db: Database, upload_id: str, digest: str) -> dict[str, Any]:
    def read(conn: Connection) -> dict[str, Any]:
        def one(query: Any) -> tuple[Any, ...]:
            return tuple(conn.execute(query).one())

        linked = (select(Repository.name, RepositoryBlob.created_at, Repository.created_at)
                  .join(Repository, Repository.id == RepositoryBlob.repository_id)
                  .where(RepositoryBlob.digest == digest))
        return {
            "upload": one(select(Upload.size, Upload.segments, Upload.created_at,
                                 Upload.updated_at).where(Upload.id == upload_id)),
            "parts": [tuple(r) for r in conn.execute(
                select(UploadPart.offset, UploadPart.key, UploadPart.size)
                .where(UploadPart.upload_id == upload_id).order_by(UploadPart.offset))],
            "blob": one(select(Blob.size, Blob.state, Blob.created_at, Blob.last_linked_at)
                        .where(Blob.digest == digest)),
            "link": one(linked),
        }
    return await db.run(read, write=False)


async def test_a_push_stores_the_rows_sqlalchemy_stores(db: Database, run: Runner[Any]) -> None:
    ours, theirs = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    await _push(run, "acme/ours", "u-ours", ours)

    async def by_sqlalchemy(fn: Callable[[ShortTx], Any]) -> Any:
        return await db.run(lambda conn: fn(ConnectionTx(conn)))
    await _push(by_sqlalchemy, "acme/theirs", "u-theirs", theirs)

    got = await _rows(db, "u-ours", ours)
    assert got["upload"] == (10, 2, NOW, NOW)
    assert got["parts"] == [(0, "u-ours/a", 4), (4, "u-ours/b", 6)]
    assert got["blob"] == (10, "present", NOW, NOW)
    assert got["link"] == ("acme/ours", NOW, NOW)
    want = await _rows(db, "u-theirs", theirs)
    want["parts"] = [(o, k.replace("theirs", "ours"), n) for o, k, n in want["parts"]]
    want["link"] = ("acme/ours", *want["link"][1:])
    assert got == want
    if not db.is_postgres:  # the stored text, not only what it reads back as
        def stored(conn: Connection) -> list[Any]:
            return [tuple(conn.execute(text(
                "SELECT u.created_at, u.updated_at, b.created_at, b.last_linked_at, "
                "l.created_at, r.created_at FROM upload u, blob b, repository_blob l, "
                "repository r WHERE u.id = :u AND b.digest = :d AND l.digest = :d "
                "AND r.id = l.repository_id"), {"u": u, "d": d}).one())
                for u, d in (("u-ours", ours), ("u-theirs", theirs))]
        first, second = await db.run(stored, write=False)
        assert first == second
        assert all(isinstance(value, str) for value in first)


async def test_the_compare_and_set_answers(db: Database, run: Runner[Any]) -> None:
    digest = "sha256:" + "c" * 64
    await _push(run, "acme/app", "u1", digest)
    # a stale offset: refused, nothing written
    assert not await run(lambda tx: _advance(tx, "u1", 4, 1, "u1/stale"))
    assert not await run(lambda tx: _advance(tx, "gone", 0, 1, "gone/a"))
    assert await run(lambda tx: _advance_and_claim(tx, "u1", 0, 1, "u1/c",
                                                   digest)) == (False, None)
    assert [p[1] for p in (await _rows(db, "u1", digest))["parts"]] == ["u1/a", "u1/b"]
    # the row exists: touched, not inserted
    assert await run(lambda tx: claim_row(tx, digest, 10)) is False
    # GC holds it: neither claimed nor linked
    await db.run(lambda conn: conn.execute(
        update(Blob).where(Blob.digest == digest).values(state="deleting")))
    assert await run(lambda tx: claim_row(tx, digest, 10)) is None
    assert not await run(lambda tx: _link_present(tx, "acme/other", digest, "u1"))
    assert (await _rows(db, "u1", digest))["upload"][0] == 10  # the upload is not ended


async def test_a_link_ends_its_upload_and_names_the_repository_once(
        db: Database, run: Runner[Any]) -> None:
    digest = "sha256:" + "d" * 64
    await _push(run, "acme/app", "u2", digest)

    def start(tx: ShortTx) -> None:
        tx.execute(_NEW_UPLOAD, {"id": "u3", "repository_id": ensure_repo(tx, "acme/app"),
                                 "now": NOW})
    await run(start)
    assert await run(lambda tx: _link_present(tx, "acme/app", digest, "u3"))  # again
    assert await run(lambda tx: _link_present(tx, "acme/new", digest, None))

    def count(conn: Connection) -> tuple[int, int, int]:
        return (len(conn.execute(select(Upload.id).where(Upload.id == "u3")).all()),
                len(conn.execute(select(RepositoryBlob.repository_id)
                                 .where(RepositoryBlob.digest == digest)).all()),
                len(conn.execute(select(Repository.id)
                                 .where(Repository.name == "acme/app")).all()))
    assert await db.run(count, write=False) == (0, 2, 1)
