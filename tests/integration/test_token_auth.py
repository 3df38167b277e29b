"""Docker token authentication end to end in-process: the challenge, the token endpoint's
GET and POST forms, the resource server's checks, refresh tokens, revocation and the
live policy re-check (token-auth.md §1 to §9)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from litestar.testing import TestClient

from dtr.app import create_app
from dtr.auth import accounts
from dtr.auth.principal import Principal
from dtr.auth.tokens import TokenIssuer
from dtr.policy import admin as policy_admin
from tests.conftest import make_settings
from tests.support.http import basic, bearer
from tests.support.oci import sha256

ADMIN_PW = "admin-password-1"
ALICE_PW = "alice-password-1"


@pytest.fixture
def app_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient[Any]]:
    monkeypatch.setenv("DTR_ADMIN_PASSWORD", ADMIN_PW)
    settings = make_settings(tmp_path, auth={"enabled": True, "login_failures_per_account": 3})
    with TestClient(create_app(settings)) as c:
        sec = c.app.state.security

        def setup(conn: Any) -> None:
            accounts.create_org(conn, "acme", created_by="admin")
            accounts.create_org(conn, "pub", created_by="admin")
            accounts.create_user(conn, "alice", ALICE_PW)
            accounts.create_user(conn, "bob", "bob-password-1")
            accounts.create_team(conn, "acme", "devs")
            policy_admin.add_member(conn, "acme", "devs", "user:alice")
            policy_admin.create_grant(conn, "team:acme/devs", "acme", "**", "developer")
            policy_admin.create_grant(conn, "anonymous", "pub", "**", "reader")

        c.blocking_portal.call(partial(sec.db.run, setup, write=True))
        c.blocking_portal.call(sec.policy.refresh)
        yield c


def token(c: TestClient[Any], *scopes: str, user: str | None = None,
          password: str | None = None, **params: str) -> dict[str, Any]:
    query: list[tuple[str, str]] = [("service", "testserver"), *[("scope", s) for s in scopes],
                                    *params.items()]
    headers = basic(user, password or "") if user else {}
    r = c.get("/auth/token", params=query, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def claims_of(tok: str) -> dict[str, Any]:
    payload = tok.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def push_blob(c: TestClient[Any], repo: str, tok: str, data: bytes) -> int:
    digest = sha256(data)
    r = c.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", content=data,
               headers={**bearer(tok), "Content-Type": "application/octet-stream"})
    return r.status_code


def test_v2_challenge_has_realm_and_service_but_no_scope(app_client: TestClient[Any]) -> None:
    r = app_client.get("/v2/")
    assert r.status_code == 401
    www = r.headers["www-authenticate"]
    assert www.startswith('Bearer realm="http://testserver')
    assert "/auth/token" in www
    assert 'service="' in www
    assert "scope=" not in www
    assert "error=" not in www
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_docker_login_sequence(app_client: TestClient[Any]) -> None:
    body = token(app_client, user="alice", password=ALICE_PW, offline_token="true",
                 client_id="docker", account="alice")
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert "issued_at" in body
    assert "refresh_token" in body
    assert claims_of(body["token"])["access"] == []
    assert app_client.get("/v2/", headers=bearer(body["token"])).status_code == 200


def test_refresh_token_only_when_asked(app_client: TestClient[Any]) -> None:
    assert "refresh_token" not in token(app_client, user="alice", password=ALICE_PW)


def test_wrong_password_is_401_for_get_and_post(app_client: TestClient[Any]) -> None:
    r = app_client.get("/auth/token", params={"service": "testserver"},
                       headers=basic("alice", "wrong-password"))
    assert r.status_code == 401
    r = app_client.post("/auth/token", data={"grant_type": "password", "username": "alice",
                                             "password": "nope-nope", "service": "testserver",
                                             "client_id": "helm"})
    assert r.status_code == 401
    r = app_client.get("/auth/token", params={"service": "testserver"},
                       headers=basic("nobody", "whatever-1"))
    assert r.status_code == 401


def test_post_password_and_refresh_grants(app_client: TestClient[Any]) -> None:
    r = app_client.post("/auth/token", data={
        "grant_type": "password", "username": "alice", "password": ALICE_PW,
        "service": "testserver", "client_id": "containerd-client", "access_type": "offline",
        "scope": "repository:acme/app:pull,push repository:beta/x:pull"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == "repository:acme/app:pull,push"
    refresh = body["refresh_token"]
    r = app_client.post("/auth/token", data={
        "grant_type": "refresh_token", "refresh_token": refresh, "service": "testserver",
        "client_id": "containerd-client", "scope": "repository:acme/app:pull"})
    assert r.status_code == 200, r.text
    assert claims_of(r.json()["access_token"])["access"] == [
        {"type": "repository", "name": "acme/app", "actions": ["pull"]}]
    bad = app_client.post("/auth/token", data={
        "grant_type": "refresh_token", "refresh_token": refresh[:-2] + "xx",
        "service": "testserver", "client_id": "x"})
    assert bad.status_code == 401


def test_scopes_are_intersected_with_the_policy(app_client: TestClient[Any]) -> None:
    body = token(app_client, "repository:acme/app:pull,push,delete", "repository:beta/x:pull",
                 "repository:pub/img:pull,push", "registry:catalog:*",
                 user="alice", password=ALICE_PW)
    access = {a["name"]: a["actions"] for a in claims_of(body["token"])["access"]}
    assert access == {"acme/app": ["pull", "push"], "beta/x": [], "pub/img": ["pull"],
                      "catalog": ["*"]}


def test_anonymous_token_reads_public_only(app_client: TestClient[Any]) -> None:
    body = token(app_client, "repository:pub/img:pull", "repository:acme/app:pull")
    access = {a["name"]: a["actions"] for a in claims_of(body["token"])["access"]}
    assert access == {"pub/img": ["pull"], "acme/app": []}
    assert claims_of(body["token"])["sub"] == ""


def test_push_with_token_and_insufficient_scope(app_client: TestClient[Any]) -> None:
    tok = token(app_client, "repository:acme/app:pull,push", user="alice",
                password=ALICE_PW)["token"]
    assert push_blob(app_client, "acme/app", tok, b"hello") == 201
    pull_only = token(app_client, "repository:acme/app:pull", user="alice",
                      password=ALICE_PW)["token"]
    r = app_client.post("/v2/acme/app/blobs/uploads/", headers=bearer(pull_only))
    assert r.status_code == 401
    www = r.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in www
    assert 'scope="repository:acme/app:pull,push"' in www
    assert r.json()["errors"][0]["detail"] == [
        {"Type": "repository", "Name": "acme/app", "Action": "push"}]


def test_tampered_and_foreign_tokens_are_invalid(app_client: TestClient[Any]) -> None:
    tok = token(app_client, "repository:acme/app:pull,push", user="alice",
                password=ALICE_PW)["token"]
    head, _payload, sig = tok.split(".")
    claims = claims_of(tok)
    claims["access"][0]["actions"].append("delete")
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for bad in (f"{head}.{forged}.{sig}", tok[:-4] + "AAAA", "not-a-jwt"):
        r = app_client.get("/v2/acme/app/tags/list", headers=bearer(bad))
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
    other = ECKey.generate_key("P-256")
    now = int(time.time())
    foreign = jwt.encode({"alg": "ES256", "kid": "x"}, {
        "iss": "dtr", "sub": "alice", "aud": "testserver", "exp": now + 300, "nbf": now,
        "iat": now, "jti": "x", "access": [{"type": "repository", "name": "acme/app",
                                            "actions": ["pull"]}]}, other)
    assert app_client.get("/v2/acme/app/tags/list", headers=bearer(foreign)).status_code == 401


def test_expired_token_is_refused(app_client: TestClient[Any]) -> None:
    keys = app_client.app.state.security.keys
    past = TokenIssuer(keys, "dtr", 300, clock=lambda: time.time() - 600)
    old = past.issue(Principal("user", "alice", method="password"), "testserver",
                     [{"type": "repository", "name": "acme/app", "actions": ["pull"]}]).token
    r = app_client.get("/v2/acme/app/tags/list", headers=bearer(old))
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_revoked_grant_stops_push_before_token_expiry(app_client: TestClient[Any]) -> None:
    sec = app_client.app.state.security
    tok = token(app_client, "repository:acme/app:pull,push", user="alice",
                password=ALICE_PW)["token"]
    assert push_blob(app_client, "acme/app", tok, b"one") == 201

    def revoke(conn: Any) -> None:
        policy_admin.remove_member(conn, "acme", "devs", "user:alice")

    app_client.blocking_portal.call(partial(sec.db.run, revoke, write=True))
    app_client.blocking_portal.call(sec.policy.refresh)
    assert push_blob(app_client, "acme/app", tok, b"two") == 403


def test_push_allowed_when_the_poller_loads_the_grant_during_the_recheck(
        app_client: TestClient[Any]) -> None:
    """A worker whose policy is older than the token re-reads it before refusing; if the
    background poller loads the new policy meanwhile, the push is still decided on it."""
    sec = app_client.app.state.security
    tok = token(app_client, "repository:acme/app:pull,push", user="alice",
                password=ALICE_PW)["token"]

    def remove(conn: Any) -> None:
        policy_admin.remove_member(conn, "acme", "devs", "user:alice")

    def add(conn: Any) -> None:
        policy_admin.add_member(conn, "acme", "devs", "user:alice")

    app_client.blocking_portal.call(partial(sec.db.run, remove, write=True))
    app_client.blocking_portal.call(sec.policy.refresh)  # this worker: alice has no push
    app_client.blocking_portal.call(partial(sec.db.run, add, write=True))  # not loaded yet
    engine = sec.policy
    read_version = engine._read_version

    async def poller_loads_first() -> int:
        await engine._load()  # the poller wins the race to the new version
        return await read_version()

    engine._read_version = poller_loads_first
    try:
        assert push_blob(app_client, "acme/app", tok, b"raced") == 201
    finally:
        engine._read_version = read_version


def test_catalog_lists_only_pullable_repositories(app_client: TestClient[Any]) -> None:
    tok = token(app_client, "repository:acme/app:pull,push", user="alice",
                password=ALICE_PW)["token"]
    assert push_blob(app_client, "acme/app", tok, b"x") == 201
    admin = token(app_client, "repository:beta/secret:pull,push", "repository:pub/img:pull,push",
                  user="admin", password=ADMIN_PW)["token"]
    assert push_blob(app_client, "beta/secret", admin, b"y") == 201
    assert push_blob(app_client, "pub/img", admin, b"z") == 201
    seen = {}
    for who, pw in (("alice", ALICE_PW), ("bob", "bob-password-1"), (None, None)):
        cat = token(app_client, "registry:catalog:*", user=who, password=pw)["token"]
        r = app_client.get("/v2/_catalog", headers=bearer(cat))
        assert r.status_code == 200
        seen[who] = r.json()["repositories"]
    assert seen == {"alice": ["acme/app", "pub/img"], "bob": ["pub/img"], None: ["pub/img"]}
    no_scope = token(app_client, user="alice", password=ALICE_PW)["token"]
    r = app_client.get("/v2/_catalog", headers=bearer(no_scope))
    assert r.status_code == 401
    assert 'scope="registry:catalog:*"' in r.headers["www-authenticate"]


def test_failed_logins_are_rate_limited(app_client: TestClient[Any]) -> None:
    for _ in range(3):
        r = app_client.get("/auth/token", headers=basic("bob", "wrong-password"))
        assert r.status_code == 401
    r = app_client.get("/auth/token", headers=basic("bob", "bob-password-1"))
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0
    assert "bob-password-1" not in r.text


def test_jwks_publishes_the_signing_key(app_client: TestClient[Any]) -> None:
    tok = token(app_client, user="alice", password=ALICE_PW)["token"]
    head = json.loads(base64.urlsafe_b64decode(tok.split(".")[0] + "=="))
    assert head["alg"] == "ES256"
    assert head["typ"] == "JWT"
    keys = app_client.get("/auth/jwks.json").json()["keys"]
    assert head["kid"] in [k["kid"] for k in keys]
    assert all("d" not in k for k in keys)


def test_disabling_the_account_stops_push_before_token_expiry(
        app_client: TestClient[Any]) -> None:
    sec = app_client.app.state.security
    tok = token(app_client, "repository:acme/app:pull,push", user="alice",
                password=ALICE_PW)["token"]
    assert push_blob(app_client, "acme/app", tok, b"before") == 201
    sec.credentials._valid.clear()  # the 5 s re-check cache: as if 5 s had passed

    def disable(conn: Any) -> None:
        accounts.update_user(conn, "alice", disabled=True)

    app_client.blocking_portal.call(partial(sec.db.run, disable, write=True))
    sec.credentials._valid.clear()
    r = app_client.post("/v2/acme/app/blobs/uploads/", headers=bearer(tok))
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_revoking_a_personal_access_token_stops_push(app_client: TestClient[Any]) -> None:
    sec = app_client.app.state.security

    def make(conn: Any) -> Any:
        return accounts.create_token(conn, "alice", "ci", scopes=None)

    pat = app_client.blocking_portal.call(partial(sec.db.run, make, write=True))
    tok = token(app_client, "repository:acme/app:pull,push", user="alice",
                password=pat.secret)["token"]
    assert push_blob(app_client, "acme/app", tok, b"pat") == 201

    def revoke(conn: Any) -> None:
        accounts.revoke_token(conn, "alice", pat.info.id)

    app_client.blocking_portal.call(partial(sec.db.run, revoke, write=True))
    sec.credentials._valid.clear()
    r = app_client.post("/v2/acme/app/blobs/uploads/", headers=bearer(tok))
    assert r.status_code == 401
    r = app_client.get("/auth/token", headers=basic("alice", pat.secret))
    assert r.status_code == 401


def test_a_changed_password_is_never_accepted_from_the_login_cache(
        app_client: TestClient[Any]) -> None:
    sec = app_client.app.state.security
    for _ in range(2):  # the second login is answered from the verified-password cache
        token(app_client, user="alice", password=ALICE_PW)

    def change(conn: Any) -> None:
        accounts.update_user(conn, "alice", password="alice-password-2")

    app_client.blocking_portal.call(partial(sec.db.run, change, write=True))
    r = app_client.get("/auth/token", headers=basic("alice", ALICE_PW))
    assert r.status_code == 401
    token(app_client, user="alice", password="alice-password-2")
    r = app_client.get("/auth/token", headers=basic("alice", "wrong-password-9"))
    assert r.status_code == 401


def test_scope_header_reads_like_litestar_headers() -> None:
    from litestar.datastructures import Headers  # noqa: PLC0415

    from dtr.api.context import scope_header  # noqa: PLC0415

    raw = [(b"host", b"h:1"), (b"Authorization", b"Bearer a"), (b"authorization", b"Bearer b"),
           (b"x-latin", "caf\xe9".encode("latin-1"))]
    for name in ("authorization", "host", "x-latin", "missing"):
        assert scope_header({"headers": raw}, name.encode()) == Headers(raw).get(name, "")
    assert scope_header({"headers": []}, b"host", "dtr") == "dtr"
