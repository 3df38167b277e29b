"""Security events and the request context they are stamped with.

``SecurityEvent`` is one security decision (a login and its failure, a token issued or
refused, a denial, an admin change, a pull); ``SecurityEvents`` is the seam decisions are
reported through: the audit log (``dtr.audit``) implements it durably,
:class:`LogSecurityEvents` writes JSON lines to the ``dtr.audit`` logger when no audit log
is wired. ``RequestContext`` (one per request, in a context variable) carries who is
calling and from where, so every event recorded while serving the request (in any layer,
in any transaction) names the same actor, client address, user agent and request id.
Imports nothing from dtr.

Content writes (push, tag, delete) go through ``core.hooks.EventSink`` instead, inside the
transaction that makes them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from sqlalchemy import Connection

Outcome = Literal["allow", "deny", "error"]
_log = logging.getLogger("dtr.audit")


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """One security decision.

    Attributes:
        action: dotted name (``auth.login``, ``auth.oidc.login``, ``auth.federation.exchange``,
            ``auth.token.issued``, ``federation.trust.created``).
        outcome: ``allow``, ``deny`` or ``error``.
        actor_kind: ``user``, ``robot``, ``anonymous``, or ``identity`` (a provider identity
            not (yet) tied to an account).
        actor: the account name, or ``<issuer>#<subject>`` for an identity.
        method: how the actor authenticated (``password``, ``oidc``, ``federation``, …).
        reason: why it was denied or failed (a stable code such as ``expired``,
            ``wrong_audience``, ``condition_not_met``), empty when allowed.
        client_ip: the client address (after trusted-proxy handling).
        user_agent: the client's ``User-Agent``.
        resource: what it was about (a trust name, a repository, a scope string).
        token_id: the token presented or issued, when there is one.
        detail: anything else worth keeping (claims checked, groups synced, scopes).
        time: seconds since the epoch.
        actor_id: the account's stable id (``user:alice``, ``robot:ci$builder``), when
            different from ``actor``.
        org: the organization the event is about.
        repository: the repository the event is about.
        tag: the tag the event is about.
        digest: the digest the event is about.
        rule: the policy rule that decided (``allow: team:ci pull acme/**``).
        request_id: the request that caused the event.

    Empty actor, address, user agent, method, token and request fields are filled from the
    current :class:`RequestContext` when the event is recorded.
    """

    action: str
    outcome: Outcome
    actor_kind: str = ""
    actor: str = ""
    method: str = ""
    reason: str = ""
    client_ip: str = ""
    user_agent: str = ""
    resource: str = ""
    token_id: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)
    actor_id: str = ""
    org: str = ""
    repository: str = ""
    tag: str = ""
    digest: str = ""
    rule: str = ""
    request_id: str = ""


@dataclass(slots=True)
class RequestContext:
    """Who is calling and from where, for the events one request causes.

    Set by the API layer when the request arrives (address, user agent, request id) and
    completed once the caller is authenticated (actor fields, method, token id). Mutable:
    the object is shared by everything serving the request, including work handed to
    database threads.
    """

    request_id: str = ""
    client_ip: str = ""
    user_agent: str = ""
    actor_kind: str = ""
    actor_id: str = ""
    actor: str = ""
    method: str = ""
    token_id: str = ""

    def identify(self, *, kind: str, name: str, subject: str = "", method: str = "",
                 token_id: str | None = None) -> None:
        """Record the authenticated caller."""
        self.actor_kind, self.actor, self.actor_id = kind, name, subject or self.actor_id
        self.method = method or self.method
        self.token_id = token_id or self.token_id


_context: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "dtr_request_context", default=None)


def current_context() -> RequestContext | None:
    """The context of the request being served, or None outside a request."""
    return _context.get()


@contextmanager
def request_context(ctx: RequestContext) -> Iterator[RequestContext]:
    """Make ``ctx`` the current request context for the ``with`` block."""
    token = _context.set(ctx)
    try:
        yield ctx
    finally:
        _context.reset(token)


def set_context(ctx: RequestContext | None) -> None:
    """Make ``ctx`` the current request context for the rest of this task (ASGI
    middleware, whose task ends with the request).
    """
    _context.set(ctx)


_EVENT_FIELDS = tuple(f.name for f in fields(SecurityEvent))
_FROM_CONTEXT = ("method", "token_id", "client_ip", "user_agent", "request_id")
_ACTOR_FIELDS = ("actor_kind", "actor_id", "actor")
_new_event = object.__new__
_set_field = object.__setattr__


def stamped(event: SecurityEvent) -> SecurityEvent:
    """``event`` with its empty actor, address, user agent, method, token and request
    fields taken from the current request context (unchanged outside a request).

    Served on every recorded pull: the copy is made field by field rather than with
    ``dataclasses.replace`` (a third of its cost).
    """
    ctx = _context.get()
    if ctx is None:
        return event
    names = _FROM_CONTEXT if event.actor else _FROM_CONTEXT + _ACTOR_FIELDS
    fill: dict[str, Any] = {}
    for name in names:
        if not getattr(event, name):
            value = getattr(ctx, name)
            if value:
                fill[name] = value
    if not fill:
        return event
    copy = _new_event(SecurityEvent)
    for name in _EVENT_FIELDS:
        _set_field(copy, name, fill[name] if name in fill else getattr(event, name))
    return copy


class SecurityEvents(Protocol):
    """Receives security events.

    Contract: ``record`` adds the event to the caller's open transaction, so the event and
    the change it records commit (or roll back) together. ``emit`` is for decisions that
    change nothing (a pull, a denial, a failed login): it records the event on its own;
    it never raises for a problem of its own unless the implementation is configured to
    fail closed, where it raises ``dtr.errors.Unavailable`` when the event cannot be made
    durable (so the request is refused rather than served unrecorded).
    """

    async def emit(self, event: SecurityEvent) -> None:
        """Record ``event`` on its own."""
        ...

    def deferred(self, event: SecurityEvent) -> Callable[[], Awaitable[None]] | None:
        """``event`` accepted now, to be recorded on its own by the returned coroutine
        function, which the caller awaits once its response is sent (off the client's
        critical path: a pull's record); or None when the event has to be recorded before
        the response, by awaiting ``emit`` (an implementation that fails closed).

        Raises:
            dtr.errors.Unavailable: events are refused now (as ``emit`` would raise).
        """
        ...

    def record(self, conn: Connection, event: SecurityEvent) -> None:
        """Record ``event`` in the transaction of ``conn``."""
        ...


class LogSecurityEvents:
    """Writes each event as one JSON line to the ``dtr.audit`` logger (level INFO for
    allowed, WARNING for denied and failed).
    """

    def __init__(self) -> None:
        self.emitted = 0

    async def emit(self, event: SecurityEvent) -> None:
        """See :meth:`SecurityEvents.emit`."""
        self.record(None, event)

    def deferred(self, event: SecurityEvent) -> Callable[[], Awaitable[None]]:
        """See :meth:`SecurityEvents.deferred` (logged when awaited)."""
        return partial(self.emit, event)

    def record(self, conn: Connection | None, event: SecurityEvent) -> None:
        """Log ``event`` now (a log line cannot join the transaction)."""
        self.emitted += 1
        level = logging.INFO if event.outcome == "allow" else logging.WARNING
        if _log.isEnabledFor(level):
            _log.log(level, "%s", json.dumps(asdict(stamped(event)), default=str,
                                             sort_keys=True))


class RecordingSecurityEvents:
    """Keeps every event in memory, in order (tests and the CLI's dry runs)."""

    def __init__(self) -> None:
        self.events: list[SecurityEvent] = []

    async def emit(self, event: SecurityEvent) -> None:
        """See :meth:`SecurityEvents.emit`."""
        self.events.append(stamped(event))

    def deferred(self, event: SecurityEvent) -> Callable[[], Awaitable[None]]:
        """See :meth:`SecurityEvents.deferred` (kept when awaited)."""
        return partial(self.emit, event)

    def record(self, conn: Connection, event: SecurityEvent) -> None:
        """See :meth:`SecurityEvents.record` (kept at once, whatever the transaction does)."""
        self.events.append(stamped(event))
