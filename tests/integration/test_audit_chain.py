"""The audit chain on SQLite and PostgreSQL: events recorded in a change's transaction
commit with it (and vanish with its rollback), events on their own are chained by the
group-commit writer, checkpoints are signed, and ``verify_chain`` names the first bad
sequence number after a row is modified, deleted, inserted or reordered directly in the
table.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import (
    Connection,
    String,
    bindparam,
    cast,
    delete,
    insert,
    select,
    text,
    update,
)

from dtr.audit import chain
from dtr.audit.checkpoints import CheckpointKeys, write_checkpoint
from dtr.audit.recorder import AuditRecorder
from dtr.audit.verify import verify_chain
from dtr.auth.tokens import TokenKeys
from dtr.core.hooks import RegistryEvent
from dtr.db.database import Database
from dtr.db.models import AuditEvent, AuditHead
from dtr.errors import Unavailable
from dtr.events import RequestContext, SecurityEvent, request_context

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    yield database
    await database.close()


@pytest.fixture
def keys() -> CheckpointKeys:
    token_keys = TokenKeys.generate()
    return CheckpointKeys(token_keys.signing, token_keys.kid, token_keys.verifying)


async def rows(db: Database) -> list[dict[str, Any]]:
    def tx(conn: Connection) -> list[dict[str, Any]]:
        found = conn.execute(select(AuditEvent.__table__).order_by(AuditEvent.seq))
        return [dict(r._mapping) for r in found]
    return await db.run(tx, write=False)


async def fill(db: Database, recorder: AuditRecorder, n: int) -> None:
    for i in range(n):
        await db.run(lambda c, i=i: recorder.record(c, RegistryEvent(
            "manifest.pushed", f"acme/app{i % 3}", f"sha256:{i:064x}", detail={"n": i})))


async def test_events_commit_and_roll_back_with_their_change(db: Database) -> None:
    recorder = AuditRecorder(db)
    ctx = RequestContext(request_id="r1", client_ip="10.1.2.3", user_agent="skopeo/1.20",
                         actor_kind="user", actor="alice", actor_id="user:alice",
                         method="password", token_id="tok1")
    with request_context(ctx):
        await db.run(lambda c: recorder.record(c, RegistryEvent(
            "tag.written", "acme/app", "sha256:" + "a" * 64, "v1")))

        def fails(conn: Connection) -> None:
            recorder.record(conn, RegistryEvent("tag.written", "acme/app", tag="v2"))
            raise RuntimeError("the change failed")

        with pytest.raises(RuntimeError):
            await db.run(fails)
    stored = await rows(db)
    assert [(r["seq"], r["action"], r["tag"]) for r in stored] == [(1, "tag.written", "v1")]
    row = stored[0]
    assert (row["actor"], row["actor_kind"], row["actor_id"], row["client_ip"],
            row["user_agent"], row["request_id"], row["method"], row["token_id"],
            row["org"], row["repository"], row["outcome"], row["prev_hash"]) == (
        "alice", "user", "user:alice", "10.1.2.3", "skopeo/1.20", "r1", "password", "tok1",
        "acme", "acme/app", "allow", chain.GENESIS)
    assert row["hash"] == chain.link_hash(row)


async def test_the_writer_chains_events_on_their_own_in_order(db: Database,
                                                               keys: CheckpointKeys) -> None:
    recorder = AuditRecorder(db, fail_closed=True)
    await asyncio.gather(*(recorder.emit(SecurityEvent(
        "auth.login", "deny", actor_kind="user", actor=f"u{i}", reason="bad_password"))
        for i in range(40)))
    await fill(db, recorder, 5)
    await recorder.aclose()
    stored = await rows(db)
    assert [r["seq"] for r in stored] == list(range(1, 46))
    assert sorted(r["actor"] for r in stored[:40]) == sorted(f"u{i}" for i in range(40))
    await db.run(lambda c: write_checkpoint(c, keys))
    report = await verify_chain(db, keys)
    assert report.ok, report.problem
    assert (report.checked, report.checkpoints) == (45, 1)


async def test_append_stores_the_time_as_the_column_type_does(db: Database,
                                                            keys: CheckpointKeys) -> None:
    """``append`` binds ``time`` itself (on SQLite, text cut from the canonical form): the
    stored value is the one the column type stores for the same instant, to the character,
    and reads back as that instant."""
    times = [1796043907.120056, 915246245.0, 1796043907.999999]
    await db.run(lambda c: chain.append(c, [
        SecurityEvent("auth.login", "allow", actor=f"u{i}", time=when)
        for i, when in enumerate(times)]))
    kind = AuditEvent.__table__.c.time.type

    def read(conn: Connection) -> list[tuple[Any, str, str]]:
        out = []
        for seq, when in enumerate(times, start=1):
            instant = dt.datetime.fromtimestamp(when, dt.UTC)
            stored = conn.execute(select(AuditEvent.time, cast(AuditEvent.time, String))
                                  .where(AuditEvent.seq == seq)).one()
            typed = conn.execute(select(cast(bindparam("t", instant, type_=kind),
                                             String))).scalar_one()
            out.append((stored[0] == instant, stored[1], typed))
        return out

    for same_instant, stored_text, typed_text in await db.run(read, write=False):
        assert same_instant
        assert stored_text == typed_text
    report = await verify_chain(db, keys)
    assert report.ok, report.problem


async def test_fail_closed_refuses_when_the_event_cannot_be_written(db: Database) -> None:
    recorder = AuditRecorder(db, fail_closed=True)
    await db.run(lambda c: c.execute(text("DROP TABLE audit_head")))
    with pytest.raises(Unavailable):
        await recorder.emit(SecurityEvent("auth.login", "allow", actor="alice"))
    await recorder.aclose()


async def test_a_deferred_event_is_accepted_now_and_recorded_when_awaited(
        db: Database) -> None:
    """``deferred`` (a pull's record, sent after the response): refused or accepted at
    once, written only once awaited, stamped with the context it is awaited in."""
    recorder = AuditRecorder(db)
    later = recorder.deferred(SecurityEvent("manifest.pulled", "allow", repository="a/b"))
    assert later is not None
    await recorder.flush()
    assert await rows(db) == []  # nothing until awaited
    ctx = RequestContext(request_id="r9", client_ip="10.0.0.9", user_agent="crane",
                         actor_kind="user", actor="bob", actor_id="user:bob",
                         method="token", token_id="t9")
    with request_context(ctx):
        await later()
    await recorder.flush()
    [row] = await rows(db)
    assert (row["action"], row["repository"], row["actor"], row["request_id"]) == (
        "manifest.pulled", "a/b", "bob", "r9")
    recorder.hold("the forwarder's backlog is full")
    with pytest.raises(Unavailable, match="backlog"):
        recorder.deferred(SecurityEvent("manifest.pulled", "allow", repository="a/b"))
    await recorder.aclose()
    closed = AuditRecorder(db, fail_closed=True)  # must be recorded before the response
    assert closed.deferred(SecurityEvent("manifest.pulled", "allow")) is None
    await closed.aclose()


async def tampered(db: Database, keys: CheckpointKeys, how: str) -> tuple[int, str]:
    recorder = AuditRecorder(db)
    await fill(db, recorder, 12)
    report = await verify_chain(db, keys)
    assert report.ok
    assert report.checked == 12

    def tamper(conn: Connection) -> None:
        seven = AuditEvent.seq == 7
        if how == "modified":
            conn.execute(update(AuditEvent).where(seven).values(actor="mallory"))
        elif how == "deleted":
            conn.execute(delete(AuditEvent).where(seven))
        elif how == "inserted":
            row = dict(conn.execute(select(AuditEvent.__table__)
                                    .where(seven)).one()._mapping)
            row["actor"] = "mallory"
            row["time"] = row["time"].replace(microsecond=(row["time"].microsecond + 1)
                                              % 1_000_000)
            row["hash"] = chain.link_hash(row)
            conn.execute(insert(AuditEvent), [row])
        elif how == "reordered":  # swap the contents of 7 and 8, keeping their numbers
            a, b = (dict(conn.execute(select(AuditEvent.__table__).where(
                AuditEvent.seq == n)).one()._mapping) for n in (7, 8))
            for row, other in ((a, b), (b, a)):
                conn.execute(update(AuditEvent).where(
                    AuditEvent.seq == row["seq"]).values(
                    digest=other["digest"], repository=other["repository"],
                    detail=other["detail"], hash=other["hash"],
                    prev_hash=other["prev_hash"]))
        elif how == "truncated":
            conn.execute(delete(AuditEvent).where(AuditEvent.seq > 10))

    await db.run(tamper)
    report = await verify_chain(db, keys)
    assert not report.ok
    assert report.problem is not None
    return report.problem.seq, report.problem.problem


@pytest.mark.parametrize(("how", "seq"), [
    ("modified", 7), ("deleted", 7), ("inserted", 7),
    ("reordered", 7), ("truncated", 11)])
async def test_verify_names_the_first_bad_sequence_number(db: Database, keys: CheckpointKeys,
                                                         how: str, seq: int) -> None:
    assert (await tampered(db, keys, how))[0] == seq


async def test_deleted_rehashed_rows_break_at_the_signed_checkpoint(
        db: Database, keys: CheckpointKeys) -> None:
    """A rewrite that recomputes every hash after the change passes the link check; the
    signed checkpoint over the original chain still catches it.
    """
    recorder = AuditRecorder(db)
    await fill(db, recorder, 12)
    await db.run(lambda c: write_checkpoint(c, keys))  # signs event 12

    def rewrite(conn: Connection) -> None:
        conn.execute(update(AuditEvent).where(AuditEvent.seq == 9).values(actor="mallory"))
        prev = conn.execute(select(AuditEvent.hash).where(AuditEvent.seq == 8)).scalar()
        for row in [dict(r._mapping) for r in conn.execute(
                select(AuditEvent.__table__).where(AuditEvent.seq >= 9)
                .order_by(AuditEvent.seq))]:
            row["prev_hash"] = prev
            new = chain.link_hash(row)
            conn.execute(update(AuditEvent).where(AuditEvent.seq == row["seq"]).values(
                prev_hash=prev, hash=new))
            prev = new
        conn.execute(update(AuditHead).values(hash=prev))

    await db.run(rewrite)
    report = await verify_chain(db, keys)
    assert not report.ok
    assert report.problem is not None
    assert (report.problem.seq, report.problem.problem) == (12, "modified")


async def test_cutting_the_end_and_the_head_is_caught_by_a_checkpoint(
        db: Database, keys: CheckpointKeys) -> None:
    recorder = AuditRecorder(db)
    await fill(db, recorder, 12)
    await db.run(lambda c: write_checkpoint(c, keys))

    def cut(conn: Connection) -> None:
        conn.execute(delete(AuditEvent).where(AuditEvent.seq > 10))
        last = conn.execute(select(AuditEvent.hash).where(AuditEvent.seq == 10)).scalar()
        conn.execute(update(AuditHead).values(seq=10, hash=last))

    await db.run(cut)
    report = await verify_chain(db, keys)
    assert not report.ok
    assert report.problem is not None
    assert report.problem.seq == 11


async def test_a_forged_checkpoint_is_refused(db: Database, keys: CheckpointKeys) -> None:
    recorder = AuditRecorder(db)
    await fill(db, recorder, 3)
    other = TokenKeys.generate()
    forger = CheckpointKeys(other.signing, keys.kid, other.verifying)
    await db.run(lambda c: write_checkpoint(c, forger))
    report = await verify_chain(db, keys)
    assert not report.ok
    assert report.problem is not None
    assert (report.problem.seq, report.problem.problem) == (3, "checkpoint")
