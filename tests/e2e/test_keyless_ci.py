"""Keyless CI against a live ``dtr serve`` (auth on, 2 workers) and a real OpenID Provider:
every ``$ dtr …`` example of ``docs/oidc-ci.md`` runs in order with the admin CLI, then each
recipe's trust is made again with the local provider as issuer, and crane — a real client —
logs in as ``$oidc`` with a workload ID token carrying that recipe's claims and pushes
inside the trust's grant (and is refused outside it). A token whose claims meet no trust is
refused with a message naming the unmet condition.

podman (the docker CLI stand-in) and helm (the POST ``password`` grant) log in the same way
with the recipes' trusts: podman pulls and pushes inside the GitHub trust's grant, is denied
outside it and shows the server's refusal for a token no trust accepts; helm pushes a chart
inside the Kubernetes trust's grant and cannot log in with a token for another audience.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Ran:
    """One documented command (or its ``-live`` variant) and what it did."""

    command: str
    shown: list[str]
    """The output lines the page shows under it."""
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def documented(server: DtrServer, op: OpenIDProvider,
               tmp_path_factory: pytest.TempPathFactory) -> list[Ran]:
    """Every ``$`` command of the page run in order with the admin CLI, each ``trust create``
    followed by its ``-live`` variant (the local provider as issuer); failures are recorded,
    not raised, so the page's test reports them and the client tests refuse to start."""
    pat = httpx.post(f"{server.url}/api/v1/tokens", json={"name": "keyless-doc"},
                     auth=("admin", server.admin_password), timeout=30)
    assert pat.status_code == 201, pat.text
    env = {**server.env, "DTR_CLI_URL": server.url, "DTR_CLI_TOKEN": pat.json()["secret"],
           "DTR_CLI_CONFIG": str(tmp_path_factory.mktemp("keyless-cli") / "cli.json")}
    ran: list[Ran] = []
    for command, shown in examples():
        argv = shlex.split(command)
        ran.append(Ran(command, shown, run_dtr(argv, env)))
        if argv[1:3] == ["trust", "create"]:
            live = live_variant(argv, op.issuer)
            ran.append(Ran(shlex.join(live), [], run_dtr(live, env)))
    return ran


@pytest.fixture
def trusts(documented: list[Ran]) -> None:
    """The recipes' ``-live`` trusts exist (the page ran without an error)."""
    for done in documented:
        if done.result.returncode != 0:
            pytest.fail(f"setting up the recipes failed at `{done.command}`\n"
                        f"{done.result.stdout}\n{done.result.stderr}", pytrace=False)


def test_documented_recipes_and_a_real_client(server: DtrServer, op: OpenIDProvider,
                                              client: Client, layout: Path,
                                              documented: list[Ran]) -> None:
    assert len(examples()) >= 8, examples()
    made = {shlex.split(d.command)[3] for d in documented
            if d.command.startswith("dtr trust create")}
    assert made == {*RECIPES, *(f"{name}-live" for name in RECIPES)}, made
    for done in documented:
        out, err = done.result.stdout, done.result.stderr
        assert done.result.returncode == 0, f"{done.command}\n{out}\n{err}"
        flat = " ".join(out.split())
        for line in done.shown:
            assert " ".join(line.split()) in flat, f"{done.command}: {line!r} not in\n{out}"

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


def tagged_in(server: DtrServer, repository: str, tag: str) -> bool:
    """Whether ``repository:tag`` exists (asked as the admin with a registry token)."""
    token = httpx.get(f"{server.url}/auth/token", timeout=30,
                      params={"service": server.addr,
                              "scope": f"repository:{repository}:pull"},
                      auth=("admin", server.admin_password))
    assert token.status_code == 200, token.text
    head = httpx.head(f"{server.url}/v2/{repository}/manifests/{tag}", timeout=30,
                      headers={"Authorization": f"Bearer {token.json()['token']}",
                               "Accept": "application/vnd.oci.image.manifest.v1+json, "
                               "application/vnd.docker.distribution.manifest.v2+json"})
    assert head.status_code in (200, 404), head.text
    return head.status_code == 200


def exchanges(server: DtrServer, more_than: int | None = None) -> list[dict[str, Any]]:
    """The ``auth.federation.exchange`` events of the server's audit log, oldest first;
    with ``more_than``, waits (up to 15 s) until there are more than that many (refusals
    are committed by the audit writer just after the response)."""
    deadline = time.monotonic() + 15
    while True:
        with contextlib.closing(sqlite3.connect(server.data_dir / "dtr.db")) as db:
            db.row_factory = sqlite3.Row
            found = [dict(r) for r in db.execute(
                "SELECT * FROM audit_event WHERE action = 'auth.federation.exchange' "
                "ORDER BY seq")]
        if more_than is None or len(found) > more_than or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def settled_exchanges(server: DtrServer) -> int:
    """How many ``auth.federation.exchange`` events there are once the earlier logins'
    events have all arrived (unchanged for 0.5 s; the audit relay writes them ~0.15 s
    after the response), so a count taken before a login covers only the events before
    it."""
    count = len(exchanges(server))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = len(exchanges(server))
        if now == count:
            break
        count = now
    return count


