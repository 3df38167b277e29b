"""OpenID Providers as dtr sees them: discovery, signing keys (JWKS) with rotation, and
ID-token validation. The one place that decides whether a provider's ID token is genuine;
OIDC login (``dtr.auth.sso``) and keyless CI (``dtr.auth.federation``) both call it.

Validation (OpenID Connect Core 3.1.3.7, RFC 8725):

* the token is a compact JWS whose ``alg`` is an asymmetric algorithm (never ``none`` or
  HMAC) and whose ``kid`` names a key of the issuer's JWKS; an unknown ``kid`` refetches
  the JWKS once (keys rotate), at most every :data:`JWKS_MIN_REFRESH` seconds;
* ``iss`` equals the provider's issuer exactly; ``aud`` contains the expected audience
  (and ``azp``, when there are several audiences, names it);
* ``exp`` is in the future, ``nbf`` and ``iat`` not in the future, each with the configured
  clock skew; ``sub`` is present;
* ``nonce`` matches when the caller expects one (login), compared in constant time.

Every refusal is an :class:`IdTokenRefused` carrying a stable ``reason`` (see
:data:`REASONS`) and a message that says what to fix. A provider that cannot be reached is
``Unavailable``. Discovery documents are cached for :data:`METADATA_TTL` seconds and the last
good copy is used while the provider is down.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import KeySet

from dtr.errors import Unauthorized, Unavailable

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
              "ES512", "EdDSA")
"""Signature algorithms accepted on ID tokens (asymmetric only)."""
REASONS = ("malformed", "unsupported_algorithm", "unknown_key", "bad_signature",
           "wrong_issuer", "wrong_audience", "expired", "not_yet_valid", "issued_in_future",
           "missing_claim", "nonce_mismatch")
"""Every ``IdTokenRefused.reason``."""
METADATA_TTL = 3600.0
"""Seconds a discovery document (and its JWKS) is trusted before it is fetched again."""
JWKS_MIN_REFRESH = 2.0
"""Least seconds between two JWKS fetches caused by unknown key ids."""
MAX_TOKEN_BYTES = 16 * 1024
_REGISTRY = jws.JWSRegistry(algorithms=list(ALGORITHMS))


class IdTokenRefused(Unauthorized):
    """An ID token failed validation.

    Args:
        reason: one of :data:`REASONS`.
        message: what is wrong, for the client and the audit log.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, {"reason": reason})
        self.reason = reason


@dataclass(frozen=True, slots=True)
class IdToken:
    """A validated ID token.

    Attributes:
        issuer: ``iss``.
        subject: ``sub``.
        audience: ``aud`` as a tuple.
        claims: every claim, as the provider sent them.
        expires_at: ``exp`` (seconds since the epoch).
        token_id: ``jti`` if present, else the SHA-256 of the token (for audit records).
        key_id: the ``kid`` of the key that signed it.
    """

    issuer: str
    subject: str
    audience: tuple[str, ...]
    claims: Mapping[str, Any]
    expires_at: int
    token_id: str
    key_id: str


def _b64json(part: str) -> dict[str, Any]:
    padded = part + "=" * (-len(part) % 4)
    value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 - callers catch ValueError
    return value


def peek_issuer(token: str) -> str:
    """The ``iss`` claim of a compact JWT, **unverified** (to pick the provider or trust
    that will verify it).

    Raises:
        IdTokenRefused: not a compact JWT, or no string ``iss``.
    """
    parts = token.split(".")
    if len(token) > MAX_TOKEN_BYTES or len(parts) != 3:
        raise IdTokenRefused("malformed", "the ID token is not a compact JWT")
    try:
        iss = _b64json(parts[1]).get("iss")
    except ValueError:
        raise IdTokenRefused("malformed", "the ID token is not a compact JWT") from None
    if not isinstance(iss, str) or not iss:
        raise IdTokenRefused("missing_claim", "the ID token has no iss claim")
    return iss


def looks_like_jwt(value: str) -> bool:
    """True when ``value`` has the shape of a compact JWS whose header names an algorithm."""
    parts = value.split(".")
    if len(parts) != 3 or len(value) > MAX_TOKEN_BYTES:
        return False
    try:
        return "alg" in _b64json(parts[0])
    except ValueError:
        return False


