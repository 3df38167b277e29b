"""The policy enforcement point of ``/v2``: every OCI request names the repository and the
actions it needs, and one ``AccessControl`` decides before a handler runs.

``TokenAccess`` is the resource server of Docker token authentication: it accepts only
bearer tokens issued by dtr's token endpoint (ES256, verified with public keys and cached
until expiry), checks the token's ``access`` list, and answers anything missing with a 401
challenge naming exactly the scopes the request needs (``error="insufficient_scope"`` or
``"invalid_token"`` when a token was presented). Push and delete are re-checked against
the live policy and the account's state (disabled, expired, token revoked; cached 5 s), so
a revoked grant or credential does not wait for token expiry. ``OpenAccess`` is the
switched-off mode (``auth.enabled: false``) for isolated test registries.

The check runs on every ``/v2`` request, so its accepting path reads the two headers it
needs straight from the ASGI scope and keeps the claims in the scope's state, rather than
having Litestar build a ``Headers`` and a ``State`` object per request.

Audit: an accepted token names the caller in the request context (actor, method, token
id: a few attribute sets, no database read), so every event the request causes carries
them. Refusals are reported through ``Security.events``: a token that fails verification
or whose credential was revoked as ``auth.token.rejected``, a missing scope or a live
policy refusal as ``access.denied`` (one per refused action). A request without any
bearer token gets the challenge unrecorded: every client's first request is one.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from litestar import Request

from dtr.api.context import Security, scope_header
from dtr.api.oci.audit import access_denied, catalog_denied, token_rejected
from dtr.auth.principal import Principal
from dtr.auth.scopes import scope_allows
from dtr.auth.tokens import Claims, TokenRejected
from dtr.errors import Denied, InvalidToken, Unauthorized
from dtr.events import current_context

Action = Literal["pull", "push", "delete", "catalog"]
Req = Request[Any, Any, Any]
#: Actions re-checked against the live policy on every request, not only at token issue.
RECHECK = frozenset({"push", "delete"})
#: Where an accepted request's :class:`Claims` are kept (``request.state.dtr_claims``).
CLAIMS_KEY = "dtr_claims"


class AccessControl(Protocol):
    """Decides whether a request may act on a repository."""

    async def require(self, request: Req, repository: str | None,
                      actions: tuple[Action, ...]) -> None:
        """Return to allow; raise ``Challenge`` (401) or ``dtr.errors.Denied`` (403).

        ``repository`` None is a registry-wide request: ``/v2/`` (any valid token, even
        with an empty ``access`` list) or the catalog (``actions == ("catalog",)``).
        """
        ...

    def may_pull(self, request: Req, repository: str) -> bool:
        """True if the caller may read ``repository`` (mount sources, catalog entries).

        Only valid after ``require`` has accepted the same request.
        """
        ...

    async def may_push(self, request: Req, repository: str) -> bool:
        """True if the caller may push to ``repository`` per the live policy (whatever
        the token's own access list says: signers read with pull-only tokens).

        Only valid after ``require`` has accepted the same request. The signing gate asks
        this before serving a quarantined manifest; never decided by User-Agent.
        """
        ...


class Challenge(Unauthorized):
    """A 401 with the ``WWW-Authenticate`` value the client needs to get a token."""

    def __init__(self, message: str, header: str, detail: Any = None) -> None:
        super().__init__(message, detail)
        self.header = header


class OpenAccess:
    """Authentication switched off: every request is allowed."""

    async def require(self, request: Req, repository: str | None,
                      actions: tuple[Action, ...]) -> None:
        """Allow."""
        return

    def may_pull(self, request: Req, repository: str) -> bool:
        """Allow."""
        return True

    async def may_push(self, request: Req, repository: str) -> bool:
        """Allow (an open registry treats everyone as a pusher)."""
        return True


class TokenAccess:
    """Docker token authentication + Casbin re-checks for ``/v2``."""

    def __init__(self, security: Security, public_url: str = "") -> None:
        self.security = security
        self.public_url = public_url.rstrip("/")

    def realm(self, request: Req) -> str:
        """The token endpoint's absolute URL."""
        if self.public_url:
            return f"{self.public_url}/auth/token"
        scheme = request.headers.get("x-forwarded-proto") or request.url.scheme
        host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
        return f"{scheme}://{host}/auth/token"

    def challenge(self, request: Req, scope: str | None, error: str | None,
                  message: str, detail: Any = None) -> Challenge:
        """A 401 naming the scope the request needs."""
        parts = [f'realm="{self.realm(request)}"',
                 f'service="{self.security.service(request)}"']
        if scope:
            parts.append(f'scope="{scope}"')
        if error:
            parts.append(f'error="{error}"')
        return Challenge(message, "Bearer " + ",".join(parts), detail)

    async def require(self, request: Req, repository: str | None,
                      actions: tuple[Action, ...]) -> None:
        """Check the bearer token's access list (and the live policy for push/delete)."""
        kind, _, token = scope_header(request.scope, b"authorization").partition(" ")
        token = token.strip()
        if kind.lower() != "bearer" or not token:
            raise self.challenge(request, _scope(repository, actions), None,
                                 "authentication required", _detail(repository, actions))
        events = self.security.events
        try:
            claims = self.security.verifier.verify(token, self.security.service(request))
        except InvalidToken as exc:
            reason = exc.reason if isinstance(exc, TokenRejected) else "invalid"
            await events.emit(token_rejected(reason, exc.message, repository, actions))
            raise self.challenge(request, _scope(repository, actions), "invalid_token",
                                 exc.message) from None
        # request.state wraps this dict (Litestar sets scope["state"] on every request)
        request.scope.setdefault("state", {})[CLAIMS_KEY] = claims
        ctx = current_context()
        if ctx is not None:
            ctx.identify(kind=claims.kind, name=claims.sub, subject=claims.subject,
                         method=claims.method, token_id=claims.token_id or claims.jti)
        if repository is None:
            if actions == ("catalog",) and not claims.allows("registry", "catalog", "*"):
                await events.emit(catalog_denied())
                raise self.challenge(request, _scope(repository, actions), "insufficient_scope",
                                     "the token does not grant the catalog")
            return
        missing = [a for a in actions if not claims.allows("repository", repository, a)]
        if missing:
            for action in missing:
                await events.emit(access_denied(repository, action, "insufficient_scope"))
            raise self.challenge(request, _scope(repository, actions), "insufficient_scope",
                                 f"the token does not grant {','.join(missing)} on "
                                 f"{repository}", _detail(repository, tuple(missing)))
        recheck = [a for a in actions if a in RECHECK]
        if recheck:
            principal = claims.principal()
            if not await self.security.credentials.still_valid(principal):
                await events.emit(token_rejected(
                    "credential_invalid", "the account is disabled or expired, or the token "
                    "it logged in with was revoked", repository, actions))
                raise self.challenge(request, _scope(repository, actions), "invalid_token",
                                     "the account is disabled or expired, or the token it "
                                     "logged in with was revoked")
            policy = self.security.policy
            for action in recheck:
                if policy.allowed(principal.subject, repository, action):
                    continue
                # the token was issued on a fresher policy than this worker's (a grant made
                # a moment ago): read the version once before refusing, and decide again
                # even when this refresh loaded nothing (the poller may just have)
                await policy.refresh()
                if policy.allowed(principal.subject, repository, action):
                    continue
                decision = policy.decide(principal.subject, repository, action)
                await events.emit(access_denied(repository, action, decision.reason,
                                                decision.line, recheck=True))
                raise Denied(f"{action} on {repository} is no longer allowed for "
                             f"{principal.name or 'anonymous'}")

    def may_pull(self, request: Req, repository: str) -> bool:
        """Pull on ``repository``: in the token (mount sources), else by the live policy
        narrowed by the token's personal-access-token scopes (catalog entries).
        """
        claims: Claims | None = request.scope.get("state", {}).get(CLAIMS_KEY)
        if claims is None:
            return False
        if claims.allows("repository", repository, "pull"):
            return True
        principal: Principal = claims.principal()
        if principal.scopes is not None and not scope_allows(principal.scopes, repository,
                                                             "pull"):
            return False
        return self.security.policy.allowed(principal.subject, repository, "pull")

    async def may_push(self, request: Req, repository: str) -> bool:
        """Push on ``repository`` by the live policy, narrowed by the token's personal
        access token scopes, for a still-valid account.
        """
        claims: Claims | None = request.scope.get("state", {}).get(CLAIMS_KEY)
        if claims is None:
            return False
        principal: Principal = claims.principal()
        if principal.scopes is not None and not scope_allows(principal.scopes, repository,
                                                             "push"):
            return False
        if not await self.security.credentials.still_valid(principal):
            return False
        return self.security.policy.allowed(principal.subject, repository, "push")


def _scope(repository: str | None, actions: tuple[str, ...]) -> str | None:
    """The scope a challenge names: what the request needs."""
    if repository is None:
        return "registry:catalog:*" if actions == ("catalog",) else None
    return f"repository:{repository}:{','.join(actions)}"


def _detail(repository: str | None, actions: tuple[str, ...]) -> list[dict[str, str]] | None:
    if repository is None:
        return None
    return [{"Type": "repository", "Name": repository, "Action": a} for a in actions]
