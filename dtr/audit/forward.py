"""``Forwarder``: delivers the audit log to its sinks (:mod:`dtr.audit.sinks`) through an
outbox that is the ``audit_event`` table itself; ``audit_cursor`` holds each sink's
delivered position (the last ``seq`` it confirmed).

For each enabled sink a background task reads the events after the sink's position in
``seq`` order (``batch_size`` at a time), delivers them, and then advances the position in a
transaction. Delivery is **at least once**: a batch delivered but not yet recorded as such
(a crash, a shutdown, a lost database between the two steps, a hand-over between replicas)
is delivered again; receivers de-duplicate by ``seq`` (the CloudEvents ``id``). Nothing is
lost while a sink is down: its events wait in the table, and failed attempts are retried
with exponential backoff and jitter up to ``retry_max_seconds``, one log line per attempt.
Nothing here runs on the request path: the tasks poll every ``forward_poll_seconds``.

One process at a time delivers a given sink (the others stand by and take over within a
poll interval when it stops):

* PostgreSQL: a session advisory lock ``pg_try_advisory_lock(<64-bit hash of the sink
  name>)`` on one dedicated connection per process, checked before every batch; a lost
  connection drops the lock (and the task stops delivering until it gets it again).
* SQLite (one host): an exclusive non-blocking ``flock`` on
  ``<database>.audit-sink-<name>.lock`` beside the database file.

Every process also watches each sink's **backlog** (head ``seq`` minus delivered position),
shown by :meth:`Forwarder.status` and :func:`sink_status`. With
``audit.fail_closed_backlog`` set, the forwarder tells the recorder to refuse (503) every
request that records an event while an enabled sink is further behind than that; the flag is
in memory, refreshed every poll interval, so it costs the request path nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from dtr.audit.chain import COLUMNS
from dtr.audit.sinks import DeliveryError, Sink, build_sink
from dtr.config import AuditSinkSettings, Settings
from dtr.db.database import Database
from dtr.db.models import AuditCursor, AuditEvent, AuditHead

log = logging.getLogger("dtr.audit.forward")
Hold = Callable[[str | None], None]
"""Told the reason to refuse requests (fail-closed backlog), or None to accept them again."""
_FIRST_RETRY = 0.5
"""Seconds before the first retry; doubled per failure up to the sink's cap."""


@dataclass(frozen=True, slots=True)
class Route:
    """A sink and how the forwarder feeds it.

    Attributes:
        sink: the destination.
        kind: ``stdout``, ``syslog`` or ``webhook`` (shown in the status).
        enabled: deliver (``False`` keeps the position and only reports the backlog).
        batch_size: most events per delivery.
        retry_max_seconds: the longest wait between attempts.
    """

    sink: Sink
    kind: str = ""
    enabled: bool = True
    batch_size: int = 100
    retry_max_seconds: float = 60.0


@dataclass(slots=True)
class SinkStatus:
    """Where a sink stands.

    Attributes:
        name: the sink's name.
        type: its kind.
        enabled: whether it is delivered.
        position: the last ``seq`` it confirmed.
        head: the last ``seq`` recorded.
        backlog: ``head - position``: events waiting for it.
        updated_at: when its position last moved (None: never).
        delivering: this process is the one delivering it (live status only).
        failures: failed attempts in a row (live status only).
        last_error: the last failure, if it has not recovered since (live status only).
    """

    name: str
    type: str
    enabled: bool
    position: int = 0
    head: int = 0
    backlog: int = 0
    updated_at: dt.datetime | None = None
    delivering: bool = False
    failures: int = 0
    last_error: str = ""


