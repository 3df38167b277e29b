"""dtr.policy.admin on SQLite and a real PostgreSQL: validation (names, globs, subjects,
roles, effects) with the domain errors, version bumps in the same transaction (and none when
a write fails), roles, grants, membership and the clean-up functions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection

from dtr.db.database import Database
from dtr.errors import Conflict, Denied, DtrError, Invalid, NotFound
from dtr.policy import admin
from dtr.policy.actions import load_roles
from tests.policy.test_decisions import ensure_subject

pytestmark = pytest.mark.anyio
T = TypeVar("T")


class World:
    """A database with the built-in roles seeded and a few accounts, orgs and teams."""

    SUBJECTS = ("user:alice", "user:bob", "robot:robot$acme+ci", "robot:robot$beta+ci",
                "robot:robot$mirror", "team:acme/devs", "team:acme/ops", "team:beta/devs")

    def __init__(self, db: Database) -> None:
        self.db = db
        self.admin = admin.PolicyAdmin(db)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        return await self.db.run(fn, write=True)

    async def version(self) -> int:
        return await self.admin.version()

    async def fails(self, error: type[DtrError], fn: Callable[[Connection], Any],
                    match: str | None = None) -> DtrError:
        """``fn`` raises ``error`` and the policy version does not move."""
        before = await self.version()
        with pytest.raises(error, match=match) as info:
            await self.run(fn)
        assert await self.version() == before
        return info.value


@pytest.fixture
async def world(db_url: str) -> AsyncIterator[World]:
    db = Database(db_url)
    w = World(db)

    def setup(conn: Connection) -> None:
        admin.sync_builtin_roles(conn, load_roles())
        for subject in World.SUBJECTS:
            ensure_subject(conn, subject)
        ensure_subject(conn, "team:gamma/x")  # creates the org gamma

    await w.run(setup)
    try:
        yield w
    finally:
        await db.close()


# -- grants -----------------------------------------------------------------------------------


async def test_a_grant_round_trip_bumps_the_version(world: World) -> None:
    v0 = await world.version()
    g = await world.admin.create_grant("team:acme/devs", "acme", "acme/prod/**", "developer")
    assert (g.subject, g.org, g.repository, g.role, g.effect) == (
        "team:acme/devs", "acme", "acme/prod/**", "developer", "allow")
    assert await world.version() == v0 + 1
    action = await world.admin.create_grant("user:alice", "acme", "acme/app", "pull", "deny")
    assert action.role == "pull"
    assert await world.admin.get_grant(g.id) == g
    assert await world.admin.list_grants(org="acme") == [g, action]
    assert await world.admin.list_grants(subject="user:alice") == [action]
    assert await world.admin.list_grants(org="beta") == []
    assert await world.admin.delete_grant(g.id) == g
    assert await world.version() == v0 + 3
    await world.fails(NotFound, lambda c: admin.delete_grant(c, g.id), "does not exist")
    with pytest.raises(NotFound):
        await world.admin.get_grant(g.id)


async def test_role_prefix_is_accepted_and_stored_as_casbin_expects(world: World) -> None:
    g = await world.admin.create_grant("user:bob", "acme", "**", "role:maintainer")
    assert g.role == "maintainer"
    _, rules = await world.db.run(admin.read_rules, write=False)
    assert ("p", "user:bob", "acme", "**", "role:maintainer", "allow") in rules
    assert admin.grant_rows([g]) == [("p", "user:bob", "acme", "**", "role:maintainer",
                                      "allow")]


async def test_system_grants_take_any_glob(world: World) -> None:
    for glob in ("**", "*", "acme/**", "**/base", "library/*"):
        await world.admin.create_grant("robot:robot$mirror", "*", glob, "reader")
    await world.fails(Invalid, lambda c: admin.create_grant(
        c, "robot:robot$mirror", "*", "*/app", "reader"), "must not start with")


@pytest.mark.parametrize(("args", "error", "message"), [
    (("alice", "acme", "**", "reader"), Invalid, "is not user:<name>"),
    (("user:Alice", "acme", "**", "reader"), Invalid, "is not user:<name>"),
    (("team:acme", "acme", "**", "reader"), Invalid, "is not user:<name>"),
    (("robot:ci", "acme", "**", "reader"), Invalid, "is not user:<name>"),
    (("user:alice", "Acme", "**", "reader"), Invalid, "is not '\\*' or an organization"),
    (("user:alice", "acme", "beta/**", "reader"), Invalid, "start with 'acme/'"),
    (("user:alice", "acme", "acme", "reader"), Invalid, "start with 'acme/'"),
    (("user:alice", "acme", "acme/***", "reader"), Invalid, "wildcards"),
    (("user:alice", "acme", "acme/App", "reader"), Invalid, "wildcards"),
    (("user:alice", "acme", "acme/a b", "reader"), Invalid, "wildcards"),
    (("user:alice", "acme", "acme//x", "reader"), Invalid, "wildcards"),
    (("user:alice", "acme", "**", "reader", "maybe"), Invalid, "not allow or deny"),
    (("user:alice", "acme", "**", "nope"), NotFound, "role 'nope' does not exist"),
    (("team:acme/devs", "beta", "**", "reader"), Invalid, "only counts inside org acme"),
    (("team:acme/devs", "*", "**", "reader"), Invalid, "only counts inside org acme"),
    (("robot:robot$acme+ci", "beta", "**", "reader"), Invalid, "belongs to org acme"),
    (("robot:robot$acme+ci", "*", "**", "reader"), Invalid, "belongs to org acme"),
    (("user:nobody", "acme", "**", "reader"), NotFound, "user:nobody does not exist"),
    (("robot:robot$acme+gone", "acme", "**", "reader"), NotFound, "does not exist"),
    (("team:acme/gone", "acme", "**", "reader"), NotFound, "team:acme/gone does not exist"),
    (("user:alice", "nowhere", "**", "reader"), NotFound, "organization 'nowhere'"),
])
async def test_bad_grants_are_refused_without_a_version_bump(
        world: World, args: tuple[str, ...], error: type[DtrError], message: str) -> None:
    await world.fails(error, lambda c: admin.create_grant(c, *args), message)  # type: ignore[arg-type]


async def test_duplicate_grants_conflict(world: World) -> None:
    g = await world.admin.create_grant("anonymous", "acme", "acme/docs", "pull")
    err = await world.fails(Conflict, lambda c: admin.create_grant(
        c, "anonymous", "acme", "acme/docs", "pull"), "exists")
    assert err.detail == {"grant": g.id}
    # the same grant with the other effect is a different grant
    await world.admin.create_grant("anonymous", "acme", "acme/docs", "pull", "deny")


# -- roles ------------------------------------------------------------------------------------


async def test_builtin_roles_are_listed_first_with_their_definition(world: World) -> None:
    roles = await world.admin.list_roles()
    assert [r.name for r in roles[:6]] == sorted(load_roles())
    owner = await world.admin.get_role("owner")
    assert (owner.builtin, owner.actions, owner.includes) == (True, ["org:admin"],
                                                              ["maintainer"])
    assert owner.description
    with pytest.raises(NotFound):
        await world.admin.get_role("nope")


async def test_custom_role_lifecycle(world: World) -> None:
    v0 = await world.version()
    role = await world.admin.create_role("scanner", ["pull", "repo:manage"], [], "scans")
    assert (role.name, role.builtin, role.actions, role.includes, role.description) == (
        "scanner", False, ["pull", "repo:manage"], [], "scans")
    role = await world.admin.update_role("scanner", actions=["pull"], includes=["reader"])
    assert (role.actions, role.includes, role.description) == (["pull"], ["reader"], "scans")
    role = await world.admin.update_role("scanner", description="reads")
    assert (role.actions, role.description) == (["pull"], "reads")
    assert (await world.admin.list_roles())[-1] == role
    g = await world.admin.create_grant("user:alice", "acme", "**", "scanner")
    await world.fails(Conflict, lambda c: admin.delete_role(c, "scanner"), "1 grant")
    await world.admin.create_role("wrapper", [], ["scanner"])
    await world.fails(Conflict, lambda c: admin.delete_role(c, "scanner"), "wrapper")
    await world.admin.delete_role("wrapper")
    await world.admin.delete_grant(g.id)
    await world.admin.delete_role("scanner")
    with pytest.raises(NotFound):
        await world.admin.get_role("scanner")
    _, rules = await world.db.run(admin.read_rules, write=False)
    assert not [r for r in rules if "role:scanner" in r or "role:wrapper" in r]
    assert await world.version() == v0 + 8


@pytest.mark.parametrize(("name", "actions", "includes", "error", "message"), [
    ("Bad", ["pull"], [], Invalid, "must match"),
    ("push", ["pull"], [], Invalid, "not be an action"),
    ("reader", ["pull"], [], Conflict, "already exists"),
    ("mine", ["fly"], [], Invalid, "unknown action 'fly'"),
    ("mine", [], ["nope"], Invalid, "includes 'nope', which does not exist"),
    ("mine", [], [], Invalid, "at least one action"),
    ("mine", [], ["mine"], Invalid, "does not exist"),
])
async def test_bad_roles_are_refused(world: World, name: str, actions: list[str],
                                     includes: list[str], error: type[DtrError],
                                     message: str) -> None:
    await world.fails(error, lambda c: admin.create_role(c, name, actions, includes), message)


async def test_role_cycles_are_refused(world: World) -> None:
    await world.admin.create_role("a", ["pull"])
    await world.admin.create_role("b", [], ["a"])
    await world.fails(Invalid, lambda c: admin.update_role(c, "a", includes=["b"]), "cycle")
    await world.fails(Invalid, lambda c: admin.update_role(c, "a", includes=["a"]), "cycle")


async def test_builtin_roles_cannot_be_changed_or_deleted(world: World) -> None:
    await world.fails(Denied, lambda c: admin.update_role(c, "reader", actions=["push"]),
                      "built in")
    await world.fails(Denied, lambda c: admin.delete_role(c, "admin"), "roles.yaml")
    await world.fails(NotFound, lambda c: admin.update_role(c, "nope", actions=["pull"]))


async def test_seeding_twice_changes_nothing(world: World) -> None:
    v0 = await world.version()
    assert not await world.run(lambda c: admin.sync_builtin_roles(c, load_roles()))
    assert await world.version() == v0


# -- membership and clean-up ------------------------------------------------------------------


async def test_membership(world: World) -> None:
    v0 = await world.version()
    assert await world.admin.add_member("acme", "devs", "user:alice")
    assert not await world.admin.add_member("acme", "devs", "user:alice")  # no change
    assert await world.admin.add_member("acme", "devs", "robot:robot$acme+ci")
    assert await world.admin.add_member("acme", "ops", "user:alice")
    assert await world.version() == v0 + 3
    assert await world.admin.list_members("acme", "devs") == ["robot:robot$acme+ci",
                                                              "user:alice"]
    assert await world.admin.teams_of("user:alice") == ["team:acme/devs", "team:acme/ops"]
    await world.admin.remove_member("acme", "ops", "user:alice")
    assert await world.admin.teams_of("user:alice") == ["team:acme/devs"]
    await world.fails(NotFound, lambda c: admin.remove_member(c, "acme", "ops", "user:alice"),
                      "not a member")


@pytest.mark.parametrize(("org", "team", "member", "error", "message"), [
    ("acme", "devs", "team:acme/ops", Invalid, "only users and robots"),
    ("acme", "devs", "anonymous", Invalid, "only users and robots"),
    ("acme", "devs", "robot:robot$beta+ci", Invalid, "belongs to org beta"),
    ("acme", "nope", "user:alice", NotFound, "team:acme/nope does not exist"),
    ("acme", "devs", "user:nobody", NotFound, "user:nobody does not exist"),
    ("acme", "devs", "alice", Invalid, "is not user:<name>"),
])
async def test_bad_members_are_refused(world: World, org: str, team: str, member: str,
                                       error: type[DtrError], message: str) -> None:
    await world.fails(error, lambda c: admin.add_member(c, org, team, member), message)


async def test_system_robots_may_join_org_teams(world: World) -> None:
    assert await world.admin.add_member("beta", "devs", "robot:robot$mirror")


async def test_remove_subject_removes_grants_and_memberships(world: World) -> None:
    await world.admin.create_grant("user:alice", "acme", "**", "reader")
    await world.admin.create_grant("user:alice", "*", "**", "auditor")
    await world.admin.create_grant("user:bob", "acme", "**", "reader")
    await world.admin.add_member("acme", "devs", "user:alice")
    v0 = await world.version()
    assert await world.admin.remove_subject("user:alice") == 3
    assert await world.version() == v0 + 1
    assert await world.admin.remove_subject("user:alice") == 0
    assert await world.version() == v0 + 1  # nothing removed, no bump
    assert [g.subject for g in await world.admin.list_grants()] == ["user:bob"]
    assert await world.admin.list_members("acme", "devs") == []


async def test_remove_team_and_org(world: World) -> None:
    await world.admin.create_grant("team:acme/devs", "acme", "**", "developer")
    await world.admin.add_member("acme", "devs", "user:alice")
    await world.admin.add_member("acme", "ops", "robot:robot$acme+ci")
    await world.admin.create_grant("robot:robot$acme+ci", "acme", "acme/ci/**", "developer")
    await world.admin.create_grant("user:bob", "acme", "**", "owner")
    await world.admin.create_grant("user:bob", "beta", "**", "owner")
    await world.admin.create_grant("user:bob", "*", "acme", "reader")  # a system grant
    await world.admin.add_member("beta", "devs", "user:bob")
    assert await world.admin.remove_team("acme", "devs") == 2
    assert await world.admin.teams_of("user:alice") == []
    assert await world.admin.remove_org("acme") == 3
    left = {(g.subject, g.org) for g in await world.admin.list_grants()}
    assert left == {("user:bob", "beta"), ("user:bob", "*")}
    assert await world.admin.teams_of("user:bob") == ["team:beta/devs"]
    assert await world.admin.remove_org("acme") == 0


async def test_bump_version_returns_the_new_version(world: World) -> None:
    v0 = await world.version()
    assert await world.run(admin.bump_version) == v0 + 1
    assert await world.run(admin.lock) == v0 + 1
