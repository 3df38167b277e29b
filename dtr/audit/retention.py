"""Retention of the audit log: the dated partitions of ``audit_event`` on PostgreSQL
(:func:`ensure_partitions`) and the removal of events older than ``audit.retention_days``
that leaves the chain verifiable (:func:`apply_retention`).

**Partitions** (PostgreSQL). ``audit_event`` is ``PARTITION BY RANGE (time)`` with a DEFAULT
partition. A period is ``partition_days`` days counted from :data:`EPOCH` (so every replica
computes the same bounds); its partition is ``audit_event_pYYYYMMDD`` (the first day).
:func:`ensure_partitions` creates the current period's and the next ``ahead`` ones.
Rows reach DEFAULT only when their partition did not exist yet (written between
``dtr db upgrade`` and the first maintenance run, or while no maintenance ran for longer
than the periods created ahead); the next :func:`ensure_partitions` moves them into their
dated partition (DEFAULT detached, partition created, rows moved, DEFAULT attached again,
one transaction), so DEFAULT holds no dated rows and retention never deletes from it in
bulk. Bounds that would overlap existing partitions (after ``partition_days`` changed) are
clipped to the gaps. Indexes of the parent are created on every new partition by
PostgreSQL itself.

**Retention.** The chain is cut by ``seq``: every event up to the *cut* goes, every later
one stays, and a signed ``retention`` checkpoint at the cut anchors the first event kept
(:func:`dtr.audit.verify.verify_chain` starts from it). Times come from the events and are
slightly out of order between concurrent writers, so the cut is never later than the event
before the first one newer than the horizon (``now - retention_days``), and never later than
what every enabled forwarding sink has delivered (``audit_cursor``).

* PostgreSQL: partitions whose upper bound is at or before the horizon are dropped, oldest
  first, as long as the highest ``seq`` among them (the cut) is allowed; events of later
  partitions with a ``seq`` at or below the cut (*stragglers*: written a moment before the
  cut's event but dated just after the partition boundary) are deleted explicitly. A
  partition whose events reach past an allowed cut is kept until a later run.
* SQLite: events up to the cut are deleted in batches of ``batch`` per transaction.

Steps: (1) the rows to remove are verified from the chain's current anchor (genesis or the
previous retention checkpoint) up to the cut — retention refuses to erase a chain that does
not verify; (2) one transaction signs a ``retention`` checkpoint at the end of every removal
step and records an ``audit.retention`` event, and commits; (3) each step (one dropped
partition with its stragglers, or one batch) commits on its own and also removes the
checkpoints before its end. After every commit the first remaining event follows a signed
checkpoint, so the chain verifies at any moment; a crash between steps leaves only extra
checkpoints, and the next run continues.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import Connection, and_, delete, func, select, text
from sqlalchemy.exc import DBAPIError

from dtr.audit import chain
from dtr.audit.checkpoints import Checkpoint, CheckpointKeys, sign_checkpoint
from dtr.config import AuditSettings
from dtr.db.database import Database
from dtr.db.models import AuditCheckpoint, AuditCursor, AuditEvent
from dtr.errors import Unavailable
from dtr.events import SecurityEvent

log = logging.getLogger("dtr.audit")

EPOCH = dt.datetime(2000, 1, 3, tzinfo=dt.UTC)
"""Periods are counted from this Monday (UTC): 7-day partitions run Monday to Monday."""
PARENT = "audit_event"
DEFAULT = "audit_event_default"
BATCH = 10_000
"""Events one SQLite delete transaction removes."""
PAGE = 2_000
"""Events read (and hashed) at a time while verifying what is about to be removed."""
LOCK_TIMEOUT = "5s"
"""How long partition DDL waits for the table lock before giving up until the next run
(so a long export never makes every writer queue behind the DDL)."""
MOVE_LIMIT = 64
"""Most periods one :func:`ensure_partitions` moves out of DEFAULT."""
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


# -- partitions (PostgreSQL) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Partition:
    """A dated partition of ``audit_event``: events with ``lo <= time < hi``."""

    name: str
    lo: dt.datetime
    hi: dt.datetime


def period(when: dt.datetime, days: int) -> tuple[dt.datetime, dt.datetime]:
    """The bounds of the ``days``-day period holding ``when`` (counted from :data:`EPOCH`)."""
    span = dt.timedelta(days=days)
    lo = EPOCH + ((when - EPOCH) // span) * span
    return lo, lo + span


def partition_name(lo: dt.datetime) -> str:
    """The name of the partition starting at ``lo``: ``audit_event_pYYYYMMDD``."""
    return f"{PARENT}_p{lo.astimezone(dt.UTC):%Y%m%d}"


def _partitioned(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.execute(text("SELECT relkind = 'p' FROM pg_class "
                                  "WHERE oid = to_regclass(:t)"), {"t": PARENT}).scalar())


def _has_default(conn: Connection) -> bool:
    return bool(conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"),
                             {"t": DEFAULT}).scalar())


def _quoted(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


def partitions(conn: Connection) -> list[Partition]:
    """The dated partitions of ``audit_event``, oldest first (none on SQLite). Sets the
    transaction's time zone to UTC (bounds are read as text).
    """
    if not _partitioned(conn):
        return []
    conn.exec_driver_sql("SET LOCAL TimeZone = 'UTC'")
    conn.exec_driver_sql("SET LOCAL DateStyle = 'ISO, YMD'")
    rows = conn.execute(text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t)"),
        {"t": PARENT})
    found = []
    for name, bound in rows:
        match = _BOUND.search(bound or "")
        if match is None:  # DEFAULT
            continue
        try:
            lo, hi = (dt.datetime.fromisoformat(v).astimezone(dt.UTC) for v in match.groups())
        except ValueError:  # MINVALUE / MAXVALUE: not one of ours
            continue
        found.append(Partition(str(name), lo, hi))
    return sorted(found, key=lambda p: p.lo)


def _piece(when: dt.datetime, days: int, existing: Sequence[Partition]) -> Partition:
    """The period holding ``when`` (not covered by ``existing``), clipped to the gap
    between the existing partitions around it.
    """
    lo, hi = period(when, days)
    lo = max([lo, *(p.hi for p in existing if p.hi <= when)])
    hi = min([hi, *(p.lo for p in existing if p.lo > when)])
    return Partition(partition_name(lo), lo, hi)


def _covering(when: dt.datetime, existing: Sequence[Partition]) -> Partition | None:
    return next((p for p in existing if p.lo <= when < p.hi), None)


def _missing(existing: Sequence[Partition], now: dt.datetime, days: int,
             ahead: int) -> list[Partition]:
    """Partitions to create so the current period and ``ahead`` more are covered."""
    have = list(existing)
    wanted: list[Partition] = []
    when, _ = period(now, days)
    _, end = period(now + dt.timedelta(days=days * ahead), days)
    while when < end:
        covering = _covering(when, have)
        if covering is None:
            covering = _piece(when, days, have)
            have.append(covering)
            wanted.append(covering)
        when = covering.hi
    return wanted


def _oldest_in_default(conn: Connection) -> dt.datetime | None:
    if not _has_default(conn):
        return None
    oldest = conn.execute(text(f"SELECT min(time) FROM {DEFAULT}")).scalar()  # noqa: S608
    return None if oldest is None else oldest.astimezone(dt.UTC)


def ensure_partitions(conn: Connection, now: dt.datetime, *, days: int = 7,
                      ahead: int = 2) -> list[str]:
    """Create the partitions of the period holding ``now`` and the ``ahead`` periods after
    it, and move rows out of DEFAULT into their dated partitions (see the module
    docstring). Nothing on SQLite. Runs in the caller's transaction; takes the table's
    lock (waiting at most :data:`LOCK_TIMEOUT`) only when there is something to create.

    Returns:
        The names of the partitions created.

    Raises:
        sqlalchemy.exc.DBAPIError: the lock was not granted in time (try again later).
    """
    if not _partitioned(conn):
        return []
    existing = partitions(conn)
    if not _missing(existing, now, days, ahead) and _oldest_in_default(conn) is None:
        return []
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    conn.exec_driver_sql(f"LOCK TABLE ONLY {PARENT} IN ACCESS EXCLUSIVE MODE")
    existing = partitions(conn)  # again, under the lock
    created: list[str] = []
    for piece in _missing(existing, now, days, ahead):
        _create(conn, piece)
        existing.append(piece)
        created.append(piece.name)
    for _ in range(MOVE_LIMIT):
        oldest = _oldest_in_default(conn)
        if oldest is None:
            break
        if _covering(oldest, existing) is not None:  # a table of that name is in the way
            log.warning("audit: %s holds events of %s, which no partition was created for",
                        DEFAULT, oldest)
            break
        piece = _piece(oldest, days, existing)
        _create(conn, piece)
        existing.append(piece)
        created.append(piece.name)
    return created


def _create(conn: Connection, piece: Partition) -> None:
    """Create ``piece``; when DEFAULT holds rows of its range, move them into it."""
    name = _quoted(conn, piece.name)
    bounds = (f"FOR VALUES FROM ('{piece.lo.isoformat()}') "
              f"TO ('{piece.hi.isoformat()}')")
    span = {"lo": piece.lo, "hi": piece.hi}
    in_range = "WHERE time >= :lo AND time < :hi"
    stranded = _has_default(conn) and conn.execute(
        text(f"SELECT 1 FROM {DEFAULT} {in_range} LIMIT 1"), span).first()  # noqa: S608
    if not stranded:
        conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {PARENT} "
                             f"{bounds}")
        log.info("audit: created partition %s (%s to %s)", piece.name, piece.lo, piece.hi)
        return
    columns = ", ".join(f'"{c.name}"' for c in AuditEvent.__table__.columns)
    conn.exec_driver_sql(f"ALTER TABLE {PARENT} DETACH PARTITION {DEFAULT}")
    conn.exec_driver_sql(f"CREATE TABLE {name} PARTITION OF {PARENT} {bounds}")
    conn.execute(text(f"INSERT INTO {name} ({columns}) SELECT {columns} "  # noqa: S608
                      f"FROM {DEFAULT} {in_range}"), span)
    moved = conn.execute(text(f"DELETE FROM {DEFAULT} {in_range}"), span).rowcount  # noqa: S608
    conn.exec_driver_sql(f"ALTER TABLE {PARENT} ATTACH PARTITION {DEFAULT} DEFAULT")
    log.info("audit: created partition %s (%s to %s) and moved its %d events out of %s",
             piece.name, piece.lo, piece.hi, moved, DEFAULT)


# -- retention -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What retention keeps and how it works.

    Attributes:
        days: remove events older than this many days; 0 keeps them forever.
        partition_days: days per PostgreSQL partition.
        interval_seconds: how often the maintenance task applies retention.
        sinks: the enabled forwarding sinks; events they have not delivered are kept.
        batch: events per SQLite delete transaction.
    """

    days: int = 0
    partition_days: int = 7
    interval_seconds: float = 3600.0
    sinks: tuple[str, ...] = ()
    batch: int = BATCH

    @classmethod
    def of(cls, audit: AuditSettings) -> RetentionPolicy:
        """The policy the ``audit`` settings describe."""
        return cls(days=audit.retention_days, partition_days=audit.partition_days,
                   interval_seconds=audit.retention_interval_seconds,
                   sinks=tuple(s.name for s in audit.sinks if s.enabled))


