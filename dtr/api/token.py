"""The token server of Docker token authentication (``/auth/token``) and the JWKS.

GET (Basic credentials, repeated ``scope``, ``offline_token``) and POST (OAuth2 form:
``password`` and ``refresh_token`` grants) authenticate the caller, ask the policy for each
requested action (``requested ∩ granted``, never an error for missing rights), narrow the
result by a personal access token's scopes, and sign a short-lived ES256 JWT (which this
worker's verifier remembers as verified). Wrong credentials are a 401; too many failures a
429 with ``Retry-After``.

Keyless CI: a CI system's OIDC ID token is exchanged for a registry token acting as the
robot of the federation trust it satisfies (``dtr.auth.federation``), either as the Basic
password of the reserved user name (``auth.federation.username``, ``$oidc``: GET, and the
POST ``password`` grant, so ``docker login``/``helm registry login`` work) or as an RFC 8693
token exchange (POST ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``). The
registry token lives the trust's lifetime (≤ 1 h), never comes with a refresh token, and
its access is ``requested ∩ policy of the robot ∩ the trust's scopes``. A refusal is a 401
with the OAuth error ``invalid_grant`` and a description naming the problem; failures count
against the client address in the login limiter; a provider that is down is a 503.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler

from dtr.api.context import Req, Security, basic_credentials
from dtr.api.federation import federation_service
from dtr.auth.federation import FederationRefused, FederationService
from dtr.auth.oidc import IdTokenRefused
from dtr.auth.principal import ANONYMOUS, Principal
from dtr.auth.scopes import Scope, parse_scopes, scope_allows
from dtr.errors import DtrError, Invalid, RateLimited, Unauthorized, Unavailable
from dtr.policy.actions import REPO_ACTIONS

log = logging.getLogger("dtr.api.token")
JSON = "application/json"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
"""RFC 8693 ``grant_type``."""
SUBJECT_TOKEN_TYPES = ("urn:ietf:params:oauth:token-type:id_token",
                       "urn:ietf:params:oauth:token-type:jwt")
"""``subject_token_type`` values accepted for an exchanged CI ID token."""
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
"""RFC 8693 ``issued_token_type`` (and the only ``requested_token_type``) of the answer."""


class _BadRequest(Invalid):
    """An OAuth request that is malformed (``invalid_request``, 400)."""


def _error(status: int, code: str, message: str,
           headers: dict[str, str] | None = None) -> Response[bytes]:
    body = msgspec.json.encode({"errors": [{"code": code, "message": message}],
                                "error": code.lower(), "error_description": message})
    return Response(body, status_code=status, media_type=JSON, headers=headers or {})


def _oauth_error(status: int, error: str, message: str, reason: str = "",
                 headers: dict[str, str] | None = None) -> Response[bytes]:
    """An OAuth 2 error body (RFC 6749 §5.2) that Docker clients can print too."""
    body: dict[str, Any] = {"error": error, "error_description": message,
                            "errors": [{"code": "UNAUTHORIZED" if status == 401 else
                                        "UNSUPPORTED", "message": message}]}
    if reason:
        body["reason"] = reason
    return Response(msgspec.json.encode(body), status_code=status, media_type=JSON,
                    headers=headers or {})


def _render(exc: DtrError) -> Response[bytes]:
    if isinstance(exc, FederationRefused | IdTokenRefused):
        return _oauth_error(401, "invalid_grant", exc.message, exc.reason,
                            {"WWW-Authenticate": 'Basic realm="dtr"'})
    if isinstance(exc, _BadRequest):
        return _oauth_error(400, "invalid_request", exc.message)
    if isinstance(exc, RateLimited):
        return _error(429, "TOOMANYREQUESTS", exc.message,
                      {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, Unauthorized):
        return _error(401, "UNAUTHORIZED", exc.message,
                      {"WWW-Authenticate": 'Basic realm="dtr"'})
    if isinstance(exc, Invalid):
        return _error(400, "UNSUPPORTED", exc.message)
    status = 503 if isinstance(exc, Unavailable) else 500
    return _error(status, "UNAVAILABLE", exc.message, {"Retry-After": "5"})


class TokenService:
    """Issues registry tokens for authenticated principals."""

    def __init__(self, security: Security) -> None:
        self.security = security

    def grant(self, principal: Principal, scopes: list[Scope]) -> list[dict[str, Any]]:
        """The ``access`` claim: each requested scope narrowed to what is allowed."""
        policy = self.security.policy
        access: list[dict[str, Any]] = []
        for scope in scopes:
            if scope.type == "registry" and scope.name == "catalog":
                access.append({"type": "registry", "name": "catalog", "actions": ["*"]})
                continue
            if scope.type != "repository":
                continue
            wanted = REPO_ACTIONS if "*" in scope.actions else tuple(
                a for a in scope.actions if a in REPO_ACTIONS)
            if principal.scopes is not None:
                wanted = tuple(a for a in wanted
                               if scope_allows(principal.scopes, scope.name, a))
            granted = list(policy.granted(principal.subject, scope.name, wanted))
            access.append({"type": "repository", "name": scope.name, "actions": granted})
        return access

    async def issue(self, request: Req, principal: Principal, scopes: list[Scope],
                    offline: bool, refresh_token: str | None = None, *,
                    lifetime: int | None = None) -> dict[str, Any]:
        """The token response body (``token`` and ``access_token`` equal); ``lifetime``
        overrides the configured token lifetime (federated exchanges).
        """
        sec = self.security
        if scopes:
            # one version read: a grant made a moment ago through another worker or
            # replica counts for the very next login, not only after the next poll
            await sec.policy.refresh()
        access = self.grant(principal, scopes)
        issued = sec.issuer.issue(principal, sec.service(request), access, lifetime=lifetime)
        # the client's next request (often to this worker) skips the signature check
        sec.verifier.remember_issued(issued, sec.issuer)
        body: dict[str, Any] = {"token": issued.token, "access_token": issued.token,
                                "expires_in": issued.expires_in,
                                "issued_at": issued.issued_at}
        if offline and not principal.is_anonymous:
            if refresh_token is None:
                days = sec.settings.token.refresh_lifetime_days
                created = await sec.accounts.create_token(
                    principal.name, f"refresh {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
                    kind="refresh", scopes=principal.scopes,
                    expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=days))
                refresh_token = created.secret
            body["refresh_token"] = refresh_token
        body["scope"] = " ".join(
            f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access if a["actions"])
        return body

    async def exchange(self, request: Req, federation: FederationService, id_token: str,
                       scopes: list[Scope]) -> dict[str, Any]:
        """Exchange a CI ID token and return the token response (Docker and RFC 8693
        fields; never a refresh token).

        Raises:
            FederationRefused, IdTokenRefused: refused (counted against the client address).
            RateLimited: too many failures from this address.
            Unavailable: the provider's keys cannot be fetched.
        """
        sec = self.security
        ip = sec.client_ip(request)
        limiter = sec.credentials.limiter
        await limiter.check("", ip)
        try:
            done = await federation.exchange(
                id_token, client_ip=ip, user_agent=request.headers.get("user-agent", ""))
        except (FederationRefused, IdTokenRefused):
            await limiter.failed("", ip)
            raise
        body = await self.issue(request, done.principal, scopes, False,
                                lifetime=done.lifetime)
        body["issued_token_type"] = ACCESS_TOKEN_TYPE
        body["token_type"] = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
        if not body["scope"]:
            del body["scope"]
        return body


def build_token_routes(security: Security) -> list[HTTPRouteHandler]:
    """``GET``/``POST /auth/token`` and the JWKS, bound to ``security``."""
    service = TokenService(security)
    federation = federation_service(security)
    reserved = security.settings.federation.username

    @get("/auth/token", include_in_schema=False)
    async def token_get(request: Request[Any, Any, Any]) -> Response[bytes]:
        try:
            scopes = parse_scopes(request.query_params.getall("scope", []))
            id_token = _federated_password(request, reserved)
            if id_token is not None:
                body = await service.exchange(request, federation, id_token, scopes)
                return Response(msgspec.json.encode(body), media_type=JSON)
            principal = await _basic_principal(security, request)
            offline = request.query_params.get("offline_token", "").lower() == "true"
            body = await service.issue(request, principal, scopes, offline)
        except DtrError as exc:
            return _render(exc)
        return Response(msgspec.json.encode(body), media_type=JSON)

    @post("/auth/token", include_in_schema=False, status_code=200)
    async def token_post(request: Request[Any, Any, Any]) -> Response[bytes]:
        form = await request.form()
        grant_type = form.get("grant_type", "")
        ip = security.client_ip(request)
        try:
            scopes = parse_scopes([str(v) for v in form.getall("scope", []) if v])
            refresh: str | None = None
            if grant_type == TOKEN_EXCHANGE:
                body = await service.exchange(request, federation, _subject_token(form),
                                              scopes)
                return Response(msgspec.json.encode(body), media_type=JSON)
            if grant_type == "password" and form.get("username") == reserved:
                body = await service.exchange(request, federation,
                                              str(form.get("password", "")), scopes)
                return Response(msgspec.json.encode(body), media_type=JSON)
            if grant_type == "password":
                principal = await security.credentials.verify_basic(
                    str(form.get("username", "")), str(form.get("password", "")), ip)
            elif grant_type == "refresh_token":
                refresh = str(form.get("refresh_token", ""))
                principal = await security.credentials.verify_refresh_token(refresh, ip)
            else:
                return _oauth_error(400, "unsupported_grant_type",
                                    f"unsupported grant_type {grant_type!r}; use password, "
                                    f"refresh_token or {TOKEN_EXCHANGE}")
            offline = form.get("access_type") == "offline" or refresh is not None
            body = await service.issue(request, principal, scopes, offline, refresh)
        except DtrError as exc:
            return _render(exc)
        return Response(msgspec.json.encode(body), media_type=JSON)

    @get(["/auth/jwks.json", "/.well-known/jwks.json"], include_in_schema=False)
    async def jwks() -> Response[bytes]:
        return Response(msgspec.json.encode(security.keys.jwks()), media_type=JSON,
                        headers={"Cache-Control": "public, max-age=300"})

    return [token_get, token_post, jwks]


def _federated_password(request: Req, reserved: str) -> str | None:
    """The ID token of ``Basic <reserved user name>:<ID token>``; None for other callers."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    username, password = basic_credentials(value.strip())
    return password if username == reserved else None


