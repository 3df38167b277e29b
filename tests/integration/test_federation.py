"""Keyless CI end to end in-process against a real OpenID Provider (oidc-provider on
127.0.0.1): trusts made through the admin API, ID tokens exchanged at the token endpoint as
``$oidc`` Basic credentials and as an RFC 8693 token exchange, the exchanged token pushing
within its grant and its trust's scopes and nothing outside, every refusal (wrong audience,
unknown issuer, expired, not yet valid, tampered, unknown key id, condition not met,
disabled trust, disabled robot) answered 401 ``invalid_grant`` with a message naming the
problem and recorded as a security event with its reason, key rotation at the provider,
and a provider that cannot be reached (503).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from dtr.app import create_app
from dtr.auth import accounts
from dtr.events import RecordingSecurityEvents, SecurityEvent
from dtr.policy import admin as policy_admin
from tests.conftest import make_settings
from tests.support.http import basic, bearer
from tests.support.oci import sha256
from tests.support.oidc import OpenIDProvider
from tests.support.peers import free_port

ADMIN_PW = "admin-password-1"
AUD = "registry.test"
APP_SUB = "repo:acme/app:ref:refs/heads/main"
APP_CLAIMS = {"repository": "acme/app", "ref": "refs/heads/main"}
TOOLS_SUB = "repo:acme/tools:ref:refs/heads/dev"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
V1 = "/api/v1/federation/trusts"


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    with OpenIDProvider() as provider:
        provider.set_account(APP_SUB, **APP_CLAIMS)
        provider.set_account(TOOLS_SUB, repository="acme/tools", ref="refs/heads/dev")
        yield provider


@pytest.fixture(scope="module")
def client(op: OpenIDProvider, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[TestClient[Any]]:
    settings = make_settings(tmp_path_factory.mktemp("federation"), auth={
        "enabled": True, "oidc": {"allow_http": True, "clock_skew_seconds": 1},
        "federation": {"max_token_seconds": 1800}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DTR_ADMIN_PASSWORD", ADMIN_PW)
        c = TestClient(create_app(settings))
        c.__enter__()
    try:
        sec = c.app.state.security

        def setup(conn: Any) -> None:
            accounts.create_org(conn, "acme", created_by="admin")
            accounts.create_robot(conn, "ci", "acme", created_by="admin")
            policy_admin.create_grant(conn, "robot:robot$acme+ci", "acme", "acme/**",
                                      "developer")
            accounts.create_robot(conn, "sleepy", "acme", created_by="admin")

        c.blocking_portal.call(lambda: sec.db.run(setup, write=True))
        admin = basic("admin", ADMIN_PW)
        for body in (
            {"name": "app-main", "issuer": op.issuer, "audience": AUD,
             "conditions": [{"claim": "repository", "pattern": "acme/app"},
                            {"claim": "ref", "pattern": "refs/heads/main"}],
             "role_binding": {"org": "acme", "repository": "acme/app", "role": "developer"}},
            {"name": "tools", "issuer": op.issuer, "audience": AUD, "robot": "robot$acme+ci",
             "conditions": [{"claim": "sub", "pattern": "repo:acme/tools:**",
                             "match": "glob"}],
             "scopes": ["repository:acme/tools/**:pull,push"], "max_token_seconds": 600},
            {"name": "off", "issuer": op.issuer, "audience": AUD, "robot": "robot$acme+ci",
             "conditions": [{"claim": "repository", "pattern": "acme/disabled"}],
             "enabled": False},
            {"name": "sleepy", "issuer": op.issuer, "audience": AUD,
             "robot": "robot$acme+sleepy",
             "conditions": [{"claim": "repository", "pattern": "acme/sleepy"}]},
            {"name": "k8s", "issuer": op.issuer, "audience": "other-audience",
             "robot": "robot$acme+ci", "preset": "kubernetes",
             "conditions": [{"claim": "sub", "pattern": "system:serviceaccount:ci:builder"}]},
        ):
            r = c.post(V1, json=body, headers=admin)
            assert r.status_code == 201, r.text
        r = c.patch("/api/v1/orgs/acme/robots/sleepy", json={"disabled": True}, headers=admin)
        assert r.status_code == 200, r.text
        yield c
    finally:
        c.__exit__(None, None, None)


@pytest.fixture
def events(client: TestClient[Any]) -> RecordingSecurityEvents:
    recorder = RecordingSecurityEvents()
    client.app.state.security.events = recorder
    return recorder


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def via_basic(c: TestClient[Any], id_token: str, *scopes: str, **params: str) -> Any:
    query = [("service", "testserver"), *[("scope", s) for s in scopes], *params.items()]
    return c.get("/auth/token", params=query, headers=basic("$oidc", id_token))


def via_exchange(c: TestClient[Any], id_token: str, scope: str = "", **extra: str) -> Any:
    form = {"grant_type": EXCHANGE, "subject_token": id_token,
            "subject_token_type": ID_TOKEN_TYPE, "service": "testserver", **extra}
    if scope:
        form["scope"] = scope
    return c.post("/auth/token", data=form)


def push_blob(c: TestClient[Any], repo: str, token: str, data: bytes) -> int:
    r = c.post(f"/v2/{repo}/blobs/uploads/?digest={sha256(data)}", content=data,
               headers={**bearer(token), "Content-Type": "application/octet-stream"})
    return r.status_code


def exchanges(events: RecordingSecurityEvents) -> list[SecurityEvent]:
    return [e for e in events.events if e.action == "auth.federation.exchange"]


def app_token(op: OpenIDProvider, **claims: Any) -> str:
    return op.workload_token(APP_SUB, AUD, **claims)


# -- exchanges ----------------------------------------------------------------------------


def test_docker_login_with_oidc_username_pushes_within_the_role_binding(
        client: TestClient[Any], op: OpenIDProvider, events: RecordingSecurityEvents) -> None:
    id_token = app_token(op)
    login = via_basic(client, id_token, offline_token="true", client_id="docker")
    assert login.status_code == 200, login.text
    body = login.json()
    assert "refresh_token" not in body  # never a long-lived credential from a CI token
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 1800  # the trust's default: the configured ceiling
    assert client.get("/v2/", headers=bearer(body["token"])).status_code == 200

    r = via_basic(client, id_token, "repository:acme/app:pull,push",
                  "repository:acme/base:pull,push")
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    claims = claims_of(token)
    assert claims["sub"] == "robot$acme+app-main"
    assert claims["dtr"]["method"] == "federation"
    assert claims["exp"] - claims["iat"] == 1800
    access = {a["name"]: a["actions"] for a in claims["access"]}
    assert sorted(access["acme/app"]) == ["pull", "push"]
    assert access["acme/base"] == []
    assert push_blob(client, "acme/app", token, b"keyless push") == 201
    assert push_blob(client, "acme/base", token, b"outside the binding") == 401

    allowed = [e for e in exchanges(events) if e.outcome == "allow"]
    assert allowed
    assert allowed[-1].actor == "robot$acme+app-main"
    assert allowed[-1].resource == "app-main"
    assert allowed[-1].method == "federation"
    assert allowed[-1].token_id == claims_of(id_token)["jti"]


def test_rfc8693_exchange_is_narrowed_by_the_trust_scopes(
        client: TestClient[Any], op: OpenIDProvider) -> None:
    id_token = op.workload_token(TOOLS_SUB, AUD)
    r = via_exchange(client, id_token, "repository:acme/tools/cli:pull,push "
                     "repository:acme/app:pull")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["token_type"] == "Bearer"
    assert body["access_token"] == body["token"]
    assert body["expires_in"] == 600
    assert body["scope"] == "repository:acme/tools/cli:pull,push"
    token = body["access_token"]
    # the robot may push all of acme/**, the trust's scopes only acme/tools/**
    assert push_blob(client, "acme/tools/cli", token, b"tools") == 201
    assert push_blob(client, "acme/app", token, b"not in the trust's scopes") == 401


def test_helm_style_password_grant_with_the_reserved_user(
        client: TestClient[Any], op: OpenIDProvider) -> None:
    r = client.post("/auth/token", data={
        "grant_type": "password", "username": "$oidc", "password": app_token(op),
        "service": "testserver", "client_id": "helm", "scope": "repository:acme/app:pull"})
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "repository:acme/app:pull"


def test_rfc8693_request_errors_are_invalid_request(client: TestClient[Any],
                                                    op: OpenIDProvider) -> None:
    r = via_exchange(client, app_token(op), subject_token_type="urn:x:saml")
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_request"
    assert "subject_token_type" in r.json()["error_description"]
    r = client.post("/auth/token", data={"grant_type": EXCHANGE})
    assert r.status_code == 400
    assert "subject_token is required" in r.json()["error_description"]


# -- refusals -------------------------------------------------------------------------------


def expect_refused(r: Any, events: RecordingSecurityEvents, reason: str, words: str) -> None:
    assert r.status_code == 401, r.text
    body = r.json()
    assert body["error"] == "invalid_grant"
    assert body["reason"] == reason
    assert words in body["error_description"], body
    denied = [e for e in exchanges(events) if e.outcome == "deny"]
    assert denied, events.events
    assert denied[-1].reason == reason
    assert words in denied[-1].detail["message"]


def test_wrong_audience(client: TestClient[Any], op: OpenIDProvider,
                        events: RecordingSecurityEvents) -> None:
    r = via_basic(client, op.workload_token(APP_SUB, "someone-else"))
    expect_refused(r, events, "wrong_audience", "'someone-else'")
    assert AUD in r.json()["error_description"]


def test_unknown_issuer(client: TestClient[Any], op: OpenIDProvider,
                        events: RecordingSecurityEvents) -> None:
    forged = op.sign(op.workload_claims(APP_SUB, AUD, iss="https://ci.example.invalid"))
    r = via_exchange(client, forged)
    expect_refused(r, events, "unknown_issuer", "https://ci.example.invalid")


def test_expired(client: TestClient[Any], op: OpenIDProvider,
                 events: RecordingSecurityEvents) -> None:
    id_token = op.workload_token(APP_SUB, AUD, ttl=1)
    time.sleep(2.5)  # ttl 1 s + clock skew 1 s, with whole-second claims
    expect_refused(via_basic(client, id_token), events, "expired", "expired")


def test_not_yet_valid(client: TestClient[Any], op: OpenIDProvider,
                       events: RecordingSecurityEvents) -> None:
    forged = op.sign(op.workload_claims(APP_SUB, AUD, nbf=int(time.time()) + 600))
    expect_refused(via_basic(client, forged), events, "not_yet_valid", "not valid yet")


def test_tampered_signature(client: TestClient[Any], op: OpenIDProvider,
                            events: RecordingSecurityEvents) -> None:
    header, payload, signature = app_token(op).split(".")
    claims = claims_of(f"{header}.{payload}.{signature}")
    claims["repository"] = "acme/app"
    claims["ref"] = "refs/heads/release"  # claims edited after signing
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    r = via_basic(client, f"{header}.{edited}.{signature}")
    expect_refused(r, events, "bad_signature", "signature does not verify")


def test_unknown_key_id(client: TestClient[Any], op: OpenIDProvider,
                        events: RecordingSecurityEvents) -> None:
    forged = op.sign(op.workload_claims(APP_SUB, AUD), key=op.foreign_key())
    expect_refused(via_basic(client, forged), events, "unknown_key", "does not publish")


def test_claim_condition_not_met(client: TestClient[Any], op: OpenIDProvider,
                                 events: RecordingSecurityEvents) -> None:
    id_token = op.workload_token("repo:acme/app:ref:refs/heads/feature", AUD,
                                 repository="acme/app", ref="refs/heads/feature")
    r = via_basic(client, id_token)
    expect_refused(r, events, "condition_not_met", "ref = 'refs/heads/main'")
    assert "'refs/heads/feature'" in r.json()["error_description"]


def test_disabled_trust(client: TestClient[Any], op: OpenIDProvider,
                        events: RecordingSecurityEvents) -> None:
    id_token = op.workload_token("repo:acme/disabled:ref:refs/heads/main", AUD,
                                 repository="acme/disabled")
    expect_refused(via_exchange(client, id_token), events, "trust_disabled", "'off'")


def test_disabled_robot(client: TestClient[Any], op: OpenIDProvider,
                        events: RecordingSecurityEvents) -> None:
    id_token = op.workload_token("repo:acme/sleepy:ref:refs/heads/main", AUD,
                                 repository="acme/sleepy")
    expect_refused(via_basic(client, id_token), events, "robot_disabled",
                   "robot$acme+sleepy")


def test_second_audience_and_kubernetes_preset(client: TestClient[Any],
                                               op: OpenIDProvider) -> None:
    id_token = op.workload_token("system:serviceaccount:ci:builder", "other-audience",
                                 **{"kubernetes.io": {"namespace": "ci"}})
    r = via_basic(client, id_token, "repository:acme/base:pull")
    assert r.status_code == 200, r.text
    assert claims_of(r.json()["token"])["sub"] == "robot$acme+ci"


def test_disabling_a_trust_stops_the_next_exchange(client: TestClient[Any],
                                                   op: OpenIDProvider) -> None:
    admin = basic("admin", ADMIN_PW)
    id_token = op.workload_token(TOOLS_SUB, AUD)
    assert via_basic(client, id_token).status_code == 200
    r = client.patch(f"{V1}/tools", json={"enabled": False}, headers=admin)
    assert r.status_code == 200, r.text
    try:
        r = via_basic(client, id_token)
        assert r.status_code == 401
        assert r.json()["reason"] == "trust_disabled"
    finally:
        client.patch(f"{V1}/tools", json={"enabled": True}, headers=admin)


def test_key_rotation_at_the_provider(client: TestClient[Any], op: OpenIDProvider) -> None:
    assert via_basic(client, app_token(op)).status_code == 200
    old = op.kids[0]
    op.rotate_keys()
    assert op.kids[0] != old
    time.sleep(2.2)  # the validator refetches a JWKS at most every 2 s
    r = via_basic(client, app_token(op))
    assert r.status_code == 200, r.text


def test_unreachable_provider_is_503(client: TestClient[Any], op: OpenIDProvider,
                                     events: RecordingSecurityEvents) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    admin = basic("admin", ADMIN_PW)
    r = client.post(V1, json={"name": "gone", "issuer": gone, "audience": AUD,
                              "robot": "robot$acme+ci",
                              "conditions": [{"claim": "repository", "pattern": "acme/app"}]},
                    headers=admin)
    assert r.status_code == 201, r.text
    try:
        forged = op.sign(op.workload_claims(APP_SUB, AUD, iss=gone))
        r = via_basic(client, forged)
        assert r.status_code == 503, r.text
        assert "unreachable" in r.json()["error_description"]
        assert exchanges(events)[-1].outcome == "error"
        assert exchanges(events)[-1].reason == "provider_unavailable"
    finally:
        client.delete(f"{V1}/gone", headers=admin)


def test_deleting_a_role_binding_trust_removes_its_robot(client: TestClient[Any],
                                                         op: OpenIDProvider,
                                                         tmp_path: Path) -> None:
    admin = basic("admin", ADMIN_PW)
    r = client.post(V1, json={"name": "short-lived", "issuer": op.issuer, "audience": AUD,
                              "conditions": [{"claim": "repository", "pattern": "acme/tmp"}],
                              "role_binding": {"org": "acme", "repository": "acme/tmp/**",
                                               "role": "reader"}}, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["robot"] == "robot$acme+short-lived"
    assert r.json()["owns_robot"] is True
    grants = client.get("/api/v1/grants", params={"subject": "robot:robot$acme+short-lived"},
                        headers=admin).json()
    assert [(g["repository"], g["role"]) for g in grants] == [("acme/tmp/**", "reader")]
    assert client.delete(f"{V1}/short-lived", headers=admin).status_code == 204
    assert client.get("/api/v1/orgs/acme/robots/short-lived",
                      headers=admin).status_code == 404
    assert client.get("/api/v1/grants", params={"subject": "robot:robot$acme+short-lived"},
                      headers=admin).json() == []
