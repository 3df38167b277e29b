"""OIDC login for people against a real OpenID Provider (oidc-provider on 127.0.0.1, no
mocks): the whole browser-less flow (dtr's login URL → the provider's login and consent
forms → dtr's callback with code, state and the state cookie → a session token), personal
access tokens minted with the session and used by a real client (crane) against a live
``dtr serve``, onboarding, team sync and the admin/auditor groups across logins, every
refusal with a clear message and a recorded security event, key rotation at the provider,
``local_login=false``, disabling a user, the session refused as a docker password, and
logout.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from litestar.testing import TestClient

from dtr.api.oidc import STATE_COOKIE
from dtr.app import create_app
from dtr.auth.credentials import LOCAL_LOGIN_OFF, SESSION_NOT_PASSWORD
from dtr.auth.sso import ACTION, decode_state, encode_state
from dtr.events import RecordingSecurityEvents, SecurityEvent
from tests.conftest import make_settings
from tests.support import peers
from tests.support.http import basic, bearer
from tests.support.oidc import OpenIDProvider

ADMIN_PW = "admin-password-1"
CLIENT_ID, CLIENT_SECRET = "dtr", "dtr-client-secret-1"
PUBLIC_CLIENT = "dtr-public"
INPROC_REDIRECT = "http://testserver.local/api/v1/auth/oidc/callback"
LIVE_REDIRECT = "http://127.0.0.1:9/api/v1/auth/oidc/callback"
"""Registered for the live server; never fetched (the harness returns the redirect URL)."""
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def op(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenIDProvider]:
    provider = OpenIDProvider(tmp_path_factory.mktemp("op"))
    provider.add_client(CLIENT_ID, [INPROC_REDIRECT, LIVE_REDIRECT], secret=CLIENT_SECRET)
    provider.add_client(PUBLIC_CLIENT, [INPROC_REDIRECT])
    provider.set_account("sub-alice", preferred_username="Alice", email="alice@example.test",
                         groups=["developers"])
    with provider:
        yield provider


def oidc_settings(op: OpenIDProvider, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "issuer": op.issuer, "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET, "allow_http": True,
            "scopes": ["openid", "profile", "email", "groups"], **extra}


class Dtr:
    """An in-process dtr with OIDC on, its recorded security events and helpers."""

    def __init__(self, client: TestClient[Any], op: OpenIDProvider) -> None:
        self.client = client
        self.op = op
        self.events = RecordingSecurityEvents()
        client.app.state.sso.events = self.events
        self.admin = basic("admin", ADMIN_PW)

    def api(self, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.request(method, f"/api/v1{path}", json=body,
                                   headers=self.admin if headers is None else headers)

    def start(self) -> tuple[str, str]:
        """GET dtr's login route: (the provider URL, the state cookie)."""
        r = self.client.get("/api/v1/auth/oidc/login", params={"next": "/ui/"},
                            follow_redirects=False)
        assert r.status_code == 302, r.text
        set_cookie = r.headers["set-cookie"]
        assert "HttpOnly" in set_cookie
        assert "SameSite=Lax" in set_cookie or "samesite=lax" in set_cookie.lower()
        assert "Path=/api/v1/auth/oidc" in set_cookie
        self.client.cookies.clear()
        cookie = set_cookie.split(";", 1)[0].split("=", 1)[1].strip('"')
        return r.headers["location"], cookie

    def callback(self, params: dict[str, str], cookie: str | None,
                 accept: dict[str, str] = JSON) -> httpx.Response:
        headers = dict(accept)
        if cookie is not None:
            headers["Cookie"] = f"{STATE_COOKIE}={cookie}"
        r = self.client.get("/api/v1/auth/oidc/callback", params=params, headers=headers)
        self.client.cookies.clear()
        return r

    def provider_redirect(self, authorize_url: str, sub: str) -> dict[str, str]:
        redirected = self.op.complete_login(authorize_url, sub)
        return {k: v[0] for k, v in parse_qs(urlsplit(redirected).query).items()}

    def login(self, sub: str) -> dict[str, Any]:
        url, cookie = self.start()
        r = self.callback(self.provider_redirect(url, sub), cookie)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def refused(self, r: httpx.Response, reason: str, words: str) -> None:
        assert r.status_code == 401, r.text
        body = r.json()
        assert body["type"] == "urn:dtr:problem:unauthorized"
        assert body["context"]["reason"] == reason, body
        assert words in body["detail"], body["detail"]
        event = self.last_event()
        assert event.outcome == "deny"
        assert event.reason == reason
        assert event.detail["message"] == body["detail"]

    def last_event(self) -> SecurityEvent:
        logins = [e for e in self.events.events if e.action == ACTION]
        assert logins
        return logins[-1]

    def mint_pat(self, session: str, name: str = "laptop") -> str:
        r = self.api("POST", "/tokens", {"name": name}, headers=bearer(session))
        assert r.status_code == 201, r.text
        return str(r.json()["secret"])

    def granted(self, user: str, secret: str, repo: str = "acme/app") -> list[str]:
        """The actions a registry token request as ``user`` gets on ``repo``."""
        r = self.client.get("/auth/token", params={"service": "testserver.local",
                                                   "scope": f"repository:{repo}:pull,push"},
                            headers=basic(user, secret))
        assert r.status_code == 200, r.text
        access = next((a for a in _claims(r.json()["token"])["access"]
                       if a["name"] == repo), {"actions": []})
        return sorted(access["actions"])


