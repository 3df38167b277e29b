"""``AuditRecorder``: how events reach the chain.

* In a transaction (``record``; core's ``EventSink`` and ``SecurityEvents.record``): the
  event is stamped with the request context and kept in the transaction's scratch space;
  the ``Database.before_commit`` hook chains every kept event right before commit, so the
  events commit or roll back with the change and the chain lock is held only while
  committing.
* On its own (``emit``; pulls, denials, failed logins, tokens issued): events queue for a
  group-commit writer that chains whatever has queued in one transaction. Fail-open (the
  default) returns at once; the writer retries a failing database with backoff and keeps
  up to ``max_pending`` events meanwhile. Fail-closed waits until the event is committed
  and raises ``Unavailable`` when it cannot be, so nothing is served unrecorded.
* Under ``dtr serve``, fail-open events go to the audit relay process instead
  (:meth:`AuditRecorder.relay_to`, ``dtr.audit.relay``), which feeds them to its own
  recorder (:meth:`AuditRecorder.accept`); what the relay does not take is written here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from sqlalchemy import Connection

from dtr.audit import chain
from dtr.audit.chain import Entry
from dtr.audit.relay import RelayClient
from dtr.core.hooks import RegistryEvent
from dtr.db.database import Database, tx_state
from dtr.errors import Unavailable
from dtr.events import Outcome, SecurityEvent, stamped

log = logging.getLogger("dtr.audit")
_KEY = "audit"
BATCH = 512
"""Most events one writer transaction chains."""
LINGER = 0.1
"""Seconds a fail-open writer waits after the first queued event before writing (events
on their own reach the chain at most this much later; fail-closed writes at once)."""
_DENIED_ACTIONS = frozenset({"tag.denied", "manifest.pull.denied"})


def from_registry_event(event: RegistryEvent) -> SecurityEvent:
    """The audit form of a core content event (``manifest.pushed``, ``tag.written``,
    ``tag.denied``, ``manifest.deleted``, ``blob.mounted``, signing-gate decisions, …).
    """
    detail = dict(event.detail)
    outcome: Outcome = "deny" if event.action in _DENIED_ACTIONS else "allow"
    reason = str(detail.pop("reason", "") or "")
    rule = str(detail.pop("rule", "") or "")
    repository = event.repository if "*" not in event.repository else ""
    return SecurityEvent(
        action=event.action, outcome=outcome, reason=reason, rule=rule,
        repository=repository, org=repository.partition("/")[0] if "/" in repository else "",
        resource=event.repository if not repository else "",
        tag=event.tag or "", digest=event.digest or "", detail=detail)


class AuditRecorder:
    """Writes events into the hash chain (see the module docstring).

    Args:
        db: the metadata database.
        fail_closed: wait for every event on its own to be committed, and refuse (raise
            ``Unavailable``) when it cannot be.
        max_pending: events kept while the database is failing (fail-open); older ones are
            dropped (and logged) beyond it.
    """

    def __init__(self, db: Database, *, fail_closed: bool = False,
                 max_pending: int = 100_000) -> None:
        self.db = db
        self.fail_closed = fail_closed
        self.max_pending = max_pending
        self.dropped = 0
        self._queue: list[tuple[Entry, asyncio.Future[None] | None]] = []
        self.relay: RelayClient | None = None
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._busy = False
        self.refusal: str | None = None
        """Why every event is refused right now (``audit.fail_closed_backlog``), or None."""
        db.before_commit.append(self._chain_pending)

    def hold(self, reason: str | None) -> None:
        """Refuse every event with ``Unavailable(reason)`` from now on, or (None) accept
        them again: the forwarder's fail-closed backlog (``audit.fail_closed_backlog``).
        """
        self.refusal = reason

    # -- in a transaction ------------------------------------------------------------------

    def record(self, conn: Connection, event: RegistryEvent | SecurityEvent) -> None:
        """Keep ``event`` to be chained when the transaction of ``conn`` commits (nothing
        is written if it rolls back).

        Raises:
            Unavailable: events are refused (:meth:`hold`); the transaction rolls back.
        """
        if self.refusal is not None:
            raise Unavailable(self.refusal)
        audit = from_registry_event(event) if isinstance(event, RegistryEvent) else event
        tx_state(conn).setdefault(_KEY, []).append(stamped(audit))

    def _chain_pending(self, conn: Connection) -> None:
        pending: list[SecurityEvent] | None = tx_state(conn).pop(_KEY, None)
        if pending:
            chain.append(conn, pending)

    # -- on its own --------------------------------------------------------------------------

    async def emit(self, event: SecurityEvent) -> None:
        """Queue ``event`` for the writer; fail-closed: wait until it is committed.

        Raises:
            Unavailable: fail-closed and the event could not be committed, or events are
                refused (:meth:`hold`).
        """
        if self.refusal is not None:
            raise Unavailable(self.refusal)
        if not self.fail_closed:
            await self._emit_open(event)
            return
        done = asyncio.get_running_loop().create_future()
        self._queue.append((chain.entry_of(stamped(event)), done))
        self._start()
        await done

    def deferred(self, event: SecurityEvent) -> Callable[[], Awaitable[None]] | None:
        """See ``SecurityEvents.deferred``: failing open, ``event`` is accepted now (or
        refused, :meth:`hold`) and stamped and queued when the result is awaited (in the
        same request context); failing closed, None.

        Raises:
            Unavailable: events are refused (:meth:`hold`).
        """
        if self.fail_closed:
            return None
        if self.refusal is not None:
            raise Unavailable(self.refusal)
        return partial(self._emit_open, event)

    async def _emit_open(self, event: SecurityEvent) -> None:
        """Stamp ``event`` and queue it, failing open (to the relay when there is one)."""
        entry = chain.entry_of(stamped(event))
        if self.relay is not None:
            self.relay.add(entry)
        else:
            self.accept([entry])

    def accept(self, entries: list[Entry]) -> None:
        """Queue ``entries`` (ready to chain: stamped, clipped) for the writer, failing
        open: what the relay process receives, and what a worker's relay could not send.
        """
        self._queue.extend((entry, None) for entry in entries)
        if len(self._queue) > self.max_pending:
            lost = len(self._queue) - self.max_pending
            del self._queue[:lost]
            self.dropped += lost
            log.error("audit: %d events dropped: the database has refused writes for too "
                      "long (audit.max_pending=%d)", lost, self.max_pending)
        self._start()

    def relay_to(self, path: str) -> None:
        """Send fail-open events to the audit relay listening at ``path`` (``dtr serve``);
        nothing changes when failing closed.
        """
        if not self.fail_closed:
            self.relay = RelayClient(path, self.accept)

    def _start(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        assert self._wake is not None
        delay = 0.05
        while True:
            await self._wake.wait()
            if not self.fail_closed and not self._closing and len(self._queue) < BATCH:
                # nobody waits for these events: gather what arrives meanwhile, so a busy
                # registry writes one transaction per LINGER, not one per pull
                await asyncio.sleep(LINGER)
            self._wake.clear()
            while self._queue:
                batch = self._queue[:BATCH]
                del self._queue[:BATCH]
                self._busy = True
                try:
                    failure = await self._write(batch)
                finally:
                    self._busy = False
                if failure is None:
                    delay = 0.05
                    continue
                waiting = [(e, f) for e, f in batch if f is None]
                if self._closing:
                    self.dropped += len(waiting)
                    log.error("audit: %d events lost at shutdown: %s", len(waiting), failure)
                    continue
                self._queue[:0] = waiting
                log.warning("audit: could not record %d events, retrying in %.2f s: %s",
                            len(waiting), delay, failure.__cause__ or failure)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            if self._closing:
                return

    async def _write(self, batch: list[tuple[Entry, asyncio.Future[None] | None]],
                     ) -> Unavailable | None:
        """Chain ``batch`` in one transaction; settle the futures of fail-closed callers."""
        try:
            await self.db.run(partial(chain.append, events=[e for e, _ in batch]))
        except Exception as exc:  # any failure: retry, or refuse when failing closed
            failure = _failure(exc)
            for _, fut in batch:
                if fut is not None and not fut.done():
                    fut.set_exception(failure)
            return failure
        for _, fut in batch:
            if fut is not None and not fut.done():
                fut.set_result(None)
        return None

    async def flush(self) -> None:
        """Wait until every queued event is committed (retrying while the database fails);
        events handed to the relay are sent, not waited for.
        """
        if self.relay is not None:
            self.relay.send()
        while self._queue or self._busy:
            self._start()
            await asyncio.sleep(0.005)

    async def aclose(self) -> None:
        """Send what the relay should have, write what is queued (one attempt per batch),
        then stop the writer.
        """
        if self.relay is not None:
            self.relay.send()
            self.relay.close()
        self._closing = True
        if self._writer is not None and not self._writer.done():
            assert self._wake is not None
            self._wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        self._writer = None


def _failure(exc: BaseException) -> Unavailable:
    if isinstance(exc, Unavailable):
        return exc
    failed = Unavailable("the audit record could not be written, so the request was "
                         "refused (audit.fail_closed)")
    failed.__cause__ = exc
    return failed
