"""Audit retention on SQLite and a real PostgreSQL: dated partitions are created ahead and
rows stranded in DEFAULT are moved into them; retention drops whole partitions on
PostgreSQL (no DELETE of their rows: a trigger counts every deleted row) and deletes in
batches on SQLite; the chain verifies afterwards from the signed retention checkpoint,
and one more row deleted at its start is detected; a straggler (an event dated just after
a partition boundary but chained before the last event of the older partition) is deleted
with it, or the partition waits; sinks that are behind hold retention back; a chain that
does not verify is not pruned; ``dtr audit prune`` reports and prunes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import Connection, delete, insert, select, text, update

from dtr.audit import chain
from dtr.audit.checkpoints import CheckpointKeys, checkpoints, write_checkpoint
from dtr.audit.maintenance import AuditMaintenance, exclusive
from dtr.audit.retention import (
    EPOCH,
    RetentionPolicy,
    apply_retention,
    ensure_partitions,
    partition_name,
    partitions,
    period,
)
from dtr.audit.verify import verify_chain
from dtr.auth.tokens import TokenKeys
from dtr.cli import main
from dtr.config import ConfigError, load_settings
from dtr.db.base import utcnow
from dtr.db.database import Database
from dtr.db.models import AuditCursor, AuditEvent
from dtr.events import SecurityEvent

pytestmark = pytest.mark.anyio
WEEK = dt.timedelta(days=7)
W0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
"""A period start (Monday): weekly partitions begin here."""
PER_WEEK = 10
only_postgres = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    yield database
    await database.close()


@pytest.fixture
def keys() -> CheckpointKeys:
    token_keys = TokenKeys.generate()
    return CheckpointKeys(token_keys.signing, token_keys.kid, token_keys.verifying)


def weekly(start: dt.datetime, weeks: Sequence[int]) -> list[dt.datetime]:
    """``PER_WEEK`` times in each of ``weeks`` after ``start``, 16 hours apart."""
    return [start + w * WEEK + dt.timedelta(hours=1 + 16 * k)
            for w in weeks for k in range(PER_WEEK)]


async def append(db: Database, times: Sequence[dt.datetime]) -> None:
    """Chain one pull event per time, in order."""
    events = [SecurityEvent("artifact.pull", "allow", actor_kind="user", actor="alice",
                                  org="acme", repository="acme/app", time=t.timestamp(),
                                  detail={"n": i}) for i, t in enumerate(times)]
    await db.run(lambda c: chain.append(c, events))


async def rows(db: Database) -> list[dict[str, Any]]:
    def tx(conn: Connection) -> list[dict[str, Any]]:
        found = conn.execute(select(AuditEvent.__table__).order_by(AuditEvent.seq))
        return [dict(r._mapping) for r in found]
    return await db.run(tx, write=False)


async def names(db: Database) -> list[str]:
    return [p.name for p in await db.run(partitions, write=False)]


async def scalar(db: Database, sql: str) -> Any:
    return await db.run(lambda c: c.execute(text(sql)).scalar(), write=False)


async def ensure(db: Database, now: dt.datetime, days: int = 7) -> list[str]:
    return await db.run(lambda c: ensure_partitions(c, now, days=days))


async def count_deletes(db: Database) -> None:
    """A row trigger (cloned to every partition) recording each deleted event."""
    statements = [
        "CREATE TABLE deleted_events (seq bigint)",
        "CREATE FUNCTION note_delete() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO deleted_events VALUES (OLD.seq); RETURN OLD; END $$",
        "CREATE TRIGGER note_delete AFTER DELETE ON audit_event "
        "FOR EACH ROW EXECUTE FUNCTION note_delete()"]

    def tx(conn: Connection) -> None:
        for sql in statements:
            conn.exec_driver_sql(sql)
    await db.run(tx)


async def six_weeks(db: Database, keys: CheckpointKeys) -> None:
    """60 events over the six weeks from W0, a periodic checkpoint after the second week
    and one at the end; on PostgreSQL the first three weeks' partitions exist before
    their events, the others' events land in DEFAULT.
    """
    if db.is_postgres:
        assert await ensure(db, W0) == [partition_name(W0 + w * WEEK) for w in range(3)]
    await append(db, weekly(W0, [0, 1]))
    await db.run(lambda c: write_checkpoint(c, keys))
    await append(db, weekly(W0, [2, 3, 4, 5]))
    await db.run(lambda c: write_checkpoint(c, keys))


def test_periods_are_aligned_to_the_epoch() -> None:
    assert EPOCH.weekday() == 0
    assert period(W0 + dt.timedelta(days=3, hours=5), 7) == (W0, W0 + WEEK)
    assert period(W0, 7) == (W0, W0 + WEEK)
    assert period(W0 - dt.timedelta(microseconds=1), 7) == (W0 - WEEK, W0)
    assert period(dt.datetime(1999, 12, 31, tzinfo=dt.UTC), 7)[0] == EPOCH - WEEK
    lo, hi = period(W0 + dt.timedelta(days=40), 30)
    assert (hi - lo, (lo - EPOCH) % dt.timedelta(days=30)) == (dt.timedelta(days=30),
                                                                dt.timedelta(0))
    assert partition_name(W0) == "audit_event_p20260105"


@pytest.mark.parametrize(("audit", "error"), [
    ({"retention_days": -1}, "audit.retention_days"),
    ({"partition_days": 0}, "audit.partition_days"),
    ({"retention_interval_seconds": 0}, "audit.retention_interval_seconds")])
def test_retention_settings_are_checked(audit: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_settings(None, overrides={"audit": audit}, env={})
    settings = load_settings(None, overrides={"audit": {
        "retention_days": 90, "partition_days": 14, "sinks": [
            {"name": "siem", "type": "stdout"},
            {"name": "old", "type": "stdout", "enabled": False}]}}, env={})
    assert RetentionPolicy.of(settings.audit) == RetentionPolicy(
        days=90, partition_days=14, interval_seconds=3600.0, sinks=("siem",))


async def test_retention_drops_old_events_and_the_chain_stays_anchored(
        db: Database, keys: CheckpointKeys) -> None:
    await six_weeks(db, keys)
    now = W0 + 6 * WEEK
    if db.is_postgres:
        assert await scalar(db, "SELECT count(*) FROM audit_event_default") == 30
        created = await ensure(db, now)  # the next periods, and weeks 3-5 out of DEFAULT
        assert sorted(created) == [partition_name(W0 + w * WEEK) for w in range(3, 9)]
        assert await names(db) == [partition_name(W0 + w * WEEK) for w in range(9)]
        assert await scalar(db, "SELECT count(*) FROM audit_event_default") == 0
        assert await scalar(db, f"SELECT count(*) FROM {partition_name(W0 + 4 * WEEK)}") == 10
        parent = await scalar(db, "SELECT count(*) FROM pg_indexes "
                                  "WHERE tablename = 'audit_event'")
        for week in (0, 4, 7):  # created ahead, moved out of DEFAULT, created empty
            assert await scalar(db, "SELECT count(*) FROM pg_indexes WHERE tablename = "
                                    f"'{partition_name(W0 + week * WEEK)}'") == parent
        await count_deletes(db)

    summary = await apply_retention(db, keys, now, RetentionPolicy(days=21, batch=7))

    assert (summary.first_seq, summary.cut_seq, summary.events) == (1, 30, 30)
    assert not summary.problem
    assert not summary.waiting
    stored = await rows(db)
    assert [r["seq"] for r in stored] == list(range(31, 62))
    last = stored[-1]
    assert (last["action"], last["actor_kind"], last["time"]) == ("audit.retention",
                                                                  "system", now)
    assert json.loads(last["detail"])["cut_seq"] == 30
    if db.is_postgres:
        assert summary.partitions == [partition_name(W0 + w * WEEK) for w in range(3)]
        assert summary.deleted == 0
        assert await names(db) == [partition_name(W0 + w * WEEK) for w in range(3, 9)]
        assert await scalar(db, "SELECT count(*) FROM deleted_events") == 0
        assert await scalar(db, "SELECT count(*) FROM audit_event_default") == 0
    else:
        assert (summary.partitions, summary.deleted) == ([], 30)
    marks = await db.run(checkpoints, write=False)
    assert [(m.seq, m.kind) for m in marks] == [(30, "retention"), (60, "periodic")]

    report = await verify_chain(db, keys)
    assert report.ok, report.problem
    assert (report.first_seq, report.last_seq, report.checked) == (31, 61, 31)
    assert any("checkpoint 30" in note for note in report.notes)

    await db.run(lambda c: c.execute(delete(AuditEvent).where(AuditEvent.seq == 31)))
    report = await verify_chain(db, keys)
    assert not report.ok
    assert report.problem is not None
    assert (report.problem.seq, report.problem.problem) == (32, "deleted")


async def test_nothing_is_due_before_the_horizon(db: Database, keys: CheckpointKeys) -> None:
    await six_weeks(db, keys)
    summary = await apply_retention(db, keys, W0 + 6 * WEEK, RetentionPolicy(days=60))
    assert (summary.cut_seq, summary.events, summary.partitions) == (0, 0, [])
    off = await apply_retention(db, keys, W0 + 6 * WEEK, RetentionPolicy(days=0))
    assert off.horizon is None
    assert len(await rows(db)) == 60


@only_postgres
async def test_a_straggler_waits_for_the_horizon_then_goes_with_its_partition(
        db: Database, keys: CheckpointKeys) -> None:
    await ensure(db, W0)
    boundary = W0 + WEEK
    times = [*weekly(W0, [0])[:9],
             boundary + dt.timedelta(minutes=30),  # 10: the next week's first event...
             boundary - dt.timedelta(seconds=1),  # 11: ...chained before this one
             *weekly(W0, [1, 2])]
    await append(db, times)
    await count_deletes(db)
    p0 = partition_name(W0)
    assert await scalar(db, f"SELECT max(seq) FROM {p0}") == 11
    assert await scalar(db, f"SELECT min(seq) FROM {partition_name(boundary)}") == 10

    # the horizon is the partition's end: dropping it would remove event 10, newer
    waits = await apply_retention(db, keys, boundary + 21 * dt.timedelta(days=1),
                                  RetentionPolicy(days=21))
    assert (waits.cut_seq, waits.partitions) == (0, [])
    assert p0 in waits.waiting
    assert "event 10" in waits.waiting
    assert p0 in await names(db)
    assert len(await rows(db)) == 31
    assert await db.run(checkpoints, write=False) == []

    later = boundary + dt.timedelta(days=21, hours=1)
    done = await apply_retention(db, keys, later, RetentionPolicy(days=21))
    assert (done.cut_seq, done.events, done.partitions, done.deleted) == (11, 11, [p0], 1)
    assert await scalar(db, "SELECT array_agg(seq) FROM deleted_events") == [10]
    assert p0 not in await names(db)
    assert [r["seq"] for r in await rows(db)][:2] == [12, 13]
    report = await verify_chain(db, keys)
    assert report.ok, report.problem
    assert report.first_seq == 12


@only_postgres
async def test_a_drop_that_cannot_get_its_lock_leaves_a_verifiable_chain(
        db: Database, keys: CheckpointKeys) -> None:
    await six_weeks(db, keys)
    now = W0 + 6 * WEEK
    await ensure(db, now)
    policy = RetentionPolicy(days=21)
    async with db.engine.connect() as reader:  # a long export, say
        await reader.execute(text("LOCK TABLE audit_event IN ACCESS SHARE MODE"))
        stopped = await apply_retention(db, keys, now, policy)
        assert "lock timeout" in stopped.waiting
        assert (stopped.cut_seq, stopped.events, stopped.partitions) == (0, 0, [])
        await reader.rollback()
    marks = await db.run(checkpoints, write=False)
    assert [(m.seq, m.kind) for m in marks] == [
        (10, "retention"), (20, "periodic"), (30, "retention"), (60, "periodic")]
    report = await verify_chain(db, keys)
    assert report.ok, report.problem
    assert report.checked == 61

    done = await apply_retention(db, keys, now, policy)
    assert (done.cut_seq, len(done.partitions)) == (30, 3)
    report = await verify_chain(db, keys)
    assert report.ok, report.problem
    assert (report.first_seq, report.last_seq) == (31, 62)


async def test_sinks_that_are_behind_hold_retention_back(db: Database,
                                                         keys: CheckpointKeys) -> None:
    await six_weeks(db, keys)
    now = W0 + 6 * WEEK
    await ensure(db, now)
    await db.run(lambda c: c.execute(insert(AuditCursor), [
        {"sink": "siem", "seq": 25}, {"sink": "archive", "seq": 60},
        {"sink": "disabled", "seq": 2}]))

    never = await apply_retention(db, keys, now, RetentionPolicy(days=21, sinks=("new",)))
    assert (never.cut_seq, never.events) == (0, 0)
    assert "sink new" in never.waiting

    policy = RetentionPolicy(days=21, sinks=("siem", "archive"))
    summary = await apply_retention(db, keys, now, policy)
    assert "sink siem has delivered events only up to 25" in summary.waiting
    # PostgreSQL drops whole weeks: the third week holds events 21..30, past 25
    assert summary.cut_seq == (20 if db.is_postgres else 25)
    assert (await rows(db))[0]["seq"] == summary.cut_seq + 1
    report = await verify_chain(db, keys)
    assert report.ok, report.problem

    await db.run(lambda c: c.execute(update(AuditCursor).where(AuditCursor.sink == "siem")
                                     .values(seq=61)))
    rest = await apply_retention(db, keys, now, policy)
    assert (rest.first_seq, rest.cut_seq, rest.waiting) == (summary.cut_seq + 1, 30, "")
    report = await verify_chain(db, keys)
    assert report.ok, report.problem
    assert report.first_seq == 31


async def test_a_chain_that_does_not_verify_is_not_pruned(db: Database,
                                                          keys: CheckpointKeys) -> None:
    await six_weeks(db, keys)
    now = W0 + 6 * WEEK
    await ensure(db, now)
    before = await names(db)
    await db.run(lambda c: c.execute(update(AuditEvent).where(AuditEvent.seq == 5)
                                     .values(actor="mallory")))
    summary = await apply_retention(db, keys, now, RetentionPolicy(days=21))
    assert "event 5" in summary.problem
    assert (summary.cut_seq, summary.partitions) == (0, [])
    assert len(await rows(db)) == 60
    assert await names(db) == before
    assert [m.seq for m in await db.run(checkpoints, write=False)] == [20, 60]


@only_postgres
async def test_partitions_follow_a_changed_period(db: Database) -> None:
    now = W0 + dt.timedelta(days=3)
    await ensure(db, now)
    assert await ensure(db, now) == []
    wider = await ensure(db, now, days=30)
    assert wider
    found = await db.run(partitions, write=False)
    assert all(a.hi == b.lo for a, b in itertools.pairwise(found))
    assert [p.lo for p in found[:2]] == [period(now, 30)[0], W0]  # the gap before W0
    assert found[-1].hi >= period(now, 30)[1] + dt.timedelta(days=60)
    assert found[-1].hi == period(found[-1].lo, 30)[1]


async def test_one_process_at_a_time(db: Database, keys: CheckpointKeys) -> None:
    maintenance = AuditMaintenance(db, keys, every_events=1000, every_seconds=60.0,
                                   retention=RetentionPolicy(days=1))
    async with exclusive(db) as first:
        assert first
        async with exclusive(db) as second:
            assert not second
        assert await maintenance.apply_retention() is None
        if db.is_postgres:
            assert await maintenance.ensure_partitions() is None
    async with exclusive(db) as again:
        assert again
    summary = await maintenance.apply_retention()
    assert summary is not None
    assert summary.events == 0
    if db.is_postgres:
        now = utcnow()
        assert await maintenance.ensure_partitions() == [
            partition_name(period(now + w * WEEK, 7)[0]) for w in range(3)]


def test_prune_command_reports_then_prunes(db_url: str, tmp_path: Path) -> None:
    key_file = tmp_path / "token-signing-key.pem"
    token_keys = TokenKeys.load_or_create(key_file)
    keys = CheckpointKeys(token_keys.signing, token_keys.kid, token_keys.verifying)
    start = period(utcnow() - 6 * WEEK, 7)[0]
    config = tmp_path / "dtr.yml"
    config.write_text(yaml.safe_dump({
        "server": {"data_dir": str(tmp_path)}, "database": {"url": db_url},
        "audit": {"retention_days": 21}}))

    async def setup() -> None:
        db = Database(db_url)
        try:
            if db.is_postgres:
                await ensure(db, start, days=7)
                await ensure(db, start + 3 * WEEK, days=7)
            await append(db, weekly(start, [0, 1, 2, 4, 5]))  # no events in week 3
        finally:
            await db.close()

    async def check() -> tuple[list[int], bool, list[str]]:
        db = Database(db_url)
        try:
            report = await verify_chain(db, keys)
            return [r["seq"] for r in await rows(db)], report.ok, await names(db)
        finally:
            await db.close()

    asyncio.run(setup())
    runner = CliRunner()
    dry = runner.invoke(main, ["audit", "prune", "--dry-run", "--config", str(config)])
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("dry run: retention horizon ")
    assert "would remove events 1..30 (30 events;" in dry.output
    assert "would start at event 31" in dry.output
    if "postgresql" in db_url:
        assert "would drop partitions: " + ", ".join(
            partition_name(start + w * WEEK) for w in range(3)) in dry.output
    seqs, ok, before = asyncio.run(check())
    assert (seqs, ok) == (list(range(1, 51)), True)

    done = runner.invoke(main, ["audit", "prune", "--config", str(config)])
    assert done.exit_code == 0, done.output
    assert "removed events 1..30 (30 events;" in done.output
    seqs, ok, after = asyncio.run(check())
    assert seqs == list(range(31, 52))
    assert ok
    if "postgresql" in db_url:
        assert partition_name(start) in before
        assert partition_name(start) not in after
        assert partition_name(period(utcnow(), 7)[0]) in after

    (tmp_path / "off.yml").write_text(yaml.safe_dump({
        "server": {"data_dir": str(tmp_path)}, "database": {"url": db_url}}))
    off = runner.invoke(main, ["audit", "prune", "--config", str(tmp_path / "off.yml")])
    assert off.exit_code == 0
    assert "nothing to prune" in off.output
    key_file.unlink()
    missing = runner.invoke(main, ["audit", "prune", "--config", str(config)])
    assert missing.exit_code == 1
    assert "no registry key" in missing.output


async def test_the_chain_verifies_after_every_removal_step(
        db: Database, keys: CheckpointKeys) -> None:
    await six_weeks(db, keys)
    now = W0 + 6 * WEEK
    await ensure(db, now)
    found: list[tuple[int, int, bool]] = []

    async def verify_between_steps(done: int, last: int) -> None:
        report = await verify_chain(db, keys)
        found.append((done, report.first_seq, report.ok))
        assert last == 30

    await apply_retention(db, keys, now, RetentionPolicy(days=21, batch=4),
                          progress=verify_between_steps)
    ends = (10, 20, 30) if db.is_postgres else (4, 8, 12, 16, 20, 24, 28, 30)
    assert found == [(n, n + 1, True) for n in ends]
