"""Docker scope grammar (token-auth.md §7) and personal-access-token restrictions."""

from __future__ import annotations

import pytest

from dtr.auth.scopes import (
    Scope,
    format_scope,
    format_scopes,
    glob_match,
    normalize_restrictions,
    parse_scope,
    parse_scopes,
    restrict_actions,
    scope_allows,
)
from dtr.errors import Invalid


@pytest.mark.parametrize(("text", "expected"), [
    ("repository:team/app:pull", Scope("repository", "team/app", ("pull",))),
    ("repository:team/app:pull,push", Scope("repository", "team/app", ("pull", "push"))),
    ("repository:alpine:*", Scope("repository", "alpine", ("*",))),
    ("repository:team/app:delete", Scope("repository", "team/app", ("delete",))),
    # host:port inside the name: type split at the first ':', actions at the last
    ("repository:reg.example:5000/team/app:pull",
     Scope("repository", "reg.example:5000/team/app", ("pull",))),
    # deprecated resource class
    ("repository(plugin):vieux/sshfs:pull", Scope("repository", "vieux/sshfs", ("pull",))),
    # unknown actions dropped, duplicates folded, order kept
    ("repository:a/b:push,bogus,pull,push", Scope("repository", "a/b", ("push", "pull"))),
    ("repository:a/b:bogus", Scope("repository", "a/b", ())),
    ("repository:a/b:", Scope("repository", "a/b", ())),
    ("registry:catalog:*", Scope("registry", "catalog", ("*",))),
    ("registry:catalog:pull", Scope("registry", "catalog", ())),
])
def test_parse_scope(text: str, expected: Scope) -> None:
    assert parse_scope(text) == expected


@pytest.mark.parametrize("text", [
    "", "repository", "repository:name", ":name:pull", "repository::pull",
    "Repository:a:pull", "repo sitory:a:pull", "repository(:a:pull", "unknown:a:pull",
    "repository(plugin:a:pull", "x" * 2000 + ":a:pull",
])
def test_parse_scope_rejects_malformed(text: str) -> None:
    assert parse_scope(text) is None


def test_parse_scopes_repeated_and_space_joined_merged_in_order() -> None:
    got = parse_scopes([
        "repository:team/app:pull,push repository:base/img:pull",
        "repository:team/app:delete",
        "garbage registry:catalog:*",
        "  repository:base/img:pull  ",
    ])
    assert got == [
        Scope("repository", "team/app", ("pull", "push", "delete")),
        Scope("repository", "base/img", ("pull",)),
        Scope("registry", "catalog", ("*",)),
    ]
    assert parse_scopes([]) == []
    assert parse_scopes([""]) == []


def test_format_round_trip() -> None:
    texts = ["repository:team/app:pull,push", "repository:h:5000/x:pull", "registry:catalog:*"]
    scopes = parse_scopes(texts)
    assert [format_scope(s) for s in scopes] == texts
    assert [str(s) for s in scopes] == texts
    assert format_scopes(scopes) == " ".join(texts)
    assert parse_scopes([format_scopes(scopes)]) == scopes
    assert scopes[0].to_dict() == {"type": "repository", "name": "team/app",
                                   "actions": ["pull", "push"]}


@pytest.mark.parametrize(("pattern", "name", "expected"), [
    ("acme/app", "acme/app", True),
    ("acme/app", "acme/app2", False),
    ("acme/*", "acme/app", True),
    ("acme/*", "acme/app/x", False),
    ("acme/*", "acme", False),
    ("acme/**", "acme/app", True),
    ("acme/**", "acme/app/x/y", True),
    ("acme/**", "acme", False),
    ("acme/**", "acmex/app", False),
    ("**", "anything/at/all", True),
    ("*", "alpine", True),
    ("*", "acme/app", False),
    ("acme/*/prod", "acme/web/prod", True),
    ("acme/*/prod", "acme/web/x/prod", False),
    ("acme/**/prod", "acme/web/x/prod", True),
    ("acme/app-*", "acme/app-1", True),
    ("acme/a.b", "acme/axb", False),  # '.' is literal
    ("acme/app", "ACME/app", False),
])
def test_glob_match(pattern: str, name: str, expected: bool) -> None:
    assert glob_match(pattern, name) is expected


def test_normalize_restrictions() -> None:
    assert normalize_restrictions([
        "repository:acme/**:pull",
        "repository(plugin):acme/app:push,pull,push",
        "repository:acme/**:pull",
        "registry:catalog:*",
        "repository:team/*:*",
    ]) == ("repository:acme/**:pull", "repository:acme/app:push,pull",
           "registry:catalog:*", "repository:team/*:*")


@pytest.mark.parametrize("bad", [
    "repository:acme/**:pull,bogus", "repository:acme/**:", "repository::pull",
    "repository:acme/**", "registry:other:*", "registry:catalog:pull", "user:alice:pull",
    "repository:ACME/app:pull", "repository:acme/***:pull", "repository:/acme:pull",
    "repository:acme app:pull",
])
def test_normalize_restrictions_rejects(bad: str) -> None:
    with pytest.raises(Invalid, match="scope"):
        normalize_restrictions([bad])


def test_normalize_restrictions_rejects_an_empty_list() -> None:
    with pytest.raises(Invalid, match="at least one"):
        normalize_restrictions([])


def test_scope_allows() -> None:
    restrictions = ("repository:acme/**:pull", "repository:acme/app:push",
                    "repository:tools/*:*")
    assert scope_allows(None, "anything", "delete")
    assert scope_allows(restrictions, "acme/x/y", "pull")
    assert not scope_allows(restrictions, "acme/x/y", "push")
    assert scope_allows(restrictions, "acme/app", "push")
    assert scope_allows(restrictions, "tools/lint", "delete")
    assert not scope_allows(restrictions, "tools/lint/x", "pull")
    assert not scope_allows(restrictions, "other/app", "pull")
    assert not scope_allows((), "acme/app", "pull")
    assert not scope_allows(restrictions, "catalog", "*", type="registry")
    assert scope_allows(("registry:catalog:*",), "catalog", "*", type="registry")
    assert not scope_allows(("registry:catalog:*",), "catalog", "pull")


def test_restrict_actions() -> None:
    restrictions = ("repository:acme/**:pull", "repository:acme/app:push")
    assert restrict_actions(None, "x/y", ("pull", "push")) == ("pull", "push")
    assert restrict_actions(restrictions, "acme/app", ("pull", "push", "delete")) == (
        "pull", "push")
    assert restrict_actions(restrictions, "acme/web", ("pull", "push")) == ("pull",)
    assert restrict_actions(iter(restrictions), "acme/app", ["push"]) == ("push",)
