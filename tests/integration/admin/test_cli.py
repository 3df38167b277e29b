"""The admin CLI (``dtr login``, ``org``, ``team``, ``grant``, ``robot``, ``token``,
``policy explain|check``) driven with click's CliRunner against a live ``dtr serve``."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner, Result

from dtr.cli import main
from dtr.cli_admin import ADMIN_COMMANDS
from dtr.config import load_settings
from tests.support.peers import ADMIN_PASSWORD, DtrServer, dtr_server

DTR = click.Group("dtr", commands=ADMIN_COMMANDS)
TABLE_HEADER = "subject,repository,action,expected\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DtrServer]:
    with dtr_server(tmp_path_factory.mktemp("dtr"), workers=1, auth=True) as s:
        yield s


class Cli:
    """Runs ``dtr …`` with its own login file."""

    def __init__(self, config: Path) -> None:
        self.config = config

    def __call__(self, *args: str, input: str | None = None, code: int = 0) -> Result:
        result = CliRunner().invoke(DTR, list(args), input=input,
                                    env={"DTR_CLI_CONFIG": str(self.config),
                                         "DTR_CLI_URL": None, "DTR_CLI_TOKEN": None})
        assert result.exit_code == code, (args, result.output, result.exception)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def dtr(server: DtrServer, tmp_path: Path) -> Cli:
    cli = Cli(tmp_path / "cli.json")
    cli("login", server.url, "--username", "admin", input=f"{ADMIN_PASSWORD}\n")
    return cli


def test_login_stores_a_token_not_the_password(server: DtrServer, tmp_path: Path) -> None:
    cli = Cli(tmp_path / "conf" / "cli.json")
    out = cli("login", server.url, "--username", "admin", input=f"{ADMIN_PASSWORD}\n")
    assert f"Logged in to {server.url} as admin" in out.stdout
    saved = json.loads(cli.config.read_text())
    assert saved["token"].startswith("dtr_pat_")
    assert ADMIN_PASSWORD not in cli.config.read_text()
    assert stat.S_IMODE(cli.config.stat().st_mode) == 0o600
    assert "admin" in cli("whoami").stdout
    names = [t["name"] for t in cli.json("token", "list")]
    assert any(n.startswith("dtr-cli@") for n in names)
    cli("logout")
    assert not cli.config.exists()
    assert httpx.get(f"{server.url}/api/v1/me",
                     headers={"Authorization": f"Bearer {saved['token']}"}).status_code == 401
    assert "not logged in" in cli("whoami", code=1).output


def test_wrong_password_fails_cleanly(server: DtrServer, tmp_path: Path) -> None:
    cli = Cli(tmp_path / "cli.json")
    out = cli("login", server.url, "--username", "admin", input="wrong-password\n", code=1)
    assert "401" in out.output
    assert "wrong-password" not in out.output
    assert not cli.config.exists()


def test_login_with_an_existing_token(server: DtrServer, dtr: Cli, tmp_path: Path) -> None:
    made = dtr.json("token", "create", "ci-login")
    other = Cli(tmp_path / "other.json")
    other("login", server.url, "--token-stdin", input=f"{made['secret']}\n")
    assert other.json("whoami")["name"] == "admin"


def test_org_team_grant_and_explain(dtr: Cli) -> None:
    dtr("user", "create", "alice", "--password-stdin", input="alice-password-1\n")
    dtr("org", "create", "acme", "--description", "Acme", "--public")
    orgs = dtr.json("org", "list")
    assert [(o["name"], o["public"]) for o in orgs] == [("acme", True)]
    assert "acme" in dtr("org", "list").stdout
    dtr("team", "create", "acme", "devs")
    dtr("team", "add-member", "acme", "devs", "alice")
    assert dtr.json("team", "members", "acme", "devs") == ["alice"]
    made = dtr.json("grant", "create", "--subject", "team:acme/devs", "--org", "acme",
                    "--role", "developer")
    assert made["role"] == "developer"
    listed = dtr("grant", "list", "--org", "acme").stdout
    assert "team:acme/devs" in listed
    assert "developer" in listed
    out = dtr("policy", "explain", "--subject", "user:alice", "--repository", "acme/app",
              "--action", "push").stdout
    assert out.startswith("ALLOWED")
    assert "user:alice → team:acme/devs → role:developer → push" in out
    denied = dtr("policy", "explain", "--subject", "user:alice", "--repository", "acme/app",
                 "--action", "delete").stdout
    assert denied.startswith("DENIED")
    missing = dtr("org", "show", "nowhere", code=1).output
    assert "404" in missing
    assert "nowhere" in missing


def test_robot_secret_is_printed_once(server: DtrServer, dtr: Cli) -> None:
    dtr("org", "create", "robots-org")
    out = dtr("robot", "create", "ci", "--org", "robots-org", "--expires-in-days", "30",
              "--grant", "developer:robots-org/app/**")
    made = dtr.json("robot", "regenerate", "ci", "--org", "robots-org")
    secret = made["secret"]
    assert "robot$robots-org+ci" in out.stdout
    assert "shown only once" in out.stderr
    listed = dtr("robot", "list", "--org", "robots-org").stdout
    assert "robot$robots-org+ci" in listed
    assert secret not in listed
    me = httpx.get(f"{server.url}/api/v1/me", auth=("robot$robots-org+ci", secret)).json()
    assert me["kind"] == "robot"
    grants = dtr.json("grant", "list", "--subject", "robot:robot$robots-org+ci")
    assert [g["repository"] for g in grants] == ["robots-org/app/**"]
    dtr("robot", "delete", "ci", "--org", "robots-org")
    assert dtr.json("robot", "list", "--org", "robots-org") == []


def test_token_create_list_revoke(server: DtrServer, dtr: Cli) -> None:
    made = dtr.json("token", "create", "laptop", "--scope", "repository:acme/*:pull",
                    "--expires-in-days", "7")
    assert made["scopes"] == ["repository:acme/*:pull"]
    listed = dtr("token", "list").stdout
    assert "laptop" in listed
    assert made["secret"] not in listed
    auth = {"Authorization": f"Bearer {made['secret']}"}
    assert httpx.get(f"{server.url}/api/v1/me", headers=auth).status_code == 200
    dtr("token", "revoke", made["id"])
    assert httpx.get(f"{server.url}/api/v1/me", headers=auth).status_code == 401


def test_policy_check_passes_and_fails(dtr: Cli, tmp_path: Path) -> None:
    dtr("org", "create", "checked")
    good = tmp_path / "good.csv"
    good.write_text(TABLE_HEADER + "user:admin,checked/app,push,allow\n"
                    "anonymous,checked/app,pull,deny\n"
                    "user:admin,*,system:admin,allow\n")
    assert "all 3 rows match" in dtr("policy", "check", str(good)).stdout
    bad = tmp_path / "bad.csv"
    bad.write_text(TABLE_HEADER + "# anonymous may not pull a private org\n"
                   "anonymous,checked/app,pull,allow\n"
                   "user:admin,checked/app,pull,allow\n")
    out = dtr("policy", "check", str(bad), code=1)
    assert "anonymous" in out.stdout
    assert "no grant gives pull" in out.stdout
    assert "1 of 2 rows do not match" in out.stderr
    report = json.loads(dtr("policy", "check", str(bad), "--json", code=1).stdout)
    assert [m["line"] for m in report["mismatches"]] == [3]


def test_policy_check_offline(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "never-written.json")
    policy = tmp_path / "policy.csv"
    policy.write_text("p, team:acme/devs, acme, acme/app/**, developer, allow\n"
                      "g, user:alice, team:acme/devs, acme\n")
    table = tmp_path / "table.csv"
    table.write_text(TABLE_HEADER + "user:alice,acme/app/web,push,allow\n"
                     "user:alice,acme/other,pull,deny\n")
    out = cli("policy", "check", str(table), "--offline", "--policy", str(policy))
    assert "all 2 rows match" in out.stdout
    table.write_text(TABLE_HEADER + "user:alice,acme/other,push,allow\n")
    failed = cli("policy", "check", str(table), "--offline", "--policy", str(policy), code=1)
    assert "acme/other" in failed.stdout
    assert "--policy" in cli("policy", "check", str(table), "--offline", code=2).output


def test_admin_commands_are_registered_on_dtr() -> None:
    for command in ADMIN_COMMANDS:
        assert main.commands.get(command.name or "") is command, command.name


def test_cli_login_file_does_not_break_server_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DTR_CLI_CONFIG", "/nonexistent/cli.json")
    monkeypatch.setenv("DTR_CLI_URL", "https://registry.example")
    assert load_settings().server.port > 0