def _subject_token(form: Any) -> str:
    """The ``subject_token`` of an RFC 8693 request, after checking its token types.

    Raises:
        _BadRequest: missing token, or a token type other than an ID token / JWT.
    """
    token = str(form.get("subject_token", ""))
    kind = str(form.get("subject_token_type", ""))
    wanted = str(form.get("requested_token_type", "") or ACCESS_TOKEN_TYPE)
    if not token:
        raise _BadRequest("subject_token is required (the CI system's OIDC ID token)")
    if kind not in SUBJECT_TOKEN_TYPES:
        raise _BadRequest(f"subject_token_type {kind!r}: use {SUBJECT_TOKEN_TYPES[0]} or "
                          f"{SUBJECT_TOKEN_TYPES[1]}")
    if wanted != ACCESS_TOKEN_TYPE:
        raise _BadRequest(f"requested_token_type {wanted!r}: only {ACCESS_TOKEN_TYPE} "
                          "is issued")
    return token


async def _basic_principal(security: Security, request: Req) -> Principal:
    """The caller of a GET token request: Basic credentials, or anonymous without."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if not header:
        return ANONYMOUS
    if scheme.lower() != "basic":
        raise Unauthorized("the token endpoint takes Basic credentials")
    username, password = basic_credentials(value.strip())
    return await security.credentials.verify_basic(username, password,
                                                   security.client_ip(request))
