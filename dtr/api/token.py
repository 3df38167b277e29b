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

Audit: the authenticated caller is named in the request context; logins are reported by
the credential verifier (``auth.login``); every token issued is ``auth.token.issued``
(requested and granted scopes, the token's ``jti``) with one ``access.denied`` per
requested repository action that was not granted (the policy's rule and reason, or
``token_scope`` when a personal access token's scopes left it out); a refresh token is
created together with its ``token.created`` event, in one transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from sqlalchemy import Connection

from dtr.api.context import Req, Security, basic_credentials
from dtr.api.federation import federation_service
from dtr.api.oci.audit import TOKEN_CREATED, TOKEN_ISSUED, access_denied
from dtr.auth import accounts
from dtr.auth.accounts import NewSecret, TokenInfo
from dtr.auth.federation import ACTION as FEDERATION_ACTION
from dtr.auth.federation import FederationRefused, FederationService
from dtr.auth.oidc import IdTokenRefused
from dtr.auth.principal import ANONYMOUS, Principal
from dtr.auth.scopes import Scope, parse_scopes, scope_allows
from dtr.errors import DtrError, Invalid, RateLimited, Unauthorized, Unavailable
from dtr.events import SecurityEvent, current_context
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


MAX_DENIED_EVENTS = 32
"""``access.denied`` events one token request records at most (a request can name
thousands of scopes); the rest are counted in its ``auth.token.issued`` event, whose
``requested`` and ``granted`` lists still show every one."""
Refusal = tuple[str, str, bool]
"""A requested repository action not granted: (repository, action, by the personal access
token's scopes rather than the policy); action ``*`` when a ``*`` scope got nothing."""


class TokenService:
    """Issues registry tokens for authenticated principals."""

    def __init__(self, security: Security) -> None:
        self.security = security

    def grant(self, principal: Principal, scopes: list[Scope],
              refused: list[Refusal] | None = None) -> list[dict[str, Any]]:
        """The ``access`` claim: each requested scope narrowed to what is allowed.

        Requested repository actions left out are appended to ``refused`` (for a ``*``
        scope, only when nothing at all is granted: ``*`` asks for whatever is allowed).
        """
        policy = self.security.policy
        access: list[dict[str, Any]] = []
        for scope in scopes:
            if scope.type == "registry" and scope.name == "catalog":
                access.append({"type": "registry", "name": "catalog", "actions": ["*"]})
                continue
            if scope.type != "repository":
                continue
            star = "*" in scope.actions
            asked = REPO_ACTIONS if star else tuple(
                a for a in scope.actions if a in REPO_ACTIONS)
            wanted = asked
            if principal.scopes is not None:
                wanted = tuple(a for a in asked
                               if scope_allows(principal.scopes, scope.name, a))
            granted = list(policy.granted(principal.subject, scope.name, wanted))
            access.append({"type": "repository", "name": scope.name, "actions": granted})
            if refused is not None and len(granted) < len(asked):
                if star:
                    if not granted:
                        refused.append((scope.name, "*", not wanted))
                else:
                    refused.extend((scope.name, a, a not in wanted) for a in asked
                                   if a not in granted)
        return access

    async def _report(self, principal: Principal, scopes: list[Scope],
                      access: list[dict[str, Any]], refused: list[Refusal], jti: str,
                      expires_in: int) -> None:
        """``access.denied`` for each refusal (the policy's explanation), then
        ``auth.token.issued``.
        """
        events = self.security.events
        for repository, action, by_token in refused[:MAX_DENIED_EVENTS]:
            if by_token:
                await events.emit(access_denied(
                    repository, action, "token_scope",
                    token_scopes=list(principal.scopes or ())))
                continue
            decision = self.security.policy.decide(
                principal.subject, repository, "pull" if action == "*" else action)
            await events.emit(access_denied(repository, action, decision.reason,
                                            decision.line, chain=list(decision.chain)))
        detail: dict[str, Any] = {
            "requested": [str(s) for s in scopes],
            "granted": [f"{a['type']}:{a['name']}:{','.join(a['actions'])}"
                        for a in access if a["actions"]],
            "expires_in": expires_in}
        if principal.token_id and principal.method in ("pat", "refresh_token", "federation"):
            detail["credential_id"] = principal.token_id
        if len(refused) > MAX_DENIED_EVENTS:
            detail["denials_not_recorded"] = len(refused) - MAX_DENIED_EVENTS
        await events.emit(SecurityEvent(
            action=TOKEN_ISSUED, outcome="allow", actor_kind=principal.kind,
            actor=principal.name, actor_id="" if principal.is_anonymous else principal.subject,
            method=principal.method, token_id=jti, detail=detail))

    async def _create_refresh_token(self, principal: Principal) -> str:
        """A new refresh token for ``principal`` (the secret), created in one transaction
        with its ``token.created`` event.
        """
        sec = self.security
        days = sec.settings.token.refresh_lifetime_days
        label = f"refresh {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}"
        expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)

        def create(conn: Connection) -> NewSecret[TokenInfo]:
            created = accounts.create_token(conn, principal.name, label, kind="refresh",
                                            scopes=principal.scopes, expires_at=expires_at)
            info = created.info
            sec.events.record(conn, SecurityEvent(
                action=TOKEN_CREATED, outcome="allow", resource=f"token:{info.id}",
                token_id=info.id, detail={
                    "kind": info.kind, "name": info.name, "account": info.account,
                    "scopes": None if info.scopes is None else list(info.scopes),
                    "expires_at": None if info.expires_at is None
                    else info.expires_at.isoformat()}))
            return created

        return (await sec.db.run(create, write=True)).secret

    async def issue(self, request: Req, principal: Principal, scopes: list[Scope],
                    offline: bool, refresh_token: str | None = None, *,
                    lifetime: int | None = None) -> dict[str, Any]:
        """The token response body (``token`` and ``access_token`` equal); ``lifetime``
        overrides the configured token lifetime (federated exchanges).
        """
        sec = self.security
        ctx = current_context()
        if ctx is not None:
            ctx.identify(kind=principal.kind, name=principal.name, subject=principal.subject,
                         method=principal.method, token_id=principal.token_id)
        if scopes:
            # one version read: a grant made a moment ago through another worker or
            # replica counts for the very next login, not only after the next poll
            await sec.policy.refresh()
        refused: list[Refusal] = []
        access = self.grant(principal, scopes, refused)
        issued = sec.issuer.issue(principal, sec.service(request), access, lifetime=lifetime)
        # the client's next request (often to this worker) skips the signature check
        sec.verifier.remember_issued(issued, sec.issuer)
        await self._report(principal, scopes, access, refused, issued.jti, issued.expires_in)
        body: dict[str, Any] = {"token": issued.token, "access_token": issued.token,
                                "expires_in": issued.expires_in,
                                "issued_at": issued.issued_at}
        if offline and not principal.is_anonymous:
            if refresh_token is None:
                refresh_token = await self._create_refresh_token(principal)
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
        try:
            await limiter.check("", ip)
        except RateLimited:
            await sec.events.emit(SecurityEvent(
                action=FEDERATION_ACTION, outcome="deny", method="federation",
                reason="rate_limited", client_ip=ip))
            raise
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
