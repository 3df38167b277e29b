"""Real clients against a live dtr with authentication on (the default): skopeo, podman,
crane, oras, regctl and helm log in and push and pull as users, robots and personal access
tokens; the RBAC decides (a reader cannot push, a robot only reaches its glob); wrong
passwords, revoked tokens and expired robots are refused by every client.

Everything is set up through the admin REST API as an administrator would.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Client
from tests.e2e.test_clients import Layout
from tests.support.peers import DtrServer, dtr_server, peer

pytestmark = pytest.mark.e2e

DEV_PW = "developer-password-1"
READER_PW = "reader-password-1"


class Admin:
    """The admin REST API as the bootstrap administrator."""

    def __init__(self, server: DtrServer) -> None:
        self.http = httpx.Client(base_url=f"{server.url}/api/v1", timeout=30,
                                 auth=("admin", server.admin_password))

    def call(self, method: str, path: str, body: Any = None,
             auth: tuple[str, str] | None = None, want: int = 0) -> Any:
        r = self.http.request(method, path, json=body,
                              **({"auth": auth} if auth else {}))
        assert r.status_code < 300 or r.status_code == want, f"{method} {path}: {r.text}"
        return r.json() if r.content and r.headers.get("content-type", "").endswith(
            "json") else None


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DtrServer, dict[str, str]]]:
    """A live dtr (auth on) with org acme: team devs (developer) with user dev, a reader,
    robot ci (developer on acme/ci/**), and dev's personal access token."""
    with dtr_server(tmp_path_factory.mktemp("secured"), auth=True) as server:
        admin = Admin(server)
        admin.call("POST", "/orgs", {"name": "acme"})
        for name, pw in (("dev", DEV_PW), ("reader", READER_PW)):
            admin.call("POST", "/users", {"name": name, "password": pw})
        admin.call("POST", "/orgs/acme/teams", {"name": "devs"})
        admin.call("PUT", "/orgs/acme/teams/devs/members/dev")
        admin.call("POST", "/grants", {"subject": "team:acme/devs", "org": "acme",
                                       "repository": "**", "role": "developer"})
        admin.call("POST", "/grants", {"subject": "user:reader", "org": "acme",
                                       "repository": "**", "role": "reader"})
        robot = admin.call("POST", "/orgs/acme/robots", {
            "name": "ci", "grants": [{"role": "developer", "repository": "acme/ci/**"}]})
        pat = admin.call("POST", "/tokens", {"name": "laptop",
                                             "scopes": ["repository:acme/**:pull,push"],
                                             "expires_in_days": 7},
                         auth=("dev", DEV_PW))
        yield server, {"robot_name": robot["name"], "robot_secret": robot["secret"],
                       "pat": pat["secret"], "pat_id": pat["id"]}


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("auth-layout")
    lay = Layout(root)
    img = lay.image({"hello.txt": b"hello auth\n"})
    lay.tag("v1", img.manifest, img.digest, "application/vnd.oci.image.manifest.v1+json")
    return root, img.digest


def skopeo_push(client: Client, layout: tuple[Path, str], dest: str, creds: str,
                check: bool = True) -> subprocess.CompletedProcess[str]:
    return client.run_any([*client.skopeo_argv(), "copy", "--dest-tls-verify=false",
                           "--dest-creds", creds, f"oci:{layout[0]}:v1", dest], check=check)


def test_skopeo_as_developer_and_reader(client: Client, secured: Any,
                                        layout: tuple[Path, str]) -> None:
    server, _ = secured
    dest = f"docker://{server.addr}/acme/app:v1"
    skopeo_push(client, layout, dest, f"dev:{DEV_PW}")
    raw = client.skopeo_bytes("inspect", "--raw", "--tls-verify=false", "--creds",
                              f"reader:{READER_PW}", dest)
    assert client.skopeo_bytes("inspect", "--raw", "--tls-verify=false", "--creds",
                               f"dev:{DEV_PW}", dest) == raw
    denied = skopeo_push(client, layout, f"docker://{server.addr}/acme/other:v1",
                         f"reader:{READER_PW}", check=False)
    assert denied.returncode != 0
    assert "denied" in denied.stderr.lower() or "unauthorized" in denied.stderr.lower()
    wrong = client.run_any([*client.skopeo_argv(), "inspect", "--raw", "--tls-verify=false",
                            "--creds", "dev:wrong-password", dest])
    assert wrong.returncode != 0


def test_podman_login_push_pull(client: Client, secured: Any, layout: tuple[Path, str],
                                tmp_path: Path) -> None:
    server, _ = secured
    store = Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp"))  # podman: runroot <= 50 chars
    conf = tmp_path / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{store}/root"\n'
                    f'runroot = "{store}/run"\n')
    auth_file = tmp_path / "auth.json"
    env = {**client.env, "CONTAINERS_STORAGE_CONF": str(conf),
           "REGISTRY_AUTH_FILE": str(auth_file)}
    base = [peer("podman"), "--root", f"{store}/root", "--runroot", f"{store}/run",
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend",
            "none"]

    def podman(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], env=env, capture_output=True, text=True,
                              timeout=180, check=False)

    bad = podman("login", "--tls-verify=false", "-u", "dev", "-p", "not-the-password",
                 server.addr)
    assert bad.returncode != 0, bad.stdout
    assert "invalid username/password" in bad.stderr, bad.stderr
    ok = podman("login", "--tls-verify=false", "-u", "dev", "-p", DEV_PW, server.addr)
    assert ok.returncode == 0, ok.stderr
    skopeo_push(client, layout, f"docker://{server.addr}/acme/podman:v1", f"dev:{DEV_PW}")
    pulled = podman("pull", "--tls-verify=false", f"{server.addr}/acme/podman:v1")
    assert pulled.returncode == 0, pulled.stderr
    podman("tag", f"{server.addr}/acme/podman:v1", f"{server.addr}/acme/podman:v2")
    pushed = podman("push", "--tls-verify=false", f"{server.addr}/acme/podman:v2")
    assert pushed.returncode == 0, pushed.stderr
    shutil.rmtree(store, ignore_errors=True)


def test_crane_as_robot_stays_inside_its_glob(client: Client, secured: Any,
                                              layout: tuple[Path, str]) -> None:
    server, creds = secured
    client.run("crane", "auth", "login", server.addr, "-u", creds["robot_name"], "-p",
               creds["robot_secret"])
    try:
        client.run("crane", "push", "--insecure", str(layout[0]),
                   f"{server.addr}/acme/ci/app:v1")
        digest = client.run("crane", "digest", "--insecure",
                            f"{server.addr}/acme/ci/app:v1").stdout.strip()
        assert digest == layout[1]
        outside = client.run_any([peer("crane"), "push", "--insecure", str(layout[0]),
                                  f"{server.addr}/acme/app:robot"])
        assert outside.returncode != 0
    finally:
        client.run("crane", "auth", "logout", server.addr)


def test_oras_with_personal_access_token_then_revoked(client: Client, secured: Any,
                                                      tmp_path: Path) -> None:
    server, creds = secured
    artifact = tmp_path / "notes.txt"
    artifact.write_text("signed off\n")
    client.run("oras", "login", "--plain-http", "-u", "dev", "-p", creds["pat"], server.addr)
    client.run("oras", "push", "--plain-http", f"{server.addr}/acme/notes:v1",
               "--artifact-type", "application/vnd.example.notes", "notes.txt",
               cwd=tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    client.run("oras", "pull", "--plain-http", f"{server.addr}/acme/notes:v1", cwd=out)
    assert (out / "notes.txt").read_text() == "signed off\n"
    client.run("oras", "logout", server.addr)
    Admin(server).call("DELETE", f"/tokens/{creds['pat_id']}", auth=("dev", DEV_PW))
    again = client.run_any([peer("oras"), "login", "--plain-http", "-u", "dev", "-p",
                            creds["pat"], server.addr])
    assert again.returncode != 0


def test_regctl_login_and_copy(client: Client, secured: Any,
                               layout: tuple[Path, str]) -> None:
    server, _ = secured
    skopeo_push(client, layout, f"docker://{server.addr}/acme/reg:v1", f"dev:{DEV_PW}")
    client.run("regctl", "registry", "set", server.addr, "--tls", "disabled")
    client.run("regctl", "registry", "login", server.addr, "-u", "dev", "-p", DEV_PW)
    try:
        client.run("regctl", "image", "copy", f"{server.addr}/acme/reg:v1",
                   f"{server.addr}/acme/reg:v2")
        digest = client.run("regctl", "image", "digest",
                            f"{server.addr}/acme/reg:v2").stdout.strip()
        assert digest == layout[1]
    finally:
        client.run("regctl", "registry", "logout", server.addr)


def test_helm_login_wrong_password_fails_right_one_pushes(client: Client, secured: Any,
                                                          tmp_path: Path) -> None:
    server, _ = secured
    wrong = client.run_any([peer("helm"), "registry", "login", "--insecure", "-u", "dev",
                            "-p", "definitely-wrong", server.addr])
    assert wrong.returncode != 0, wrong.stdout
    client.run("helm", "registry", "login", "--insecure", "-u", "dev", "-p", DEV_PW,
               server.addr)
    client.run("helm", "create", "authchart", cwd=tmp_path)
    client.run("helm", "package", "authchart", cwd=tmp_path)
    client.run("helm", "push", "authchart-0.1.0.tgz", f"oci://{server.addr}/acme/charts",
               "--plain-http", cwd=tmp_path)
    (tmp_path / "pulled").mkdir()
    client.run("helm", "pull", f"oci://{server.addr}/acme/charts/authchart",
               "--version", "0.1.0", "--plain-http", "-d", str(tmp_path / "pulled"))
    assert (tmp_path / "pulled" / "authchart-0.1.0.tgz").exists()


def test_disabled_and_expired_robots_are_refused(client: Client, secured: Any,
                                                 layout: tuple[Path, str]) -> None:
    server, _ = secured
    admin = Admin(server)
    robot = admin.call("POST", "/orgs/acme/robots", {
        "name": "old", "expires_in_days": 1,
        "grants": [{"role": "developer", "repository": "acme/**"}]})
    creds = f"{robot['name']}:{robot['secret']}"
    skopeo_push(client, layout, f"docker://{server.addr}/acme/robot-old:v1", creds)
    admin.call("PATCH", "/orgs/acme/robots/old", {"disabled": True})
    assert skopeo_push(client, layout, f"docker://{server.addr}/acme/robot-old:v2", creds,
                       check=False).returncode != 0
    admin.call("PATCH", "/orgs/acme/robots/old", {"disabled": False})
    skopeo_push(client, layout, f"docker://{server.addr}/acme/robot-old:v3", creds)
    # a day passes: the robot's expiry (set by the API to now + 1 day) is now behind us
    with sqlite3.connect(server.data_dir / "dtr.db") as db:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        db.execute("UPDATE account SET expires_at = ? WHERE name = ?",
                   (past.replace(tzinfo=None).isoformat(" "), robot["name"]))
    refused = skopeo_push(client, layout, f"docker://{server.addr}/acme/robot-old:v4", creds,
                          check=False)
    assert refused.returncode != 0
    tokens = httpx.get(f"{server.url}/auth/token",
                       auth=(robot["name"], robot["secret"]), timeout=10)
    assert tokens.status_code == 401, json.dumps(tokens.json())


def test_wrong_credentials_fail_fast_in_crane_and_regctl(client: Client, secured: Any) -> None:
    server, _ = secured
    crane = client.run_any([peer("crane"), "auth", "login", server.addr, "-u", "dev", "-p",
                            "wrong-password-1"], timeout=60)
    if crane.returncode == 0:  # crane stores without checking: the next call must fail
        listed = client.run_any([peer("crane"), "ls", "--insecure", f"{server.addr}/acme/app"],
                                timeout=60)
        client.run("crane", "auth", "logout", server.addr)
        assert listed.returncode != 0
        assert "401" in listed.stderr or "UNAUTHORIZED" in listed.stderr, listed.stderr
    client.run("regctl", "registry", "set", server.addr, "--tls", "disabled")
    reg = client.run_any([peer("regctl"), "registry", "login", server.addr, "-u", "dev", "-p",
                          "wrong-password-1"], timeout=60)
    assert reg.returncode != 0, reg.stdout


def test_no_secret_reaches_the_server_log(secured: Any) -> None:
    """Passwords, robot secrets and tokens used above never appear in the server's log."""
    server, creds = secured
    log = "\n".join(p.read_text(errors="replace") for p in server.data_dir.glob("dtr-*.log"))
    for secret in (DEV_PW, READER_PW, server.admin_password, creds["robot_secret"],
                   creds["pat"], "wrong-password-1", "not-the-password"):
        assert secret not in log