def _claims(token: str) -> dict[str, Any]:
    import base64  # noqa: PLC0415

    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


@pytest.fixture
def make_dtr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             op: OpenIDProvider) -> Iterator[Any]:
    """``make_dtr(**oidc_overrides)`` → a started :class:`Dtr`."""
    stack: list[TestClient[Any]] = []
    monkeypatch.setenv("DTR_ADMIN_PASSWORD", ADMIN_PW)

    def make(**oidc: Any) -> Dtr:
        data = tmp_path / f"d{len(stack)}"
        data.mkdir()
        settings = make_settings(data,
                                 auth={"enabled": True, "oidc": oidc_settings(op, **oidc)})
        client = TestClient(create_app(settings))
        client.__enter__()
        stack.append(client)
        return Dtr(client, op)

    yield make
    for client in stack:
        client.__exit__(None, None, None)


@pytest.fixture
def dtr(make_dtr: Any) -> Dtr:
    return make_dtr()  # type: ignore[no-any-return]


# -- the flow ---------------------------------------------------------------------------------

def test_browserless_login_gives_a_session_that_mints_pats(dtr: Dtr) -> None:
    info = dtr.client.get("/api/v1/auth/oidc").json()
    assert info == {"enabled": True, "issuer": dtr.op.issuer, "local_login": True,
                    "login_url": "http://testserver.local/api/v1/auth/oidc/login"}
    url, cookie = dtr.start()
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(dtr.op.metadata()["authorization_endpoint"])
    assert query["code_challenge_method"] == ["S256"]
    assert query["scope"][0].split()[0] == "openid"
    assert query["redirect_uri"] == [INPROC_REDIRECT]
    assert {"state", "nonce", "code_challenge"} <= query.keys()
    params = dtr.provider_redirect(url, "sub-alice")
    r = dtr.callback(params, cookie)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["username"] == "alice"  # the username claim, lower-cased
    assert body["session_token"].startswith("dtr_ses_")
    assert body["admin"] is False
    assert body["next"] == "/ui/"
    assert "max-age=0" in r.headers["set-cookie"].lower()  # the state cookie is cleared
    event = dtr.last_event()
    assert (event.outcome, event.actor, event.method) == ("allow", "alice", "oidc")
    assert event.detail["groups"] == ["developers"]

    session = body["session_token"]
    me = dtr.api("GET", "/me", headers=bearer(session)).json()
    assert (me["name"], me["method"]) == ("alice", "oidc")
    user = dtr.api("GET", "/users/alice").json()
    assert user["email"] == "alice@example.test"
    pat = dtr.mint_pat(session)
    assert dtr.api("GET", "/me", headers=bearer(pat)).json()["method"] == "pat"
    kinds = {t["kind"] for t in dtr.api("GET", "/tokens", headers=bearer(pat)).json()}
    assert kinds == {"session", "pat"}
    # SSO users have no password: nothing passes as one
    r = dtr.api("GET", "/me", headers=basic("alice", ""))
    assert r.status_code == 401


