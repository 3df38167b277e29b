"""A response's background task (a pull's record, ``SecurityEvents.deferred``) runs once
the whole response is sent, on the ``/v2`` lane as through Litestar's own
``ASGIResponse``, and in the request's context.
"""

from __future__ import annotations

import contextvars
from typing import Any

import pytest
from litestar import Request, Response
from litestar.background_tasks import BackgroundTask

from dtr.api.oci.lane import _send

pytestmark = pytest.mark.anyio

_WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _scope() -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/v2/a/manifests/v1", "raw_path": b"",
            "query_string": b"", "headers": [], "app": None, "state": {},
            "path_params": {}}


async def _served(through_litestar: bool, status: int, body: bytes) -> list[str]:
    seen: list[str] = []

    async def record() -> None:
        seen.append(f"background as {_WHO.get()}")

    async def send(message: Any) -> None:
        seen.append(message["type"])

    async def receive() -> Any:
        return {"type": "http.disconnect"}

    response = Response(body, status_code=status, background=BackgroundTask(record))
    scope = _scope()
    request: Request[Any, Any, Any] = Request(scope, receive, send)  # type: ignore[arg-type]
    _WHO.set("alice")
    if through_litestar:
        await response.to_asgi_response(app=None, request=request)(
            scope, receive, send)  # type: ignore[arg-type]
    else:
        await _send(response, request, scope, receive, send)  # type: ignore[arg-type]
    return seen


@pytest.mark.parametrize(("status", "body"), [(200, b"{}"), (304, b"")])
@pytest.mark.parametrize("through_litestar", [False, True], ids=["lane", "litestar"])
async def test_the_background_task_runs_after_the_body_is_sent(
        through_litestar: bool, status: int, body: bytes) -> None:
    assert await _served(through_litestar, status, body) == [
        "http.response.start", "http.response.body", "background as alice"]
