"""PolicyEngine and OfflineEngine: explained decisions, the decision cache, seeding the
built-in roles (idempotent, safe when replicas start together), and polling — a change made
through one engine's database is enforced by another within the refresh period — on SQLite
and on a real PostgreSQL (tests/support/peers.py)."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, func, insert, select

from dtr.db.database import Database
from dtr.db.models import CasbinRule, Role
from dtr.errors import Invalid
from dtr.policy import admin
from dtr.policy.actions import load_roles, role_links
from dtr.policy.enforcer import OfflineEngine, PolicyEngine
from tests.policy.test_decisions import (
    POLICY,
    apply_policy,
    ensure_subject,
    policy_lines,
)

pytestmark = pytest.mark.anyio

BUILTIN = load_roles()
BUILTIN_LINKS = sum(len(role_links(r)) for r in BUILTIN.values())


@pytest.fixture
async def two_dbs(db_url: str) -> AsyncIterator[tuple[Database, Database]]:
    """Two independent connections to one database: two replicas."""
    a, b = Database(db_url), Database(db_url)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def offline(*rules: tuple[str, ...]) -> OfflineEngine:
    """An engine over the built-in roles plus ``rules`` as they are (no validation)."""
    links = [("g2", *link) for spec in BUILTIN.values() for link in role_links(spec)]
    return OfflineEngine([*links, *rules])


# -- decisions and their explanation ----------------------------------------------------------


async def test_allow_through_a_team_names_the_rule_and_the_chain() -> None:
    engine = PolicyEngine.from_files(POLICY)
    d = engine.decide("user:alice", "acme/prod/api", "push")
    assert d.allowed
    assert d.domain == "acme"
    assert d.rule == ("team:acme/devs", "acme", "acme/**", "role:developer", "allow")
    assert d.chain == ("user:alice", "team:acme/devs", "role:developer", "push")
    assert "p, team:acme/devs, acme, acme/**, role:developer, allow" in d.reason
    pull = engine.decide("user:alice", "acme/app", "pull")
    assert pull.chain == ("user:alice", "team:acme/devs", "role:developer", "role:reader",
                          "pull")


async def test_deny_names_the_deny_rule() -> None:
    engine = PolicyEngine.from_files(POLICY)
    d = engine.decide("user:carl", "acme/prod/api", "push")
    assert not d.allowed
    assert d.rule == ("team:acme/contractors", "acme", "acme/prod/**", "push", "deny")
    assert d.chain == ("user:carl", "team:acme/contractors", "push")
    assert d.reason.startswith("denied by 'p, team:acme/contractors")
    assert "deny overrides allow" in d.reason


async def test_no_match_says_so() -> None:
    d = PolicyEngine.from_files(POLICY).decide("user:zoe", "acme/app", "push")
    assert (d.allowed, d.rule, d.chain) == (False, None, ("user:zoe",))
    assert d.reason == "no grant gives push on acme/app to user:zoe"


async def test_anonymous_grants_reach_signed_in_callers_through_anonymous() -> None:
    d = PolicyEngine.from_files(POLICY).decide("user:zoe", "mixed/docs", "pull")
    assert d.allowed
    assert d.chain == ("user:zoe", "anonymous", "pull")


async def test_system_actions_default_to_the_system_domain() -> None:
    engine = PolicyEngine.from_files(POLICY)
    d = engine.decide("user:audrey", "*", "audit:read")
    assert (d.allowed, d.domain) == (True, "*")
    assert d.chain == ("user:audrey", "role:auditor", "audit:read")
    assert engine.allowed("user:root", "*", "system:admin")
    assert not engine.allowed("user:olga", "*", "system:admin")


async def test_decision_to_dict_is_json() -> None:
    d = PolicyEngine.from_files(POLICY).decide("user:bob", "acme/prod/x", "delete")
    out = json.loads(json.dumps(d.to_dict()))
    assert out["allowed"] is True
    assert out["rule"] == ["team:acme/ops", "acme", "acme/prod/**", "role:maintainer", "allow"]
    assert out["chain"] == ["user:bob", "team:acme/ops", "role:maintainer", "delete"]
    assert set(out) == {"allowed", "subject", "domain", "object", "action", "rule", "chain",
                        "reason"}


async def test_unknown_actions_are_denied() -> None:
    engine = PolicyEngine.from_files(POLICY)
    assert not engine.allowed("user:root", "acme/app", "pul")
    d = engine.decide("user:root", "acme/app", "pul")
    assert not d.allowed
    assert "unknown action" in d.reason


async def test_a_team_never_counts_outside_its_org_even_in_hand_written_rules() -> None:
    # admin.create_grant refuses this grant; the model must isolate anyway
    engine = offline(("p", "team:acme/devs", "beta", "**", "role:owner", "allow"),
                     ("p", "team:acme/devs", "acme", "**", "role:reader", "allow"),
                     ("g", "user:alice", "team:acme/devs", "acme"))
    assert engine.allowed("user:alice", "acme/app", "pull")
    assert not engine.allowed("user:alice", "beta/app", "pull")
    assert not engine.allowed("user:alice", "beta", "org:admin")


async def test_granted_keeps_order_and_drops_duplicates() -> None:
    engine = PolicyEngine.from_files(POLICY)
    assert engine.granted("user:dave", "acme/app", ["push", "delete", "pull", "push"]) == (
        "push", "pull")
    assert engine.granted("anonymous", "acme/app", ["pull", "push"]) == ()


async def test_allowed_is_cached_per_version() -> None:
    engine = PolicyEngine.from_files(POLICY)
    cache = engine._snapshot.allowed
    assert engine.allowed("user:dave", "acme/app", "push")
    assert engine.allowed("user:dave", "acme/app", "push")
    assert cache.cache_info().hits == 1
    assert cache.cache_info().misses == 1


async def test_malformed_rows_are_ignored() -> None:
    engine = offline(("p", "user:a", "acme", "**", "role:reader"),  # no effect
                     ("p", "user:a", "acme", "**", "role:reader", "maybe"),
                     ("x", "what"),
                     ("p", "user:b", "acme", "**", "role:reader", "allow"))
    assert not engine.allowed("user:a", "acme/app", "pull")
    assert engine.allowed("user:b", "acme/app", "pull")


async def test_domains_without_rules_do_not_grow_the_role_manager() -> None:
    engine = PolicyEngine.from_files(POLICY)
    for i in range(300):
        assert not engine.allowed("user:zoe", f"random{i}/app", "pull")
        assert engine.allowed("user:root", f"random{i}/app", "pull")
    domains = engine._snapshot._enforcer.get_role_manager().rm_map
    assert len(domains) < 20


@pytest.mark.parametrize(("line", "message"), [
    ("p, user:a, acme, beta/**, role:reader, allow", "must be '**' or start with 'acme/'"),
    ("p, team:beta/x, acme, **, role:reader, allow", "only counts inside org beta"),
    ("p, user:a, acme, **, role:nope, allow", "role 'nope' does not exist"),
    ("p, user:a, acme, **, role:reader, maybe", "not allow or deny"),
    ("p, user:a, acme, **", "expected 'p, sub, org, glob, role, effect'"),
    ("g, user:a, team:beta/x, acme", "a g line is"),
    ("g2, push, role:developer", "g2 lines define custom roles"),
    ("g2, role:nope, role:mine", "neither an action nor a role"),
])
async def test_offline_policy_files_are_checked(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "policy.csv"
    path.write_text(f"# header\n\n{line}\n")
    with pytest.raises(Invalid, match=r"policy\.csv:3: ") as info:
        PolicyEngine.from_files(path)
    assert message in info.value.message


async def test_offline_custom_roles_must_not_form_cycles(tmp_path: Path) -> None:
    path = tmp_path / "policy.csv"
    path.write_text("g2, role:a, role:b\ng2, role:b, role:a\ng2, pull, role:a\n")
    with pytest.raises(Invalid, match="include each other"):
        PolicyEngine.from_files(path)


async def test_an_engine_that_has_not_started_denies_everything(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'never.db'}")
    engine = PolicyEngine(db)
    try:
        assert engine.version == -1
        assert not engine.allowed("user:root", "*", "system:admin")
    finally:
        await db.close()


# -- seeding, loading, polling (SQLite and PostgreSQL) ----------------------------------------


def _counts(conn: Connection) -> tuple[int, int, int]:
    g2 = conn.execute(select(func.count()).select_from(CasbinRule)
                      .where(CasbinRule.ptype == "g2")).scalar_one()
    roles = conn.execute(select(func.count()).select_from(Role)
                         .where(Role.builtin.is_(True))).scalar_one()
    return int(g2), int(roles), admin.read_version(conn)


async def test_replicas_starting_together_seed_the_roles_once(
        two_dbs: tuple[Database, Database]) -> None:
    a, b = two_dbs
    engines = [PolicyEngine(a, refresh_seconds=0), PolicyEngine(b, refresh_seconds=0)]
    try:
        await asyncio.gather(*(e.start() for e in engines))
        assert await a.run(_counts, write=False) == (BUILTIN_LINKS, len(BUILTIN), 1)
        again = PolicyEngine(a, refresh_seconds=0)
        await again.start()  # nothing changed: no new rows, no bump
        assert await a.run(_counts, write=False) == (BUILTIN_LINKS, len(BUILTIN), 1)
        assert {e.version for e in [*engines, again]} == {1}
        assert again.allowed("user:x", "acme/app", "pull") is False
    finally:
        for e in engines:
            await e.close()


async def test_a_change_through_one_replica_is_enforced_by_the_other(
        two_dbs: tuple[Database, Database]) -> None:
    a, b = two_dbs
    writer = PolicyEngine(a, refresh_seconds=0)
    reader = PolicyEngine(b, refresh_seconds=0.2)
    try:
        await writer.start()
        await reader.start()
        assert not reader.allowed("user:bob", "acme/app", "push")  # now cached as deny

        def grant(conn: Connection) -> admin.Grant:
            ensure_subject(conn, "user:bob")
            ensure_subject(conn, "team:acme/devs")
            return admin.create_grant(conn, "user:bob", "acme", "acme/**", "developer")

        made = await a.run(grant, write=True)
        began = time.monotonic()
        while not reader.allowed("user:bob", "acme/app", "push"):
            assert time.monotonic() - began < 5, "the change did not arrive within 5 s"
            await asyncio.sleep(0.05)
        assert reader.version == await a.run(admin.read_version, write=False)

        await a.run(functools.partial(admin.delete_grant, grant_id=made.id), write=True)
        began = time.monotonic()
        while reader.allowed("user:bob", "acme/app", "push"):
            assert time.monotonic() - began < 5, "the revocation did not arrive within 5 s"
            await asyncio.sleep(0.05)
        assert not await reader.refresh()  # already current
    finally:
        await writer.close()
        await reader.close()


async def test_the_live_engine_explains_like_the_offline_one(
        two_dbs: tuple[Database, Database]) -> None:
    a, _ = two_dbs
    engine = PolicyEngine(a, refresh_seconds=0)
    await engine.start()
    await a.run(functools.partial(apply_policy, lines=policy_lines()), write=True)
    assert await engine.refresh()
    files = PolicyEngine.from_files(POLICY)
    for query in [("user:alice", "acme/app", "push"), ("user:carl", "acme/prod/x", "push"),
                  ("user:jan", "acme/tmp/x", "delete"), ("anonymous", "pub/internal/a", "pull")]:
        assert engine.decide(*query) == files.decide(*query)


async def test_roles_yaml_changes_are_synced_at_start(tmp_path: Path, db_url: str) -> None:
    db = Database(db_url)
    edited = tmp_path / "roles.yaml"
    edited.write_text("reader:\n  description: pull only\n  actions: [pull]\n"
                      "viewer:\n  description: org only\n  actions: [org:read]\n")
    try:
        await PolicyEngine(db, refresh_seconds=0).start()
        engine = PolicyEngine(db, refresh_seconds=0, roles_path=edited)
        await engine.start()
        assert engine.version == 2
        roles = {r.name: r for r in await admin.PolicyAdmin(db).list_roles()}
        assert roles["reader"].actions == ["pull"]
        assert roles["reader"].description == "pull only"
        assert roles["viewer"].builtin
        # built-in roles that left the file become custom roles, unchanged
        assert not roles["developer"].builtin
        assert roles["developer"].actions == ["push"]
        assert roles["developer"].includes == ["reader"]
        await PolicyEngine(db, refresh_seconds=0).start()
        assert {r.name for r in await admin.PolicyAdmin(db).list_roles() if r.builtin} == set(
            BUILTIN)
        assert await db.run(_counts, write=False) == (BUILTIN_LINKS + 1, len(BUILTIN), 3)
    finally:
        await db.close()


async def test_reloading_a_thousand_rules(db_url: str) -> None:
    db = Database(db_url)
    engine = PolicyEngine(db, refresh_seconds=0)
    try:
        await engine.start()

        def bulk(conn: Connection) -> None:
            rows: list[dict[str, str | None]] = []
            for o in range(50):
                for t in range(5):
                    team = f"team:org{o}/t{t}"
                    rows += [{"ptype": "p", "v0": team, "v1": f"org{o}",
                              "v2": f"org{o}/app{t}/**", "v3": "role:developer", "v4": "allow"},
                             {"ptype": "p", "v0": f"user:u{o}-{t}", "v1": f"org{o}",
                              "v2": f"org{o}/app{t}/prod/**", "v3": "role:maintainer",
                              "v4": "deny"},
                             {"ptype": "g", "v0": f"user:u{o}-{t}", "v1": team, "v2": f"org{o}",
                              "v3": None, "v4": None},
                             {"ptype": "g", "v0": f"user:v{o}-{t}", "v1": team, "v2": f"org{o}",
                              "v3": None, "v4": None}]
            conn.execute(insert(CasbinRule), rows)
            admin.bump_version(conn)

        await db.run(bulk, write=True)
        assert await engine.refresh()
        assert engine._snapshot.count == 1000 + BUILTIN_LINKS
        for i in range(300):
            assert engine.decide(f"user:v{i % 50}-3", f"org{i % 50}/app3/x", "push").allowed
        assert engine.allowed("user:v7-3", "org7/app3/x", "push")
        assert not engine.allowed("user:u7-3", "org7/app3/prod/x", "pull")
        assert not engine.allowed("user:v7-3", "org8/app3/x", "pull")  # cross-org
    finally:
        await engine.close()
        await db.close()


async def test_the_readme_examples_are_a_valid_policy_that_does_what_it_says(
        tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[3] / "policies" / "README.md").read_text()
    blocks = readme.split("```")[1::2]
    lines = [line for block in blocks for line in block.splitlines()
             if line.startswith(("p, ", "g, ", "g2, "))]
    assert len(lines) >= 15
    path = tmp_path / "readme.csv"
    path.write_text("\n".join(lines) + "\n")
    engine = PolicyEngine.from_files(path)
    assert engine.allowed("user:alice", "acme/prod/api", "push")
    assert not engine.allowed("user:alice", "acme/prod/api", "delete")
    assert engine.granted("robot:robot$acme+deploy", "acme/prod/api", ["pull", "push"]) == (
        "pull",)
    assert engine.allowed("anonymous", "acme/docs", "pull")
    assert not engine.allowed("anonymous", "pub/internal/x", "pull")
    assert engine.allowed("user:jan", "acme/tmp/x", "delete")
    assert engine.allowed("user:audrey", "*", "audit:read")
    assert engine.allowed("user:root", "*", "system:admin")
