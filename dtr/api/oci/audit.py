"""The audit events of the registry surface (``/v2`` and the token endpoint): how a refused
access, a rejected registry token, a manifest pull and an issued token are described as
:class:`~dtr.events.SecurityEvent` values. Builders only: the callers emit them; the actor,
client address, user agent and request id come from the request context when recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dtr.events import SecurityEvent

ACCESS_DENIED = "access.denied"
TOKEN_REJECTED = "auth.token.rejected"  # noqa: S105 - an action name
TOKEN_ISSUED = "auth.token.issued"  # noqa: S105 - an action name
TOKEN_CREATED = "token.created"  # noqa: S105 - an action name
MANIFEST_PULLED = "manifest.pulled"


def org_of(repository: str) -> str:
    """The organization of a repository path for the audit log (``acme/app`` → ``acme``;
    a one-component name has none), as core content events name it.
    """
    head, sep, _ = repository.partition("/")
    return head if sep else ""


def access_denied(repository: str, action: str, reason: str, rule: str = "",
                  **detail: Any) -> SecurityEvent:
    """``access.denied``: ``action`` on ``repository`` refused (``reason``: the policy's
    explanation, ``insufficient_scope`` or ``token_scope``; ``rule``: the policy line).
    """
    return SecurityEvent(action=ACCESS_DENIED, outcome="deny", reason=reason, rule=rule,
                         repository=repository, org=org_of(repository),
                         detail={"action": action, **detail})


def catalog_denied() -> SecurityEvent:
    """``access.denied`` for the catalog (the token does not grant it)."""
    return SecurityEvent(action=ACCESS_DENIED, outcome="deny", reason="insufficient_scope",
                         resource="registry:catalog", detail={"action": "catalog"})


def token_rejected(reason: str, message: str, repository: str | None,
                   actions: Sequence[str]) -> SecurityEvent:
    """``auth.token.rejected``: a bearer token presented to ``/v2`` was refused."""
    repo = repository or ""
    return SecurityEvent(action=TOKEN_REJECTED, outcome="deny", reason=reason,
                         repository=repo, org=org_of(repo),
                         detail={"message": message, "actions": list(actions)})


def manifest_pulled(repository: str, tag: str, digest: str, media_type: str,
                    not_modified: bool = False) -> SecurityEvent:
    """``manifest.pulled``: a manifest ``GET`` was served (``tag`` empty by digest)."""
    detail: dict[str, Any] = {"media_type": media_type}
    if not_modified:
        detail["not_modified"] = True
    return SecurityEvent(action=MANIFEST_PULLED, outcome="allow", repository=repository,
                         org=org_of(repository), tag=tag, digest=digest, detail=detail)
