"""The OpenID Provider test peer (``tests/support/oidc``) against the real oidc-provider
process: discovery and JWKS, an authorization-code + PKCE login completed with authlib's
OAuth2 client and its ID token checked with ``authlib.jose`` against the served JWKS, group
changes between logins, CI workload tokens, short-lived tokens expiring, key rotation, and
the process really stopping. These prove the harness the OIDC tests of dtr build on.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psutil
import pytest
from authlib.deprecate import AuthlibDeprecationWarning

from tests.support.oidc import (
    DEFAULT_SCOPE,
    WORKLOAD_GRANT,
    OIDCFlowError,
    OpenIDProvider,
    pkce_pair,
)

with warnings.catch_warnings():
    # authlib 1.9 deprecates authlib.jose (for joserfc) and its plain-httpx client (for
    # httpx2); both still work. Its own "always" filter is installed by the import above.
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.common.security import generate_token
    from authlib.integrations.httpx_client import OAuth2Client
    from authlib.jose import JsonWebKey, JWTClaims, jwt
    from authlib.jose.errors import ExpiredTokenError
    from authlib.oidc.core import CodeIDToken
from joserfc.errors import ExpiredTokenError as JoserfcExpiredTokenError

# authlib.oidc's claim classes validate through joserfc, authlib.jose's own through authlib.
EXPIRED = (ExpiredTokenError, JoserfcExpiredTokenError)

pytestmark = [pytest.mark.e2e, pytest.mark.peers]

REDIRECT = "http://127.0.0.1:9/callback"  # never fetched: the harness returns the URL
WEB, WEB_SECRET = "dtr-web", "dtr-web-secret-1"
CLI = "dtr-cli"
SHORT, SHORT_SECRET = "dtr-short", "dtr-short-secret-1"
WORKLOAD_SUB = "repo:acme/app:ref:refs/heads/main"


@pytest.fixture(scope="module")
def op(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenIDProvider]:
    provider = OpenIDProvider(tmp_path_factory.mktemp("oidc"))
    provider.add_client(WEB, [REDIRECT], secret=WEB_SECRET)
    provider.add_client(CLI, [REDIRECT])
    provider.add_client(SHORT, [REDIRECT], secret=SHORT_SECRET, id_token_ttl=2)
    provider.set_account("alice", preferred_username="alice", email="alice@example.test",
                         email_verified=True, groups=["developers"])
    with provider:
        yield provider


def code_flow(op: OpenIDProvider, client_id: str, account: str, *, secret: str | None = None,
              scope: str = DEFAULT_SCOPE) -> tuple[dict[str, Any], str]:
    """An authorization-code + PKCE login driven by authlib's client; (token response, nonce)."""
    meta = op.metadata()
    verifier, nonce = generate_token(48), generate_token(16)
    method = "client_secret_basic" if secret else "none"
    with OAuth2Client(client_id, secret, token_endpoint_auth_method=method, scope=scope,
                      redirect_uri=REDIRECT, code_challenge_method="S256",
                      trust_env=False) as oauth:
        url, state = oauth.create_authorization_url(meta["authorization_endpoint"],
                                                    code_verifier=verifier, nonce=nonce)
        assert "code_challenge=" in url
        assert "code_challenge_method=S256" in url
        redirected = op.complete_login(url, account)
        params = parse_qs(urlsplit(redirected).query)
        assert redirected.startswith(REDIRECT + "?"), redirected
        assert params["state"] == [state]
        assert params["iss"] == [op.issuer]
        token = oauth.fetch_token(meta["token_endpoint"], authorization_response=redirected,
                                  state=state, code_verifier=verifier)
    return dict(token), nonce


def verify_id_token(op: OpenIDProvider, id_token: str, client_id: str, nonce: str,
                    jwks: dict[str, Any] | None = None) -> JWTClaims:
    """Verify an ID token from the code flow against the provider's JWKS (iss, aud, nonce)."""
    keys = JsonWebKey.import_key_set(jwks if jwks is not None else op.jwks())
    claims = jwt.decode(id_token, keys, claims_cls=CodeIDToken,
                        claims_options={"iss": {"essential": True, "value": op.issuer}},
                        claims_params={"nonce": nonce, "client_id": client_id})
    claims.validate(leeway=0)
    return claims


