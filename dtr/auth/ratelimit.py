"""Failed-login limits per account name and per client address, kept in the
``login_failure`` table so every replica and worker shares one count.

A key (``account:<name>`` or ``ip:<address>``) counts failures in a fixed window that
starts at its first failure and lasts ``window_seconds``; once the count reaches the limit,
:meth:`LoginLimiter.check` refuses that key until the window ends. Counting happens for
names that do not exist too, so a refusal never reveals whether an account exists.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, case, delete, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from dtr.db.base import utcnow
from dtr.db.database import Database
from dtr.db.models import LoginFailure
from dtr.errors import RateLimited

RATE_LIMITED_MESSAGE = "too many failed login attempts; try again later"
_MAX_KEY_PART = 255


def account_key(name: str) -> str:
    """The limiter key of an account name (long names are hashed to fit the column)."""
    return "account:" + _fit(name)


def ip_key(address: str) -> str:
    """The limiter key of a client address."""
    return "ip:" + _fit(address)


def _fit(value: str) -> str:
    # Keys are text columns: long values, NUL (PostgreSQL refuses it) and lone surrogates
    # (not UTF-8) are stored as their hash.
    if len(value) <= _MAX_KEY_PART and "\x00" not in value:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return value
    return "#" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


# built once (every login runs it): building a statement costs more than running it
_FAILURES = (select(LoginFailure.key, LoginFailure.count, LoginFailure.window_start)
             .where(LoginFailure.key.in_(bindparam("keys", expanding=True))))


class LoginLimiter:
    """Failed-login counters shared through the database.

    Args:
        db: the metadata database.
        per_account: failures allowed per account name within the window.
        per_ip: failures allowed per client address within the window.
        window_seconds: length of the counting window (and of a lock-out).
        clock: the current time (tests).

    The ``*_tx`` methods do the same work inside a caller's transaction, so a credential
    check can read the limits and the account in one round trip. An empty ``account`` or
    ``ip`` skips that key. Concurrent attempts may overshoot a limit by the number in
    flight (check, then verify, then count): the limit bounds guessing, not exactly.
    """

    def __init__(self, db: Database, per_account: int, per_ip: int, window_seconds: int, *,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        if min(per_account, per_ip, window_seconds) < 1:
            raise ValueError("limits and window must be at least 1")
        self.db = db
        self.per_account = per_account
        self.per_ip = per_ip
        self.window = dt.timedelta(seconds=window_seconds)
        self.clock = clock
        self._last_prune = 0.0

    async def check(self, account: str, ip: str) -> None:
        """Refuse a login attempt when the account or the address is locked.

        Raises:
            RateLimited: either key reached its limit within the window; ``retry_after``
                is the number of seconds until the window ends.
        """
        await self.db.run(lambda conn: self.check_tx(conn, account, ip), write=False)

    async def failed(self, account: str, ip: str) -> None:
        """Count one failed attempt against both keys."""
        await self.db.run(lambda conn: self.failed_tx(conn, account, ip), write=True)

    async def succeeded(self, account: str, ip: str) -> None:
        """Clear the account's failures after a successful login.

        The address keeps its count: one good password does not excuse a spray of guesses
        from the same client.
        """
        await self.db.run(lambda conn: self.succeeded_tx(conn, account, ip), write=True)

    def check_tx(self, conn: Connection, account: str, ip: str) -> bool:
        """:meth:`check` inside the caller's transaction.

        Returns:
            True if the account key has failures on record (so a success should clear it).

        Raises:
            RateLimited: see :meth:`check`.
        """
        keys = self.keys(account, ip)
        if not keys:
            return False
        return self.verdict(conn.execute(_FAILURES, {"keys": keys}).all(), account, ip)

    def keys(self, account: str, ip: str) -> list[str]:
        """The limiter keys a check of ``account`` from ``ip`` reads (none when both are
        empty).
        """
        return list(self._limits(account, ip))

    def verdict(self, rows: Sequence[Sequence[Any]], account: str, ip: str) -> bool:
        """:meth:`check` over rows already read: ``(key, count, window_start)`` of
        :meth:`keys` (for readers other than a SQLAlchemy connection).

        Returns:
            True if the account key has failures on record (so a success should clear it).

        Raises:
            RateLimited: see :meth:`check`.
        """
        limits = self._limits(account, ip)
        now = self.clock()
        retry = 0
        for key, count, start in rows:
            ends = start + self.window
            if key in limits and count >= limits[key] and ends > now:
                retry = max(retry, math.ceil((ends - now).total_seconds()))
        if retry:
            raise RateLimited(RATE_LIMITED_MESSAGE, retry_after=max(retry, 1))
        own = account_key(account) if account else None
        return own is not None and any(row[0] == own for row in rows)

    def failed_tx(self, conn: Connection, account: str, ip: str) -> None:
        """:meth:`failed` inside the caller's transaction."""
        now = self.clock()
        cutoff = now - self.window
        col = LoginFailure.window_start
        col_type = LoginFailure.__table__.c.window_start.type
        for key in self._limits(account, ip):
            ins = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(LoginFailure)
            expired = col <= literal(cutoff, col_type)
            stmt = ins.values(key=key, count=1, window_start=now).on_conflict_do_update(
                index_elements=[LoginFailure.key],
                set_={"count": case((expired, 1), else_=LoginFailure.count + 1),
                      "window_start": case((expired, literal(now, col_type)), else_=col)})
            conn.execute(stmt)
        # Rows of finished windows are dead weight; sweep them at most once per window
        # per process (the table holds one row per recently failing name or address).
        mono = time.monotonic()
        if mono - self._last_prune >= self.window.total_seconds():
            self._last_prune = mono
            conn.execute(delete(LoginFailure).where(LoginFailure.window_start <= cutoff))

    def succeeded_tx(self, conn: Connection, account: str, ip: str) -> None:
        """:meth:`succeeded` inside the caller's transaction."""
        if account:
            conn.execute(delete(LoginFailure).where(LoginFailure.key == account_key(account)))

    def _limits(self, account: str, ip: str) -> dict[str, int]:
        limits: dict[str, int] = {}
        if account:
            limits[account_key(account)] = self.per_account
        if ip:
            limits[ip_key(ip)] = self.per_ip
        return limits