@dataclass(slots=True)
class RetentionSummary:
    """What :func:`apply_retention` did (or, in a dry run, would do).

    Attributes:
        horizon: events older than this were due (None when retention is off).
        dry_run: nothing was changed.
        first_seq: the first stored event before the run.
        cut_seq: the last event removed, where the retention checkpoint anchors the chain
            (0: nothing removed).
        events: events removed.
        partitions: partitions dropped (PostgreSQL).
        deleted: events removed by DELETE (SQLite batches, PostgreSQL stragglers).
        waiting: why old events were kept this time (a sink behind, a partition whose
            events reach past the horizon, a lock not granted).
        problem: why nothing was removed: the events to remove do not verify.
    """

    horizon: dt.datetime | None
    dry_run: bool = False
    first_seq: int = 0
    cut_seq: int = 0
    events: int = 0
    partitions: list[str] = field(default_factory=list)
    deleted: int = 0
    waiting: str = ""
    problem: str = ""

    def describe(self) -> str:
        """The summary for people (one line per fact)."""
        if self.horizon is None:
            return "audit retention is off (audit.retention_days: 0): nothing removed"
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"retention horizon {chain.format_time(self.horizon)}"]
        if self.problem:
            lines.append(f"REFUSED: {self.problem}")
        elif self.events:
            lines.append(f"{verb} events {self.first_seq}..{self.cut_seq} ({self.events} "
                         f"events; {self.deleted} by DELETE)")
            if self.partitions:
                lines.append(f"{'would drop' if self.dry_run else 'dropped'} partitions: "
                             + ", ".join(self.partitions))
            lines.append(f"the chain {'would start' if self.dry_run else 'starts'} at event "
                         f"{self.cut_seq + 1}, anchored by the signed retention checkpoint "
                         f"{self.cut_seq}")
        else:
            lines.append(f"nothing {'to remove' if self.dry_run else 'removed'}")
        if self.waiting:
            lines.append(f"waiting: {self.waiting}")
        return "\n".join(lines)


