"""The token server of Docker token authentication (``/auth/token``) and the JWKS.

GET (Basic credentials, repeated ``scope``, ``offline_token``) and POST (OAuth2 form:
``password`` and ``refresh_token`` grants) authenticate the caller, ask the policy for each
requested action (``requested ∩ granted``, never an error for missing rights), narrow the
result by a personal access token's scopes, and sign a short-lived ES256 JWT (which this
worker's verifier remembers as verified). Wrong credentials are a 401; too many failures a
429 with ``Retry-After``.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler

from dtr.api.context import Req, Security, basic_credentials
from dtr.auth.principal import ANONYMOUS, Principal
from dtr.auth.scopes import Scope, parse_scopes, scope_allows
from dtr.errors import DtrError, Invalid, RateLimited, Unauthorized, Unavailable
from dtr.policy.actions import REPO_ACTIONS

log = logging.getLogger("dtr.api.token")
JSON = "application/json"


def _error(status: int, code: str, message: str,
           headers: dict[str, str] | None = None) -> Response[bytes]:
    body = msgspec.json.encode({"errors": [{"code": code, "message": message}],
                                "error": code.lower(), "error_description": message})
    return Response(body, status_code=status, media_type=JSON, headers=headers or {})


def _render(exc: DtrError) -> Response[bytes]:
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
                    offline: bool, refresh_token: str | None = None) -> dict[str, Any]:
        """The token response body (``token`` and ``access_token`` equal)."""
        sec = self.security
        if scopes:
            # one version read: a grant made a moment ago through another worker or
            # replica counts for the very next login, not only after the next poll
            await sec.policy.refresh()
        access = self.grant(principal, scopes)
        issued = sec.issuer.issue(principal, sec.service(request), access)
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


def build_token_routes(security: Security) -> list[HTTPRouteHandler]:
    """``GET``/``POST /auth/token`` and the JWKS, bound to ``security``."""
    service = TokenService(security)

    @get("/auth/token", include_in_schema=False)
    async def token_get(request: Request[Any, Any, Any]) -> Response[bytes]:
        try:
            principal = await _basic_principal(security, request)
            scopes = parse_scopes(request.query_params.getall("scope", []))
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
            scopes = parse_scopes([str(form.get("scope", ""))] if form.get("scope") else [])
            refresh: str | None = None
            if grant_type == "password":
                principal = await security.credentials.verify_basic(
                    str(form.get("username", "")), str(form.get("password", "")), ip)
            elif grant_type == "refresh_token":
                refresh = str(form.get("refresh_token", ""))
                principal = await security.credentials.verify_refresh_token(refresh, ip)
            else:
                return _error(400, "UNSUPPORTED",
                              f"unsupported grant_type {grant_type!r}; use password or "
                              "refresh_token")
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
