"""``dtr trust`` (create with presets, conditions, role bindings and scopes; list, show,
update, delete; refusals printed from the problem detail) against a live ``dtr serve``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.admin.test_cli import Cli
from tests.support.peers import ADMIN_PASSWORD, DtrServer, dtr_server

GH = "https://token.actions.githubusercontent.com"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DtrServer]:
    with dtr_server(tmp_path_factory.mktemp("dtr"), workers=1, auth=True) as s:
        yield s


@pytest.fixture
def dtr(server: DtrServer, tmp_path: Path) -> Cli:
    cli = Cli(tmp_path / "cli.json")
    cli("login", server.url, "--username", "admin", input=f"{ADMIN_PASSWORD}\n")
    return cli


def test_trust_lifecycle(dtr: Cli) -> None:
    dtr("org", "create", "acme")
    made = dtr.json("trust", "create", "gh-app", "--preset", "github-actions",
                    "--audience", "registry.example", "--condition", "repository=acme/app",
                    "--condition", "ref~=refs/heads/*", "--org", "acme", "--repository",
                    "acme/app", "--role", "developer", "--max-seconds", "600",
                    "--scope", "repository:acme/app:pull,push")
    assert made["issuer"] == GH
    assert made["robot"] == "robot$acme+gh-app"
    assert made["owns_robot"] is True
    assert made["role_binding"] == {"org": "acme", "repository": "acme/app",
                                    "role": "developer"}
    assert made["conditions"] == [
        {"claim": "repository", "pattern": "acme/app", "match": "exact"},
        {"claim": "ref", "pattern": "refs/heads/*", "match": "glob"}]
    assert made["scopes"] == ["repository:acme/app:pull,push"]
    assert made["max_token_seconds"] == 600

    listed = dtr("trust", "list").stdout
    assert "gh-app" in listed
    assert "repository=acme/app,ref~=refs/heads/*" in listed
    changed = dtr.json("trust", "update", "gh-app", "--disable", "--all-rights",
                       "--condition", "repository=acme/app", "--description", "main only")
    assert changed["enabled"] is False
    assert changed["scopes"] is None
    assert len(changed["conditions"]) == 1
    assert "main only" in dtr("trust", "show", "gh-app").stdout

    dtr("trust", "delete", "gh-app", "--yes")
    assert "not found" in dtr("trust", "show", "gh-app", code=1).output
    assert "robot$acme+gh-app" not in dtr("robot", "list", "--org", "acme").stdout


def test_refusals_are_printed(dtr: Cli) -> None:
    dtr("org", "create", "beta")
    dtr("robot", "create", "ci", "--org", "beta")
    bare = dtr("trust", "create", "open", "--issuer", GH, "--audience", "r",
               "--condition", "repository~=**", "--robot", "robot$beta+ci", code=1).output
    assert "must pin a value" in bare
    unpinned = dtr("trust", "create", "gh", "--preset", "github-actions", "--audience", "r",
                   "--condition", "ref=refs/heads/main", "--robot", "robot$beta+ci",
                   code=1).output
    assert "must pin repository or sub" in unpinned
    both = dtr("trust", "create", "x", "--issuer", GH, "--audience", "r", "--condition",
               "repository=beta/app", code=2).output
    assert "give --robot, or --org and --role" in both
    bad = dtr("trust", "create", "x", "--issuer", GH, "--audience", "r", "--condition",
              "repository", "--robot", "robot$beta+ci", code=2).output
    assert "use claim=value or claim~=glob" in bad
