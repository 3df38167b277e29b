"""The inline login reads on SQLite (``dtr/auth/loginreads.py``): the same rows, types and
limiter verdicts as the SQLAlchemy path, nothing remembered between logins (a change made
through another connection counts at the next one), and outages as ``Unavailable``."""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path

import pytest
from sqlalchemy import update

from dtr.auth.accounts import AccountService, HashedPassword, create_user
from dtr.auth.credentials import CredentialVerifier, _load_account, _load_token
from dtr.auth.loginreads import FAILURES, InlineLoginReads
from dtr.auth.passwords import hash_password
from dtr.auth.ratelimit import LoginLimiter
from dtr.db.base import utcnow
from dtr.db.database import Database
from dtr.db.models import Account
from dtr.errors import RateLimited, Unauthorized, Unavailable

pytestmark = pytest.mark.anyio
PASSWORD = "alice-password-1"
IP = "192.0.2.10"


@functools.cache
def alice_hash() -> HashedPassword:
    return HashedPassword(hash_password(PASSWORD))


def test_only_file_sqlite_databases_are_read_inline(tmp_path: Path) -> None:
    assert InlineLoginReads.for_url(f"sqlite+aiosqlite:///{tmp_path}/dtr.db") is not None
    assert InlineLoginReads.for_url("sqlite+aiosqlite:///:memory:") is None
    assert InlineLoginReads.for_url("postgresql+asyncpg://u:p@localhost/dtr") is None


async def test_inline_reads_match_the_sqlalchemy_path(db: Database) -> None:
    verifier = CredentialVerifier(db, LoginLimiter(db, 3, 5, 300))
    if db.is_postgres:
        assert verifier._inline is None
        return
    assert verifier._inline is not None
    soon = utcnow() + dt.timedelta(days=1)
    await db.run(lambda c: create_user(c, "alice", alice_hash()))
    await db.run(lambda c: c.execute(update(Account).where(Account.name == "alice")
                                     .values(expires_at=soon, last_login_at=utcnow())))
    token = await AccountService(db).create_token("alice", "laptop",
                                                  scopes=["repository:a/**:pull"])
    await verifier.limiter.failed("alice", IP)
    for name, token_id in (("alice", None), (None, token.info.id), ("nobody", None),
                           (None, "NoSuchTokenId0000")):
        inline = verifier._read_inline("alice", IP, token_id, name)

        def read(conn: object, name: str | None = name, token_id: str | None = token_id
                 ) -> tuple[bool, object]:
            had = verifier.limiter.check_tx(conn, "alice", IP)  # type: ignore[arg-type]
            if token_id is not None:
                return had, _load_token(conn, token_id)  # type: ignore[arg-type]
            return had, _load_account(conn, name or "")  # type: ignore[arg-type]

        assert inline == await db.run(read, write=False)
    login = verifier._read_inline("alice", IP, token.info.id, None)[1]
    assert login is not None
    assert login.expires_at == soon
    assert login.expires_at.tzinfo is not None
    assert login.disabled is False


async def test_every_login_reads_the_database_afresh(db: Database) -> None:
    await db.run(lambda c: create_user(c, "alice", alice_hash()))
    verifier = CredentialVerifier(db, LoginLimiter(db, 3, 5, 300))
    assert (await verifier.verify_basic("alice", PASSWORD, IP)).name == "alice"
    other = Database(db.url)  # another process's connection: nothing here hears of it
    try:
        await other.run(lambda c: c.execute(update(Account).where(Account.name == "alice")
                                            .values(disabled=True)))
        with pytest.raises(Unauthorized):
            await verifier.verify_basic("alice", PASSWORD, IP)
        await other.run(lambda c: c.execute(update(Account).where(Account.name == "alice")
                                            .values(disabled=False)))
        assert (await verifier.verify_basic("alice", PASSWORD, IP)).name == "alice"
        elsewhere = LoginLimiter(other, 3, 5, 300)  # a lock-out counted by another worker
        for _ in range(3):
            await elsewhere.failed("alice", "198.51.100.7")
        with pytest.raises(RateLimited):
            await verifier.verify_basic("alice", PASSWORD, IP)
    finally:
        await other.close()


def test_an_unreadable_database_is_unavailable(tmp_path: Path) -> None:
    reads = InlineLoginReads(str(tmp_path / "missing" / "dtr.db"))
    with pytest.raises(Unavailable):
        reads.all(FAILURES, {"k1": "ip:x", "k2": ""})
