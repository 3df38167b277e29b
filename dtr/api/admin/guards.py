"""Who may call the admin API: the router's ``authenticate`` guard (no credentials → 401)
and the per-controller / per-handler guards that ask the policy engine. Decisions come only
from ``PolicyEngine.allowed`` (``decide`` only explains them, for the audit log); system
actions are asked with object and domain ``*``.

Refusals are evidence: a policy refusal raises :class:`PolicyDenied` carrying the explained
decision (its rule and reason), an object hidden from the caller raises :class:`Hidden`
(answered like any 404), and :func:`refusal_handlers` reports every refused call as an
``admin.denied`` security event while rendering the usual problem details. A call that was
allowed knows why: :meth:`Caller.why` names the rule that let the caller in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from litestar import Request, Response
from litestar.background_tasks import BackgroundTask
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ExceptionHandlersMap

from dtr.api.context import Security
from dtr.api.problems import classify, headers_for, problem_response
from dtr.auth.principal import Principal
from dtr.errors import Denied, DtrError, NotFound, Unauthorized
from dtr.events import SecurityEvent
from dtr.policy.actions import SYSTEM
from dtr.policy.enforcer import Decision

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]
CALLER = "dtr.admin.caller"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_ONLY = "read_only"
"""Handler ``opt`` key: a POST that changes nothing (scoped tokens may call it)."""


DENIED_ACTION = "admin.denied"
"""The security event of a refused admin API call."""


class PolicyDenied(Denied):
    """The policy refused the caller (403); ``decision`` explains it (matched rule, reason).

    Args:
        message: for the caller.
        decision: the explained decision of the action asked.
        detail: for the caller (the problem's ``context``).
    """

    def __init__(self, message: str, decision: Decision, detail: Any = None) -> None:
        super().__init__(message, detail)
        self.decision = decision


class Hidden(NotFound):
    """An object exists but the caller may not even read it: answered exactly like a
    missing one (404), reported as a refusal.
    """


class Reported(Denied):
    """A refusal whose own security event was already emitted (not reported again as
    ``admin.denied``).
    """


class Caller:
    """The signed-in caller of one request and the policy that judges it.

    A plain class, not a dataclass: Litestar would otherwise validate its fields (the
    ``Security`` inside) every time it is injected.

    Args:
        principal: who is calling.
        security: the worker's auth services (the policy engine decides).
    """

    __slots__ = ("granted", "principal", "security")

    def __init__(self, principal: Principal, security: Security) -> None:
        self.principal = principal
        self.security = security
        self.granted: tuple[str, str] | None = None
        """The last (action, org) :meth:`require` allowed (what :meth:`why` explains)."""

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
            PolicyDenied: naming the action and where it was asked.
        """
        self.require_any(action, org=org)

    def require_any(self, *actions: str, org: str = SYSTEM) -> None:
        """Return if at least one of ``actions`` is allowed (the first allowed one is
        what :meth:`why` explains).

        Raises:
            PolicyDenied: none is (with the decision of the first action a rule denies,
                else of the first action).
        """
        allowed = next((a for a in actions if self.may(a, org)), None)
        if allowed is None:
            raise PolicyDenied(_denial(self.subject, actions, org),
                               self.refusal(actions, org))
        self.granted = (allowed, org)

    def refusal(self, actions: Sequence[str], org: str = SYSTEM) -> Decision:
        """The explained decision behind refusing ``actions`` on ``org``: the first one a
        deny rule decided, else the first one.
        """
        policy = self.security.policy
        decisions = [policy.decide(self.subject, org, a, domain=org) for a in actions]
        return next((d for d in decisions if d.rule is not None), decisions[0])

    def why(self) -> str:
        """The policy line that allowed the last :meth:`require` (the org grant, or the
        caller's system administration), ``""`` when nothing was required (a user acting
        on their own account or tokens).
        """
        if self.granted is None:
            return ""
        action, org = self.granted
        policy = self.security.policy
        decision = policy.decide(self.subject, org, action, domain=org)
        if not decision.allowed:
            decision = policy.decide(self.subject, SYSTEM, "system:admin", domain=SYSTEM)
        return decision.line if decision.allowed else ""


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


def denial_event(request: Request[Any, Any, Any], exc: DtrError) -> SecurityEvent:
    """The ``admin.denied`` event of a refused call (the actor, address and request id
    come from the request context).
    """
    decision = exc.decision if isinstance(exc, PolicyDenied) else None
    detail: dict[str, Any] = {"request": f"{request.method} {request.url.path}",
                              "message": exc.message}
    org = ""
    if decision is not None:
        detail["asked"] = decision.action
        org = "" if decision.domain == SYSTEM else decision.domain
    if isinstance(exc, Hidden):
        detail["answered"] = 404
    return SecurityEvent(
        action=DENIED_ACTION, outcome="deny",
        reason=(decision.reason if decision is not None else exc.message),
        rule=decision.line if decision is not None else "", org=org,
        resource=request.url.path, detail=detail)


def refusal_handlers(security: Security) -> ExceptionHandlersMap:
    """Exception handlers for refused admin calls (``Denied`` → 403, :class:`Hidden` →
    404): the usual problem details, and an ``admin.denied`` event emitted once the answer
    is sent (nothing changed, so it is recorded on its own).
    """
    def handler(request: Request[Any, Any, Any], exc: DtrError) -> Response[bytes]:
        response = problem_response(classify(exc), exc.message, headers_for(exc),
                                    context=exc.detail)
        if not isinstance(exc, Reported):
            response.background = BackgroundTask(security.events.emit,
                                                 denial_event(request, exc))
        return response

    return {Denied: handler, Hidden: handler}