Podman = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def podman(client: Client, tmp_path: Path) -> Iterator[Podman]:
    """podman (rootful, vfs) with a private store under /tmp and its own auth file."""
    store = Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp"))  # podman: runroot <= 50 chars
    conf = tmp_path / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{store}/root"\n'
                    f'runroot = "{store}/run"\n')
    env = {**client.env, "CONTAINERS_STORAGE_CONF": str(conf),
           "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    base = [peer("podman"), "--root", f"{store}/root", "--runroot", f"{store}/run",
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend",
            "none"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], env=env, capture_output=True, text=True,
                              timeout=180, check=False)

    yield run
    shutil.rmtree(store, ignore_errors=True)


def test_podman_logs_in_with_an_id_token(server: DtrServer, op: OpenIDProvider,
                                         client: Client, layout: Path, trusts: None,
                                         podman: Podman) -> None:
    account, claims, inside, outside = RECIPES["gh-acme-app"]
    seed = f"{server.addr}/{inside}:podman-seed"
    client.run_any([*client.skopeo_argv(), "copy", "--dest-tls-verify=false", "--dest-creds",
                    f"admin:{server.admin_password}", f"oci:{layout}:v1", f"docker://{seed}"],
                   check=True)

    # a job of another branch: no trust accepts its token; podman 4.3 prints the server's
    # message only in its debug log (its error line is a generic "invalid username/password")
    stranger = op.workload_token("repo:acme/app:ref:refs/heads/dev", AUD,
                                 repository="acme/app", ref="refs/heads/dev")
    bad = podman("--log-level=debug", "login", "--tls-verify=false", "-u", "$oidc", "-p",
                 stranger, server.addr)
    assert bad.returncode != 0, bad.stdout
    assert "invalid username/password" in bad.stderr, bad.stderr
    assert "ref = 'refs/heads/main'" in bad.stderr, bad.stderr

    ok = podman("login", "--tls-verify=false", "-u", "$oidc", "-p",
                op.workload_token(account, AUD, **claims), server.addr)
    assert ok.returncode == 0, ok.stderr
    pulled = podman("pull", "--tls-verify=false", seed)
    assert pulled.returncode == 0, pulled.stderr
    for repo in (inside, outside):
        tagged = podman("tag", seed, f"{server.addr}/{repo}:podman")
        assert tagged.returncode == 0, tagged.stderr
    pushed = podman("push", "--tls-verify=false", f"{server.addr}/{inside}:podman")
    assert pushed.returncode == 0, pushed.stderr
    refused = podman("push", "--tls-verify=false", f"{server.addr}/{outside}:podman")
    assert refused.returncode != 0, refused.stdout
    assert re.search("denied|unauthorized", refused.stderr, re.I), refused.stderr
    assert tagged_in(server, inside, "podman")
    assert not tagged_in(server, outside, "podman")


def test_helm_logs_in_with_an_id_token(server: DtrServer, op: OpenIDProvider,
                                       client: Client, trusts: None, tmp_path: Path) -> None:
    account, claims, inside, _ = RECIPES["k8s-ci-builder"]
    registry_config = ["--registry-config", str(tmp_path / "registry.json")]

    def login(id_token: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([peer("helm"), "registry", "login", "--insecure", "-u", "$oidc",
                               "--password-stdin", *registry_config, server.addr],
                              input=id_token, env=client.env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=180, check=False)

    seen = settled_exchanges(server)
    wrong = login(op.workload_token(account, "elsewhere.example", **claims))
    assert wrong.returncode != 0, wrong.stdout
    assert "audience 'elsewhere.example'" in wrong.stderr, wrong.stderr
    refused = exchanges(server, seen)[seen:]
    assert refused, "helm never asked for a token"
    assert {e["reason"] for e in refused} == {"wrong_audience"}, refused

    # helm logs in with the POST password grant and, refused, silently retries with GET:
    # only allowed exchanges prove the POST grant itself works
    seen = settled_exchanges(server)
    ok = login(op.workload_token(account, AUD, **claims))
    assert ok.returncode == 0, ok.stderr
    logged_in = exchanges(server, seen)[seen:]
    assert logged_in, "helm never asked for a token"
    assert all(e["outcome"] == "allow" for e in logged_in), logged_in
    repo, chart = inside.rsplit("/", 1)  # helm pushes to <oci ref>/<chart name>
    client.run("helm", "create", chart, cwd=tmp_path)
    client.run("helm", "package", chart, cwd=tmp_path)
    client.run("helm", "push", f"{chart}-0.1.0.tgz", f"oci://{server.addr}/{repo}",
               "--plain-http", *registry_config, cwd=tmp_path)
    assert tagged_in(server, inside, "0.1.0")
