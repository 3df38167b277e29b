"""The policy enforcement point of ``/v2``: every OCI request names the repository and the
actions it needs, and one ``AccessControl`` decides before a handler runs.

Until token authentication lands (issue 3) the only implementation is ``OpenAccess``: the
registry is open, like distribution without an ``auth`` section, and binds 127.0.0.1 by
default. ``may_pull`` is what mount and catalog use to avoid leaking other repositories.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from litestar import Request

Action = Literal["pull", "push", "delete"]


class AccessControl(Protocol):
    """Decides whether a request may act on a repository."""

    async def require(self, request: Request, repository: str | None,  # type: ignore[type-arg]
                      actions: tuple[Action, ...]) -> None:
        """Return to allow; raise ``dtr.errors.Denied`` (or an auth challenge) to refuse.

        ``repository`` None is a registry-wide request (``/v2/``, ``/v2/_catalog``).
        """
        ...

    def may_pull(self, request: Request[Any, Any, Any], repository: str) -> bool:
        """True if the caller may read ``repository`` (for mount sources and catalog)."""
        ...


class OpenAccess:
    """No authentication configured: every request is allowed."""

    async def require(self, request: Request, repository: str | None,  # type: ignore[type-arg]
                      actions: tuple[Action, ...]) -> None:
        """Allow."""
        return

    def may_pull(self, request: Request[Any, Any, Any], repository: str) -> bool:
        """Allow."""
        return True
