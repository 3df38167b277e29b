"""``dtr.auth.oidc`` against a real OpenID Provider (oidc-provider on 127.0.0.1): genuine ID
tokens accepted, and every refusal reason produced by a token the provider issued (wrong
audience, expiry) or one forged with the provider's own private key (issuer, time window,
missing claims, nonce) or with a key it does not publish; key rotation, an unreachable
provider, and a discovery document that names another issuer.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from dtr.auth.oidc import (
    REASONS,
    IdTokenRefused,
    Provider,
    Providers,
    looks_like_jwt,
    peek_issuer,
)
from dtr.errors import Unavailable
from tests.support.oidc import OpenIDProvider

pytestmark = pytest.mark.anyio
WORKLOAD = "repo:acme/app:ref:refs/heads/main"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    with OpenIDProvider() as provider:
        provider.set_account(WORKLOAD, repository="acme/app", ref="refs/heads/main")
        yield provider


@pytest.fixture
async def providers() -> AsyncIterator[Providers]:
    found = Providers(allow_http=True, clock_skew=0)
    yield found
    await found.aclose()


def private_key(op: OpenIDProvider) -> RSAKey:
    """The provider's current signing key (its private JWK from the harness's key file)."""
    keys = json.loads((op.workdir / "jwks.json").read_text())["keys"]
    return RSAKey.import_key(keys[0])


def forge(op: OpenIDProvider, key: Any = None, alg: str = "RS256", drop: tuple[str, ...] = (),
          **claims: Any) -> str:
    """An ID token signed with the provider's key (or ``key``), claims overridable."""
    now = int(time.time())
    body: dict[str, Any] = {"iss": op.issuer, "sub": WORKLOAD, "aud": "dtr", "iat": now,
                            "exp": now + 300, **claims}
    for name in drop:
        body.pop(name, None)
    signer = private_key(op) if key is None else key
    header: dict[str, Any] = {"alg": alg}
    if getattr(signer, "kid", None):
        header["kid"] = signer.kid
    return jwt.encode(header, body, signer, algorithms=[alg])


async def refused(provider: Provider, token: str, reason: str, *, audience: str = "dtr",
                  nonce: str | None = None) -> IdTokenRefused:
    assert reason in REASONS
    with pytest.raises(IdTokenRefused) as err:
        await provider.verify_id_token(token, audience=audience, nonce=nonce)
    assert err.value.reason == reason, err.value.message
    assert err.value.detail == {"reason": reason}
    return err.value


async def test_a_genuine_token_is_accepted(op: OpenIDProvider, providers: Providers) -> None:
    token = op.workload_token(WORKLOAD, "dtr", repository="acme/app")
    assert looks_like_jwt(token)
    assert peek_issuer(token) == op.issuer
    got = await providers.get(op.issuer).verify_id_token(token, audience="dtr")
    assert (got.issuer, got.subject, got.audience) == (op.issuer, WORKLOAD, ("dtr",))
    assert got.claims["repository"] == "acme/app"
    assert got.key_id == op.kids[0]
    assert got.token_id
    assert got.expires_at > time.time()


async def test_wrong_audience(op: OpenIDProvider, providers: Providers) -> None:
    token = op.workload_token(WORKLOAD, "someone-else")
    err = await refused(providers.get(op.issuer), token, "wrong_audience")
    assert "'dtr'" in err.message
    assert "someone-else" in err.message


async def test_several_audiences_need_the_authorized_party(op: OpenIDProvider,
                                                         providers: Providers) -> None:
    provider = providers.get(op.issuer)
    ok = forge(op, aud=["other", "dtr"], azp="dtr")
    assert (await provider.verify_id_token(ok, audience="dtr")).audience == ("other", "dtr")
    await refused(provider, forge(op, aud=["other", "dtr"], azp="other"), "wrong_audience")


async def test_wrong_issuer(op: OpenIDProvider, providers: Providers) -> None:
    await refused(providers.get(op.issuer), forge(op, iss="https://evil.example"),
                  "wrong_issuer")


async def test_time_window(op: OpenIDProvider, providers: Providers) -> None:
    provider = providers.get(op.issuer)
    now = int(time.time())
    await refused(provider, forge(op, exp=now - 5), "expired")
    await refused(provider, forge(op, nbf=now + 120), "not_yet_valid")
    await refused(provider, forge(op, iat=now + 120), "issued_in_future")
    skewed = Providers(allow_http=True, clock_skew=60)
    try:  # within the skew: accepted
        await skewed.get(op.issuer).verify_id_token(forge(op, exp=now - 5, nbf=now + 30),
                                                    audience="dtr")
    finally:
        await skewed.aclose()