def verify_workload(op: OpenIDProvider, token: str, audience: str,
                    jwks: dict[str, Any] | None = None) -> JWTClaims:
    """Verify a workload token against the provider's JWKS (iss, aud, exp)."""
    keys = JsonWebKey.import_key_set(jwks if jwks is not None else op.jwks())
    claims = jwt.decode(token, keys, claims_options={
        "iss": {"essential": True, "value": op.issuer},
        "aud": {"essential": True, "value": audience},
        "sub": {"essential": True}, "exp": {"essential": True}})
    claims.validate(leeway=0)
    return claims


def header(token: str) -> dict[str, Any]:
    """A JWS's protected header (unverified)."""
    head = token.split(".", maxsplit=1)[0]
    return dict(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))))


def test_discovery_and_jwks_are_served_on_loopback(op: OpenIDProvider) -> None:
    meta = httpx.get(op.discovery_url, trust_env=False).json()
    assert meta["issuer"] == op.issuer == f"http://127.0.0.1:{op.port}"
    for endpoint in ("authorization_endpoint", "token_endpoint", "jwks_uri",
                     "userinfo_endpoint"):
        assert meta[endpoint].startswith(op.issuer + "/"), endpoint
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert {"openid", "profile", "email", "groups"} <= set(meta["scopes_supported"])
    assert {"groups", "email", "preferred_username", "repository"} <= set(
        meta["claims_supported"])
    assert WORKLOAD_GRANT in meta["grant_types_supported"]

    jwks = httpx.get(meta["jwks_uri"], trust_env=False).json()
    assert [k["kid"] for k in jwks["keys"]] == op.kids
    for key in jwks["keys"]:
        assert key["kty"] == "RSA"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys(), "private key material"

    listening = [c.laddr for c in psutil.Process(op.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening == [("127.0.0.1", op.port)], listening


def test_code_flow_with_pkce_yields_a_verified_id_token(op: OpenIDProvider) -> None:
    token, nonce = code_flow(op, WEB, "alice", secret=WEB_SECRET)
    assert token["token_type"].lower() == "bearer"
    claims = verify_id_token(op, token["id_token"], WEB, nonce)
    assert claims["iss"] == op.issuer
    assert claims["aud"] == WEB
    assert claims["nonce"] == nonce
    assert claims["sub"] == "alice"
    assert claims["groups"] == ["developers"]
    assert claims["email"] == "alice@example.test"
    assert claims["email_verified"] is True
    assert claims["preferred_username"] == "alice"
    assert header(token["id_token"])["kid"] == op.kids[0]

    # The opaque access token works at the userinfo endpoint too.
    info = httpx.get(op.metadata()["userinfo_endpoint"], trust_env=False,
                     headers={"Authorization": f"Bearer {token['access_token']}"})
    assert info.status_code == 200, info.text
    assert info.json()["groups"] == ["developers"]

    # A tampered signature is rejected by the same verification.
    body, sig = token["id_token"].rsplit(".", 1)
    tampered = f"{body}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
    with pytest.raises(Exception, match="signature"):
        verify_id_token(op, tampered, WEB, nonce)


def test_public_client_needs_pkce(op: OpenIDProvider) -> None:
    token, nonce = code_flow(op, CLI, "alice")
    assert verify_id_token(op, token["id_token"], CLI, nonce)["aud"] == CLI

    url = op.authorization_url(CLI, REDIRECT, state="s1", nonce="n1")  # no code_challenge
    params = parse_qs(urlsplit(op.complete_login(url, "alice")).query)
    assert params["error"] == ["invalid_request"], params
    assert "PKCE" in params["error_description"][0]
    with pytest.raises(OIDCFlowError, match="invalid_request"):
        op.login(CLI, REDIRECT, "alice", nonce="n1")


def test_harness_login_returns_a_code_the_token_endpoint_accepts(op: OpenIDProvider) -> None:
    verifier, challenge = pkce_pair()
    code = op.login(WEB, REDIRECT, "alice", state="st-1", nonce="nonce-1",
                    code_challenge=challenge)
    resp = httpx.post(op.metadata()["token_endpoint"], auth=(WEB, WEB_SECRET), trust_env=False,
                      data={"grant_type": "authorization_code", "code": code,
                            "redirect_uri": REDIRECT, "code_verifier": verifier})
    assert resp.status_code == 200, resp.text
    assert verify_id_token(op, resp.json()["id_token"], WEB, "nonce-1")["sub"] == "alice"
    # A code is single use.
    again = httpx.post(op.metadata()["token_endpoint"], auth=(WEB, WEB_SECRET),
                       trust_env=False,
                       data={"grant_type": "authorization_code", "code": code,
                             "redirect_uri": REDIRECT, "code_verifier": verifier})
    assert again.json()["error"] == "invalid_grant"


def test_group_change_between_logins_reaches_the_next_id_token(op: OpenIDProvider) -> None:
    op.set_account("carol", preferred_username="carol", email="carol@example.test",
                   groups=["developers"])
    pid = op.pid
    first, nonce = code_flow(op, WEB, "carol", secret=WEB_SECRET)
    assert verify_id_token(op, first["id_token"], WEB, nonce)["groups"] == ["developers"]

    op.set_account("carol", preferred_username="carol", email="carol@example.test",
                   groups=["developers", "dtr-admins"])
    second, nonce = code_flow(op, WEB, "carol", secret=WEB_SECRET)
    claims = verify_id_token(op, second["id_token"], WEB, nonce)
    assert claims["groups"] == ["developers", "dtr-admins"]
    assert op.pid == pid, "the accounts file is re-read; no restart needed"

    op.set_account("carol", preferred_username="carol", groups=[])
    third, nonce = code_flow(op, WEB, "carol", secret=WEB_SECRET)
    claims = verify_id_token(op, third["id_token"], WEB, nonce)
    assert claims["groups"] == []
    assert "email" not in claims

    # Without the groups scope the claim is not released.
    no_groups, nonce = code_flow(op, WEB, "alice", secret=WEB_SECRET,
                                 scope="openid profile email")
    assert "groups" not in verify_id_token(op, no_groups["id_token"], WEB, nonce)


def test_extra_claims_land_in_the_id_token(op: OpenIDProvider) -> None:
    op.set_account("erin", preferred_username="erin", repository="acme/app", groups=["ci"])
    pid = op.pid
    token, nonce = code_flow(op, WEB, "erin", secret=WEB_SECRET)
    assert verify_id_token(op, token["id_token"], WEB, nonce)["repository"] == "acme/app"
    assert op.pid == pid

    # A claim name the running process does not release yet: the harness restarts it.
    op.set_account("erin", preferred_username="erin", team="platform", groups=["ci"])
    assert op.pid != pid
    token, nonce = code_flow(op, WEB, "erin", secret=WEB_SECRET)
    assert verify_id_token(op, token["id_token"], WEB, nonce)["team"] == "platform"

    with pytest.raises(ValueError, match="aud"):
        op.set_account("erin", aud="someone-else")
    with pytest.raises(KeyError, match="nobody"):
        op.complete_login(op.authorization_url(WEB, REDIRECT), "nobody")


def test_workload_token_carries_the_chosen_claims_and_audience(op: OpenIDProvider) -> None:
    token = op.workload_token(WORKLOAD_SUB, "dtr.example.test", repository="acme/app",
                              ref="refs/heads/main", repository_owner="acme")
    claims = verify_workload(op, token, "dtr.example.test")
    assert claims["sub"] == WORKLOAD_SUB
    assert claims["aud"] == "dtr.example.test"
    assert claims["repository"] == "acme/app"
    assert claims["ref"] == "refs/heads/main"
    assert claims["repository_owner"] == "acme"
    assert claims["exp"] - claims["iat"] == op.workload_ttl
    assert claims["jti"]
    assert header(token)["kid"] == op.kids[0]
    with pytest.raises(Exception, match="aud"):
        verify_workload(op, token, "another-audience")

    # Stored claims of a workload account, overridden per token; a custom lifetime.
    op.set_account("repo:acme/lib:ref:refs/tags/v1", repository="acme/lib",
                   ref="refs/tags/v1", ref_type="tag")
    token = op.workload_token("repo:acme/lib:ref:refs/tags/v1", "dtr", ttl=60,
                              ref_type="branch")
    claims = verify_workload(op, token, "dtr")
    assert (claims["repository"], claims["ref"], claims["ref_type"]) == (
        "acme/lib", "refs/tags/v1", "branch")
    assert claims["exp"] - claims["iat"] == 60
    second = verify_workload(op, op.workload_token("repo:acme/lib:ref:refs/tags/v1", "dtr"),
                             "dtr")
    assert second["jti"] != claims["jti"]

    with pytest.raises(OIDCFlowError, match="unknown account"):
        op.workload_token("repo:nobody/nothing:ref:refs/heads/main", "dtr")
    with pytest.raises(ValueError, match="aud"):
        op.workload_token(WORKLOAD_SUB, "dtr", aud="other")


def test_short_ttl_tokens_expire(op: OpenIDProvider) -> None:
    token, nonce = code_flow(op, SHORT, "alice", secret=SHORT_SECRET)
    workload = op.workload_token(WORKLOAD_SUB, "dtr", ttl=2, repository="acme/app")
    claims = verify_id_token(op, token["id_token"], SHORT, nonce)
    assert claims["exp"] - claims["iat"] == 2
    workload_exp = verify_workload(op, workload, "dtr")["exp"]
    assert workload_exp - claims["iat"] in (2, 3)

    # Other clients keep the default lifetime.
    default, nonce_default = code_flow(op, WEB, "alice", secret=WEB_SECRET)
    long = verify_id_token(op, default["id_token"], WEB, nonce_default)
    assert long["exp"] - long["iat"] == op.id_token_ttl

    # Past both expiries by more than a whole second (validators compare whole seconds).
    time.sleep(max(0.0, max(claims["exp"], workload_exp) + 2.1 - time.time()))
    with pytest.raises(EXPIRED):
        verify_id_token(op, token["id_token"], SHORT, nonce)
    with pytest.raises(EXPIRED):
        verify_workload(op, workload, "dtr")


def test_rotate_keys_publishes_and_uses_the_new_key(tmp_path: Path) -> None:
    op = OpenIDProvider(tmp_path)
    op.add_client(WEB, [REDIRECT], secret=WEB_SECRET)
    op.set_account("alice", groups=["developers"])
    with op:
        old_kid = op.kids[0]
        port = op.port
        before = op.workload_token(WORKLOAD_SUB, "dtr", repository="acme/app")
        assert header(before)["kid"] == old_kid

        new_kid = op.rotate_keys(keep_old=True)
        assert new_kid != old_kid
        assert op.port == port
        assert op.issuer == f"http://127.0.0.1:{port}"
        jwks = op.jwks()
        assert [k["kid"] for k in jwks["keys"]] == [new_kid, old_kid]
        token, nonce = code_flow(op, WEB, "alice", secret=WEB_SECRET)
        assert header(token["id_token"])["kid"] == new_kid
        verify_id_token(op, token["id_token"], WEB, nonce, jwks)
        verify_workload(op, before, "dtr", jwks)  # the old key still verifies old tokens
        assert header(op.workload_token(WORKLOAD_SUB, "dtr", repository="a/b"))["kid"] == new_kid

        newest = op.rotate_keys()
        jwks = op.jwks()
        assert [k["kid"] for k in jwks["keys"]] == [newest]
        with pytest.raises(ValueError):
            verify_workload(op, before, "dtr", jwks)  # its kid is gone from the JWKS
        token, nonce = code_flow(op, WEB, "alice", secret=WEB_SECRET)
        assert header(token["id_token"])["kid"] == newest


def test_stop_kills_the_process(tmp_path: Path) -> None:
    op = OpenIDProvider(tmp_path)
    op.start()
    pid, port = op.pid, op.port
    assert pid is not None
    assert psutil.pid_exists(pid)
    op.stop()
    assert not op.running
    assert not psutil.pid_exists(pid)
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))
    op.stop()  # idempotent
    op.close()
    assert tmp_path.exists(), "a caller-owned work folder is kept"
    assert os.listdir(tmp_path)
