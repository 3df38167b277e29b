"""Accounts, robots, organizations, teams and tokens on SQLite and PostgreSQL: validation,
conflicts, not-found, secrets shown once and stored hashed, and the bootstrap admin."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import pytest
from sqlalchemy import Connection, select, update

from dtr.auth import accounts as acc
from dtr.auth.accounts import AccountService, HashedPassword, NewSecret, parse_token
from dtr.auth.passwords import hash_secret, verify_password
from dtr.db.base import utcnow
from dtr.db.database import Database
from dtr.db.models import AccessToken, Account, Team
from dtr.errors import Conflict, Invalid, NotFound

pytestmark = pytest.mark.anyio
T = TypeVar("T")
PASSWORD = "s3cret-password"


async def run(db: Database, fn: Callable[[Connection], T]) -> T:
    return await db.run(fn, write=True)


def stored(conn: Connection, name: str) -> str | None:
    return conn.execute(select(Account.secret_hash).where(Account.name == name)).scalar()


def future(days: float = 1) -> dt.datetime:
    return utcnow() + dt.timedelta(days=days)


# -- users ------------------------------------------------------------------------------------

async def test_create_and_get_user(db: Database) -> None:
    info = await run(db, lambda c: acc.create_user(c, "alice", PASSWORD, email="a@example.org",
                                                   created_by="admin"))
    assert (info.name, info.kind, info.email, info.created_by) == (
        "alice", "user", "a@example.org", "admin")
    assert info.subject == "user:alice"
    assert not info.disabled
    assert info.last_login_at is None
    assert info.created_at.tzinfo is not None
    assert not hasattr(info, "secret_hash")
    assert await run(db, lambda c: acc.get_account(c, "alice")) == info
    secret_hash = await run(db, lambda c: stored(c, "alice"))
    assert secret_hash is not None
    assert secret_hash.startswith("$argon2id$")
    assert verify_password(PASSWORD, secret_hash)


@pytest.mark.parametrize("name", ["Alice", "", "-alice", ".a", "a" * 65, "al ice", "al/ice",
                                  "robot$x", "al:ice", "ål"])
async def test_bad_usernames(db: Database, name: str) -> None:
    with pytest.raises(Invalid, match="username"):
        await run(db, lambda c: acc.create_user(c, name, PASSWORD))


async def test_user_validation(db: Database) -> None:
    with pytest.raises(Invalid, match="at least 8"):
        await run(db, lambda c: acc.create_user(c, "alice", "short"))
    for email in ("nope", "a b@c", "@", "x" * 300 + "@a"):
        def create(c: Connection, e: str = email) -> acc.AccountInfo:
            return acc.create_user(c, "alice", PASSWORD, email=e)

        with pytest.raises(Invalid, match="email"):
            await run(db, create)
    assert await run(db, acc.count_users) == 0


async def test_duplicate_user_is_a_conflict(db: Database) -> None:
    await run(db, lambda c: acc.create_user(c, "alice", PASSWORD))
    with pytest.raises(Conflict, match="alice"):
        await run(db, lambda c: acc.create_user(c, "alice", "other-password"))


async def test_get_missing_account(db: Database) -> None:
    with pytest.raises(NotFound, match="nobody"):
        await run(db, lambda c: acc.get_account(c, "nobody"))


async def test_update_user(db: Database) -> None:
    service = AccountService(db)
    await service.create_user("alice", PASSWORD, email="a@example.org")
    pat = await service.create_token("alice", "laptop")
    refresh = await service.create_token("alice", "docker login", kind="refresh")
    info = await service.update_user("alice", email="")
    assert info.email is None
    old_hash = await run(db, lambda c: stored(c, "alice"))
    await service.update_user("alice", password="new-password-1")
    new_hash = await run(db, lambda c: stored(c, "alice"))
    assert new_hash != old_hash
    assert verify_password("new-password-1", new_hash)
    tokens = {t.id: t for t in await service.list_tokens("alice")}
    assert tokens[refresh.info.id].revoked_at is not None  # sessions end with a new password
    assert tokens[pat.info.id].revoked_at is None
    session = await service.create_token("alice", "oidc", kind="session")
    assert session.secret.startswith("dtr_ses_")
    info = await service.update_user("alice", disabled=True)
    assert info.disabled
    tokens = {t.id: t for t in await service.list_tokens("alice")}
    assert all(t.revoked_at is not None for t in tokens.values())  # disabling ends them all
    await service.update_user("alice", disabled=False)
    assert all(t.revoked_at is not None for t in await service.list_tokens("alice"))
    with pytest.raises(NotFound):
        await service.update_user("bob", disabled=True)
    with pytest.raises(Invalid):
        await service.update_user("alice", password="short")


async def test_update_user_refuses_robots(db: Database) -> None:
    robot = await run(db, lambda c: acc.create_robot(c, "ci", None))
    with pytest.raises(NotFound):
        await run(db, lambda c: acc.update_user(c, robot.info.name, disabled=True))


async def test_delete_account_deletes_its_tokens(db: Database) -> None:
    service = AccountService(db)
    await service.create_user("alice", PASSWORD)
    await service.create_token("alice", "laptop")
    deleted = await service.delete_account("alice")
    assert deleted.name == "alice"
    count = await db.run(lambda c: c.execute(select(AccessToken.id)).all(), write=False)
    assert count == []
    with pytest.raises(NotFound):
        await service.delete_account("alice")


async def test_list_accounts(db: Database) -> None:
    def setup(c: Connection) -> None:
        acc.create_user(c, "bob", HashedPassword("x"))
        acc.create_user(c, "alice", HashedPassword("x"))
        acc.create_org(c, "acme")
        acc.create_robot(c, "ci", "acme")
        acc.create_robot(c, "sys", None)

    await run(db, setup)
    service = AccountService(db)
    assert [a.name for a in await service.list_accounts()] == [
        "alice", "bob", "robot$acme+ci", "robot$sys"]
    assert [a.name for a in await service.list_accounts(kind="user")] == ["alice", "bob"]
    assert [a.name for a in await service.list_accounts(kind="robot", org="acme")] == [
        "robot$acme+ci"]
    assert await service.count_users() == 2


# -- robots -----------------------------------------------------------------------------------

async def test_robots(db: Database) -> None:
    service = AccountService(db)
    await service.create_org("acme")
    made = await service.create_robot("ci", "acme", description="CI", created_by="alice",
                                      expires_at=future(30))
    assert made.info.name == "robot$acme+ci"
    assert made.info.subject == "robot:robot$acme+ci"
    assert (made.info.kind, made.info.org, made.info.description) == ("robot", "acme", "CI")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", made.secret)
    assert made.secret not in repr(made)
    assert await run(db, lambda c: stored(c, "robot$acme+ci")) == hash_secret(made.secret)
    system = await service.create_robot("mirror", None)
    assert system.info.name == "robot$mirror"
    assert system.info.org is None
    again = await service.regenerate_robot_secret("robot$acme+ci")
    assert again.secret != made.secret
    assert await run(db, lambda c: stored(c, "robot$acme+ci")) == hash_secret(again.secret)
    updated = await service.update_robot("robot$acme+ci", disabled=True, expires_at=None,
                                         description="")
    assert updated.disabled
    assert updated.expires_at is None
    assert updated.description is None
    kept = await service.update_robot("robot$acme+ci")
    assert kept == updated


async def test_robot_validation(db: Database) -> None:
    service = AccountService(db)
    with pytest.raises(Invalid, match="organization ghost does not exist"):
        await service.create_robot("ci", "ghost")
    for bad in ("CI", "robot$ci", "a+b", ""):
        with pytest.raises(Invalid, match="robot name"):
            await service.create_robot(bad, None)
    with pytest.raises(Invalid, match="future"):
        await service.create_robot("ci", None, expires_at=utcnow() - dt.timedelta(seconds=1))
    with pytest.raises(Invalid, match="time zone"):
        await service.create_robot("ci", None, expires_at=dt.datetime(2099, 1, 1))
    await service.create_robot("ci", None)
    with pytest.raises(Conflict):
        await service.create_robot("ci", None)
    with pytest.raises(NotFound):
        await service.regenerate_robot_secret("robot$ghost")
    with pytest.raises(NotFound):
        await service.update_robot("alice", disabled=True)


# -- organizations and teams ------------------------------------------------------------------

async def test_orgs(db: Database) -> None:
    service = AccountService(db)
    org = await service.create_org("acme", description="ACME", created_by="alice")
    assert (org.name, org.description, org.created_by) == ("acme", "ACME", "alice")
    await service.create_org("beta")
    assert [o.name for o in await service.list_orgs()] == ["acme", "beta"]
    assert (await service.update_org("acme", description="")).description is None
    assert (await service.update_org("acme")).description is None
    with pytest.raises(Conflict):
        await service.create_org("acme")
    with pytest.raises(Invalid, match="organization name"):
        await service.create_org("Acme")
    with pytest.raises(NotFound):
        await service.get_org("ghost")
    with pytest.raises(NotFound):
        await service.update_org("ghost", description="x")


async def test_delete_org_takes_its_teams_and_robots(db: Database) -> None:
    service = AccountService(db)
    await service.create_org("acme")
    await service.create_org("beta")
    await service.create_team("acme", "devs")
    await service.create_team("beta", "devs")
    await service.create_robot("ci", "acme")
    await service.create_robot("deploy", "acme")
    await service.create_robot("ci", "beta")
    await service.create_token("robot$acme+ci", "session", kind="refresh")
    assert await service.delete_org("acme") == ["robot$acme+ci", "robot$acme+deploy"]
    assert [a.name for a in await service.list_accounts()] == ["robot$beta+ci"]
    assert [t.org for t in await db.run(
        lambda c: [acc.get_team(c, "beta", "devs")], write=False)] == ["beta"]
    teams = await db.run(lambda c: c.execute(select(Team.name)).all(), write=False)
    assert len(teams) == 1
    with pytest.raises(NotFound):
        await service.delete_org("acme")


async def test_teams(db: Database) -> None:
    service = AccountService(db)
    await service.create_org("acme")
    team = await service.create_team("acme", "devs", "Developers")
    assert (team.org, team.name, team.description, team.subject) == (
        "acme", "devs", "Developers", "team:acme/devs")
    await service.create_team("acme", "admins")
    assert [t.name for t in await service.list_teams("acme")] == ["admins", "devs"]
    assert await service.get_team("acme", "devs") == team
    assert (await service.update_team("acme", "devs", description="")).description is None
    with pytest.raises(Conflict):
        await service.create_team("acme", "devs")
    with pytest.raises(Invalid, match="organization ghost does not exist"):
        await service.create_team("ghost", "devs")
    with pytest.raises(Invalid, match="team name"):
        await service.create_team("acme", "Dev Team")
    with pytest.raises(NotFound, match="organization ghost"):
        await service.list_teams("ghost")
    with pytest.raises(NotFound, match="team acme/ops"):
        await service.get_team("acme", "ops")
    assert (await service.delete_team("acme", "devs")).name == "devs"
    with pytest.raises(NotFound):
        await service.delete_team("acme", "devs")


async def test_a_conflict_leaves_the_transaction_usable(db: Database) -> None:
    """Duplicates are caught in a savepoint, so the caller's transaction (PostgreSQL aborts
    a transaction on an error) can go on and commit."""
    await run(db, lambda c: acc.create_org(c, "acme"))

    def tx(c: Connection) -> list[str]:
        acc.create_team(c, "acme", "devs")
        with pytest.raises(Conflict):
            acc.create_team(c, "acme", "devs")
        with pytest.raises(Conflict):
            acc.create_org(c, "acme")
        acc.create_team(c, "acme", "ops")
        return [t.name for t in acc.list_teams(c, "acme")]

    assert await run(db, tx) == ["devs", "ops"]


# -- tokens -----------------------------------------------------------------------------------

async def test_personal_access_tokens(db: Database) -> None:
    service = AccountService(db)
    await service.create_user("alice", PASSWORD)
    made = await service.create_token(
        "alice", "  ci laptop ", scopes=["repository:acme/**:pull", "repository:acme/**:pull",
                                        "repository(plugin):acme/app:push"],
        expires_at=future(10))
    match = re.fullmatch(r"dtr_pat_([A-Za-z0-9]{16})_([A-Za-z0-9_-]{43})", made.secret)
    assert match is not None
    assert parse_token(made.secret) == ("pat", match.group(1), match.group(2))
    info = made.info
    assert (info.id, info.account, info.kind, info.name) == (
        match.group(1), "alice", "pat", "ci laptop")
    assert info.scopes == ("repository:acme/**:pull", "repository:acme/app:push")
    assert made.secret not in repr(made)
    row = await db.run(lambda c: c.execute(select(AccessToken).where(
        AccessToken.id == info.id)).one(), write=False)
    assert row.secret_hash == hash_secret(match.group(2))
    assert made.secret not in str(tuple(row))
    assert json.loads(row.scopes) == list(info.scopes)
    plain = await service.create_token("alice", "full rights")
    assert plain.info.scopes is None
    assert plain.info.expires_at is None
    assert [t.id for t in await service.list_tokens("alice")] == [info.id, plain.info.id]
    assert [t.id for t in await service.list_tokens("alice", kind="refresh")] == []
    revoked = await service.revoke_token("alice", info.id)
    assert revoked.revoked_at is not None
    assert (await service.revoke_token("alice", info.id)).revoked_at == revoked.revoked_at


async def test_token_validation(db: Database) -> None:
    service = AccountService(db)
    await service.create_user("alice", PASSWORD)
    await service.create_user("bob", PASSWORD)
    robot = await service.create_robot("ci", None)
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"name": ""}, Invalid, "token name"),
        ({"name": "x" * 101}, Invalid, "token name"),
        ({"name": "tab\there"}, Invalid, "token name"),
        ({"scopes": ["repository:acme:bogus"]}, Invalid, "scope"),
        ({"scopes": []}, Invalid, "at least one"),
        ({"expires_at": utcnow()}, Invalid, "future"),
        ({"kind": "bogus"}, Invalid, "kind"),
        ({"expires_at": future(400), "max_days": 365}, Invalid, "365 days"),
        ({"account_name": "ghost"}, NotFound, "ghost"),
        ({"account_name": robot.info.name}, Invalid, "robots"),
    ]
    for overrides, error, message in cases:
        args: dict[str, Any] = {"account_name": "alice", "name": "t", **overrides}
        with pytest.raises(error, match=message):
            await service.create_token(**args)
    capped = await service.create_token("alice", "capped", max_days=30)
    assert capped.info.expires_at is not None
    assert abs((capped.info.expires_at - future(30)).total_seconds()) < 60
    bobs = await service.create_token("bob", "b")
    with pytest.raises(NotFound):
        await service.revoke_token("alice", bobs.info.id)
    with pytest.raises(NotFound):
        await service.list_tokens("ghost")


async def test_refresh_tokens(db: Database) -> None:
    service = AccountService(db)
    await service.create_org("acme")
    robot = await service.create_robot("ci", "acme")
    made = await service.create_token(robot.info.name, "docker login", kind="refresh",
                                      expires_at=future(90))
    assert made.secret.startswith(f"dtr_rt_{made.info.id}_")
    parsed = parse_token(made.secret)
    assert parsed is not None
    assert parsed[0] == "refresh"
    # expired refresh tokens of the owner are dropped when the next one is made
    await run(db, lambda c: c.execute(update(AccessToken).where(
        AccessToken.id == made.info.id).values(expires_at=utcnow() - dt.timedelta(days=1))))
    second = await service.create_token(robot.info.name, "docker login", kind="refresh")
    assert [t.id for t in await service.list_tokens(robot.info.name)] == [second.info.id]


@pytest.mark.parametrize("value", [
    "", "dtr_pat_", "dtr_pat_short_" + "x" * 43, "dtr_xx_" + "a" * 16 + "_" + "b" * 43,
    "dtr_pat_" + "a" * 16, "dtr_pat_" + "a" * 16 + "_" + "b" * 5, "Bearer dtr_pat_x_y",
    "dtr_pat_" + "a-" * 8 + "_" + "b" * 43,
])
def test_parse_token_rejects(value: str) -> None:
    assert parse_token(value) is None


def test_parse_token_splits_at_the_first_underscore_after_the_id() -> None:
    assert parse_token("dtr_rt_" + "A1" * 8 + "_ab_cd-ef_ghijklmnop") == (
        "refresh", "A1" * 8, "ab_cd-ef_ghijklmnop")


def test_new_secret_repr_hides_the_secret() -> None:
    shown = repr(NewSecret(info=None, secret="top-secret-value"))  # type: ignore[type-var]
    assert "top-secret-value" not in shown


# -- bootstrap admin --------------------------------------------------------------------------

async def test_ensure_admin_only_on_an_empty_registry(db: Database) -> None:
    service = AccountService(db)
    assert await service.ensure_admin("admin", "admin-password") is True
    assert await service.ensure_admin("admin", "other-password") is False
    assert await service.ensure_admin("root", "other-password") is False
    assert [a.name for a in await service.list_accounts()] == ["admin"]
    assert (await service.get_account("admin")).created_by == "dtr"
    secret_hash = await run(db, lambda c: stored(c, "admin"))
    assert verify_password("admin-password", secret_hash)


async def test_ensure_admin_skips_when_any_user_exists(db: Database) -> None:
    await run(db, lambda c: acc.create_user(c, "alice", HashedPassword("x")))
    assert await run(db, lambda c: acc.ensure_admin(c, "admin", "admin-password")) is False


async def test_ensure_admin_races_create_one_admin(db: Database) -> None:
    service = AccountService(db)
    results: list[bool] = []

    async def start() -> None:
        results.append(await service.ensure_admin("admin", "admin-password"))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(start)
    assert sorted(results) == [False, False, False, True]
    assert await service.count_users() == 1


async def test_ensure_admin_in_one_transaction_with_a_conflict(db: Database) -> None:
    """Two transactions that both saw no user: the loser's insert conflicts inside a
    savepoint and it reports False instead of failing start-up."""
    def loser(c: Connection) -> bool:
        # simulate the winner having committed between the count and the insert
        acc.create_user(c, "admin", HashedPassword("x"))
        c.execute(update(Account).values(kind="robot"))  # count_users() now sees 0
        return acc.ensure_admin(c, "admin", HashedPassword("y"))

    assert await run(db, loser) is False
