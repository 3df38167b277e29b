"""Security events: the seam every security decision made outside a content write is
reported through (logins and their failures, token issues and refusals, OIDC logins,
federated token exchanges, admin changes). The audit log implements :class:`SecurityEvents`
durably; until it is wired, :class:`LogSecurityEvents` writes each event as one JSON line
to the ``dtr.audit`` logger. Imports nothing from dtr.

Content writes (push, tag, delete) go through ``core.hooks.EventSink`` instead, inside the
transaction that makes them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

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
        detail: anything else worth keeping (matched rule, claims checked, groups synced).
        time: seconds since the epoch.
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


class SecurityEvents(Protocol):
    """Receives security events.

    Contract: ``emit`` records the event (or queues it durably) and returns; it never
    raises for a sink problem of its own (a failing audit store is reported by the
    implementation, which decides about fail-closed writes), so a refusal is never turned
    into a different error by the act of recording it.
    """

    async def emit(self, event: SecurityEvent) -> None:
        """Record ``event``."""
        ...


class LogSecurityEvents:
    """Writes each event as one JSON line to the ``dtr.audit`` logger (level INFO for
    allowed, WARNING for denied and failed).
    """

    def __init__(self) -> None:
        self.emitted = 0

    async def emit(self, event: SecurityEvent) -> None:
        """See :meth:`SecurityEvents.emit`."""
        self.emitted += 1
        level = logging.INFO if event.outcome == "allow" else logging.WARNING
        if _log.isEnabledFor(level):
            _log.log(level, "%s", json.dumps(asdict(event), default=str, sort_keys=True))


class RecordingSecurityEvents:
    """Keeps every event in memory, in order (tests and the CLI's dry runs)."""

    def __init__(self) -> None:
        self.events: list[SecurityEvent] = []

    async def emit(self, event: SecurityEvent) -> None:
        """See :meth:`SecurityEvents.emit`."""
        self.events.append(event)
