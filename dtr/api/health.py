"""The health probes, public like Harbor's ``/api/v2.0/health`` and Quay's
``/health/instance``: ``GET /health/live`` (this worker answers: a liveness probe) and
``GET /health/ready`` (it reaches its database and its object store: a readiness probe or
a load balancer's health check; 503 when one does not answer). They name each dependency
and its state, nothing else (``dtr.core.health``).
"""

from __future__ import annotations

import msgspec
from litestar import Response, get
from litestar.handlers import HTTPRouteHandler

from dtr.core.health import HealthService

_NO_STORE = {"Cache-Control": "no-store"}


def build_health_routes(health: HealthService) -> list[HTTPRouteHandler]:
    """The two probes over ``health``."""

    @get("/health/live", include_in_schema=False, sync_to_thread=False)
    def live() -> Response[bytes]:
        """200 while the worker serves requests (checks nothing else)."""
        return Response(b'{"status":"ok"}', media_type="application/json",
                        headers=_NO_STORE)

    @get("/health/ready", include_in_schema=False)
    async def ready() -> Response[bytes]:
        """200 when the database and the object store answer, else 503; each one's state
        and answer time in milliseconds.
        """
        state = await health.check()
        body = {"status": "ok" if state.ready else "unavailable",
                "checks": {name: {"status": c.status, "ms": c.ms}
                           for name, c in state.checks.items()}}
        return Response(msgspec.json.encode(body), status_code=200 if state.ready else 503,
                        media_type="application/json", headers=_NO_STORE)

    return [live, ready]