def test_the_html_callback_shows_the_token_once_with_the_next_commands(dtr: Dtr) -> None:
    url, cookie = dtr.start()
    r = dtr.callback(dtr.provider_redirect(url, "sub-alice"), cookie,
                     accept={"Accept": "text/html"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    assert "dtr_ses_" in r.text
    assert "dtr login http://testserver.local --token-stdin" in r.text
    assert "dtr token create" in r.text


def test_a_public_client_logs_in_with_pkce_alone(make_dtr: Any) -> None:
    dtr = make_dtr(client_id=PUBLIC_CLIENT, client_secret="")
    assert dtr.login("sub-alice")["username"] == "alice"


def test_a_session_is_not_a_docker_password(dtr: Dtr) -> None:
    session = dtr.login("sub-alice")["session_token"]
    r = dtr.client.get("/auth/token", params={"service": "testserver.local",
                                              "scope": "repository:acme/app:pull"},
                       headers=basic("alice", session))
    assert r.status_code == 401, r.text
    assert r.json()["error_description"] == SESSION_NOT_PASSWORD
    assert "dtr token create" in SESSION_NOT_PASSWORD


def test_logout_revokes_the_session_but_not_the_pats(dtr: Dtr) -> None:
    session = dtr.login("sub-alice")["session_token"]
    pat = dtr.mint_pat(session)
    r = dtr.client.post("/api/v1/auth/logout", headers=bearer(session))
    assert r.status_code == 200, r.text
    assert r.json()["end_session_endpoint"] == dtr.op.metadata().get("end_session_endpoint")
    assert dtr.api("GET", "/me", headers=bearer(session)).status_code == 401
    assert dtr.api("GET", "/me", headers=bearer(pat)).status_code == 200
    r = dtr.client.post("/api/v1/auth/logout", headers=bearer(pat))
    assert r.status_code == 422
    assert "DELETE /api/v1/tokens" in r.json()["detail"]
    # a PAT does not depend on the provider either
    dtr.op.stop()
    try:
        assert dtr.api("GET", "/me", headers=bearer(pat)).status_code == 200
    finally:
        dtr.op.start()


# -- onboarding -------------------------------------------------------------------------------

def test_without_auto_onboarding_only_prepared_accounts_sign_in(make_dtr: Any) -> None:
    dtr = make_dtr(auto_onboard=False)
    dtr.op.set_account("sub-bob", preferred_username="bob", groups=[])
    url, cookie = dtr.start()
    dtr.refused(dtr.callback(dtr.provider_redirect(url, "sub-bob"), cookie), "no_account",
                "dtr user create bob --oidc")
    assert dtr.api("GET", "/users/bob").status_code == 404
    r = dtr.api("POST", "/users", {"name": "bob", "oidc": True})
    assert r.status_code == 201, r.text
    assert dtr.login("sub-bob")["username"] == "bob"
    assert dtr.api("POST", "/users", {"name": "x1"}).status_code == 422


def test_a_local_account_name_is_not_taken_over(dtr: Dtr) -> None:
    assert dtr.api("POST", "/users", {"name": "carol", "password": "carol-password-1"}
                   ).status_code == 201
    dtr.op.set_account("sub-carol", preferred_username="carol", groups=[])
    url, cookie = dtr.start()
    dtr.refused(dtr.callback(dtr.provider_redirect(url, "sub-carol"), cookie),
                "username_taken", "taken by a local account")
    # another identity with a name an SSO user already has is refused as well
    dtr.login("sub-alice")
    dtr.op.set_account("sub-alice-2", preferred_username="alice", groups=[])
    url, cookie = dtr.start()
    dtr.refused(dtr.callback(dtr.provider_redirect(url, "sub-alice-2"), cookie),
                "username_taken", "ask an administrator")


def test_a_username_that_is_not_a_dtr_name_is_refused(dtr: Dtr) -> None:
    dtr.op.set_account("sub-weird", preferred_username="Jane Doe", groups=[])
    url, cookie = dtr.start()
    dtr.refused(dtr.callback(dtr.provider_redirect(url, "sub-weird"), cookie), "bad_username",
                "not a valid dtr user name")


# -- team sync and groups ---------------------------------------------------------------------

def test_team_sync_adds_and_removes_membership_and_access(dtr: Dtr) -> None:
    dtr.op.set_account("sub-dave", preferred_username="dave", groups=["developers", "other"])
    assert dtr.api("POST", "/orgs", {"name": "acme"}).status_code == 201
    r = dtr.api("POST", "/orgs/acme/teams", {"name": "devs", "idp_group": "developers"})
    assert r.status_code == 201, r.text
    assert r.json()["idp_group"] == "developers"
    assert dtr.api("POST", "/orgs/acme/teams", {"name": "manual"}).status_code == 201
    assert dtr.api("POST", "/grants", {"subject": "team:acme/devs", "org": "acme",
                                       "role": "developer"}).status_code == 201
    first = dtr.login("sub-dave")
    assert first["teams"] == ["acme/devs"]
    assert dtr.last_event().detail["teams_added"] == ["acme/devs"]
    pat = dtr.mint_pat(first["session_token"])
    assert dtr.granted("dave", pat) == ["pull", "push"]
    # manual membership of a synced team is refused; other teams are dtr's business
    r = dtr.api("PUT", "/orgs/acme/teams/devs/members/admin")
    assert r.status_code == 409
    assert "identity provider group 'developers'" in r.json()["detail"]
    assert dtr.api("DELETE", "/orgs/acme/teams/devs/members/dave").status_code == 409
    assert dtr.api("PUT", "/orgs/acme/teams/manual/members/dave").status_code == 200

    dtr.op.set_account("sub-dave", preferred_username="dave", groups=["other"])
    second = dtr.login("sub-dave")
    assert second["teams"] == ["acme/manual"]
    assert dtr.last_event().detail["teams_removed"] == ["acme/devs"]
    assert dtr.granted("dave", pat) == []  # the same PAT: access through the team is gone

    # clearing the group hands membership back to dtr
    r = dtr.api("PATCH", "/orgs/acme/teams/devs", {"idp_group": ""})
    assert r.status_code == 200, r.text
    assert r.json()["idp_group"] is None
    assert dtr.api("PUT", "/orgs/acme/teams/devs/members/dave").status_code == 200


def test_admin_and_auditor_groups_grant_and_later_revoke(make_dtr: Any) -> None:
    dtr = make_dtr(admin_group="dtr-admins", auditor_group="dtr-auditors")
    dtr.op.set_account("sub-erin", preferred_username="erin", groups=["dtr-admins"])
    dtr.op.set_account("sub-finn", preferred_username="finn", groups=["dtr-auditors"])
    first = dtr.login("sub-erin")
    assert first["admin"] is True
    assert dtr.last_event().detail["admin_role"] == "granted"
    assert dtr.api("GET", "/users", headers=bearer(first["session_token"])).status_code == 200
    finn = dtr.login("sub-finn")
    assert dtr.api("GET", "/users", headers=bearer(finn["session_token"])).status_code == 200
    assert dtr.api("POST", "/orgs/x/teams", {"name": "t"},
                   headers=bearer(finn["session_token"])).status_code == 403

    dtr.op.set_account("sub-erin", preferred_username="erin", groups=[])
    second = dtr.login("sub-erin")
    assert second["admin"] is False
    assert dtr.last_event().detail["admin_role"] == "revoked"
    assert dtr.api("GET", "/users", headers=bearer(second["session_token"])).status_code == 403

    # an administrator granted by hand keeps the role whatever the groups say
    assert dtr.api("POST", "/grants", {"subject": "user:erin", "org": "*", "role": "admin"}
                   ).status_code == 201
    assert dtr.login("sub-erin")["admin"] is True
    assert dtr.login("sub-erin")["admin"] is True


# -- refusals ---------------------------------------------------------------------------------

def test_a_state_that_does_not_match_the_cookie_is_refused(dtr: Dtr) -> None:
    _url_a, cookie_a = dtr.start()
    url_b, _cookie_b = dtr.start()
    params_b = dtr.provider_redirect(url_b, "sub-alice")
    dtr.refused(dtr.callback(params_b, cookie_a), "state_mismatch", "start the login again")


def test_a_missing_or_forged_cookie_is_refused(dtr: Dtr) -> None:
    url, cookie = dtr.start()
    params = dtr.provider_redirect(url, "sub-alice")
    dtr.refused(dtr.callback(params, None), "missing_state_cookie", "cookies must be enabled")
    dtr.refused(dtr.callback(params, cookie[:-4] + "AAAA"), "bad_state_cookie",
                "start the login again")


def test_a_replayed_code_is_refused(dtr: Dtr) -> None:
    url, cookie = dtr.start()
    params = dtr.provider_redirect(url, "sub-alice")
    assert dtr.callback(params, cookie).status_code == 200
    dtr.refused(dtr.callback(params, cookie), "code_exchange_failed",
                "refused the authorization code")


def test_an_id_token_for_another_login_is_refused_by_its_nonce(dtr: Dtr) -> None:
    """A cookie with the right state and verifier but another login's nonce (signed with
    the registry's own key, as only dtr could): the ID token's nonce does not match."""
    url, cookie = dtr.start()
    _, other = dtr.start()
    keys = dtr.client.app.state.security.keys
    mine, theirs = decode_state(keys, cookie), decode_state(keys, other)
    swapped = encode_state(keys, replace(mine, nonce=theirs.nonce))
    dtr.refused(dtr.callback(dtr.provider_redirect(url, "sub-alice"), swapped),
                "nonce_mismatch", "nonce does not match")


def test_a_provider_error_is_refused_clearly(dtr: Dtr) -> None:
    url, cookie = dtr.start()
    params = {"error": "access_denied", "error_description": "the user said no",
              "state": parse_qs(urlsplit(url).query)["state"][0]}
    dtr.refused(dtr.callback(params, cookie), "provider_error",
                "refused the login (access_denied: the user said no)")
    page = dtr.callback(params, cookie, accept={"Accept": "text/html"})
    assert page.status_code == 401
    assert "the user said no" in page.text
    assert "/api/v1/auth/oidc/login" in page.text


def test_a_disabled_account_is_refused_at_login(dtr: Dtr) -> None:
    dtr.login("sub-alice")
    assert dtr.api("PATCH", "/users/alice", {"disabled": True}).status_code == 200
    url, cookie = dtr.start()
    dtr.refused(dtr.callback(dtr.provider_redirect(url, "sub-alice"), cookie),
                "account_disabled", "is disabled")


def test_key_rotation_at_the_provider(dtr: Dtr) -> None:
    dtr.login("sub-alice")
    old = dtr.op.kids[0]
    new = dtr.op.rotate_keys()
    assert new != old
    time.sleep(2.2)  # past the validator's least JWKS refetch interval
    assert dtr.login("sub-alice")["username"] == "alice"


def test_oidc_off_answers_404_on_the_login_routes(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DTR_ADMIN_PASSWORD", ADMIN_PW)
    with TestClient(create_app(make_settings(tmp_path, auth={"enabled": True}))) as c:
        assert c.get("/api/v1/auth/oidc").json()["enabled"] is False
        for path in ("/api/v1/auth/oidc/login", "/api/v1/auth/oidc/callback"):
            r = c.get(path)
            assert r.status_code == 404
            assert "OIDC login is not enabled" in r.json()["detail"]


# -- local logins, disabling ------------------------------------------------------------------

def test_local_login_off_refuses_passwords_but_the_bootstrap_admin(make_dtr: Any) -> None:
    dtr = make_dtr(local_login=False)
    assert dtr.api("POST", "/users", {"name": "gina", "password": "gina-password-1"}
                   ).status_code == 201
    r = dtr.api("POST", "/orgs", {"name": "acme"})
    assert r.status_code == 201
    robot = dtr.api("POST", "/orgs/acme/robots", {"name": "ci"}).json()
    r = dtr.api("GET", "/me", headers=basic("gina", "gina-password-1"))
    assert r.status_code == 401
    assert r.json()["detail"] == LOCAL_LOGIN_OFF
    r = dtr.client.get("/auth/token", params={"service": "x"},
                       headers=basic("gina", "gina-password-1"))
    assert r.status_code == 401
    assert r.json()["error_description"] == LOCAL_LOGIN_OFF
    assert dtr.api("GET", "/me").status_code == 200  # the bootstrap admin
    assert dtr.api("GET", "/me", headers=basic(robot["name"], robot["secret"])
                   ).status_code == 200
    assert dtr.client.get("/api/v1/auth/oidc").json()["local_login"] is False
    session = dtr.login("sub-alice")["session_token"]
    pat = dtr.mint_pat(session)
    assert dtr.api("GET", "/me", headers=basic("alice", pat)).status_code == 200


def test_disabling_a_user_revokes_their_pats_and_sessions_for_good(dtr: Dtr) -> None:
    session = dtr.login("sub-alice")["session_token"]
    pat = dtr.mint_pat(session)
    assert dtr.api("PATCH", "/users/alice", {"disabled": True}).status_code == 200
    assert dtr.api("GET", "/me", headers=bearer(pat)).status_code == 401
    assert dtr.api("GET", "/me", headers=bearer(session)).status_code == 401
    assert dtr.api("PATCH", "/users/alice", {"disabled": False}).status_code == 200
    assert dtr.api("GET", "/me", headers=bearer(pat)).status_code == 401
    assert dtr.api("GET", "/me", headers=bearer(session)).status_code == 401
    tokens = dtr.api("GET", "/tokens", headers=bearer(dtr.login("sub-alice")["session_token"]))
    revoked = [t for t in tokens.json() if t["revoked_at"] is not None]
    assert {t["kind"] for t in revoked} == {"pat", "session"}


# -- a live server and a real client -----------------------------------------------------------

def test_live_server_login_then_crane_pushes_and_pulls_with_the_pat(
        op: OpenIDProvider, tmp_path: Path) -> None:
    from tests.e2e.test_clients import Layout  # noqa: PLC0415 - the e2e image builder

    op.set_account("sub-hank", preferred_username="hank", groups=["developers"])
    extra = {"DTR_AUTH_OIDC_ENABLED": "true", "DTR_AUTH_OIDC_ISSUER": op.issuer,
             "DTR_AUTH_OIDC_CLIENT_ID": CLIENT_ID, "DTR_AUTH_OIDC_CLIENT_SECRET": CLIENT_SECRET,
             "DTR_AUTH_OIDC_ALLOW_HTTP": "true", "DTR_AUTH_OIDC_REDIRECT_URL": LIVE_REDIRECT,
             "DTR_AUTH_OIDC_SCOPES": "openid,profile,email,groups"}
    (tmp_path / "srv").mkdir()
    with peers.dtr_server(tmp_path / "srv", workers=2, auth=True, extra=extra) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        admin = ("admin", server.admin_password)
        assert http.post("/api/v1/orgs", json={"name": "acme"}, auth=admin).status_code == 201
        assert http.post("/api/v1/orgs/acme/teams", json={"name": "devs",
                                                          "idp_group": "developers"},
                         auth=admin).status_code == 201
        assert http.post("/api/v1/grants", json={"subject": "team:acme/devs", "org": "acme",
                                                  "role": "developer"},
                         auth=admin).status_code == 201
        r = http.get("/api/v1/auth/oidc/login")
        assert r.status_code == 302, r.text
        cookie = r.cookies[STATE_COOKIE]
        redirected = op.complete_login(r.headers["location"], "sub-hank")
        assert redirected.startswith(LIVE_REDIRECT + "?")
        r = http.get("/api/v1/auth/oidc/callback", params=parse_qs(urlsplit(redirected).query),
                     headers={**JSON, "Cookie": f"{STATE_COOKIE}={cookie}"})
        assert r.status_code == 200, r.text
        assert r.json()["teams"] == ["acme/devs"]
        session = r.json()["session_token"]
        r = http.post("/api/v1/tokens", json={"name": "crane"}, headers=bearer(session))
        assert r.status_code == 201, r.text
        pat = r.json()["secret"]

        layout = Layout(tmp_path / "layout")
        image = layout.image({"hello.txt": b"hello sso\n"})
        layout.tag("v1", image.manifest, image.digest,
                   "application/vnd.oci.image.manifest.v1+json")
        home = tmp_path / "home"
        (home / ".docker").mkdir(parents=True)
        env = {"HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"),
               "PATH": "/usr/bin:/bin"}
        crane = peers.peer("crane")

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([crane, *args], env=env, capture_output=True, text=True,
                                  timeout=120, check=False)

        done = run("auth", "login", server.addr, "-u", "hank", "-p", pat)
        assert done.returncode == 0, done.stderr
        done = run("push", "--insecure", str(tmp_path / "layout"), f"{server.addr}/acme/app:v1")
        assert done.returncode == 0, done.stderr
        done = run("digest", "--insecure", f"{server.addr}/acme/app:v1")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == image.digest
        # the session itself is no docker password
        done = run("auth", "login", server.addr, "-u", "hank", "-p", session)
        denied = run("digest", "--insecure", f"{server.addr}/acme/app:v1")
        assert denied.returncode != 0
        assert "personal access token" in denied.stderr + done.stderr