@dataclass(slots=True)
class _Plan:
    first: int
    head: int
    limit: int
    """The walk stops here (the head, or what the slowest sink delivered)."""
    behind: str
    """The sink that set ``limit``, or empty."""
    anchor: Checkpoint | None
    """The checkpoint at ``first - 1`` (None when ``first`` is 1 or it is missing)."""
    marks: dict[int, Checkpoint]
    """Checkpoints in ``first..limit``."""
    candidates: list[tuple[Partition, int]] = field(default_factory=list)
    """PostgreSQL: partitions ending at or before the horizon, oldest first, with the
    highest ``seq`` in them and every older one (0: empty so far)."""


def _plan(conn: Connection, horizon: dt.datetime, policy: RetentionPolicy) -> _Plan | None:
    first = conn.execute(select(func.min(AuditEvent.seq))).scalar()
    if first is None:
        return None
    head_seq, _ = chain.head(conn)
    limit, behind = head_seq, ""
    if policy.sinks:
        delivered = {str(r.sink): int(r.seq) for r in conn.execute(
            select(AuditCursor.sink, AuditCursor.seq)
            .where(AuditCursor.sink.in_(policy.sinks)))}
        slowest = min(policy.sinks, key=lambda s: delivered.get(s, 0))
        if delivered.get(slowest, 0) < limit:
            limit, behind = delivered.get(slowest, 0), slowest
    plan = _Plan(int(first), head_seq, limit, behind, None, {})
    highest = 0
    for part in partitions(conn):
        if part.hi > horizon:
            break
        found = conn.execute(text(
            f"SELECT max(seq) FROM {_quoted(conn, part.name)}")).scalar()  # noqa: S608
        highest = max(highest, int(found or 0))
        plan.candidates.append((part, highest))
    if plan.candidates:
        plan.limit = min(plan.limit, plan.candidates[-1][1])
    marks = conn.execute(select(AuditCheckpoint.__table__).where(and_(
        AuditCheckpoint.seq >= plan.first - 1, AuditCheckpoint.seq <= plan.limit)))
    for m in marks:
        mark = Checkpoint(m.seq, m.hash, m.time, m.kind, m.key_id, m.signature)
        if mark.seq == plan.first - 1:
            plan.anchor = mark
        else:
            plan.marks[mark.seq] = mark
    return plan


