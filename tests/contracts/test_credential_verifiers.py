"""Contract suite for ``CredentialVerifier`` (see its docstring), run for every credential
kind — user password, user personal access token (as a Basic password and as a Bearer
token), robot secret, refresh token, OIDC session token — on SQLite and on a real
PostgreSQL.

Each kind must: give the principal for the right secret; refuse a wrong secret, an unknown
name or id, a disabled or expired account, a revoked (or replaced) credential and an
expired token with one message that never says which part was wrong; refuse even the right
secret once rate limited (``RateLimited`` with ``retry_after``); compare in constant time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hmac
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select, update

from dtr.auth import passwords
from dtr.auth.accounts import AccountService, HashedPassword, create_user, parse_token
from dtr.auth.credentials import (
    BAD_LOGIN,
    BAD_TOKEN,
    LOCAL_LOGIN_OFF,
    SESSION_NOT_PASSWORD,
    CredentialVerifier,
)
from dtr.auth.passwords import hash_password, new_secret
from dtr.auth.principal import Principal
from dtr.auth.ratelimit import LoginLimiter
from dtr.db.base import utcnow
from dtr.db.database import Database
from dtr.db.models import AccessToken, Account
from dtr.errors import RateLimited, Unauthorized

pytestmark = pytest.mark.anyio

PASSWORD = "alice-password-1"
BOB_PASSWORD = "bob-password-1"
IP, OTHER_IP = "192.0.2.10", "192.0.2.99"
PER_ACCOUNT, PER_IP, WINDOW = 3, 5, 300
PAT_SCOPES = ("repository:acme/**:pull", "repository:acme/app:push")


# -- the world every kind is tested in ----------------------------------------------------------

@dataclass
class World:
    db: Database
    accounts: AccountService
    verifier: CredentialVerifier
    alice_id: int
    robot_id: int
    pat: str
    pat_id: str
    refresh: str
    refresh_id: str
    robot_secret: str
    lenient: CredentialVerifier
    session: str = ""
    session_id: str = ""
    """A verifier whose limits tests that make many failures do not reach."""


@pytest.fixture
async def world(db_url: str, anyio_backend: str) -> AsyncIterator[World]:
    db = Database(db_url)
    accounts = AccountService(db)
    hashes = password_hashes()
    alice = await db.run(lambda c: create_user(c, "alice", hashes[PASSWORD]))
    await db.run(lambda c: create_user(c, "bob", hashes[BOB_PASSWORD]))
    await accounts.create_org("acme")
    robot = await accounts.create_robot("ci", "acme")
    pat = await accounts.create_token("alice", "laptop", scopes=PAT_SCOPES)
    refresh = await accounts.create_token("alice", "docker login", kind="refresh",
                                          expires_at=utcnow() + dt.timedelta(days=90))
    limiter = LoginLimiter(db, PER_ACCOUNT, PER_IP, WINDOW)
    session = await accounts.create_token("alice", "oidc login", kind="session",
                                          expires_at=utcnow() + dt.timedelta(hours=8))
    try:
        yield World(db, accounts, CredentialVerifier(db, limiter), alice.id, robot.info.id,
                    pat.secret, pat.info.id, refresh.secret, refresh.info.id, robot.secret,
                    CredentialVerifier(db, LoginLimiter(db, 1000, 1000, WINDOW)),
                    session.secret, session.info.id)
    finally:
        await db.close()


@functools.cache
def password_hashes() -> dict[str, HashedPassword]:
    """Hashed once per session: argon2 costs ~50 ms a hash."""
    return {p: HashedPassword(hash_password(p)) for p in (PASSWORD, BOB_PASSWORD)}


Present = Callable[[CredentialVerifier, str], Awaitable[Principal]]


@dataclass(frozen=True)
class Kind:
    """One credential kind: how to present it and what it should yield."""

    id: str
    message: str
    limited_by_account: bool
    is_token: bool

    def secret(self, w: World) -> str:
        return {"user-password": PASSWORD, "user-pat": w.pat, "user-pat-bearer": w.pat,
                "robot-secret": w.robot_secret, "refresh-token": w.refresh,
                "session-bearer": w.session}[self.id]

    def token_id(self, w: World) -> str:
        return {"refresh-token": w.refresh_id, "session-bearer": w.session_id}.get(
            self.id, w.pat_id)

    def present(self, w: World, secret: str, ip: str = IP, username: str | None = None,
                verifier: CredentialVerifier | None = None) -> Awaitable[Principal]:
        v = verifier or w.verifier
        if self.id in ("user-password", "user-pat"):
            return v.verify_basic("alice" if username is None else username, secret, ip)
        if self.id == "robot-secret":
            return v.verify_basic("robot$acme+ci" if username is None else username, secret, ip)
        if self.id == "user-pat-bearer":
            return v.verify_pat(secret, ip)
        if self.id == "session-bearer":
            return v.verify_session(secret, ip)
        return v.verify_refresh_token(secret, ip)

    def expected(self, w: World) -> Principal:
        return {
            "user-password": Principal("user", "alice", w.alice_id, "password"),
            "user-pat": Principal("user", "alice", w.alice_id, "pat", w.pat_id, PAT_SCOPES),
            "user-pat-bearer": Principal("user", "alice", w.alice_id, "pat", w.pat_id,
                                         PAT_SCOPES),
            "robot-secret": Principal("robot", "robot$acme+ci", w.robot_id, "robot_secret"),
            "refresh-token": Principal("user", "alice", w.alice_id, "refresh_token",
                                       w.refresh_id),
            "session-bearer": Principal("user", "alice", w.alice_id, "oidc", w.session_id),
        }[self.id]

    def wrong(self, w: World) -> str:
        secret = self.secret(w)
        if self.is_token:  # the right id, a wrong random part
            kind, token_id, _ = parse_token(secret)  # type: ignore[misc]
            prefix = {"pat": "pat", "refresh": "rt", "session": "ses"}[kind]
            return f"dtr_{prefix}_{token_id}_{new_secret()}"
        return secret + "x" if self.id == "user-password" else new_secret()

    def unknown(self, w: World,
                verifier: CredentialVerifier | None = None) -> Awaitable[Principal]:
        """The same shape of credential for a name or id that does not exist."""
        if self.id == "user-password":
            return self.present(w, PASSWORD, username="nobody", verifier=verifier)
        if self.id == "robot-secret":
            return self.present(w, w.robot_secret, username="robot$acme+ghost",
                                verifier=verifier)
        prefix = {"refresh-token": "dtr_rt_", "session-bearer": "dtr_ses_"}.get(self.id,
                                                                              "dtr_pat_")
        return self.present(w, f"{prefix}{'Z' * 16}_{new_secret()}", verifier=verifier)

    @property
    def account(self) -> str:
        return "robot$acme+ci" if self.id == "robot-secret" else "alice"

    async def disable(self, w: World) -> None:
        if self.id == "robot-secret":
            await w.accounts.update_robot(self.account, disabled=True)
        else:
            await w.accounts.update_user(self.account, disabled=True)

    async def revoke(self, w: World) -> None:
        """Revoke the token, or replace the password / robot secret."""
        if self.id == "user-password":
            await w.accounts.update_user("alice", password="a-new-password")
        elif self.id == "robot-secret":
            await w.accounts.regenerate_robot_secret(self.account)
        else:
            await w.accounts.revoke_token("alice", self.token_id(w))


KINDS = [
    Kind("user-password", BAD_LOGIN, limited_by_account=True, is_token=False),
    Kind("user-pat", BAD_LOGIN, limited_by_account=True, is_token=True),
    Kind("user-pat-bearer", BAD_TOKEN, limited_by_account=False, is_token=True),
    Kind("robot-secret", BAD_LOGIN, limited_by_account=True, is_token=False),
    Kind("refresh-token", BAD_TOKEN, limited_by_account=False, is_token=True),
    Kind("session-bearer", BAD_TOKEN, limited_by_account=False, is_token=True),
]
TOKEN_KINDS = [k for k in KINDS if k.is_token]


def kinds(selection: list[Kind] = KINDS) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("kind", selection, ids=[k.id for k in selection])


async def refused(kind: Kind, attempt: Awaitable[Principal]) -> str:
    with pytest.raises(Unauthorized) as err:
        await attempt
    assert type(err.value) is Unauthorized
    assert err.value.message == kind.message
    return err.value.message


async def expire(w: World, *, account: str | None = None, token_id: str | None = None) -> None:
    past = utcnow() - dt.timedelta(seconds=1)
    if account is not None:
        await w.db.run(lambda c: c.execute(update(Account).where(Account.name == account)
                                           .values(expires_at=past)))
    if token_id is not None:
        await w.db.run(lambda c: c.execute(update(AccessToken).where(AccessToken.id == token_id)
                                           .values(expires_at=past)))


# -- the contract ----------------------------------------------------------------------------

@kinds()
async def test_right_credentials_give_the_principal(world: World, kind: Kind) -> None:
    assert await kind.present(world, kind.secret(world)) == kind.expected(world)
    # and again (cached nothing wrongly, no lock-out from successes)
    assert await kind.present(world, kind.secret(world)) == kind.expected(world)


@kinds()
async def test_wrong_secret(world: World, kind: Kind) -> None:
    await refused(kind, kind.present(world, kind.wrong(world)))


@kinds()
async def test_unknown_name_or_id(world: World, kind: Kind) -> None:
    await refused(kind, kind.unknown(world))


@kinds()
async def test_malformed_input(world: World, kind: Kind) -> None:
    lenient = world.lenient
    for junk in ("", "x", "dtr_pat_", "dtr_rt_x_y", "\x00", "é" * 3000, "\ud800",
                 f"dtr_pat_{world.pat_id}_", world.pat[:-1], world.refresh + "x"):
        await refused(kind, kind.present(world, junk, verifier=lenient))


@kinds()
async def test_disabled_account(world: World, kind: Kind) -> None:
    await kind.disable(world)
    await refused(kind, kind.present(world, kind.secret(world)))


@kinds()
async def test_expired_account(world: World, kind: Kind) -> None:
    await expire(world, account=kind.account)
    await refused(kind, kind.present(world, kind.secret(world)))


@kinds()
async def test_revoked_or_replaced(world: World, kind: Kind) -> None:
    await kind.revoke(world)
    await refused(kind, kind.present(world, kind.secret(world)))


@kinds(TOKEN_KINDS)
async def test_expired_token(world: World, kind: Kind) -> None:
    await expire(world, token_id=kind.token_id(world))
    await refused(kind, kind.present(world, kind.secret(world)))


@kinds()
async def test_the_message_never_says_which_part_was_wrong(world: World, kind: Kind) -> None:
    lenient = world.lenient
    messages = {
        await refused(kind, kind.present(world, kind.wrong(world), verifier=lenient)),
        await refused(kind, kind.unknown(world, verifier=lenient)),
        await refused(kind, kind.present(world, "", verifier=lenient)),
    }
    await kind.disable(world)
    messages.add(await refused(kind, kind.present(world, kind.secret(world),
                                                  verifier=lenient)))
    assert messages == {kind.message}
    assert all(word not in kind.message for word in ("unknown", "disabled", "expired user"))


@kinds()
async def test_rate_limit_refuses_even_the_right_secret(world: World, kind: Kind) -> None:
    limit = PER_ACCOUNT if kind.limited_by_account else PER_IP
    for _ in range(limit):
        await refused(kind, kind.present(world, kind.wrong(world)))
    start = time.monotonic()
    with pytest.raises(RateLimited) as err:
        await kind.present(world, kind.secret(world))
    assert 0 < err.value.retry_after <= WINDOW
    assert err.value.retry_after >= WINDOW - (time.monotonic() - start) - 60
    assert "alice" not in err.value.message
    assert "robot" not in err.value.message
    if kind.limited_by_account:
        # the account is locked from everywhere; the address is not (yet)
        with pytest.raises(RateLimited):
            await kind.present(world, kind.secret(world), ip=OTHER_IP)
        other = await world.verifier.verify_basic("bob", BOB_PASSWORD, IP)
        assert other.name == "bob"
    else:
        assert await kind.present(world, kind.secret(world), ip=OTHER_IP) == kind.expected(world)


@kinds([k for k in KINDS if k.limited_by_account])
async def test_unknown_names_lock_like_known_ones(world: World, kind: Kind) -> None:
    name = "nobody" if kind.id == "user-password" else "robot$acme+ghost"
    for _ in range(PER_ACCOUNT):
        await refused(kind, kind.present(world, kind.wrong(world), username=name))
    with pytest.raises(RateLimited) as unknown:
        await kind.present(world, kind.secret(world), username=name)
    for _ in range(PER_ACCOUNT):
        await refused(kind, kind.present(world, kind.wrong(world), ip=OTHER_IP))
    with pytest.raises(RateLimited) as known:
        await kind.present(world, kind.secret(world), ip=OTHER_IP)
    assert unknown.value.message == known.value.message


@kinds([k for k in KINDS if k.limited_by_account])
async def test_success_clears_the_account_count(world: World, kind: Kind) -> None:
    for _ in range(PER_ACCOUNT - 1):
        await refused(kind, kind.present(world, kind.wrong(world), ip=f"198.51.100.{_}"))
    await kind.present(world, kind.secret(world), ip=OTHER_IP)
    for _ in range(PER_ACCOUNT - 1):  # a fresh allowance
        await refused(kind, kind.present(world, kind.wrong(world), ip=f"203.0.113.{_}"))
    assert await kind.present(world, kind.secret(world), ip=OTHER_IP) == kind.expected(world)


class CountingHasher:
    """Delegates to the real argon2 hasher and counts verifications."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.verifies = 0

    def verify(self, hash: str, password: str) -> bool:
        self.verifies += 1
        return bool(self.real.verify(hash, password))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@kinds()
