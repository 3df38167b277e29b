"""Readiness: whether this replica can reach what it serves from, its metadata database and
its object store (:class:`HealthService`). The ``/health`` probes render it.

A check passes when the dependency answers within the timeout: the database a
``SELECT 1``, the object store a stat of a key no blob or upload uses (an answer of "not
found" is an answer). Why a check failed goes to the log, not to the caller: the probes are
public and must not reveal addresses, bucket names or credentials.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, literal, select

from dtr.core.store import Store
from dtr.storage.base import PathNotFound

log = logging.getLogger("dtr.health")
PROBE_KEY = "_health/probe"
"""The object store key the storage check stats (never written: blobs live under
``blobs/`` and uploads under ``uploads/``)."""
TIMEOUT = 5.0
"""Seconds a dependency has to answer before it counts as unavailable."""


@dataclass(frozen=True, slots=True)
class Check:
    """One dependency's state: ``ok`` or ``unavailable``, and how long it took to answer
    (or to time out), in milliseconds.
    """

    status: str
    ms: float


@dataclass(frozen=True, slots=True)
class Health:
    """Every dependency's :class:`Check`; ``ready`` when all are ``ok``."""

    checks: dict[str, Check]

    @property
    def ready(self) -> bool:
        """True when every dependency answered."""
        return all(c.status == "ok" for c in self.checks.values())


def _select_one(conn: Connection) -> object:
    return conn.execute(select(literal(1))).scalar()


class HealthService:
    """Checks the database and the object store of one :class:`Store`.

    Contract: :meth:`check` never raises for a dependency's failure (it reports it), runs
    the checks concurrently and returns within about ``timeout`` seconds.
    """

    def __init__(self, store: Store, timeout: float = TIMEOUT) -> None:
        self.store = store
        self.timeout = timeout

    async def check(self) -> Health:
        """Check every dependency now, all at once."""
        probes = {"database": self._database(), "storage": self._storage()}
        results = await asyncio.gather(*(self._timed(n, p) for n, p in probes.items()))
        return Health(dict(zip(probes, results, strict=True)))

    async def _database(self) -> None:
        await self.store.run(_select_one, write=False)

    async def _storage(self) -> None:
        try:
            await self.store.storage.stat(PROBE_KEY)
        except PathNotFound:
            return

    async def _timed(self, name: str, probe: Coroutine[Any, Any, None]) -> Check:
        start = time.perf_counter()
        try:
            await asyncio.wait_for(probe, self.timeout)
        except Exception as exc:  # any failure makes the dependency unready
            ms = (time.perf_counter() - start) * 1000
            reason = (f"no answer within {self.timeout:g} s" if isinstance(exc, TimeoutError)
                      else f"{type(exc).__name__}: {exc}")
            log.warning("health: %s unavailable after %.0f ms (%s)", name, ms, reason)
            return Check("unavailable", round(ms, 1))
        return Check("ok", round((time.perf_counter() - start) * 1000, 1))