def backoff(failures: int, cap: float) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row: exponential from
    0.5 s, capped at ``cap``, with "equal jitter" (uniform in the upper half) so replicas
    and sinks do not retry in step.
    """
    delay = min(cap, _FIRST_RETRY * 2.0 ** min(failures - 1, 30))
    return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not a secret


def identity(settings: Settings) -> tuple[str, str]:
    """This registry's CloudEvents ``source`` and event-id prefix: ``server.public_url`` and
    its host when set, else ``urn:dtr:<auth.token.issuer>`` and the issuer.
    """
    public = settings.server.public_url.rstrip("/")
    if public:
        return public, urlsplit(public).netloc or public
    issuer = settings.auth.token.issuer
    return f"urn:dtr:{issuer}", issuer


def _positions(conn: Connection) -> tuple[int, dict[str, tuple[int, dt.datetime | None]]]:
    head = conn.execute(select(AuditHead.seq).where(AuditHead.id == 1)).scalar()
    cursors = {str(r.sink): (int(r.seq), r.updated_at)
               for r in conn.execute(select(AuditCursor.sink, AuditCursor.seq,
                                            AuditCursor.updated_at))}
    return int(head or 0), cursors


async def sink_status(db: Database, sinks: Sequence[AuditSinkSettings]) -> list[SinkStatus]:
    """The position and backlog of each configured sink, read from the database (for
    ``dtr audit sinks`` and the API; any process may call it).
    """
    head, cursors = await db.run(_positions, write=False)
    out = []
    for s in sinks:
        position, updated = cursors.get(s.name, (0, None))
        out.append(SinkStatus(s.name, s.type, s.enabled, position, head,
                              max(0, head - position), updated))
    return out


class SinkLeases:
    """Which sinks this process may deliver: at most one process per sink (see the module
    docstring for the PostgreSQL and SQLite mechanisms).
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._mutex = asyncio.Lock()
        self._conn: AsyncConnection | None = None
        self._held: set[str] = set()
        self._files: dict[str, int] = {}
        path = None if db.is_postgres else make_url(db.url).database
        self._lock_base = path if path and path != ":memory:" else None

    @staticmethod
    def key(name: str) -> int:
        """The advisory-lock key of sink ``name`` (a signed 64-bit integer)."""
        digest = hashlib.sha256(f"dtr.audit.sink:{name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    async def acquire(self, name: str) -> bool:
        """Take (or keep) the lease of ``name``; False if another process has it or the
        database cannot be reached.
        """
        async with self._mutex:
            if not self.db.is_postgres:
                return self._flock(name)
            try:
                if name in self._held:
                    assert self._conn is not None
                    await self._conn.execute(text("SELECT 1"))
                    return True
                if self._conn is None:
                    conn = await self.db.engine.connect()
                    self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                got = (await self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                                {"k": self.key(name)})).scalar()
            except Exception as exc:  # the lock connection is gone: so are its locks
                if self._held:
                    log.warning("audit forwarding: lost the sink lock connection: %s", exc)
                await self._drop()
                return False
            if got:
                self._held.add(name)
            return bool(got)

    def _flock(self, name: str) -> bool:
        if self._lock_base is None or name in self._files:
            return True
        fd = os.open(f"{self._lock_base}.audit-sink-{name}.lock", os.O_RDWR | os.O_CREAT,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._files[name] = fd
        return True

    async def _drop(self) -> None:
        self._held.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def aclose(self) -> None:
        """Give every lease up."""
        async with self._mutex:
            for fd in self._files.values():
                os.close(fd)  # releases the flock
            self._files.clear()
            if self._conn is not None:
                try:
                    await self._conn.execute(text("SELECT pg_advisory_unlock_all()"))
                    await self._conn.close()
                    self._conn = None
                except Exception:  # closing the session is what releases its locks then
                    await self._drop()
            self._held.clear()


@dataclass(slots=True)
class _State:
    status: SinkStatus
    gap_logged: int = 0


class Forwarder:
    """Delivers stored audit events to every enabled sink (see the module docstring).

    Args:
        db: the metadata database (the outbox).
        routes: the sinks and their delivery settings.
        poll_seconds: how often idle tasks look for new events and backlogs are refreshed.
        fail_closed_backlog: refuse requests while an enabled sink is more than this many
            events behind (0 = never).
        hold: where the refusal is switched on (a reason) and off (None); the recorder's
            :meth:`~dtr.audit.recorder.AuditRecorder.hold`.
    """

    def __init__(self, db: Database, routes: Sequence[Route], *, poll_seconds: float = 1.0,
                 fail_closed_backlog: int = 0, hold: Hold | None = None) -> None:
        self.db = db
        self.routes = list(routes)
        self.poll_seconds = poll_seconds
        self.fail_closed_backlog = fail_closed_backlog
        self.hold = hold
        self._state = {r.sink.name: _State(SinkStatus(r.sink.name, r.kind, r.enabled))
                       for r in self.routes}
        self._leases = SinkLeases(db)
        self._tasks: list[asyncio.Task[None]] = []
        self._held: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, db: Database, *,
                      hold: Hold | None = None) -> Forwarder:
        """The forwarder ``settings.audit`` describes (sink files are read here).

        Raises:
            ConfigError: a sink's CA, certificate, key or secret file is unusable.
        """
        source, registry_id = identity(settings)
        routes = [Route(build_sink(s, source=source, registry_id=registry_id), s.type,
                        s.enabled, s.batch_size, s.retry_max_seconds)
                  for s in settings.audit.sinks]
        a = settings.audit
        return cls(db, routes, poll_seconds=a.forward_poll_seconds,
                   fail_closed_backlog=a.fail_closed_backlog, hold=hold)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the backlog watcher and one delivery task per enabled sink (idempotent)."""
        if self._tasks or not self.routes:
            return
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch(), name="audit-forward-watch"))
        self._tasks += [loop.create_task(self._deliver_loop(r),
                                         name=f"audit-forward-{r.sink.name}")
                        for r in self.routes if r.enabled]

    async def aclose(self) -> None:
        """Stop delivering (a batch in flight is delivered again next time), give the
        leases up, close the sinks and lift a refusal this forwarder set.
        """
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._leases.aclose()
        for route in self.routes:
            with contextlib.suppress(Exception):
                await route.sink.aclose()
        self._set_hold(None)

    # -- status --------------------------------------------------------------------------------

    def status(self) -> list[SinkStatus]:
        """Each sink's status as this process last saw it (refreshed every poll interval),
        with its live delivery state.
        """
        return [dataclasses.replace(s.status) for s in self._state.values()]

    async def refresh(self) -> list[SinkStatus]:
        """Read every position and the head now; update backlogs and the fail-closed hold."""
        head, cursors = await self.db.run(_positions, write=False)
        for name, state in self._state.items():
            position, updated = cursors.get(name, (0, None))
            st = state.status
            st.head, st.position, st.updated_at = head, position, updated
            st.backlog = max(0, head - position)
        self._apply_hold()
        return self.status()

    def _apply_hold(self) -> None:
        if not self.fail_closed_backlog:
            return
        behind = [s.status for s in self._state.values()
                  if s.status.enabled and s.status.backlog > self.fail_closed_backlog]
        reason = None
        if behind:
            worst = max(behind, key=lambda s: s.backlog)
            reason = (f"the audit sink {worst.name!r} is {worst.backlog} events behind "
                      f"(audit.fail_closed_backlog={self.fail_closed_backlog}), so the "
                      "request was refused")
        self._set_hold(reason)

    def _set_hold(self, reason: str | None) -> None:
        if reason is not None and self._held is None:
            log.error("audit forwarding: refusing requests: %s", reason)
        elif reason is None and self._held is not None:
            log.warning("audit forwarding: the sinks caught up; accepting requests again")
        elif reason is None:
            return
        self._held = reason
        if self.hold is not None:
            self.hold(reason)

    async def _watch(self) -> None:
        failing = False
        while True:
            try:
                await self.refresh()
                failing = False
            except Exception as exc:  # database down: keep the last known state
                if not failing:
                    log.warning("audit forwarding: cannot read sink positions: %s", exc)
                failing = True
            await asyncio.sleep(self.poll_seconds)

    # -- delivery ------------------------------------------------------------------------------

    async def _deliver_loop(self, route: Route) -> None:
        name = route.sink.name
        state = self._state[name].status
        while True:
            try:
                state.delivering = await self._leases.acquire(name)
                if not state.delivering:
                    await asyncio.sleep(self.poll_seconds)
                    continue
                moved = await self.step(route)
            except Exception as exc:  # any failure: only what was confirmed advanced
                state.failures += 1
                state.last_error = str(exc) or repr(exc)
                delay = backoff(state.failures, route.retry_max_seconds)
                log.warning("audit sink %s: delivery failed (attempt %d), next attempt in "
                            "%.1f s: %s", name, state.failures, delay, state.last_error)
                await asyncio.sleep(delay)
                continue
            if state.failures:
                log.warning("audit sink %s: delivering again after %d failed attempts",
                            name, state.failures)
                state.failures, state.last_error = 0, ""
            if not moved:
                await asyncio.sleep(self.poll_seconds)

    async def step(self, route: Route) -> bool:
        """Deliver the next batch of ``route`` and advance its position (this process must
        hold its lease).

        Returns:
            False if there was nothing to deliver.

        Raises:
            Exception: delivery or the database failed (the position then covers only the
            events confirmed).
        """
        name = route.sink.name

        def read(conn: Connection) -> tuple[int | None, list[dict[str, Any]]]:
            position = conn.execute(select(AuditCursor.seq)
                                    .where(AuditCursor.sink == name)).scalar()
            after = int(position or 0)
            rows = conn.execute(select(*[getattr(AuditEvent, c) for c in COLUMNS])
                                .where(AuditEvent.seq > after)
                                .order_by(AuditEvent.seq, AuditEvent.time)
                                .limit(route.batch_size))
            return (None if position is None else after), [dict(r._mapping) for r in rows]

        position, rows = await self.db.run(read, write=False)
        if position is None:
            await self._create_cursor(name)
            position = 0
        if not rows:
            return False
        first = int(rows[0]["seq"])
        if first > position + 1 and self._state[name].gap_logged != first:
            self._state[name].gap_logged = first
            log.warning("audit sink %s: events %d..%d are no longer stored (retention) and "
                        "were never delivered to it", name, position + 1, first - 1)
        try:
            await route.sink.deliver(rows)
        except DeliveryError as exc:
            if exc.delivered > 0:
                await self._advance(name, int(rows[exc.delivered - 1]["seq"]))
            raise
        await self._advance(name, int(rows[-1]["seq"]))
        return True

    async def _create_cursor(self, name: str) -> None:
        def tx(conn: Connection) -> None:
            if conn.execute(select(AuditCursor.seq).where(AuditCursor.sink == name)).first():
                return
            conn.execute(insert(AuditCursor).values(sink=name, seq=0))

        with contextlib.suppress(IntegrityError):  # another replica created it first
            await self.db.run(tx)

    async def _advance(self, name: str, seq: int) -> None:
        now = dt.datetime.now(dt.UTC)

        def tx(conn: Connection) -> None:
            conn.execute(update(AuditCursor)
                         .where(AuditCursor.sink == name, AuditCursor.seq < seq)
                         .values(seq=seq, updated_at=now))

        await self.db.run(tx)
        st = self._state[name].status
        st.position, st.updated_at = max(st.position, seq), now
        st.backlog = max(0, st.head - st.position)