async def test_secrets_are_compared_in_constant_time(world: World, kind: Kind,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    digests: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        digests.append((a, b))
        return bool(real_compare(a, b))

    hasher = CountingHasher(passwords.HASHER)
    monkeypatch.setattr(hmac, "compare_digest", compare)
    monkeypatch.setattr(passwords, "HASHER", hasher)
    attempts: list[Callable[[], Awaitable[Principal]]] = [
        lambda: kind.present(world, kind.secret(world)),
        lambda: kind.present(world, kind.wrong(world)),
        lambda: kind.unknown(world),
    ]
    for n, attempt in enumerate(attempts, start=1):
        with contextlib.suppress(Unauthorized):
            await attempt()
        if kind.id == "user-password":  # argon2 (constant time inside), even for nobody;
            # the recently-verified cache compares keyed 32-byte MACs in constant time and
            # never spares argon2 to a wrong password
            assert hasher.verifies == n
            assert all(len(a) == len(b) == 32 for a, b in digests)
        else:  # SHA-256 digests through hmac.compare_digest, even for a missing row
            assert hasher.verifies == 0
            assert len(digests) == n
            assert all(len(a) == len(b) == 64 for a, b in digests)


async def test_unknown_users_cost_the_same_as_wrong_passwords(world: World) -> None:
    kind = KINDS[0]

    async def timed(attempt: Callable[[], Awaitable[Principal]]) -> float:
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            with contextlib.suppress(Unauthorized):
                await attempt()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    verifier = world.lenient
    wrong = await timed(lambda: verifier.verify_basic("alice", "wrong-password", IP))
    unknown = await timed(lambda: verifier.verify_basic("nobody", "wrong-password", IP))
    print(f"{kind.id}: wrong password {wrong * 1000:.1f} ms, unknown user {unknown * 1000:.1f} ms")
    assert 0.5 < unknown / wrong < 2.0


@kinds()
async def test_use_is_recorded_at_most_once_a_minute(world: World, kind: Kind) -> None:
    def stamps(c: Any) -> tuple[Any, ...]:
        login = c.execute(select(Account.last_login_at)
                          .where(Account.name == kind.account)).scalar()
        used = c.execute(select(AccessToken.last_used_at).where(
            AccessToken.id.in_([world.pat_id, world.refresh_id, world.session_id]))
            .order_by(AccessToken.id)).scalars().all()
        return login, tuple(used)

    before = await world.db.run(stamps, write=False)
    assert before == (None, (None, None, None))
    await kind.present(world, kind.secret(world))
    first = await world.db.run(stamps, write=False)
    assert first[0] is not None
    assert (sum(u is not None for u in first[1]) == 1) is kind.is_token
    await kind.present(world, kind.secret(world))
    assert await world.db.run(stamps, write=False) == first  # no write within the minute


async def test_credentials_do_not_cross_kinds(world: World) -> None:
    v = world.lenient

    async def no(attempt: Awaitable[Principal]) -> None:
        with pytest.raises(Unauthorized):
            await attempt

    await no(v.verify_pat(world.refresh, IP))  # refresh token as a PAT
    await no(v.verify_refresh_token(world.pat, IP))  # PAT as a refresh token
    await no(v.verify_basic("alice", world.refresh, IP))  # refresh token as a password
    await no(v.verify_basic("bob", world.pat, IP))  # alice's PAT under bob's name
    await no(v.verify_basic("alice", world.robot_secret, IP))  # robot secret as a password
    await no(v.verify_basic("robot$acme+ci", PASSWORD, IP))  # a password for the robot
    await no(v.verify_basic("robot$acme+ci", world.pat, IP))  # a PAT for the robot
    await no(v.verify_pat(PASSWORD, IP))
    await no(v.verify_basic("", "", IP))
    await no(v.verify_basic("alice\x00", PASSWORD, IP))  # PostgreSQL refuses NUL in text
    await no(v.verify_basic("alice\ud800", PASSWORD, "\x00\ud800"))
    await no(v.verify_basic("a" * 10_000, PASSWORD, IP))
    await no(v.verify_pat(world.session, IP))  # a session as a PAT
    await no(v.verify_session(world.pat, IP))  # a PAT as a session
    await no(v.verify_session(world.refresh, IP))
    await no(v.verify_refresh_token(world.session, IP))


async def test_a_session_is_never_a_password(world: World) -> None:
    """The token endpoint and Basic logins refuse a session token with a message saying
    what to use instead, whatever the token's state."""
    for username in ("alice", "bob", ""):
        with pytest.raises(Unauthorized) as err:
            await world.lenient.verify_basic(username, world.session, IP)
        assert err.value.message == SESSION_NOT_PASSWORD


async def test_local_login_off_refuses_user_passwords_only(world: World) -> None:
    strict = CredentialVerifier(world.db, LoginLimiter(world.db, 1000, 1000, WINDOW),
                                local_login=False, bootstrap_admin="bob")
    with pytest.raises(Unauthorized) as err:
        await strict.verify_basic("alice", PASSWORD, IP)
    assert err.value.message == LOCAL_LOGIN_OFF
    assert (await strict.verify_basic("bob", BOB_PASSWORD, IP)).name == "bob"
    assert (await strict.verify_basic("alice", world.pat, IP)).method == "pat"
    assert (await strict.verify_basic("robot$acme+ci", world.robot_secret, IP)).kind == "robot"
    assert (await strict.verify_session(world.session, IP)).method == "oidc"


async def test_a_refresh_token_carries_the_pat_restrictions(world: World) -> None:
    """The token endpoint passes a PAT principal's scopes on to the refresh token it
    issues; verifying that refresh token gives them back."""
    pat_principal = await world.verifier.verify_basic("alice", world.pat, IP)
    made = await world.accounts.create_token("alice", "docker login", kind="refresh",
                                             scopes=pat_principal.scopes)
    got = await world.verifier.verify_refresh_token(made.secret, IP)
    assert got.scopes == PAT_SCOPES
    assert got.method == "refresh_token"


async def test_robot_refresh_tokens(world: World) -> None:
    made = await world.accounts.create_token("robot$acme+ci", "docker login", kind="refresh")
    got = await world.verifier.verify_refresh_token(made.secret, IP)
    assert got == Principal("robot", "robot$acme+ci", world.robot_id, "refresh_token",
                            made.info.id)
    await world.accounts.update_robot("robot$acme+ci", disabled=True)
    with pytest.raises(Unauthorized):
        await world.verifier.verify_refresh_token(made.secret, IP)


async def test_old_password_hashes_are_upgraded_on_login(world: World) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    await world.db.run(lambda c: c.execute(update(Account).where(Account.name == "alice")
                                           .values(secret_hash=weak)))
    await world.verifier.verify_basic("alice", PASSWORD, IP)
    stored = await world.db.run(lambda c: c.execute(select(Account.secret_hash).where(
        Account.name == "alice")).scalar(), write=False)
    assert stored is not None
    assert stored != weak
    assert stored.startswith("$argon2id$v=19$m=32768,t=2,p=2$")
    assert (await world.verifier.verify_basic("alice", PASSWORD, IP)).name == "alice"
