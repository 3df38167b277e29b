"""``AuditMaintenance``: the background work of one process on the audit log.

* signing the periodic checkpoint when it is due (every replica tries; the checkpoint's
  primary key makes concurrent signers harmless: the second insert of the same ``seq`` is
  dropped);
* on PostgreSQL, creating the dated partitions ahead of time (at startup, then daily);
* applying retention (every ``audit.retention_interval_seconds``).

Partitions and retention run under :func:`exclusive`, so one process of all replicas works
on them at a time (a PostgreSQL advisory lock; on SQLite, whose processes share one host,
a file lock beside the database); the others skip that round.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Awaitable

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from dtr.audit.checkpoints import CheckpointKeys, checkpoint_due, write_checkpoint
from dtr.audit.retention import (
    RetentionPolicy,
    RetentionSummary,
    apply_retention,
    ensure_partitions,
)
from dtr.db.base import utcnow
from dtr.db.database import Database
from dtr.errors import Unavailable

log = logging.getLogger("dtr.audit")
LOCK_KEY = 0x6474_722E_6175_6474
"""The PostgreSQL advisory lock key of audit maintenance ("dtr.audt")."""
PARTITIONS_EVERY = 86_400.0
"""Seconds between two partition runs."""
RETRY_SECONDS = 300.0
"""Seconds before a failed partition or retention run is tried again."""


@contextlib.asynccontextmanager
async def exclusive(db: Database) -> AsyncIterator[bool]:
    """Try to become the one process doing audit maintenance; yields True when this one
    is (the lock is held until the block ends), False when another process is.

    PostgreSQL: a session advisory lock (:data:`LOCK_KEY`) on a connection of its own,
    released if the process dies. SQLite: ``flock`` on ``<database>.auditlock``.
    """
    if db.is_postgres:
        try:
            conn = await db.engine.connect()
        except (DBAPIError, OSError) as exc:
            raise Unavailable("metadata database unavailable") from exc
        try:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            mine = bool(await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"),
                                          {"k": LOCK_KEY}))
            try:
                yield mine
            finally:
                if mine:
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
        finally:
            await conn.close()
        return
    path = make_url(db.url).database
    if not path or path == ":memory:":
        yield True
        return
    fd = os.open(f"{path}.auditlock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class AuditMaintenance:
    """Signs a checkpoint every ``every_events`` events or ``every_seconds`` seconds,
    keeps the partitions ahead and applies retention.

    Args:
        db: the metadata database.
        keys: the registry key checkpoints are signed with.
        every_events: sign once the head is this far past the last checkpoint.
        every_seconds: ...or once unsigned events are this old.
        retention: what retention keeps (default: everything) and the partition size.
    """

    def __init__(self, db: Database, keys: CheckpointKeys, *, every_events: int,
                 every_seconds: float, retention: RetentionPolicy | None = None) -> None:
        self.db = db
        self.keys = keys
        self.every_events = every_events
        self.every_seconds = every_seconds
        self.retention = retention or RetentionPolicy()
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> bool:
        """Sign a checkpoint if one is due; True if one was written."""
        def tx(conn: Connection) -> bool:
            if not checkpoint_due(conn, self.every_events, self.every_seconds):
                return False
            return write_checkpoint(conn, self.keys) is not None

        try:
            return await self.db.run(tx)
        except IntegrityError:  # another replica signed the same head first
            return False

    async def ensure_partitions(self) -> list[str] | None:
        """Create the partitions of this period and the next ones (PostgreSQL); None when
        another process holds the maintenance lock.
        """
        if not self.db.is_postgres:
            return []
        async with exclusive(self.db) as mine:
            if not mine:
                return None
            days = self.retention.partition_days
            return await self.db.run(lambda c: ensure_partitions(c, utcnow(), days=days))

    async def apply_retention(self, *, dry_run: bool = False,
                              via: str = "maintenance") -> RetentionSummary | None:
        """Apply retention now (:func:`dtr.audit.retention.apply_retention`); None when
        another process holds the maintenance lock.
        """
        async with exclusive(self.db) as mine:
            if not mine:
                return None
            return await apply_retention(self.db, self.keys, utcnow(), self.retention,
                                         dry_run=dry_run, via=via)

    async def _loop(self) -> None:
        interval = max(0.5, min(self.every_seconds / 4, 15.0))
        clock = asyncio.get_running_loop().time
        partitions_due = retention_due = clock()
        while True:
            if clock() >= partitions_due:
                ok = await _attempt("creating partitions", self.ensure_partitions())
                partitions_due = clock() + (PARTITIONS_EVERY if ok else RETRY_SECONDS)
            try:
                await self.run_once()
            except Unavailable as exc:
                log.warning("audit: checkpoint not signed: %s", exc)
            if self.retention.days and clock() >= retention_due:
                ok = await _attempt("retention", self.apply_retention())
                retention_due = clock() + (self.retention.interval_seconds if ok
                                           else min(RETRY_SECONDS,
                                                    self.retention.interval_seconds))
            await asyncio.sleep(interval)

    def start(self) -> None:
        """Start the background loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def aclose(self) -> None:
        """Stop the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def _attempt(what: str, work: Awaitable[object | None]) -> bool:
    """Run ``work``; False when it failed (logged; the loop goes on) or found another
    process doing it.
    """
    try:
        return await work is not None
    except Unavailable as exc:
        log.warning("audit: %s failed: %s", what, exc)
    except DBAPIError as exc:  # a lock not granted in time, mostly
        log.warning("audit: %s postponed: %s", what, exc.orig)
    except Exception:
        log.exception("audit: %s failed", what)
    return False