@dataclass(slots=True)
class _Walk:
    """Verifies the rows about to be removed, page by page, and notes the hashes the
    retention checkpoints will sign.
    """

    keys: CheckpointKeys
    plan: _Plan
    horizon: dt.datetime
    walker: chain.ChainWalker
    every: int
    """Note the hash of every ``every``-th event from the start (SQLite batch ends)."""
    wanted: frozenset[int]
    """...and of these events (PostgreSQL partition ends)."""
    last: int = 0
    """The last event verified and older than the horizon."""
    newer: int = 0
    """The first event newer than the horizon (0: none met)."""
    blocked: bool = False
    """The event after ``plan.limit`` is older than the horizon too."""
    problem: str = ""
    hashes: dict[int, str] = field(default_factory=dict)

    def feed(self, rows: Sequence[Mapping[str, Any]]) -> bool:
        """Check a page; False once the walk is over."""
        for row in rows:
            seq = int(row["seq"])
            if row["time"] >= self.horizon:
                self.newer = seq
                return False
            if seq > self.plan.limit:
                self.blocked = True
                return False
            found = self.walker.feed(row)
            if found is not None:
                self.problem = f"event {found.seq}: {found.message}"
                return False
            mark = self.plan.marks.get(seq)
            if mark is not None and not (self.keys.valid(mark) and mark.hash == row["hash"]):
                self.problem = (f"the checkpoint at event {seq} is not validly signed or "
                                "does not match the event")
                return False
            if seq in self.wanted or (seq - self.plan.first + 1) % self.every == 0:
                self.hashes[seq] = str(row["hash"])
            self.last = seq
        return True


