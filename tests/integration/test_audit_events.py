"""Audit events of the registry surface in-process (``/auth/token`` and ``/v2``): who, from
where and why, read back from the ``audit_event`` table.

Requests reach the app through an ASGI transport whose socket peer the test chooses, so
``X-Forwarded-For`` is seen from a trusted proxy (10.0.0.0/8) and from an untrusted client.
Covers: the client address and request id rules, login outcomes and their reasons, token
issue with the policy's rule for each refused action, ``/v2`` refusals, content events
stamped with the caller, the previous digest of a moved tag, and ``audit.record_pulls``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient
from sqlalchemy import select, update

from dtr.api.token import MAX_DENIED_EVENTS
from dtr.app import create_app
from dtr.auth import accounts
from dtr.auth.principal import Principal
from dtr.auth.tokens import TokenIssuer
from dtr.db.models import Account, AuditEvent, LoginFailure
from dtr.policy import admin as policy_admin
from tests.conftest import make_settings
from tests.support.http import basic, bearer
from tests.support.oci import OciClient

ALICE_PW = "alice-password-1"
RITA_PW = "rita-password-1"
UA = "audit-test/1.0"
CLIENT = "192.0.2.10"
PROXY = "10.1.2.3"


class Peer:
    """Sync HTTP calls into the app from a chosen socket address (through the test
    client's event loop, so the app's lifespan, recorder and policy are the live ones).
    """

    def __init__(self, c: TestClient[Any], peer: str = CLIENT,
                 headers: dict[str, str] | None = None) -> None:
        self.c = c
        self.peer = peer
        self.headers = {"User-Agent": UA, **(headers or {})}

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.c.app, client=(self.peer, 40000))
            async with httpx.AsyncClient(transport=transport,
                                         base_url="http://testserver") as h:
                return await h.request(method, path, headers=headers, **kw)

        return self.c.blocking_portal.call(go)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def head(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("HEAD", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", path, **kw)

    def token(self, *scopes: str, user: str | None = None, password: str = "",
              want: int = 200, **headers: str) -> dict[str, Any]:
        query = [("service", "testserver"), *[("scope", s) for s in scopes]]
        auth = basic(user, password) if user else {}
        r = self.get("/auth/token", params=query, headers={**auth, **headers})
        assert r.status_code == want, r.text
        return r.json()  # type: ignore[no-any-return]

    def as_(self, token: str) -> Peer:
        """The same peer sending ``Authorization: Bearer token``."""
        return Peer(self.c, self.peer, {**self.headers, **bearer(token)})


def events(c: TestClient[Any], action: str | None = None) -> list[dict[str, Any]]:
    """Every chained event (after the writer has committed what is queued)."""
    c.blocking_portal.call(c.app.state.audit.flush)

    def read(conn: Any) -> list[dict[str, Any]]:
        stmt = select(AuditEvent).order_by(AuditEvent.seq)
        if action is not None:
            stmt = stmt.where(AuditEvent.action == action)
        return [dict(r._mapping) for r in conn.execute(stmt)]

    return c.blocking_portal.call(partial(c.app.state.security.db.run, read, write=False))


def latest(c: TestClient[Any], action: str) -> dict[str, Any]:
    found = events(c, action)
    assert found, f"no {action} event"
    return found[-1]


def _app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         **audit: Any) -> Iterator[TestClient[Any]]:
    monkeypatch.setenv("DTR_ADMIN_PASSWORD", "admin-password-1")
    settings = make_settings(tmp_path, auth={"enabled": True, "login_failures_per_account": 3},
                             server={"trusted_proxies": ["10.0.0.0/8"]}, audit=audit)
    with TestClient(create_app(settings)) as c:
        sec = c.app.state.security

        def setup(conn: Any) -> None:
            accounts.create_org(conn, "acme", created_by="admin")
            accounts.create_user(conn, "alice", ALICE_PW)
            accounts.create_user(conn, "rita", RITA_PW)
            accounts.create_user(conn, "dora", "dora-password-1")
            accounts.update_user(conn, "dora", disabled=True)
            accounts.create_team(conn, "acme", "devs")
            policy_admin.add_member(conn, "acme", "devs", "user:alice")
            policy_admin.create_grant(conn, "team:acme/devs", "acme", "**", "developer")
            policy_admin.create_grant(conn, "user:rita", "acme", "**", "reader")

        c.blocking_portal.call(partial(sec.db.run, setup, write=True))
        c.blocking_portal.call(sec.policy.refresh)
        yield c


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient[Any]]:
    yield from _app(tmp_path, monkeypatch)


# -- client address and request id ------------------------------------------------------------

def test_forwarded_for_is_believed_only_from_a_trusted_proxy(app: TestClient[Any]) -> None:
    forwarded = {"X-Forwarded-For": "198.51.100.7", "X-Request-Id": "lb-req-0001"}
    via_proxy = Peer(app, PROXY).get("/auth/token", params={"service": "testserver"},
                                     headers={**basic("alice", ALICE_PW), **forwarded})
    assert via_proxy.status_code == 200
    assert via_proxy.headers["x-request-id"] == "lb-req-0001"
    direct = Peer(app, CLIENT).get("/auth/token", params={"service": "testserver"},
                                   headers={**basic("alice", ALICE_PW), **forwarded})
    assert direct.status_code == 200
    own_id = direct.headers["x-request-id"]
    assert own_id
    assert own_id != "lb-req-0001"

    logins = {e["request_id"]: e for e in events(app, "auth.login")}
    proxied, straight = logins["lb-req-0001"], logins[own_id]
    assert (proxied["client_ip"], proxied["request_id"]) == ("198.51.100.7", "lb-req-0001")
    assert (straight["client_ip"], straight["request_id"]) == (CLIENT, own_id)
    assert proxied["user_agent"] == straight["user_agent"] == UA


def test_every_response_carries_the_request_id_of_its_events(app: TestClient[Any]) -> None:
    r = Peer(app).get("/auth/token", params={"service": "testserver"},
                      headers=basic("alice", "wrong-password"))
    assert r.status_code == 401
    rid = r.headers["x-request-id"]
    [denied] = [e for e in events(app, "auth.login") if e["request_id"] == rid]
    assert denied["outcome"] == "deny"
    assert Peer(app).get("/v2/").headers["x-request-id"]


# -- logins --------------------------------------------------------------------------------------

def test_login_outcomes_name_the_account_method_and_reason(app: TestClient[Any]) -> None:
    peer = Peer(app)
    peer.token(user="alice", password=ALICE_PW)
    peer.token(user="alice", password="not-it", want=401)
    peer.token(user="nobody", password="whatever-1", want=401)
    peer.token(user="dora", password="dora-password-1", want=401)
    logins = events(app, "auth.login")
    ok, bad, unknown, disabled = logins[-4:]
    assert (ok["outcome"], ok["actor_kind"], ok["actor"], ok["actor_id"], ok["method"],
            ok["reason"]) == ("allow", "user", "alice", "user:alice", "password", "")
    assert (bad["outcome"], bad["actor"], bad["reason"]) == ("deny", "alice", "bad_password")
    assert (unknown["actor"], unknown["reason"], unknown["actor_id"]) == (
        "nobody", "unknown_account", "")
    assert (disabled["actor"], disabled["reason"]) == ("dora", "disabled")
    assert '"secret_ok":true' in disabled["detail"]
    for e in (ok, bad, unknown, disabled):
        assert (e["client_ip"], e["user_agent"]) == (CLIENT, UA)
        assert e["request_id"]


def test_a_failed_login_and_its_event_commit_together(app: TestClient[Any]) -> None:
    """The transaction that first counts rita's failure already holds its event (seen
    from inside it, at commit), rather than a later one.
    """
    seen: list[int] = []

    def watch(conn: Any) -> None:
        if seen or not conn.execute(select(LoginFailure.count).where(
                LoginFailure.key == "account:rita")).scalar():
            return
        seen.append(len(conn.execute(select(AuditEvent.seq).where(
            AuditEvent.action == "auth.login", AuditEvent.actor == "rita",
            AuditEvent.reason == "bad_password")).all()))

    hooks = app.app.state.security.db.before_commit
    hooks.append(watch)  # after the audit log's hook, which chains the pending events
    try:
        Peer(app).token(user="rita", password="wrong-1", want=401)
    finally:
        hooks.remove(watch)
    assert seen == [1]


def test_rate_limited_and_expired_logins(app: TestClient[Any]) -> None:
    peer = Peer(app)
    for _ in range(3):
        peer.token(user="rita", password="wrong-1", want=401)
    r = peer.get("/auth/token", params={"service": "testserver"},
                 headers=basic("rita", RITA_PW))
    assert r.status_code == 429
    assert latest(app, "auth.login")["reason"] == "rate_limited"

    sec = app.app.state.security
    robot = app.blocking_portal.call(partial(sec.db.run, lambda c: accounts.create_robot(
        c, "ci", "acme", expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))))
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    app.blocking_portal.call(partial(sec.db.run, lambda c: c.execute(
        update(Account).where(Account.name == robot.info.name).values(expires_at=past))))
    peer.token(user=robot.info.name, password=robot.secret, want=401)
    expired = latest(app, "auth.login")
    assert (expired["actor_kind"], expired["actor"], expired["method"], expired["reason"]) == (
        "robot", robot.info.name, "robot_secret", "expired")


# -- token issue ---------------------------------------------------------------------------------

def test_token_issue_records_requested_granted_and_each_refusal(app: TestClient[Any]) -> None:
    body = Peer(app).token("repository:acme/app:pull,push", user="rita", password=RITA_PW)
    issued = latest(app, "auth.token.issued")
    assert (issued["outcome"], issued["actor"], issued["method"]) == ("allow", "rita",
                                                                      "password")
    assert '"requested":["repository:acme/app:pull,push"]' in issued["detail"]
    assert '"granted":["repository:acme/app:pull"]' in issued["detail"]
    jti = _claims(body["token"])["jti"]
    assert issued["token_id"] == jti
    denied = latest(app, "access.denied")
    assert (denied["outcome"], denied["actor"], denied["repository"], denied["org"]) == (
        "deny", "rita", "acme/app", "acme")
    assert '"action":"push"' in denied["detail"]
    assert denied["reason"] == "no grant gives push on acme/app to user:rita"
    assert denied["rule"] == ""
    assert denied["request_id"] == issued["request_id"]


def test_star_scopes_and_the_cap_on_denials_per_request(app: TestClient[Any]) -> None:
    peer = Peer(app)
    before = len(events(app, "access.denied"))
    peer.token("repository:acme/app:*", user="rita", password=RITA_PW)  # pull is granted
    assert len(events(app, "access.denied")) == before, "* asks for whatever is allowed"
    peer.token("repository:other/app:*", user="rita", password=RITA_PW)  # nothing is
    star = latest(app, "access.denied")
    assert (star["repository"], json.loads(star["detail"])["action"]) == ("other/app", "*")

    before = len(events(app, "access.denied"))
    many = [f"repository:acme/r{i}:push" for i in range(MAX_DENIED_EVENTS + 8)]
    peer.token(*many, user="rita", password=RITA_PW)
    assert len(events(app, "access.denied")) - before == MAX_DENIED_EVENTS
    issued = json.loads(latest(app, "auth.token.issued")["detail"])
    assert issued["denials_not_recorded"] == 8
    assert len(issued["requested"]) == MAX_DENIED_EVENTS + 8


def test_a_deny_rule_is_named(app: TestClient[Any]) -> None:
    sec = app.app.state.security
    app.blocking_portal.call(partial(sec.db.run, lambda c: policy_admin.create_grant(
        c, "user:alice", "acme", "acme/frozen", "developer", effect="deny"), write=True))
    app.blocking_portal.call(sec.policy.refresh)
    Peer(app).token("repository:acme/frozen:push", user="alice", password=ALICE_PW)
    denied = latest(app, "access.denied")
    assert denied["rule"].startswith("p, user:alice, acme, acme/frozen, ")
    assert denied["rule"].endswith("deny")
    assert "deny overrides allow" in denied["reason"]


def test_a_personal_access_token_scope_refusal_and_refresh_token(app: TestClient[Any]) -> None:
    sec = app.app.state.security
    pat = app.blocking_portal.call(partial(sec.db.run, lambda c: accounts.create_token(
        c, "alice", "laptop", scopes=["repository:acme/app:pull"])))
    peer = Peer(app)
    peer.token("repository:acme/app:pull,push", user="alice", password=pat.secret)
    login = latest(app, "auth.login")
    assert (login["method"], login["token_id"]) == ("pat", pat.info.id)
    denied = latest(app, "access.denied")
    assert (denied["reason"], denied["rule"]) == ("token_scope", "")
    assert '"credential_id":"' + pat.info.id in latest(app, "auth.token.issued")["detail"]

    r = peer.post("/auth/token", data={"grant_type": "password", "username": "alice",
                                       "password": ALICE_PW, "service": "testserver",
                                       "access_type": "offline", "client_id": "x"})
    assert r.status_code == 200, r.text
    created = latest(app, "token.created")
    assert (created["actor"], created["outcome"]) == ("alice", "allow")
    assert '"kind":"refresh"' in created["detail"]
    r = peer.post("/auth/token", data={"grant_type": "refresh_token", "service": "testserver",
                                       "refresh_token": r.json()["refresh_token"],
                                       "client_id": "x"})
    assert r.status_code == 200, r.text
    refreshed = latest(app, "auth.login")
    assert (refreshed["method"], refreshed["token_id"]) == ("refresh_token",
                                                            created["token_id"])


# -- /v2 refusals --------------------------------------------------------------------------------

def test_rejected_tokens_and_missing_scopes(app: TestClient[Any]) -> None:
    peer = Peer(app)
    before = len(events(app))
    assert peer.get("/v2/acme/app/tags/list").status_code == 401  # the challenge
    assert len(events(app)) == before, "an anonymous challenge is not an event"

    keys = app.app.state.security.keys
    old = TokenIssuer(keys, "dtr", 300, clock=lambda: time.time() - 600).issue(
        Principal("user", "alice", method="password"), "testserver",
        [{"type": "repository", "name": "acme/app", "actions": ["pull"]}]).token
    elsewhere = TokenIssuer(keys, "dtr", 300).issue(
        Principal("user", "alice", method="password"), "another-registry", []).token
    for token, reason in (("garbage", "malformed"), (old, "expired"),
                          (elsewhere, "wrong_audience")):
        r = peer.as_(token).get("/v2/acme/app/tags/list")
        assert r.status_code == 401
        rejected = latest(app, "auth.token.rejected")
        assert (rejected["outcome"], rejected["reason"], rejected["repository"]) == (
            "deny", reason, "acme/app")
        assert (rejected["actor"], rejected["client_ip"]) == ("", CLIENT)

    pull_only = peer.token("repository:acme/app:pull", user="alice",
                           password=ALICE_PW)["token"]
    r = peer.as_(pull_only).post("/v2/acme/app/blobs/uploads/")
    assert r.status_code == 401
    denied = latest(app, "access.denied")
    assert (denied["reason"], denied["actor"], denied["method"], denied["repository"]) == (
        "insufficient_scope", "alice", "password", "acme/app")
    assert '"action":"push"' in denied["detail"]
    assert denied["token_id"] == _claims(pull_only)["jti"]


# -- content events carry the caller -------------------------------------------------------------

def test_push_tag_move_pull_and_delete_are_stamped(app: TestClient[Any]) -> None:
    peer = Peer(app)
    tok = peer.token("repository:acme/app:pull,push,delete", user="admin",
                     password="admin-password-1")["token"]
    oci = OciClient(peer.as_(tok))
    first, _ = oci.push_image("acme/app", "v1")
    pushed = latest(app, "manifest.pushed")
    written = latest(app, "tag.written")
    for e in (pushed, written):
        assert (e["actor"], e["actor_kind"], e["method"], e["client_ip"], e["user_agent"]) == (
            "admin", "user", "password", CLIENT, UA)
        assert (e["repository"], e["org"], e["digest"]) == ("acme/app", "acme", first)
    assert written["tag"] == "v1"
    assert '"previous":""' in written["detail"]

    second, _ = oci.push_image("acme/app", "v1")
    moved = latest(app, "tag.written")
    assert (moved["digest"], moved["tag"]) == (second, "v1")
    assert f'"previous":"{first}"' in moved["detail"]

    assert peer.as_(tok).get("/v2/acme/app/manifests/v1").status_code == 200
    pulled = latest(app, "manifest.pulled")
    assert (pulled["tag"], pulled["digest"], pulled["actor"]) == ("v1", second, "admin")
    assert '"media_type":"application/vnd.oci.image.manifest.v1+json"' in pulled["detail"]
    count = len(events(app, "manifest.pulled"))
    assert peer.as_(tok).head("/v2/acme/app/manifests/v1").status_code == 200
    assert len(events(app, "manifest.pulled")) == count, "HEAD is not a pull"
    assert peer.as_(tok).get(f"/v2/acme/app/manifests/{first}").status_code == 200
    assert (latest(app, "manifest.pulled")["tag"], latest(app, "manifest.pulled")["digest"]) == (
        "", first)

    assert peer.as_(tok).delete("/v2/acme/app/manifests/v1").status_code == 202
    deleted = latest(app, "tag.deleted")
    assert (deleted["tag"], deleted["digest"], deleted["actor"]) == ("v1", second, "admin")
    assert peer.as_(tok).delete(f"/v2/acme/app/manifests/{first}").status_code == 202
    gone = latest(app, "manifest.deleted")
    assert (gone["digest"], gone["actor"], gone["outcome"]) == (first, "admin", "allow")


def test_pulls_are_not_recorded_when_switched_off(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for c in _app(tmp_path, monkeypatch, record_pulls=False):
        peer = Peer(c)
        tok = peer.token("repository:acme/app:pull,push", user="alice",
                         password=ALICE_PW)["token"]
        OciClient(peer.as_(tok)).push_image("acme/app", "v1")
        assert peer.as_(tok).get("/v2/acme/app/manifests/v1").status_code == 200
        assert events(c, "manifest.pulled") == []
        assert latest(c, "tag.written")["actor"] == "alice"  # the rest is still recorded


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]
