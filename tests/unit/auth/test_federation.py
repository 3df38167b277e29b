"""Federation trusts without a provider: claim conditions and trust validation as decision
tables, and the trust rows (create, role binding robot + grant, update, delete) on SQLite
and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection

from dtr.auth import accounts as acc
from dtr.auth import federation as fed
from dtr.auth.federation import Condition, Limits, RoleBinding, TrustSpec, TrustUpdate
from dtr.db.database import Database
from dtr.errors import Conflict, Invalid, NotFound
from dtr.policy import admin as pol

T = TypeVar("T")
GH = "https://token.actions.githubusercontent.com"
LIMITS = Limits(allow_http=False, max_token_seconds=3600)

# claim, pattern, match, claim value, holds?
CONDITIONS = [
    ("repository", "acme/app", "exact", "acme/app", True),
    ("repository", "acme/app", "exact", "acme/App", False),
    ("repository", "acme/app", "exact", "acme/app2", False),
    ("repository", "acme/*", "glob", "acme/app", True),
    ("repository", "acme/*", "glob", "acme/app/sub", False),  # * stays in one part
    ("repository", "acme/**", "glob", "acme/app/sub", True),  # ** crosses /
    ("repository", "acme/*", "exact", "acme/app", False),  # exact: * is literal
    ("ref", "refs/heads/*", "glob", "refs/heads/main", True),
    ("ref", "refs/heads/*", "glob", "refs/heads/feat/x", False),
    ("ref", "refs/tags/v*", "glob", "refs/tags/v1.2.3", True),
    ("sub", "repo:acme/app:**", "glob", "repo:acme/app:ref:refs/heads/main", True),
    ("sub", "repo:acme/app:*", "glob", "repo:acme/app:ref:refs/heads/main", False),
    ("sub", "repo:acme/app:**", "glob", "repo:acme/application:ref:x", False),
    ("ref_protected", "true", "exact", True, True),  # booleans as JSON
    ("ref_protected", "true", "exact", False, False),
    ("ref_protected", "True", "exact", True, False),
    ("run_attempt", "1", "exact", 1, True),  # numbers as JSON
    ("groups", "admins", "exact", ["admins"], False),  # lists never match
    ("ctx", "x", "exact", {"a": "x"}, False),  # objects never match
    ("repository", "acme/app", "exact", None, False),  # null never matches
    ("repository", "**", "glob", None, False),  # not even **
]


@pytest.mark.parametrize(("claim", "pattern", "match", "value", "holds"), CONDITIONS)
def test_condition_matching(claim: str, pattern: str, match: fed.Match, value: Any,
                            holds: bool) -> None:
    claims = {} if value is None else {claim: value}
    assert Condition(claim, pattern, match).holds(claims) is holds


def test_a_missing_claim_never_matches() -> None:
    assert not Condition("environment", "**", "glob").holds({"sub": "x"})


# value, result (a Condition or the words of the Invalid message)
PARSE = [
    ("repository=acme/app", Condition("repository", "acme/app", "exact")),
    ("ref~=refs/heads/*", Condition("ref", "refs/heads/*", "glob")),
    ("sub=repo:acme/app:ref=x", Condition("sub", "repo:acme/app:ref=x", "exact")),
    ({"claim": "ref", "pattern": "main"}, Condition("ref", "main", "exact")),
    ("repository", "use claim=value"),
    ("=acme", "claim name"),
    ("repository=", "pattern"),
    ("exp=1", "differs for every token"),
    ({"claim": "ref", "pattern": "x", "match": "regex"}, "exact or glob"),
    ("ref~=a/***", r"'\*\*\*' is not a glob"),
]


@pytest.mark.parametrize(("value", "result"), PARSE)
def test_parse_condition(value: Any, result: Condition | str) -> None:
    if isinstance(result, Condition):
        assert fed.parse_condition(value) == result
    else:
        with pytest.raises(Invalid, match=result):
            fed.parse_condition(value)


@pytest.mark.parametrize(("conditions", "error"), [
    ([], "at least one"),
    (["repository~=**"], "must pin a value"),
    (["repository~=*/*", "ref~=**"], "must pin a value"),
    (["repository~=acme/*"], None),
    (["repository=acme/app", "repository=acme/app"], None),
])
def test_check_conditions(conditions: list[str], error: str | None) -> None:
    if error is None:
        assert len(fed.check_conditions(conditions)) == 1
    else:
        with pytest.raises(Invalid, match=error):
            fed.check_conditions(conditions)


@pytest.mark.parametrize(("issuer", "allow_http", "ok"), [
    (GH, False, True),
    ("https://gitlab.example/", False, True),
    ("http://127.0.0.1:8080", False, False),
    ("http://127.0.0.1:8080", True, True),
    ("ftp://x", True, False),
    ("https://", False, False),
    ("https://x.example?q=1", False, False),
    ("https://x.example#f", False, False),
    ("https://x .example", False, False),
])
def test_check_issuer(issuer: str, allow_http: bool, ok: bool) -> None:
    if ok:
        fed.check_issuer(issuer, allow_http)
    else:
        with pytest.raises(Invalid, match="issuer"):
            fed.check_issuer(issuer, allow_http)


def spec(**kw: Any) -> TrustSpec:
    base: dict[str, Any] = {"name": "t", "audience": "reg", "issuer": "",
                            "conditions": (Condition("repository", "acme/app"),),
                            "robot": "robot$acme+ci"}
    base.update(kw)
    return TrustSpec(**base)


# preset, issuer given, conditions, expected issuer or error words
PRESETS = [
    ("github-actions", "", ["repository=acme/app"], GH),
    ("github-actions", "", ["sub~=repo:acme/app:**"], GH),
    ("github-actions", "https://ghe.example/_services/token", ["repository=acme/app"],
     "https://ghe.example/_services/token"),
    ("github-actions", "", ["ref=refs/heads/main"], "must pin repository or sub"),
    ("github-actions", "", ["repository~=*/app"], "must pin repository or sub"),
    ("github-actions", "", ["repository~=**", "ref=main"], "must pin repository or sub"),
    ("gitlab-ci", "", ["project_path=acme/app"], "https://gitlab.com"),
    ("gitlab-ci", "https://gitlab.example", ["sub~=project_path:acme/app:**"],
     "https://gitlab.example"),
    ("gitlab-ci", "", ["repository=acme/app"], "must pin project_path or sub"),
    ("kubernetes", "https://k8s.example", ["sub=system:serviceaccount:ci:builder"],
     "https://k8s.example"),
    ("kubernetes", "https://k8s.example", ["sub~=system:serviceaccount:ci:*"],
     "https://k8s.example"),
    ("kubernetes", "", ["sub=system:serviceaccount:ci:builder"], "give the cluster"),
    ("kubernetes", "https://k8s.example", ["sub~=system:serviceaccount:*:builder"],
     "must pin sub"),
    ("kubernetes", "https://k8s.example", ["sub=builder"], "must pin sub"),
    ("circleci", "https://x.example", ["sub=x"], "use one of"),
]


@pytest.mark.parametrize(("preset", "issuer", "conditions", "expected"), PRESETS)
def test_presets(preset: str, issuer: str, conditions: list[str], expected: str) -> None:
    made = spec(preset=preset, issuer=issuer, conditions=fed.check_conditions(conditions))
    if expected.startswith("https://"):
        assert fed.apply_preset(made).issuer == expected
    else:
        with pytest.raises(Invalid, match=expected):
            fed.apply_preset(made)


# -- rows ------------------------------------------------------------------------------------


async def run(db: Database, fn: Callable[[Connection], T]) -> T:
    return await db.run(fn, write=True)


def world(conn: Connection) -> None:
    acc.create_org(conn, "acme")
    acc.create_robot(conn, "ci", "acme")
    acc.create_user(conn, "alice", acc.HashedPassword("x"))


@pytest.mark.anyio
@pytest.mark.parametrize(("changes", "error"), [
    ({"name": "Bad Name"}, "trust name"),
    ({"issuer": "http://ci.example"}, "issuer"),
    ({"audience": ""}, "audience"),
    ({"audience": "two words"}, "audience"),
    ({"conditions": ()}, "at least one"),
    ({"max_token_seconds": 30}, "between 60 and 3600"),
    ({"max_token_seconds": 7200}, "between 60 and 3600"),
    ({"scopes": ("repository:acme/**:fly",)}, "scope"),
    ({"robot": None}, "either robot"),
    ({"role_binding": RoleBinding("acme", "**", "reader")}, "either robot"),
    ({"robot": "alice"}, "not a robot"),
])
async def test_create_trust_refusals(db: Database, changes: dict[str, Any],
                                     error: str) -> None:
    await run(db, world)
    made = spec(**{"issuer": GH, **changes})
    with pytest.raises(Invalid, match=error):
        await run(db, lambda c: fed.create_trust(c, made, LIMITS, grant=pol.create_grant))


@pytest.mark.anyio
async def test_trust_rows(db: Database) -> None:
    await run(db, world)
    robot_trust = await run(db, lambda c: fed.create_trust(
        c, spec(issuer=GH, scopes=("repository:acme/app:pull",)), LIMITS, created_by="alice"))
    assert robot_trust.robot == "robot$acme+ci"
    assert robot_trust.org == "acme"
    assert robot_trust.max_token_seconds == 3600
    assert robot_trust.scopes == ("repository:acme/app:pull",)
    assert not robot_trust.owns_robot
    with pytest.raises(Conflict):
        await run(db, lambda c: fed.create_trust(c, spec(issuer=GH), LIMITS))
    with pytest.raises(NotFound):
        await run(db, lambda c: fed.create_trust(c, spec(name="u", issuer=GH,
                                                         robot="robot$acme+nope"), LIMITS))

    bound = await run(db, lambda c: fed.create_trust(
        c, spec(name="deploy", issuer=GH, robot=None, max_token_seconds=900,
                role_binding=RoleBinding("acme", "acme/app/**", "push")),
        LIMITS, grant=pol.create_grant))
    assert bound.robot == "robot$acme+deploy"
    assert bound.owns_robot
    assert bound.role_binding == RoleBinding("acme", "acme/app/**", "push")
    grants = await run(db, lambda c: pol.list_grants(c, subject="robot:robot$acme+deploy"))
    assert [(g.org, g.repository, g.role) for g in grants] == [
        ("acme", "acme/app/**", "push")]
    # a bad role binding leaves nothing behind (the caller's transaction rolls back)
    with pytest.raises(NotFound):
        await run(db, lambda c: fed.create_trust(
            c, spec(name="bad", issuer=GH, robot=None,
                    role_binding=RoleBinding("acme", "acme/**", "no-such-role")),
            LIMITS, grant=pol.create_grant))
    assert not [a for a in await run(db, lambda c: acc.list_accounts(c, kind="robot"))
                if a.name == "robot$acme+bad"]

    changed = await run(db, lambda c: fed.update_trust(c, "deploy", TrustUpdate(
        enabled=False, conditions=(Condition("ref", "refs/tags/*", "glob"),
                                   Condition("repository", "acme/app")),
        scopes=("repository:acme/app:pull",), description="tags only"), LIMITS))
    assert not changed.enabled
    assert changed.conditions[0] == Condition("ref", "refs/tags/*", "glob")
    assert changed.description == "tags only"
    cleared = await run(db, lambda c: fed.update_trust(c, "deploy", TrustUpdate(scopes=()),
                                                       LIMITS))
    assert cleared.scopes is None
    with pytest.raises(Invalid):
        await run(db, lambda c: fed.update_trust(c, "deploy", TrustUpdate(conditions=()),
                                                 LIMITS))
    assert [t.name for t in await run(db, lambda c: fed.list_trusts(c, issuer=GH))] == [
        "t", "deploy"]

    await run(db, lambda c: fed.delete_trust(c, "deploy", remove_subject=pol.remove_subject))
    assert await run(db, lambda c: pol.list_grants(c, subject="robot:robot$acme+deploy")) == []
    with pytest.raises(NotFound):
        await run(db, lambda c: acc.get_account(c, "robot$acme+deploy"))
    await run(db, lambda c: fed.delete_trust(c, "t"))
    assert (await run(db, lambda c: acc.get_account(c, "robot$acme+ci"))).kind == "robot"
    with pytest.raises(NotFound):
        await run(db, lambda c: fed.get_trust(c, "t"))