async def _walk(db: Database, keys: CheckpointKeys, plan: _Plan, horizon: dt.datetime,
                every: int, wanted: frozenset[int]) -> _Walk:
    if plan.first == 1:
        start = chain.GENESIS
    elif plan.anchor is not None and keys.valid(plan.anchor):
        start = plan.anchor.hash
    else:
        walk = _Walk(keys, plan, horizon, chain.ChainWalker(), every, wanted)
        walk.problem = (f"the first event is {plan.first} and no validly signed checkpoint "
                        f"anchors event {plan.first - 1}: earlier events were deleted")
        return walk
    walk = _Walk(keys, plan, horizon, chain.ChainWalker(plan.first, start), every, wanted)
    after, stop = plan.first - 1, min(plan.limit + 1, plan.head)
    columns = [getattr(AuditEvent, c) for c in chain.COLUMNS]
    while after < stop:
        def page(conn: Connection, after: int = after) -> list[dict[str, Any]]:
            rows = conn.execute(select(*columns).where(and_(
                AuditEvent.seq > after, AuditEvent.seq <= stop))
                .order_by(AuditEvent.seq, AuditEvent.time).limit(PAGE))
            return [dict(r._mapping) for r in rows]

        rows = await db.run(page, write=False)
        if not rows or not await asyncio.to_thread(walk.feed, rows):
            break
        after = int(rows[-1]["seq"])
    if walk.last:
        walk.hashes[walk.last] = walk.walker.prev
    return walk


def _event(summary: RetentionSummary, days: int, now: dt.datetime, via: str) -> SecurityEvent:
    assert summary.horizon is not None
    return SecurityEvent(
        action="audit.retention", outcome="allow", actor_kind="system", actor="dtr",
        resource=PARENT, time=now.timestamp(), detail={
            "first_seq": summary.first_seq, "cut_seq": summary.cut_seq,
            "events": summary.events, "partitions": summary.partitions,
            "horizon": chain.format_time(summary.horizon), "retention_days": days,
            "via": via})


