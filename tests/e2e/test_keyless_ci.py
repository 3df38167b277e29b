"""Keyless CI against a live ``dtr serve`` (auth on, 2 workers) and a real OpenID Provider:
every ``$ dtr …`` example of ``docs/oidc-ci.md`` runs in order with the admin CLI, then each
recipe's trust is made again with the local provider as issuer, and crane — a real client —
logs in as ``$oidc`` with a workload ID token carrying that recipe's claims and pushes
inside the trust's grant (and is refused outside it). A token whose claims meet no trust is
refused with a message naming the unmet condition.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Client
from tests.e2e.test_clients import Layout
from tests.support.oidc import OpenIDProvider
from tests.support.peers import DtrServer, dtr_server, peer

pytestmark = [pytest.mark.e2e, pytest.mark.peers]

DOC = Path(__file__).resolve().parents[2] / "docs" / "oidc-ci.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)
AUD = "registry.example"
# recipe trust -> (workload account, its claims, a repository inside, one outside)
RECIPES: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "gh-acme-app": ("repo:acme/app:ref:refs/heads/main",
                    {"repository": "acme/app", "ref": "refs/heads/main"},
                    "acme/app", "acme/other"),
    "gl-acme-app": ("project_path:acme/app:ref_type:branch:ref:main",
                    {"project_path": "acme/app", "ref_protected": "true"},
                    "acme/app", "acme/other"),
    "k8s-ci-builder": ("system:serviceaccount:ci:builder",
                       {"kubernetes.io": {"namespace": "ci",
                                          "serviceaccount": {"name": "builder"}}},
                       "acme/builds/tool",
                       "acme/app"),
}


def examples() -> list[tuple[str, list[str]]]:
    """Each ``$`` command of the page with the output lines shown under it."""
    out: list[tuple[str, list[str]]] = []
    for block in BLOCK.findall(DOC.read_text()):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif line.strip() and out:
                out[-1][1].append(line)
    return out


def run_dtr(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "dtr", argv
    return subprocess.run([sys.executable, "-m", "dtr", *argv[1:]], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def live_variant(argv: list[str], issuer: str) -> list[str]:
    """The documented ``trust create`` with the local provider as issuer, ``-live`` name."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--issuer":
            skip = True
            continue
        out.append(f"{arg}-live" if i == 3 else arg)
    return [*out, "--issuer", issuer]


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    with OpenIDProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def server(op: OpenIDProvider, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[DtrServer]:
    with dtr_server(tmp_path_factory.mktemp("keyless"), auth=True,
                    extra={"DTR_AUTH_OIDC_ALLOW_HTTP": "true"}) as live:
        yield live


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keyless-layout")
    lay = Layout(root)
    img = lay.image({"hello.txt": b"hello keyless\n"})
    lay.tag("v1", img.manifest, img.digest, "application/vnd.oci.image.manifest.v1+json")
    return root


def test_documented_recipes_and_a_real_client(server: DtrServer, op: OpenIDProvider,
                                              client: Client, layout: Path,
                                              tmp_path: Path) -> None:
    pat = httpx.post(f"{server.url}/api/v1/tokens", json={"name": "keyless-doc"},
                     auth=("admin", server.admin_password), timeout=30)
    assert pat.status_code == 201, pat.text
    env = {**server.env, "DTR_CLI_URL": server.url, "DTR_CLI_TOKEN": pat.json()["secret"],
           "DTR_CLI_CONFIG": str(tmp_path / "cli.json")}
    cases = examples()
    assert len(cases) >= 8, cases
    for command, shown in cases:
        argv = shlex.split(command)
        r = run_dtr(argv, env)
        assert r.returncode == 0, f"{command}\n{r.stdout}\n{r.stderr}"
        flat = " ".join(r.stdout.split())
        for line in shown:
            assert " ".join(line.split()) in flat, f"{command}: {line!r} not in\n{r.stdout}"
        if argv[1:3] == ["trust", "create"]:
            live = run_dtr(live_variant(argv, op.issuer), env)
            assert live.returncode == 0, f"{live.stdout}\n{live.stderr}"

    for name, (account, claims, inside, outside) in RECIPES.items():
        id_token = op.workload_token(account, AUD, **claims)
        client.run("crane", "auth", "login", server.addr, "-u", "$oidc", "-p", id_token)
        try:
            client.run("crane", "push", "--insecure", str(layout),
                       f"{server.addr}/{inside}:keyless")
            refused = client.run_any([peer("crane"), "push", "--insecure", str(layout),
                                      f"{server.addr}/{outside}:keyless"])
            assert refused.returncode != 0, (name, refused.stdout)
        finally:
            client.run("crane", "auth", "logout", server.addr)

    # a job of another branch: no trust accepts it, and the answer says why
    stranger = op.workload_token("repo:acme/app:ref:refs/heads/dev", AUD,
                                 repository="acme/app", ref="refs/heads/dev")
    r = httpx.get(f"{server.url}/auth/token", params={"service": server.addr},
                  auth=("$oidc", stranger), timeout=30)
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "invalid_grant"
    assert r.json()["reason"] == "condition_not_met"
    assert "ref = 'refs/heads/main'" in r.json()["error_description"]
