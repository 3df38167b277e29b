"""Who may call the admin API: the router's ``authenticate`` guard (no credentials → 401)
and the per-controller / per-handler guards that ask the policy engine. Decisions come only
from ``PolicyEngine.allowed``; system actions are asked with object and domain ``*``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from dtr.api.context import Security
from dtr.auth.principal import Principal
from dtr.errors import Denied, Unauthorized
from dtr.policy.actions import SYSTEM

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]
CALLER = "dtr.admin.caller"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_ONLY = "read_only"
"""Handler ``opt`` key: a POST that changes nothing (scoped tokens may call it)."""


class Caller:
    """The signed-in caller of one request and the policy that judges it.

    A plain class, not a dataclass: Litestar would otherwise validate its fields (the
    ``Security`` inside) every time it is injected.

    Args:
        principal: who is calling.
        security: the worker's auth services (the policy engine decides).
    """

    __slots__ = ("principal", "security")

    def __init__(self, principal: Principal, security: Security) -> None:
        self.principal = principal
        self.security = security

    @property
    def subject(self) -> str:
        """The caller's policy subject (``user:alice``)."""
        return self.principal.subject

    @property
    def name(self) -> str:
        """The caller's account name."""
        return self.principal.name

    def may(self, action: str, org: str = SYSTEM) -> bool:
        """True if the policy allows ``action`` on ``org`` (``*`` = a system action).

        A system administrator may always administer: no org-level deny can lock them out
        of the admin API (they can then remove the deny).
        """
        policy = self.security.policy
        return (policy.allowed(self.subject, org, action, domain=org)
                or policy.allowed(self.subject, SYSTEM, "system:admin", domain=SYSTEM))

    def may_any(self, *actions: str, org: str = SYSTEM) -> bool:
        """True if the policy allows at least one of ``actions``."""
        return any(self.may(action, org) for action in actions)

    def require(self, action: str, org: str = SYSTEM) -> None:
        """Return if allowed.

        Raises:
            Denied: naming the action and where it was asked.
        """
        if not self.may(action, org):
            raise Denied(_denial(self.subject, (action,), org))

    def require_any(self, *actions: str, org: str = SYSTEM) -> None:
        """Return if at least one of ``actions`` is allowed.

        Raises:
            Denied: none is.
        """
        if not self.may_any(*actions, org=org):
            raise Denied(_denial(self.subject, actions, org))


def _denial(subject: str, actions: tuple[str, ...], org: str) -> str:
    where = "system-wide" if org == SYSTEM else f"in organization {org}"
    return f"{subject} may not {' or '.join(actions)} {where}"


def caller_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    """The caller ``authenticate`` stored for this request."""
    caller: Caller = connection.state[CALLER]
    return caller


def authenticate(security: Security) -> Guard:
    """The admin router's first guard: resolve the caller once per request.

    Anonymous callers get 401 (``WWW-Authenticate: Basic``); a personal access token
    restricted by scopes may only read (GET, and POSTs marked ``read_only``).
    """

    async def guard(connection: ASGIConnection[Any, Any, Any, Any],
                    handler: BaseRouteHandler) -> None:
        if not isinstance(connection, Request):
            raise Unauthorized("the admin API speaks HTTP only")
        principal = await security.principal(connection)
        if principal.is_anonymous:
            raise Unauthorized("sign in: send Basic credentials or a personal access token "
                               "(Authorization: Bearer dtr_pat_…)")
        if (principal.scopes is not None and connection.method not in SAFE_METHODS
                and not handler.opt.get(READ_ONLY)):
            raise Denied("this personal access token is restricted to repository scopes; "
                         "it can only read the admin API")
        connection.state[CALLER] = Caller(principal, security)

    return guard


def system(*actions: str) -> Guard:
    """Allow callers holding any of the system ``actions`` (asked on ``*``, domain ``*``)."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any],
                    _: BaseRouteHandler) -> None:
        caller_of(connection).require_any(*actions)

    return guard


def org(action: str) -> Guard:
    """Allow callers holding ``action`` in the organization named by the ``org`` path
    parameter (system grants count everywhere).
    """

    async def guard(connection: ASGIConnection[Any, Any, Any, Any],
                    _: BaseRouteHandler) -> None:
        caller_of(connection).require(action, str(connection.path_params["org"]))

    return guard


def self_or_system(*actions: str) -> Guard:
    """Allow a user acting on their own account (path parameter ``name``), or callers
    holding any of the system ``actions``.
    """

    async def guard(connection: ASGIConnection[Any, Any, Any, Any],
                    _: BaseRouteHandler) -> None:
        caller = caller_of(connection)
        own = caller.principal.kind == "user" and connection.path_params["name"] == caller.name
        if not own:
            caller.require_any(*actions)

    return guard


async def user_only(connection: ASGIConnection[Any, Any, Any, Any],
                    _: BaseRouteHandler) -> None:
    """Allow user accounts only (personal access tokens are for users, not robots)."""
    if caller_of(connection).principal.kind != "user":
        raise Denied("personal access tokens are for users; robots use their own secret")


async def signed_in(connection: ASGIConnection[Any, Any, Any, Any],
                    _: BaseRouteHandler) -> None:
    """Allow any signed-in caller (``authenticate`` already refused the others); declares
    on a controller that it needs no further permission.
    """
    caller_of(connection)


async def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    """Dependency: the request's ``Caller``."""
    return caller_of(request)
