"""LoginLimiter on SQLite and PostgreSQL: limits per account and per address, windows,
clearing on success, exact counts under concurrency, and rows shared between limiters
(replicas)."""

from __future__ import annotations

import datetime as dt

import anyio
import pytest
from sqlalchemy import select

from dtr.auth.ratelimit import RATE_LIMITED_MESSAGE, LoginLimiter, account_key, ip_key
from dtr.db.database import Database
from dtr.db.models import LoginFailure
from dtr.errors import RateLimited

pytestmark = pytest.mark.anyio
WINDOW = 300


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def limiter(db: Database, clock: Clock, per_account: int = 3, per_ip: int = 5) -> LoginLimiter:
    return LoginLimiter(db, per_account, per_ip, WINDOW, clock=clock)


async def counts(db: Database) -> dict[str, int]:
    rows = await db.run(lambda c: c.execute(select(LoginFailure.key, LoginFailure.count)).all(),
                        write=False)
    return dict(rows)


async def test_account_limit_and_retry_after(db: Database, clock: Clock) -> None:
    lim = limiter(db, clock)
    for _ in range(3):
        await lim.check("alice", "10.0.0.1")
        await lim.failed("alice", "10.0.0.1")
    clock.advance(100)
    with pytest.raises(RateLimited) as err:
        await lim.check("alice", "10.0.0.2")  # another address: the account is locked
    assert err.value.message == RATE_LIMITED_MESSAGE
    assert err.value.retry_after == WINDOW - 100
    await lim.check("bob", "10.0.0.1")  # the address is still under its own limit
    clock.advance(WINDOW - 100)
    await lim.check("alice", "10.0.0.1")  # window over


async def test_ip_limit_spans_accounts(db: Database, clock: Clock) -> None:
    lim = limiter(db, clock)
    for i in range(5):
        await lim.failed(f"user{i}", "10.0.0.9")
    with pytest.raises(RateLimited) as err:
        await lim.check("someone-else", "10.0.0.9")
    assert err.value.retry_after == WINDOW
    await lim.check("someone-else", "10.0.0.10")


async def test_the_window_resets_the_count(db: Database, clock: Clock) -> None:
    lim = limiter(db, clock)
    await lim.failed("alice", "")
    await lim.failed("alice", "")
    clock.advance(WINDOW)
    await lim.failed("alice", "")  # first failure of a new window
    assert (await counts(db))[account_key("alice")] == 1
    await lim.failed("alice", "")
    await lim.check("alice", "")
    await lim.failed("alice", "")
    with pytest.raises(RateLimited):
        await lim.check("alice", "")


async def test_success_clears_the_account_not_the_address(db: Database, clock: Clock) -> None:
    lim = limiter(db, clock)
    await lim.failed("alice", "10.0.0.1")
    await lim.failed("alice", "10.0.0.1")
    assert await db.run(lambda c: lim.check_tx(c, "alice", "10.0.0.1"), write=False) is True
    await lim.succeeded("alice", "10.0.0.1")
    assert await db.run(lambda c: lim.check_tx(c, "alice", "10.0.0.1"), write=False) is False
    assert await counts(db) == {ip_key("10.0.0.1"): 2}


async def test_unknown_and_known_names_are_limited_alike(db: Database, clock: Clock) -> None:
    lim = limiter(db, clock, per_account=1)
    await lim.failed("no-such-user", "")
    await lim.failed("alice", "")
    errors = []
    for name in ("no-such-user", "alice"):
        with pytest.raises(RateLimited) as err:
            await lim.check(name, "")
        errors.append((err.value.message, err.value.retry_after))
    assert errors[0] == errors[1]


async def test_empty_keys_are_skipped(db: Database, clock: Clock) -> None:
    lim = limiter(db, clock, per_account=1, per_ip=1)
    await lim.failed("", "")
    await lim.check("", "")
    assert await counts(db) == {}


async def test_long_names_fit_the_key_column(db: Database, clock: Clock) -> None:
    lim = limiter(db, clock, per_account=1)
    name = "x" * 5000
    await lim.failed(name, "::ffff:" + "1" * 400)
    with pytest.raises(RateLimited):
        await lim.check(name, "")
    assert all(len(k) <= 320 for k in await counts(db))


async def test_keys_the_database_would_refuse_are_hashed(db: Database, clock: Clock) -> None:
    lim = limiter(db, clock, per_account=1, per_ip=1)
    await lim.failed("alice\x00", "\ud800")
    with pytest.raises(RateLimited):
        await lim.check("alice\x00", "")
    with pytest.raises(RateLimited):
        await lim.check("", "\ud800")
    await lim.check("alice", "")


async def test_concurrent_failures_are_all_counted(db: Database, clock: Clock) -> None:
    lim = limiter(db, clock, per_account=1000, per_ip=1000)

    async def fail() -> None:
        await lim.failed("alice", "10.0.0.1")

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(fail)
    assert await counts(db) == {account_key("alice"): 20, ip_key("10.0.0.1"): 20}


async def test_replicas_share_the_counts(db: Database, clock: Clock) -> None:
    one, two = limiter(db, clock), limiter(db, clock)
    await one.failed("alice", "")
    await two.failed("alice", "")
    await one.failed("alice", "")
    with pytest.raises(RateLimited):
        await two.check("alice", "")


async def test_finished_windows_are_swept(db: Database, clock: Clock) -> None:
    lim = limiter(db, clock)
    for i in range(5):
        await lim.failed(f"user{i}", "")
    clock.advance(WINDOW + 1)
    fresh = limiter(db, clock)  # a new process sweeps on its first failure
    await fresh.failed("alice", "")
    assert await counts(db) == {account_key("alice"): 1}


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LoginLimiter(None, 0, 1, 1)  # type: ignore[arg-type]