async def test_a_short_lived_token_expires(op: OpenIDProvider, providers: Providers) -> None:
    # exp is whole seconds after a whole-second iat: a 1 s token can be expired when first
    # checked, so it lives 3 s (at least 2) and the test waits until its exp has passed
    token = op.workload_token(WORKLOAD, "dtr", ttl=3)
    provider = providers.get(op.issuer)
    await provider.verify_id_token(token, audience="dtr")
    expires = json.loads(_unb64(token.split(".")[1]))["exp"]
    time.sleep(max(0.0, expires - time.time()) + 0.1)
    await refused(provider, token, "expired")


async def test_tampered_and_foreign_signatures(op: OpenIDProvider, providers: Providers) -> None:
    provider = providers.get(op.issuer)
    token = op.workload_token(WORKLOAD, "dtr", repository="acme/app")
    head, body, sig = token.split(".")
    claims = json.loads(_unb64(body))
    claims["repository"] = "acme/other"
    await refused(provider, f"{head}.{_b64(json.dumps(claims).encode())}.{sig}",
                  "bad_signature")
    # a key the provider does not publish, under a kid of its own, and under the provider's
    stranger = RSAKey.generate_key(2048, parameters={"kid": "not-published"}, private=True)
    err = await refused(provider, forge(op, key=stranger), "unknown_key")
    assert "not-published" in err.message
    impostor = RSAKey.generate_key(2048, parameters={"kid": op.kids[0]}, private=True)
    await refused(provider, forge(op, key=impostor), "bad_signature")


async def test_algorithms_other_than_asymmetric_signatures(op: OpenIDProvider,
                                                         providers: Providers) -> None:
    provider = providers.get(op.issuer)
    # HS256 keyed with the provider's public key (the classic confusion attack), and none
    public = json.dumps(op.jwks()["keys"][0]).encode()
    hs = jwt.encode({"alg": "HS256", "kid": op.kids[0]},
                    {"iss": op.issuer, "sub": WORKLOAD, "aud": "dtr"},
                    OctKey.import_key(public), algorithms=["HS256"])
    await refused(provider, hs, "unsupported_algorithm")
    head = _b64(json.dumps({"alg": "none"}).encode())
    body = _b64(json.dumps({"iss": op.issuer, "sub": WORKLOAD, "aud": "dtr"}).encode())
    await refused(provider, f"{head}.{body}.", "unsupported_algorithm")


async def test_malformed_and_incomplete(op: OpenIDProvider, providers: Providers) -> None:
    provider = providers.get(op.issuer)
    await refused(provider, "not-a-jwt", "malformed")
    await refused(provider, "a.b.c", "malformed")
    for claim in ("sub", "exp", "iat", "aud"):
        err = await refused(provider, forge(op, drop=(claim,)), "missing_claim")
        assert claim in err.message
    await refused(provider, forge(op, exp="tomorrow"), "malformed")
    with pytest.raises(IdTokenRefused) as peeked:
        peek_issuer("a.b")
    assert peeked.value.reason == "malformed"
    assert not looks_like_jwt("user-password")


async def test_nonce(op: OpenIDProvider, providers: Providers) -> None:
    provider = providers.get(op.issuer)
    token = forge(op, nonce="n-123")
    assert (await provider.verify_id_token(token, audience="dtr", nonce="n-123")).subject
    await refused(provider, token, "nonce_mismatch", nonce="n-456")
    await refused(provider, forge(op), "nonce_mismatch", nonce="n-123")


async def test_key_rotation_and_an_unreachable_provider() -> None:
    with OpenIDProvider() as op:
        op.set_account(WORKLOAD, repository="acme/app")
        providers = Providers(allow_http=True, clock_skew=0)
        try:
            provider = providers.get(op.issuer)
            before = op.workload_token(WORKLOAD, "dtr")
            await provider.verify_id_token(before, audience="dtr")
            new_kid = op.rotate_keys()
            time.sleep(2.1)  # past the refetch interval
            after = op.workload_token(WORKLOAD, "dtr")
            assert (await provider.verify_id_token(after, audience="dtr")).key_id == new_kid
            await refused(provider, before, "unknown_key")  # the old key is gone
            op.stop()
            # keys and discovery are cached: a known key still verifies with the provider down
            await provider.verify_id_token(after, audience="dtr")
            cold = Providers(allow_http=True).get(op.issuer)
            with pytest.raises(Unavailable, match="unreachable"):
                await cold.verify_id_token(after, audience="dtr")
        finally:
            await providers.aclose()


async def test_discovery_must_name_the_same_issuer(op: OpenIDProvider) -> None:
    providers = Providers(allow_http=True)
    try:
        aliased = op.issuer.replace("127.0.0.1", "localhost")
        with pytest.raises(Unavailable, match="names issuer"):
            await providers.get(aliased).metadata()
    finally:
        await providers.aclose()


def test_only_https_issuers_unless_allowed() -> None:
    with pytest.raises(IdTokenRefused) as err:
        Providers().get("http://idp.example")
    assert err.value.reason == "wrong_issuer"
    Providers().get("https://idp.example")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
