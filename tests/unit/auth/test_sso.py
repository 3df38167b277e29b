"""The pure parts of OIDC login (``dtr.auth.sso``) as decision tables: claim mapping, team
sync, the admin/auditor group rule, ``next`` paths and the state cookie.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import msgspec
import pytest

from dtr.auth.sso import (
    LoginRefused,
    LoginState,
    decide_role,
    decide_teams,
    decode_state,
    encode_state,
    groups_of,
    map_claims,
    safe_next,
)
from dtr.auth.tokens import TokenKeys
from dtr.config import OIDCSettings

SETTINGS = OIDCSettings(enabled=True, issuer="https://idp.example", client_id="dtr")
ISS, SUB = "https://idp.example", "sub-1"


@pytest.mark.parametrize(("claims", "username", "email", "groups"), [
    ({"preferred_username": "alice"}, "alice", None, ()),
    ({"preferred_username": "Alice.Smith", "email": "a@x.test"}, "alice.smith", "a@x.test", ()),
    ({"preferred_username": "bob", "groups": "devs"}, "bob", None, ("devs",)),
    ({"preferred_username": "bob", "groups": ["b", "a", "b", "", None, 7, True, {"x": 1}]},
     "bob", None, ("7", "a", "b")),
    ({"preferred_username": "bob", "groups": None}, "bob", None, ()),
    ({"preferred_username": "bob", "groups": {"not": "a list"}}, "bob", None, ()),
    ({"preferred_username": "bob", "email": "not an address"}, "bob", None, ()),
    ({"preferred_username": "bob", "email": "@"}, "bob", None, ()),
    ({"preferred_username": "bob", "email": 42}, "bob", None, ()),
])
def test_claim_mapping(claims: dict[str, Any], username: str, email: str | None,
                       groups: tuple[str, ...]) -> None:
    found = map_claims(claims, SETTINGS, issuer=ISS, subject=SUB)
    assert (found.username, found.email, found.groups) == (username, email, groups)
    assert (found.issuer, found.subject) == (ISS, SUB)


@pytest.mark.parametrize(("claims", "reason"), [
    ({}, "missing_username"),
    ({"preferred_username": ""}, "missing_username"),
    ({"preferred_username": ["alice"]}, "missing_username"),
    ({"preferred_username": "Jane Doe"}, "bad_username"),
    ({"preferred_username": "robot$x"}, "bad_username"),
    ({"preferred_username": "a" * 65}, "bad_username"),
    ({"preferred_username": "-dash"}, "bad_username"),
])
def test_claims_without_a_usable_username_are_refused(claims: dict[str, Any],
                                                      reason: str) -> None:
    with pytest.raises(LoginRefused) as err:
        map_claims(claims, SETTINGS, issuer=ISS, subject=SUB)
    assert err.value.reason == reason


def test_configured_claim_names_are_used() -> None:
    settings = msgspec.structs.replace(SETTINGS, username_claim="upn", email_claim="mail",
                                       groups_claim="roles")
    found = map_claims({"upn": "Carol", "mail": "c@x.test", "roles": ["admins"],
                        "preferred_username": "ignored", "groups": ["ignored"]},
                       settings, issuer=ISS, subject=SUB)
    assert (found.username, found.email, found.groups) == ("carol", "c@x.test", ("admins",))


def test_groups_of_caps_huge_claims() -> None:
    assert len(groups_of([f"g{i}" for i in range(5000)])) == 1000


DEVS, OPS, MANUAL = ("acme", "devs"), ("acme", "ops"), ("acme", "manual")
SYNCED = {DEVS: "developers", OPS: "operators"}


@pytest.mark.parametrize(("member_of", "groups", "add", "remove"), [
    # (teams now, groups claim) -> (added, removed); MANUAL has no group: never touched
    (set(), [], set(), set()),
    (set(), ["developers"], {DEVS}, set()),
    ({DEVS}, ["developers"], set(), set()),
    ({DEVS}, [], set(), {DEVS}),
    ({DEVS, MANUAL}, ["operators"], {OPS}, {DEVS}),
    ({MANUAL}, [], set(), set()),
    ({OPS}, ["developers", "operators", "unknown"], {DEVS}, set()),
    (set(), ["Developers"], set(), set()),  # group names are exact
])
def test_team_sync_decisions(member_of: set[tuple[str, str]], groups: list[str],
                             add: set[tuple[str, str]], remove: set[tuple[str, str]]) -> None:
    plan = decide_teams(SYNCED, member_of, groups)
    assert (set(plan.add), set(plan.remove)) == (add, remove)


@pytest.mark.parametrize(("group", "groups", "granted", "by_group", "action", "held"), [
    # in the group
    ("admins", ["admins"], False, False, "grant", True),
    ("admins", ["admins"], True, True, "keep", True),
    ("admins", ["admins"], True, False, "keep", False),  # granted by hand: stays by hand
    ("admins", ["admins"], False, True, "grant", True),  # removed by hand meanwhile
    # not in the group
    ("admins", [], True, True, "revoke", False),
    ("admins", [], True, False, "keep", False),  # a grant made by hand is never taken
    ("admins", [], False, True, "keep", False),
    ("admins", [], False, False, "keep", False),
    # no group configured: what a group granted goes
    ("", ["admins"], True, True, "revoke", False),
    ("", ["admins"], True, False, "keep", False),
    ("", [], False, False, "keep", False),
])
def test_admin_group_decisions(group: str, groups: list[str], granted: bool, by_group: bool,
                               action: str, held: bool) -> None:
    assert decide_role(group, groups, granted, by_group) == (action, held)


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", None), ("/ui/", "/ui/"), ("/a?b=c", "/a?b=c"),
    ("//evil.example/", None), ("https://evil.example/", None), ("/\\evil", None),
    ("relative", None), ("/x\ny", None),
])
def test_next_paths_stay_on_this_registry(value: str | None, expected: str | None) -> None:
    assert safe_next(value) == expected


def test_the_state_cookie_round_trips_and_refuses_tampering() -> None:
    keys = TokenKeys.generate()
    state = LoginState("st", "nn", "cv", "https://r.example/cb", "/ui/")
    cookie = encode_state(keys, state)
    got = decode_state(keys, cookie)
    assert replace(got, expires_at=0) == state
    assert time.time() < got.expires_at <= time.time() + 600
    rotated = TokenKeys.generate(previous=[keys.signing])  # a replica after key rotation
    assert decode_state(rotated, cookie).state == "st"
    for bad, reason in ((None, "missing_state_cookie"), ("", "missing_state_cookie"),
                        ("x.y.z", "bad_state_cookie"), (cookie + "x", "bad_state_cookie"),
                        (encode_state(TokenKeys.generate(), state), "bad_state_cookie"),
                        (encode_state(keys, replace(state, expires_at=int(time.time()) - 1)),
                         "bad_state_cookie")):
        with pytest.raises(LoginRefused) as err:
            decode_state(keys, bad)
        assert err.value.reason == reason


def test_a_registry_token_is_not_a_state_cookie() -> None:
    from dtr.auth.principal import Principal  # noqa: PLC0415
    from dtr.auth.tokens import TokenIssuer  # noqa: PLC0415

    keys = TokenKeys.generate()
    token = TokenIssuer(keys, "dtr", 300).issue(Principal("user", "alice"), "svc", []).token
    with pytest.raises(LoginRefused) as err:
        decode_state(keys, token)
    assert err.value.reason == "bad_state_cookie"
