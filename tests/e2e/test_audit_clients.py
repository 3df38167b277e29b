"""The audit log of the registry surface, produced by REAL clients against a live dtr
(authentication on, 2 workers, SQLite) and read back from its ``audit_event`` table.

skopeo, podman and regctl log in with good and bad passwords; crane pushes, moves a tag,
copies across repositories (a blob mount), pulls by tag and by digest and deletes; regctl
deletes a tag and a blob; a reader's push is refused by the policy (a deny rule names
itself) and by the token's scope; a signing-gated repository refuses an unsigned tag and a
reader's pull of the quarantined digest; curl presents a garbage and an expired token.
Every event is checked for its action, outcome, actor, method, client address, the
client's user agent, the resource, the reason and rule of a refusal, and a request id;
the hash chain verifies afterwards.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine, func, select

from dtr.app import checkpoint_keys
from dtr.audit.verify import verify_chain
from dtr.auth.principal import Principal
from dtr.auth.tokens import TokenIssuer, TokenKeys
from dtr.db.database import Database
from dtr.db.models import AuditEvent
from tests.e2e.conftest import Client
from tests.e2e.test_auth_clients import Admin
from tests.e2e.test_clients import Layout
from tests.support.peers import DtrServer, dtr_server, peer

pytestmark = pytest.mark.e2e

DEV_PW = "developer-password-1"
READER_PW = "reader-password-1"
LOCAL = "127.0.0.1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class AuditLog:
    """The live server's ``audit_event`` table, read directly (SQLite file)."""

    def __init__(self, server: DtrServer) -> None:
        self.path = server.data_dir / "dtr.db"
        self.engine = create_engine(f"sqlite:///{self.path}")

    def head(self) -> int:
        """The last sequence number written so far."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(AuditEvent.seq))).scalar() or 0)

    def rows(self, after: int, action: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(AuditEvent).where(AuditEvent.seq > after, AuditEvent.action == action)
                .order_by(AuditEvent.seq))]

    def wait(self, after: int, action: str, agent: str, count: int = 1,
             **fields: Any) -> list[dict[str, Any]]:
        """The first ``count`` events after ``after`` of ``action`` whose user agent
        contains ``agent`` and whose ``fields`` match, waiting for the writers (events
        on their own are committed by a background writer in each worker).
        """
        deadline = time.monotonic() + 30
        while True:
            found = [r for r in self.rows(after, action) if agent in r["user_agent"]
                     and all(r[k] == v for k, v in fields.items())]
            if len(found) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(found) >= count, (
            f"{count} {action} event(s) from {agent} with {fields} expected after seq "
            f"{after}; found: {json.dumps(self.rows(after, action), default=str)[:3000]}")
        return found[:count]


def check(event: dict[str, Any], *, outcome: str, actor: str, kind: str = "user",
          method: str = "password", **fields: Any) -> None:
    """The fields every event must carry: outcome, actor, method, the loopback client
    address, a request id, plus ``fields``.
    """
    assert event["outcome"] == outcome, event
    assert (event["actor_kind"], event["actor"]) == (kind, actor), event
    assert event["method"] == method, event
    assert event["client_ip"] == LOCAL, event
    assert event["request_id"], event
    for name, value in fields.items():
        assert event[name] == value, (name, event)


def detail(event: dict[str, Any]) -> dict[str, Any]:
    return json.loads(event["detail"])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DtrServer]:
    """A live dtr (auth on) with orgs acme and prod; dev maintains both, reader reads
    both and is denied ``acme/locked`` by a deny rule; ``prod/**`` is signing-gated by a
    key nobody signs with, so every digest pushed there stays quarantined.
    """
    data = tmp_path_factory.mktemp("audited")
    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    config = data / "dtr.yaml"
    config.write_text(json.dumps({"signing": {"policies": [{
        "name": "prod-signing", "repositories": "prod/**",
        "keys": [{"pem": pem.decode(), "name": "release"}]}]}}))
    with dtr_server(data, auth=True, extra={"DTR_CONFIG": str(config)}) as server:
        admin = Admin(server)
        for org in ("acme", "prod"):
            admin.call("POST", "/orgs", {"name": org})
        for name, pw in (("dev", DEV_PW), ("reader", READER_PW)):
            admin.call("POST", "/users", {"name": name, "password": pw})
        for org in ("acme", "prod"):
            admin.call("POST", "/grants", {"subject": "user:dev", "org": org,
                                           "repository": "**", "role": "maintainer"})
            admin.call("POST", "/grants", {"subject": "user:reader", "org": org,
                                           "repository": "**", "role": "reader"})
        admin.call("POST", "/grants", {"subject": "user:reader", "org": "acme",
                                       "repository": "acme/locked", "role": "pull",
                                       "effect": "deny"})
        yield server


@pytest.fixture(scope="module")
def log(audited: DtrServer) -> AuditLog:
    return AuditLog(audited)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, str]:
    """Two OCI layouts with one image each (tag v1): (first, second, digests)."""
    roots, digests = [], []
    for n in (1, 2):
        root = tmp_path_factory.mktemp(f"audit-layout-{n}")
        lay = Layout(root)
        img = lay.image({"hello.txt": f"audit image {n}\n".encode()})
        lay.tag("v1", img.manifest, img.digest, OCI_MANIFEST)
        roots.append(root)
        digests.append(img.digest)
    return roots[0], roots[1], digests[0], digests[1]


def crane(client: Client, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return client.run_any([peer("crane"), *args], check=check)


def crane_login(client: Client, server: DtrServer, user: str, password: str) -> None:
    """crane stores the credentials without contacting the registry."""
    crane(client, "auth", "login", server.addr, "-u", user, "-p", password)


# -- logins ----------------------------------------------------------------------------------

def test_logins_by_skopeo_podman_and_regctl(client: Client, audited: DtrServer,
                                            log: AuditLog, tmp_path: Path) -> None:
    server = audited
    start = log.head()
    skopeo = [*client.skopeo_argv(), "login", "--tls-verify=false"]
    client.run_any([*skopeo, "-u", "dev", "-p", DEV_PW, server.addr], check=True)
    assert client.run_any([*skopeo, "-u", "dev", "-p", "wrong-password-1",
                           server.addr]).returncode != 0
    assert client.run_any([*skopeo, "-u", "nobody", "-p", "whatever-password",
                           server.addr]).returncode != 0
    [ok] = log.wait(start, "auth.login", "skopeo", outcome="allow")
    check(ok, outcome="allow", actor="dev", actor_id="user:dev", reason="")
    [bad] = log.wait(start, "auth.login", "skopeo", reason="bad_password")
    check(bad, outcome="deny", actor="dev")
    [unknown] = log.wait(start, "auth.login", "skopeo", reason="unknown_account")
    check(unknown, outcome="deny", actor="nobody", actor_id="")
    [issued] = log.wait(start, "auth.token.issued", "skopeo")
    check(issued, outcome="allow", actor="dev", request_id=ok["request_id"])
    assert issued["token_id"], issued

    store = Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp"))  # podman: runroot <= 50 chars
    try:
        conf = tmp_path / "storage.conf"
        conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{store}/root"\n'
                        f'runroot = "{store}/run"\n')
        env = {**client.env, "CONTAINERS_STORAGE_CONF": str(conf),
               "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
        podman = [peer("podman"), "--root", f"{store}/root", "--runroot", f"{store}/run",
                  "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
                  "--events-backend", "none", "login", "--tls-verify=false"]
        for password, rc in (("not-the-password", 1), (DEV_PW, 0)):
            proc = subprocess.run([*podman, "-u", "dev", "-p", password, server.addr],
                                  env=env, capture_output=True, text=True, timeout=180,
                                  check=False)
            assert (proc.returncode == 0) == (rc == 0), proc.stderr
    finally:
        shutil.rmtree(store, ignore_errors=True)
    # podman sends containers/image's own agent ("containers/5.x (github.com/containers/image)")
    podman_agent = "github.com/containers/image"
    [podman_ok] = log.wait(start, "auth.login", podman_agent, outcome="allow")
    check(podman_ok, outcome="allow", actor="dev")
    [podman_bad] = log.wait(start, "auth.login", podman_agent, outcome="deny")
    check(podman_bad, outcome="deny", actor="dev", reason="bad_password")

    client.run("regctl", "registry", "set", server.addr, "--tls", "disabled")
    assert client.run_any([peer("regctl"), "registry", "login", server.addr, "-u", "reader",
                           "-p", "wrong-password-2"]).returncode != 0
    client.run_any([peer("regctl"), "registry", "logout", server.addr])  # keeps none
    [reg_bad] = log.wait(start, "auth.login", "regctl", outcome="deny")
    check(reg_bad, outcome="deny", actor="reader", reason="bad_password")


# -- content: push, tag move, mount, pull, delete ------------------------------------------------

def test_push_tag_pull_mount_and_delete_by_crane_and_regctl(
        client: Client, audited: DtrServer, log: AuditLog,
        images: tuple[Path, Path, str, str]) -> None:
    server = audited
    first_root, second_root, first, second = images
    app = f"{server.addr}/acme/app"
    crane_login(client, server, "dev", DEV_PW)
    try:
        start = log.head()
        crane(client, "push", "--insecure", str(first_root), f"{app}:v1")
        [pushed] = log.wait(start, "manifest.pushed", "crane", digest=first)
        check(pushed, outcome="allow", actor="dev", repository="acme/app", org="acme")
        assert detail(pushed)["media_type"] == OCI_MANIFEST
        [written] = log.wait(start, "tag.written", "crane", tag="v1")
        check(written, outcome="allow", actor="dev", repository="acme/app", digest=first)
        assert detail(written)["previous"] == ""
        [issued] = log.wait(start, "auth.token.issued", "crane",
                            request_id=log.wait(start, "auth.login", "crane")[0]["request_id"])
        assert detail(issued)["requested"] == ["repository:acme/app:push,pull"]
        assert detail(issued)["granted"] == ["repository:acme/app:push,pull"]

        # the tag moves to another image; then crane tag adds v2
        start = log.head()
        crane(client, "push", "--insecure", str(second_root), f"{app}:v1")
        [moved] = log.wait(start, "tag.written", "crane", tag="v1")
        check(moved, outcome="allow", actor="dev", digest=second)
        assert detail(moved)["previous"] == first
        crane(client, "tag", "--insecure", f"{app}:v1", "v2")
        [tagged] = log.wait(start, "tag.written", "crane", tag="v2")
        check(tagged, outcome="allow", actor="dev", digest=second)
        assert detail(tagged)["previous"] == ""

        # a copy to another repository mounts the blobs
        start = log.head()
        crane(client, "copy", "--insecure", f"{app}:v1", f"{server.addr}/acme/copy:v1")
        mounted = log.wait(start, "blob.mounted", "crane", repository="acme/copy")
        check(mounted[0], outcome="allow", actor="dev", org="acme")
        assert mounted[0]["digest"].startswith("sha256:")

        # pulls: by tag and by digest (HEAD requests, e.g. crane digest, are not pulls)
        start = log.head()
        crane(client, "manifest", "--insecure", f"{app}:v1")
        crane(client, "manifest", "--insecure", f"{app}@{first}")
        [by_tag] = log.wait(start, "manifest.pulled", "crane", tag="v1")
        check(by_tag, outcome="allow", actor="dev", repository="acme/app", digest=second)
        assert detail(by_tag)["media_type"] == OCI_MANIFEST
        [by_digest] = log.wait(start, "manifest.pulled", "crane", digest=first)
        check(by_digest, outcome="allow", actor="dev", tag="")

        # deletes: a manifest by digest (crane), a tag and a blob (regctl)
        start = log.head()
        crane(client, "delete", "--insecure", f"{app}@{first}")
        [gone] = log.wait(start, "manifest.deleted", "crane")
        check(gone, outcome="allow", actor="dev", repository="acme/app", digest=first)
    finally:
        crane(client, "auth", "logout", server.addr)

    client.run("regctl", "registry", "set", server.addr, "--tls", "disabled")
    client.run("regctl", "registry", "login", server.addr, "-u", "dev", "-p", DEV_PW)
    try:
        start = log.head()
        client.run("regctl", "tag", "delete", f"{app}:v2")
        [untagged] = log.wait(start, "tag.deleted", "regctl")
        check(untagged, outcome="allow", actor="dev", repository="acme/app", tag="v2",
              digest=second)
        layer = json.loads(client.run("regctl", "manifest", "get", "--format", "raw-body",
                                      f"{server.addr}/acme/copy:v1").stdout)["layers"][0]
        client.run("regctl", "blob", "delete", f"{server.addr}/acme/copy", layer["digest"])
        [blob] = log.wait(start, "blob.deleted", "regctl")
        check(blob, outcome="allow", actor="dev", repository="acme/copy",
              digest=layer["digest"])
    finally:
        client.run("regctl", "registry", "logout", server.addr)


# -- refusals ------------------------------------------------------------------------------------

def test_a_readers_push_and_a_deny_rule_are_refused_with_their_reason(
        client: Client, audited: DtrServer, log: AuditLog,
        images: tuple[Path, Path, str, str]) -> None:
    server = audited
    crane_login(client, server, "reader", READER_PW)
    try:
        start = log.head()
        refused = crane(client, "push", "--insecure", str(images[0]),
                        f"{server.addr}/acme/denied:v1", check=False)
        assert refused.returncode != 0
        # at the token endpoint: the policy grants pull only
        [policy] = log.wait(start, "access.denied", "crane", repository="acme/denied",
                            reason="no grant gives push on acme/denied to user:reader")
        check(policy, outcome="deny", actor="reader", org="acme", rule="")
        assert detail(policy)["action"] == "push"
        # at /v2: the upload needs a scope the token does not have
        [scope] = log.wait(start, "access.denied", "crane", repository="acme/denied",
                           reason="insufficient_scope")
        check(scope, outcome="deny", actor="reader", org="acme")
        assert detail(scope)["action"] == "push"

        start = log.head()
        assert crane(client, "manifest", "--insecure", f"{server.addr}/acme/locked:v1",
                     check=False).returncode != 0
        [rule] = log.wait(start, "access.denied", "crane", repository="acme/locked",
                          outcome="deny", rule="p, user:reader, acme, acme/locked, pull, deny")
        check(rule, outcome="deny", actor="reader")
        assert "deny overrides allow" in rule["reason"]
        assert detail(rule)["action"] == "pull"
    finally:
        crane(client, "auth", "logout", server.addr)


def test_the_signing_gate_refuses_an_unsigned_tag_and_a_quarantined_pull(
        client: Client, audited: DtrServer, log: AuditLog,
        images: tuple[Path, Path, str, str]) -> None:
    server = audited
    prod = f"{server.addr}/prod/app"
    crane_login(client, server, "dev", DEV_PW)
    try:
        digest = images[2]
        crane(client, "push", "--insecure", str(images[0]), f"{server.addr}/acme/stage:v1")
        crane(client, "copy", "--insecure", f"{server.addr}/acme/stage:v1", f"{prod}@{digest}")
        start = log.head()
        assert crane(client, "tag", "--insecure", f"{prod}@{digest}", "v1",
                     check=False).returncode != 0
        [denied] = log.wait(start, "tag.denied", "crane")
        check(denied, outcome="deny", actor="dev", repository="prod/app", org="prod",
              tag="v1", digest=digest, reason="UNSIGNED_MANIFEST")
    finally:
        crane(client, "auth", "logout", server.addr)
    crane_login(client, server, "reader", READER_PW)
    try:
        start = log.head()
        assert crane(client, "manifest", "--insecure", f"{prod}@{digest}",
                     check=False).returncode != 0
        [quarantined] = log.wait(start, "manifest.pull.denied", "crane")
        check(quarantined, outcome="deny", actor="reader", repository="prod/app",
              digest=digest, reason="UNSIGNED_MANIFEST")
    finally:
        crane(client, "auth", "logout", server.addr)


def test_garbage_and_expired_tokens_are_rejected(client: Client, audited: DtrServer,
                                                 log: AuditLog) -> None:
    server = audited
    keys = TokenKeys.load_or_create(server.data_dir / "token-signing-key.pem")
    expired = TokenIssuer(keys, "dtr", 300, clock=lambda: time.time() - 3600).issue(
        Principal("user", "dev", method="password"), server.addr,
        [{"type": "repository", "name": "acme/app", "actions": ["pull"]}]).token
    start = log.head()
    url = f"{server.url}/v2/acme/app/manifests/v1"
    for token in ("garbage.not-a.jwt", expired):
        proc = client.run_any(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                               "-H", f"Authorization: Bearer {token}", url], check=True)
        assert proc.stdout == "401"
    for reason in ("malformed", "expired"):
        [rejected] = log.wait(start, "auth.token.rejected", "curl", reason=reason)
        assert (rejected["outcome"], rejected["actor"], rejected["client_ip"]) == (
            "deny", "", LOCAL)
        assert (rejected["repository"], rejected["org"]) == ("acme/app", "acme")
        assert rejected["request_id"]


def test_the_chain_verifies_after_every_client(audited: DtrServer, log: AuditLog) -> None:
    keys = checkpoint_keys(TokenKeys.load_or_create(
        audited.data_dir / "token-signing-key.pem"))
    wanted = {"auth.login", "auth.token.issued", "manifest.pushed", "tag.written",
              "manifest.pulled", "blob.mounted", "manifest.deleted", "tag.deleted",
              "blob.deleted", "access.denied", "tag.denied", "manifest.pull.denied",
              "auth.token.rejected"}
    with log.engine.connect() as conn:
        seen = set(conn.execute(select(AuditEvent.action).distinct()).scalars())
    assert wanted <= seen, wanted - seen

    async def verify() -> Any:
        db = Database(f"sqlite+aiosqlite:///{log.path}")
        try:
            return await verify_chain(db, keys)
        finally:
            await db.close()

    report = asyncio.run(verify())
    assert report.ok, report.problem
    assert report.checked >= len(wanted)
    with httpx.Client(base_url=audited.url, timeout=10) as http:
        assert http.get("/v2/").headers["x-request-id"]
