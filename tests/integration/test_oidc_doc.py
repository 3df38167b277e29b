"""Every ``$ dtr …`` example in ``docs/oidc.md`` runs, in order, against a live registry
with OIDC login on (a real OpenID Provider on 127.0.0.1), and the page's promise holds: a
person in the ``developers`` group signs in, lands in ``acme/devs``, and mints a personal
access token with the session through the CLI (``dtr token create``).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.integration.test_access_control_doc import run
from tests.support import peers
from tests.support.oidc import OpenIDProvider

DOC = Path(__file__).resolve().parents[2] / "docs" / "oidc.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)
REDIRECT = "http://127.0.0.1:9/api/v1/auth/oidc/callback"


def commands() -> list[str]:
    return [line[2:] for block in BLOCK.findall(DOC.read_text())
            for line in block.splitlines() if line.startswith("$ ")]


def test_the_documented_commands_run_and_team_sync_works(tmp_path: Path) -> None:
    cases = commands()
    assert len(cases) >= 4, cases
    with OpenIDProvider(tmp_path / "op") as op:
        op.add_client("dtr", [REDIRECT], secret="doc-secret-1")
        op.set_account("sub-ann", preferred_username="ann", groups=["developers"])
        extra = {"DTR_AUTH_OIDC_ENABLED": "true", "DTR_AUTH_OIDC_ISSUER": op.issuer,
                 "DTR_AUTH_OIDC_CLIENT_ID": "dtr", "DTR_AUTH_OIDC_CLIENT_SECRET": "doc-secret-1",
                 "DTR_AUTH_OIDC_ALLOW_HTTP": "true", "DTR_AUTH_OIDC_REDIRECT_URL": REDIRECT,
                 "DTR_AUTH_OIDC_SCOPES": "openid,profile,groups"}
        (tmp_path / "srv").mkdir()
        with peers.dtr_server(tmp_path / "srv", workers=1, auth=True, extra=extra) as server, \
                httpx.Client(base_url=server.url, timeout=30) as http:
            pat = http.post("/api/v1/tokens", json={"name": "doc-test"},
                            auth=("admin", server.admin_password))
            assert pat.status_code == 201, pat.text
            env = {**server.env, "DTR_CLI_URL": server.url,
                   "DTR_CLI_TOKEN": pat.json()["secret"],
                   "DTR_CLI_CONFIG": str(tmp_path / "cli.json")}
            for command in cases:
                r = run(command, env)
                assert r.returncode == 0, f"{command}\n{r.stdout}\n{r.stderr}"

            r = http.get("/api/v1/auth/oidc/login")
            assert r.status_code == 302, r.text
            cookie = r.cookies["dtr_oidc_state"]
            redirected = op.complete_login(r.headers["location"], "sub-ann")
            r = http.get("/api/v1/auth/oidc/callback",
                         params=parse_qs(urlsplit(redirected).query),
                         headers={"Accept": "application/json",
                                  "Cookie": f"dtr_oidc_state={cookie}"})
            assert r.status_code == 200, r.text
            assert r.json()["teams"] == ["acme/devs"]
            session = r.json()["session_token"]
            r = run("dtr token create laptop --expires-in-days 30 --json",
                    {**env, "DTR_CLI_TOKEN": session})
            assert r.returncode == 0, r.stderr
            assert '"secret": "dtr_pat_' in r.stdout
            r = run("dtr team add-member acme devs admin", env)
            assert r.returncode == 1
            assert "come from the identity provider group 'developers'" in r.stderr