class Provider:
    """One OpenID Provider (one issuer): its discovery document and keys.

    Args:
        issuer: the issuer URL exactly as tokens carry it.
        http: the client used for discovery and JWKS fetches.
        clock_skew: seconds of tolerance on ``exp``, ``nbf`` and ``iat``.
    """

    def __init__(self, issuer: str, http: httpx.AsyncClient, *, clock_skew: int = 60) -> None:
        self.issuer = issuer
        self._http = http
        self.clock_skew = clock_skew
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0
        self._lock = asyncio.Lock()

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            resp = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise Unavailable(f"identity provider {self.issuer} unreachable ({what}): "
                              f"{exc}") from exc
        if resp.status_code != 200:
            raise Unavailable(f"identity provider {self.issuer}: {what} answered HTTP "
                              f"{resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            raise Unavailable(f"identity provider {self.issuer}: {what} is not JSON") from None
        if not isinstance(data, dict):
            raise Unavailable(f"identity provider {self.issuer}: {what} is not a JSON object")
        return data

    async def metadata(self) -> Mapping[str, Any]:
        """The discovery document (cached; the last good copy while the provider is down).

        Raises:
            Unavailable: never fetched and cannot be fetched, or it names another issuer.
        """
        now = time.monotonic()
        if self._metadata is not None and now - self._metadata_at < METADATA_TTL:
            return self._metadata
        async with self._lock:
            if self._metadata is not None and time.monotonic() - self._metadata_at < METADATA_TTL:
                return self._metadata
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                doc = await self._get_json(url, "discovery")
            except Unavailable:
                if self._metadata is not None:
                    return self._metadata
                raise
            if doc.get("issuer") != self.issuer:
                raise Unavailable(f"identity provider discovery at {url} names issuer "
                                  f"{doc.get('issuer')!r}, not {self.issuer!r}")
            if not isinstance(doc.get("jwks_uri"), str):
                raise Unavailable(f"identity provider {self.issuer} publishes no jwks_uri")
            self._metadata, self._metadata_at = doc, time.monotonic()
            return doc

    async def _key_set(self, *, refresh: bool = False) -> KeySet:
        now = time.monotonic()
        fresh = self._keys is not None and now - self._keys_at < METADATA_TTL
        if fresh and not refresh:
            assert self._keys is not None
            return self._keys
        if refresh and self._keys is not None and now - self._keys_at < JWKS_MIN_REFRESH:
            return self._keys
        meta = await self.metadata()
        async with self._lock:
            if self._keys is not None and time.monotonic() - self._keys_at < JWKS_MIN_REFRESH:
                return self._keys
            try:
                data = await self._get_json(str(meta["jwks_uri"]), "JWKS")
            except Unavailable:
                if self._keys is not None:
                    return self._keys
                raise
            keys = [k for k in data.get("keys", []) if isinstance(k, dict)
                    and k.get("use", "sig") == "sig" and k.get("kty") in ("RSA", "EC", "OKP")]
            try:
                self._keys = KeySet.import_key_set({"keys": keys})
            except (JoseError, ValueError) as exc:
                raise Unavailable(f"identity provider {self.issuer}: unusable JWKS: "
                                  f"{exc}") from exc
            self._keys_at = time.monotonic()
            return self._keys

    async def _candidate_keys(self, kid: str | None, alg: str) -> list[Any]:
        """The published keys that may have signed a token with this header (refetching the
        JWKS once when none does: the provider may have rotated its keys).
        """
        keys = await self._key_set()
        for attempt in range(2):
            candidates = [k for k in keys.keys if (kid is None or k.kid == kid)
                          and k.get("alg") in (None, alg)]
            if candidates:
                return candidates
            if attempt == 0:
                keys = await self._key_set(refresh=True)
        raise IdTokenRefused("unknown_key", f"the ID token is signed with key {kid!r}, which "
                             f"{self.issuer} does not publish")

    async def verify_id_token(self, token: str, *, audience: str, nonce: str | None = None,
                              now: float | None = None) -> IdToken:
        """Validate ``token`` as an ID token of this provider for ``audience``.

        Raises:
            IdTokenRefused: any check failed (the reason says which).
            Unavailable: the provider's keys cannot be fetched.
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise IdTokenRefused("malformed", "the ID token is too large")
        try:
            header = jws.extract_compact(token.encode("ascii")).protected
        except (JoseError, ValueError, UnicodeEncodeError):
            raise IdTokenRefused("malformed", "the ID token is not a compact JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise IdTokenRefused("unsupported_algorithm",
                                 f"ID tokens signed with {alg!r} are not accepted")
        kid = header.get("kid")
        decoded = None
        for key in await self._candidate_keys(kid if isinstance(kid, str) else None, alg):
            try:
                decoded = jwt.decode(token, key, algorithms=[alg], registry=_REGISTRY)
                break
            except BadSignatureError:
                continue
            except (JoseError, ValueError) as exc:
                raise IdTokenRefused("malformed",
                                     f"the ID token cannot be decoded: {exc}") from None
        if decoded is None:
            raise IdTokenRefused("bad_signature", "the ID token's signature does not "
                                 f"verify with {self.issuer}'s key")
        claims = dict(decoded.claims)
        self._check_claims(claims, audience, nonce, time.time() if now is None else now)
        aud = claims["aud"]
        return IdToken(
            issuer=self.issuer, subject=str(claims["sub"]),
            audience=(aud,) if isinstance(aud, str) else tuple(str(a) for a in aud),
            claims=claims, expires_at=int(claims["exp"]),
            token_id=str(claims.get("jti") or hashlib.sha256(token.encode()).hexdigest()),
            key_id=str(kid or ""))

    def _check_claims(self, claims: dict[str, Any], audience: str, nonce: str | None,
                      now: float) -> None:
        for name in ("iss", "sub", "aud", "exp", "iat"):
            if name not in claims:
                raise IdTokenRefused("missing_claim", f"the ID token has no {name} claim")
        if claims["iss"] != self.issuer:
            raise IdTokenRefused("wrong_issuer", f"the ID token was issued by "
                                 f"{claims['iss']!r}, not {self.issuer!r}")
        aud = claims["aud"]
        auds = [aud] if isinstance(aud, str) else list(aud) if isinstance(aud, list) else []
        if audience not in auds:
            raise IdTokenRefused("wrong_audience", f"the ID token is for audience {aud!r}; "
                                 f"this registry expects {audience!r}")
        if len(auds) > 1 and claims.get("azp") not in (None, audience):
            raise IdTokenRefused("wrong_audience", f"the ID token's authorized party is "
                                 f"{claims.get('azp')!r}, not {audience!r}")
        skew = self.clock_skew
        for name in ("exp", "iat", "nbf"):
            if name in claims and not isinstance(claims[name], int | float):
                raise IdTokenRefused("malformed", f"the ID token's {name} is not a number")
        if claims["exp"] + skew <= now:
            raise IdTokenRefused("expired", "the ID token has expired; get a new one")
        if "nbf" in claims and claims["nbf"] - skew > now:
            raise IdTokenRefused("not_yet_valid", "the ID token is not valid yet (nbf is in "
                                 "the future; check the clocks)")
        if claims["iat"] - skew > now:
            raise IdTokenRefused("issued_in_future", "the ID token was issued in the future "
                                 "(check the clocks)")
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got, nonce):
                raise IdTokenRefused("nonce_mismatch", "the ID token's nonce does not match "
                                     "this login; start the login again")


class Providers:
    """The providers this process talks to, one :class:`Provider` per issuer, sharing
    one HTTP client.

    Args:
        allow_http: accept ``http://`` issuers (loopback tests only).
        ca_file: PEM bundle to trust for provider TLS; empty = system CAs.
        clock_skew: passed to each provider.
        timeout: seconds per HTTP request to a provider.
    """

    def __init__(self, *, allow_http: bool = False, ca_file: str = "", clock_skew: int = 60,
                 timeout: float = 10.0) -> None:
        self.allow_http = allow_http
        self.clock_skew = clock_skew
        verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=ca_file)
                                         if ca_file else True)
        self.http = httpx.AsyncClient(verify=verify, timeout=timeout, follow_redirects=False)
        self._providers: dict[str, Provider] = {}

    def check_issuer(self, issuer: str) -> None:
        """Refuse issuers that are not https (or http when allowed).

        Raises:
            IdTokenRefused: ``wrong_issuer``.
        """
        scheme = issuer.partition("://")[0]
        if scheme != "https" and not (scheme == "http" and self.allow_http):
            raise IdTokenRefused("wrong_issuer", f"issuer {issuer!r} is not an https URL")

    def get(self, issuer: str) -> Provider:
        """The provider of ``issuer`` (created on first use).

        Raises:
            IdTokenRefused: ``wrong_issuer`` for a non-https issuer.
        """
        found = self._providers.get(issuer)
        if found is None:
            self.check_issuer(issuer)
            found = self._providers[issuer] = Provider(issuer, self.http,
                                                       clock_skew=self.clock_skew)
        return found

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.http.aclose()