async def apply_retention(db: Database, keys: CheckpointKeys, now: dt.datetime,
                          policy: RetentionPolicy, *, dry_run: bool = False,
                          via: str = "maintenance",
                          progress: Callable[[int, int], Awaitable[None]] | None = None,
                          ) -> RetentionSummary:
    """Remove the events older than ``policy.days`` days before ``now`` that may go (see
    the module docstring), keeping the chain verifiable.

    Call it from one process at a time (:func:`dtr.audit.maintenance.exclusive`).

    Args:
        db: the metadata database.
        keys: the registry key the retention checkpoints are signed with.
        now: the current time.
        policy: what to keep.
        dry_run: only report what would be removed.
        via: who runs it (``maintenance`` or ``cli``; recorded in the event).
        progress: awaited after every committed removal step with (the last event
            removed so far, the last event to remove).

    Returns:
        The summary (also logged, and recorded as an ``audit.retention`` event).
    """
    if policy.days <= 0:
        return RetentionSummary(None, dry_run)
    horizon = now - dt.timedelta(days=policy.days)
    summary = RetentionSummary(horizon, dry_run)
    plan = await db.run(lambda c: _plan(c, horizon, policy), write=False)
    if plan is None or (db.is_postgres and not plan.candidates):
        return summary
    summary.first_seq = plan.first
    if db.is_postgres:
        wanted = frozenset(upto for _, upto in plan.candidates)
        walk = await _walk(db, keys, plan, horizon, 1 << 62, wanted)
    else:
        walk = await _walk(db, keys, plan, horizon, policy.batch, frozenset())
    if walk.problem:
        summary.problem = walk.problem
        log.error("audit retention refused: %s; run `dtr audit verify`", walk.problem)
        return summary
    steps = _steps(summary, plan, walk, db.is_postgres)
    if not steps or dry_run:
        _log(summary)
        return summary

    def anchor(conn: Connection) -> None:
        for upto, _ in steps:
            if upto >= plan.first:
                sign_checkpoint(conn, keys, upto, walk.hashes[upto], "retention")
        chain.append(conn, [_event(summary, policy.days, now, via)])

    await db.run(anchor)
    done = plan.first - 1
    dropped: list[str] = []
    for upto, part in steps:
        try:
            deleted = await db.run(partial(_remove, upto=upto, part=part))
        except (DBAPIError, Unavailable) as exc:
            summary.waiting = (f"stopped before event {done + 1}: {getattr(exc, 'orig', exc)}"
                               "; the next run continues")
            log.warning("audit retention: %s", summary.waiting)
            break
        summary.deleted += deleted
        done = max(done, upto)
        if part is not None:
            dropped.append(part.name)
        if progress is not None:
            await progress(done, summary.cut_seq)
    summary.partitions = dropped
    summary.cut_seq = done if done >= plan.first else 0
    summary.events = done - plan.first + 1
    _log(summary)
    return summary


def _steps(summary: RetentionSummary, plan: _Plan, walk: _Walk,
           postgres: bool) -> list[tuple[int, Partition | None]]:
    """The removal steps (last event removed by the step, partition it drops), and the
    summary of what they remove.
    """
    steps: list[tuple[int, Partition | None]] = []
    if postgres:
        for part, upto in plan.candidates:
            if upto > walk.last:
                summary.waiting = (
                    f"partition {part.name} holds event {upto}, which comes after event "
                    f"{walk.newer}, newer than the horizon: kept until a later run"
                    if walk.newer and walk.newer <= upto else
                    f"sink {plan.behind} has delivered events only up to {plan.limit}"
                    if plan.behind else f"partition {part.name} is kept until a later run")
                break
            steps.append((upto, part))
    else:
        ends = sorted(s for s in walk.hashes if s <= walk.last)
        steps = [(end, None) for end in ends if end >= plan.first]
        if walk.blocked and plan.behind:
            summary.waiting = (f"sink {plan.behind} has delivered events only up to "
                               f"{plan.limit}")
    cut = max((upto for upto, _ in steps), default=0)
    summary.partitions = [p.name for _, p in steps if p is not None]
    if cut >= plan.first:
        summary.cut_seq, summary.events = cut, cut - plan.first + 1
    elif not summary.partitions:
        steps = []
    return steps


def _remove(conn: Connection, upto: int, part: Partition | None) -> int:
    """One removal step: drop ``part`` (if any), delete the events up to ``upto`` left
    elsewhere, and the checkpoints before ``upto``. Returns the events deleted.
    """
    if part is not None:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        conn.exec_driver_sql(f"DROP TABLE {_quoted(conn, part.name)}")
    deleted = conn.execute(delete(AuditEvent).where(AuditEvent.seq <= upto)).rowcount
    conn.execute(delete(AuditCheckpoint).where(AuditCheckpoint.seq < upto))
    return int(deleted)


def _log(summary: RetentionSummary) -> None:
    if summary.events or summary.partitions or summary.waiting:
        log.info("audit retention%s: %s", " (dry run)" if summary.dry_run else "",
                 summary.describe().replace("\n", "; "))
