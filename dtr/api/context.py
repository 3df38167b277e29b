"""``Security``: the authentication and authorization services every API surface shares
(the ``/v2`` enforcement point, the token endpoint, the admin API), built once by the
composition root, plus how a request's caller and client address are worked out, and a
raw header read for the per-request token check (``scope_header``), and the ASGI
middleware that opens each request's audit context (``audit_context``: request id, client
address, user agent; the ``X-Request-Id`` response header).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import itertools
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from dtr.auth.accounts import AccountService
from dtr.auth.credentials import CredentialVerifier
from dtr.auth.oidc import Providers
from dtr.auth.principal import ANONYMOUS, Principal
from dtr.auth.tokens import TokenIssuer, TokenKeys, TokenVerifier
from dtr.config import AuthSettings
from dtr.db.database import Database
from dtr.errors import InvalidToken, Unauthorized
from dtr.events import (
    LogSecurityEvents,
    RequestContext,
    SecurityEvents,
    current_context,
    set_context,
)
from dtr.policy.admin import PolicyAdmin
from dtr.policy.enforcer import PolicyEngine

Req = Request[Any, Any, Any]
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
PAT_PREFIX = "dtr_pat_"
SESSION_PREFIX = "dtr_ses_"


@dataclass(slots=True)
class Security:
    """The auth services of one worker process."""

    settings: AuthSettings
    db: Database
    accounts: AccountService
    credentials: CredentialVerifier
    policy: PolicyEngine
    policy_admin: PolicyAdmin
    keys: TokenKeys
    issuer: TokenIssuer
    verifier: TokenVerifier
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    events: SecurityEvents = field(default_factory=LogSecurityEvents)
    """Where security decisions are reported (the audit log's seam)."""
    providers: Providers = field(default_factory=Providers)
    """OpenID Providers (OIDC login and keyless CI), one per issuer, cached."""

    @property
    def enabled(self) -> bool:
        """True unless authentication is switched off (open test registries)."""
        return self.settings.enabled

    def service(self, request: Req) -> str:
        """The token ``service`` / JWT audience: configured, else the request's host."""
        return self.settings.token.service or scope_header(request.scope, b"host", "dtr")

    def client_ip(self, request: Req) -> str:
        """The client address: the socket peer, or the right-most untrusted hop of
        ``X-Forwarded-For`` when the peer is a trusted proxy.
        """
        peer = request.client.host if request.client else ""
        return self.client_address(peer, request.headers.get("x-forwarded-for", ""))

    def client_address(self, peer: str, forwarded_for: str) -> str:
        """See :meth:`client_ip` (from the socket peer and the ``X-Forwarded-For`` value)."""
        if not self.trusted_proxies or not self.is_trusted_proxy(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.is_trusted_proxy(hop):
                return hop
        return hops[0] if hops else peer

    def is_trusted_proxy(self, address: str) -> bool:
        """True if ``address`` is one of the configured trusted proxies."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted_proxies)

    async def principal(self, request: Req) -> Principal:
        """Who is calling the admin API: ``Bearer <personal access token>``, ``Bearer
        <OIDC session token>`` or ``Basic`` (password, personal access token or robot
        secret); no header = anonymous.

        Raises:
            Unauthorized: credentials were presented and are not valid.
            RateLimited: too many failed logins from this account or address.
        """
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if not header:
            return ANONYMOUS
        ip = self.client_ip(request)
        if scheme == "bearer" and value.startswith(PAT_PREFIX):
            found = await self.credentials.verify_pat(value, ip)
        elif scheme == "bearer" and value.startswith(SESSION_PREFIX):
            found = await self.credentials.verify_session(value, ip)
        elif scheme == "bearer":
            # registry tokens carry repository scopes for /v2 only; the admin API takes
            # personal access tokens or Basic credentials
            raise InvalidToken("the admin API takes a personal access token "
                               "(Bearer dtr_pat_...), an OIDC session token (Bearer "
                               "dtr_ses_...) or Basic credentials, not a registry token")
        elif scheme == "basic":
            username, password = basic_credentials(value)
            found = await self.credentials.verify_basic(username, password, ip)
        else:
            raise Unauthorized(f"unsupported authorization scheme {scheme!r}")
        ctx = current_context()  # the caller of every event this request records
        if ctx is not None and not found.is_anonymous:
            ctx.identify(kind=found.kind, name=found.name, subject=found.subject,
                         method=found.method, token_id=found.token_id)
        return found


class _RequestIds:
    """New request ids: 16 hex digits, a random per-process prefix and a counter (unique
    without drawing 8 random bytes for every request; re-seeded in forked workers).
    """

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = secrets.token_hex(4)
        self.counter = itertools.count(secrets.randbits(24))

    def new(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFF:08x}"


_request_ids = _RequestIds()


def audit_context(security: Security) -> Any:
    """ASGI middleware factory: each HTTP request gets a :class:`RequestContext` with its
    request id (the client's ``X-Request-Id`` when a trusted proxy sent a well-formed one,
    else a new one), client address (trusted proxies honoured) and user agent, and the
    response carries ``X-Request-Id``. Authentication completes the context with the actor.
    """
    def middleware(app: ASGIApp) -> ASGIApp:
        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            client = scope.get("client")
            peer = client[0] if client else ""
            rid = scope_header(scope, b"x-request-id")
            if not (rid and REQUEST_ID.fullmatch(rid) and security.trusted_proxies
                    and security.is_trusted_proxy(peer)):
                rid = _request_ids.new()
            ctx = RequestContext(
                request_id=rid, user_agent=scope_header(scope, b"user-agent")[:512],
                client_ip=security.client_address(
                    peer, scope_header(scope, b"x-forwarded-for")))
            set_context(ctx)
            header = (b"x-request-id", rid.encode("ascii"))

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), header]
                await send(message)

            await app(scope, receive, send_with_id)

        return handle

    return middleware


def scope_header(scope: Any, name: bytes, default: str = "") -> str:
    """The first value of header ``name`` (lower case) in an ASGI scope, as Litestar's
    ``request.headers.get`` gives it, without building Litestar's ``Headers`` (a per-request
    cost on the token check of every ``/v2`` request).
    """
    for key, value in scope["headers"]:
        if key == name or key.lower() == name:
            return str(value.decode("latin-1"))
    return default


def basic_credentials(value: str) -> tuple[str, str]:
    """Decode a Basic ``user:password`` value.

    Raises:
        Unauthorized: not valid base64 or no colon.
    """
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidToken("malformed basic credentials") from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise InvalidToken("malformed basic credentials")
    return username, password
