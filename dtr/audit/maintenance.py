"""``AuditMaintenance``: the background work of one process on the audit log: signing the
periodic checkpoint when it is due. Every replica runs it; the checkpoint's primary key
makes concurrent signers harmless (the second insert of the same ``seq`` is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from dtr.audit.checkpoints import CheckpointKeys, checkpoint_due, write_checkpoint
from dtr.db.database import Database
from dtr.errors import Unavailable

log = logging.getLogger("dtr.audit")


class AuditMaintenance:
    """Signs a checkpoint every ``every_events`` events or ``every_seconds`` seconds.

    Args:
        db: the metadata database.
        keys: the registry key checkpoints are signed with.
        every_events: sign once the head is this far past the last checkpoint.
        every_seconds: ...or once unsigned events are this old.
    """

    def __init__(self, db: Database, keys: CheckpointKeys, *, every_events: int,
                 every_seconds: float) -> None:
        self.db = db
        self.keys = keys
        self.every_events = every_events
        self.every_seconds = every_seconds
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

    async def _loop(self) -> None:
        interval = max(0.5, min(self.every_seconds / 4, 15.0))
        while True:
            try:
                await self.run_once()
            except Unavailable as exc:
                log.warning("audit: checkpoint not signed: %s", exc)
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
