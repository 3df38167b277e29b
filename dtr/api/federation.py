"""Wiring of keyless CI for the HTTP layer: the :class:`FederationService` of one worker,
bound to its database, OpenID Providers, security events and the policy layer's grant
functions (which ``dtr.auth`` may not import itself).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import Connection

from dtr.api.context import Security
from dtr.auth.federation import FederationService
from dtr.events import SecurityEvent
from dtr.policy import admin as pol


class _CurrentEvents:
    """Forwards to whatever ``security.events`` is at the time of each event (the audit
    log, or a test's recorder installed after the app was built).
    """

    def __init__(self, security: Security) -> None:
        self.security = security

    async def emit(self, event: SecurityEvent) -> None:
        """See ``SecurityEvents.emit``."""
        await self.security.events.emit(event)

    def deferred(self, event: SecurityEvent) -> Callable[[], Awaitable[None]] | None:
        """See ``SecurityEvents.deferred``."""
        return self.security.events.deferred(event)

    def record(self, conn: Connection, event: SecurityEvent) -> None:
        """See ``SecurityEvents.record``."""
        self.security.events.record(conn, event)


def federation_service(security: Security) -> FederationService:
    """The federation service of ``security``'s worker (trusts are read from the database
    at each use, so several instances never disagree).
    """
    return FederationService(security.db, security.providers, security.settings,
                             _CurrentEvents(security), grant=pol.create_grant,
                             remove_subject=pol.remove_subject)
