"""The decision table (decisions.csv) over fixture_policy.csv and the built-in roles of
policies/roles.yaml: offline (files only) and on a live PolicyEngine over SQLite after the
same policy went in through dtr.policy.admin — both must agree with every row.

Also holds the helpers other policy tests reuse: parse a policy CSV, create the accounts,
orgs and teams it names, and apply it through the admin functions.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Connection, insert, select

from dtr.db import migrate
from dtr.db.database import Database
from dtr.db.models import Account, Organization, Team
from dtr.policy import admin
from dtr.policy.actions import ALL_ACTIONS, ROLE_PREFIX, SYSTEM, load_roles, parse_subject
from dtr.policy.enforcer import PolicyEngine, check_table, load_table

HERE = Path(__file__).parent
POLICY = HERE / "fixture_policy.csv"
TABLE = HERE / "decisions.csv"


# -- helpers (also used by tests/unit/policy) ------------------------------------------------


def migrated_sqlite(folder: Path) -> str:
    """The URL of a fresh SQLite database in ``folder``, upgraded to the head revision."""
    url = f"sqlite+aiosqlite:///{folder / 'dtr.db'}"
    migrate.upgrade(url)
    return url


def policy_lines(path: Path = POLICY) -> list[list[str]]:
    """The Casbin lines of a policy CSV, as fields (comments and blank lines dropped)."""
    return [[f.strip() for f in line.split(",")]
            for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _org_id(conn: Connection, org: str) -> int:
    found = conn.execute(select(Organization.id).where(Organization.name == org)).scalar()
    if found is None:
        found = conn.execute(insert(Organization).values(name=org)
                             .returning(Organization.id)).scalar_one()
    return int(found)


def ensure_subject(conn: Connection, subject: str) -> None:
    """Create the account or team (and its org) a subject names, if missing."""
    subj = parse_subject(subject)
    if subj.kind == "team":
        assert subj.org is not None
        org_id = _org_id(conn, subj.org)
        if conn.execute(select(Team.id).where(Team.org_id == org_id,
                                              Team.name == subj.name)).first() is None:
            conn.execute(insert(Team).values(org_id=org_id, name=subj.name))
    elif subj.kind in ("user", "robot"):
        if subj.org is not None:
            _org_id(conn, subj.org)
        if conn.execute(select(Account.id).where(Account.name == subj.name)).first() is None:
            conn.execute(insert(Account).values(name=subj.name, kind=subj.kind, org=subj.org))


def seed_directory(conn: Connection, lines: list[list[str]]) -> None:
    """Create every org, team and account the policy lines name."""
    for fields in lines:
        if fields[0] == "p":
            if fields[2] != SYSTEM:
                _org_id(conn, fields[2])
            ensure_subject(conn, fields[1])
        elif fields[0] == "g":
            ensure_subject(conn, fields[1])
            ensure_subject(conn, fields[2])


def apply_policy(conn: Connection, lines: list[list[str]]) -> None:
    """Load policy lines through the admin functions: custom roles, then grants and members."""
    seed_directory(conn, lines)
    roles: dict[str, tuple[list[str], list[str]]] = {}
    for fields in lines:
        if fields[0] == "g2":
            actions, includes = roles.setdefault(fields[2].removeprefix(ROLE_PREFIX), ([], []))
            child = fields[1]
            (includes if child.startswith(ROLE_PREFIX) else actions).append(
                child.removeprefix(ROLE_PREFIX))
    for name, (actions, includes) in roles.items():
        admin.create_role(conn, name, actions, includes, f"custom role {name}")
    for fields in lines:
        if fields[0] == "p":
            admin.create_grant(conn, fields[1], fields[2], fields[3], fields[4],
                               fields[5])  # type: ignore[arg-type]
        elif fields[0] == "g":
            team = parse_subject(fields[2])
            assert team.org is not None
            assert admin.add_member(conn, team.org, team.name, fields[1])


# -- the table --------------------------------------------------------------------------------


def test_the_table_covers_what_it_promises() -> None:
    rows = load_table(TABLE)
    assert len(rows) >= 80
    assert {r["expected"] for r in rows} == {"allow", "deny"}
    assert {r["action"] for r in rows} == set(ALL_ACTIONS)
    subjects = Counter(parse_subject(r["subject"]).kind for r in rows)
    assert min(subjects["user"], subjects["robot"], subjects["anonymous"]) > 0
    assert any(r["subject"].startswith("robot:robot$acme+") for r in rows)  # org robot
    assert any(r["subject"] == "robot:robot$mirror" for r in rows)  # system robot
    assert any(r["domain"] == SYSTEM for r in rows)
    # every built-in org role is granted org-wide, on a glob and on one repository, and
    # the table asks each of them every repository action at each scope
    lines = policy_lines()
    scopes = {(f[1], f[4], f[3]) for f in lines if f[0] == "p"}
    for role, user in (("reader", "rita"), ("developer", "dave"), ("maintainer", "mia"),
                       ("owner", "olga")):
        for glob in ("**", "beta/web/*", "gamma/app"):
            assert (f"user:{user}", f"role:{role}", glob) in scopes
        for repo in ("acme/app", "beta/web/site", "gamma/app"):
            asked = {r["action"] for r in rows
                     if r["subject"] == f"user:{user}" and r["repository"] == repo}
            assert asked == {"pull", "push", "delete"}, (user, repo)
    granted_roles = {f[4] for f in lines if f[0] == "p" and f[4].startswith(ROLE_PREFIX)}
    assert {ROLE_PREFIX + r for r in load_roles()} <= granted_roles


def test_offline_engine_agrees_with_the_table() -> None:
    engine = PolicyEngine.from_files(POLICY)
    assert check_table(engine, load_table(TABLE)) == []


def test_a_wrong_expectation_is_reported_with_the_reason() -> None:
    engine = PolicyEngine.from_files(POLICY)
    rows = load_table(TABLE)
    flipped = [{**r, "expected": "deny" if r["expected"] == "allow" else "allow"}
               for r in rows if r["subject"] in ("user:bob", "user:zoe")]
    mismatches = check_table(engine, flipped)
    assert len(mismatches) == len(flipped)
    by_target = {(m.subject, m.object, m.action): m for m in mismatches}
    secret = by_target[("user:bob", "acme/secret/keys", "pull")]
    assert secret.got == "deny"
    assert "p, user:bob, acme, acme/secret/**, role:reader, deny" in secret.reason
    assert secret.line > 0
    nothing = by_target[("user:zoe", "acme/app", "pull")]
    assert nothing.reason == "no grant gives pull on acme/app to user:zoe"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return migrated_sqlite(tmp_path)


@pytest.mark.anyio
async def test_live_engine_on_sqlite_agrees_with_the_table_and_the_offline_engine(
        sqlite_url: str) -> None:
    db = Database(sqlite_url)
    engine = PolicyEngine(db, refresh_seconds=0)
    try:
        await engine.start()
        lines = policy_lines()
        await db.run(functools.partial(apply_policy, lines=lines), write=True)
        assert await engine.refresh()
        rows = load_table(TABLE)
        assert check_table(engine, rows) == []
        offline = PolicyEngine.from_files(POLICY)
        for row in rows:
            live = engine.decide(row["subject"], row["repository"], row["action"],
                                 row["domain"] or None)
            files = offline.decide(row["subject"], row["repository"], row["action"],
                                   row["domain"] or None)
            assert (live.allowed, live.rule, live.chain) == (
                files.allowed, files.rule, files.chain), row
    finally:
        await engine.close()
        await db.close()
