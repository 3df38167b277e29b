"""The ``/v2`` lane: OCI requests dispatched straight from ASGI, beside Litestar's router.

Every pull and push is a run of small ``/v2`` requests, and Litestar's per-request machinery
(route resolution, the handler's signature model and keyword arguments, ``Response`` →
``ASGIResponse``) cost about as much CPU as the registry work itself: GET manifest by tag
at one connection, worker event loop 240 → 145 µs of CPU per request without it. So
:class:`~dtr.app.DtrApp` hands plain ``/v2`` HTTP requests to :class:`OciLane`, which
runs **the same handlers** (:func:`dtr.api.oci.router.dispatch`) under **the same
middleware** (the audit context), with the request Litestar would build (same route
handler, so the same body-size limit), and sends their responses:

* a ``Response`` with a bytes body (nearly every OCI response): status and headers as
  Litestar's ``ASGIResponse`` would send them (content type, then content length, unless
  the handler set them; none for a status without a body), then its background task, as
  Litestar runs it;
* anything else (blob streams, file sends, redirects): Litestar's own ``to_asgi_response``.

Errors render as through Litestar: domain errors by the OCI error table (in the handlers),
Litestar's HTTP exceptions (e.g. 413 from the body-size limit) by
``create_exception_response``, anything else is logged and answered 500 (nothing is sent
if the response had started: the connection is aborted, as Litestar does).

Requests the lane does not take go to Litestar unchanged: other paths, other methods
(``OPTIONS``…), a ``root_path``, or a ``Host`` header Litestar would refuse.
``tests/contracts/test_oci_lane.py`` holds the lane to Litestar's answers, request by
request.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from litestar import Request, Response
from litestar._asgi.utils import is_valid_host
from litestar.exceptions import HTTPException, InternalServerException
from litestar.exceptions.responses import create_exception_response
from litestar.utils import normalize_path

from dtr.api.oci.router import dispatch

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler
    from litestar.types import (
        ASGIApp,
        HTTPResponseBodyEvent,
        HTTPResponseStartEvent,
        HTTPScope,
        Receive,
        Scope,
        Send,
    )

    from dtr.api.oci.handlers import OciContext

log = logging.getLogger("dtr.api.oci")

#: The methods the ``/v2`` routes accept (others go to Litestar, which answers 405).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
_NO_BODY = frozenset({204, 304})


def takes(scope: HTTPScope) -> str | None:
    """The normalized path if the lane serves this HTTP request (a ``/v2/…`` path and an
    OCI method, or ``GET /v2``; no ``root_path``; a ``Host`` header Litestar accepts),
    else None.
    """
    raw = scope["path"]
    method = scope["method"]
    if not raw.startswith("/v2") or method not in METHODS or scope.get("root_path"):
        return None
    path = normalize_path(raw)
    if not path.startswith("/v2/") and not (path == "/v2" and method == "GET"):
        return None
    for name, value in scope["headers"]:
        if name == b"host":
            return path if is_valid_host(value) else None  # Litestar's own check
    return path


class OciLane:
    """The ASGI app of the lane (wrap it in the app's middleware).

    Args:
        ctx: what the handlers need.
        handler: the Litestar route handler of ``/v2/{rest:path}`` (its limits apply).
    """

    def __init__(self, ctx: OciContext, handler: HTTPRouteHandler) -> None:
        self.ctx = ctx
        self.handler = handler

    async def __call__(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        """Serve a request :func:`takes` accepted (``scope["path"]`` normalized already)."""
        path = scope["path"]
        rest = path[3:]
        scope["path_params"] = {"rest": rest} if rest else {}
        scope["route_handler"] = self.handler
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            response = await dispatch(self.ctx, request, rest)
            await _send(response, request, scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            if not isinstance(exc, HTTPException):
                log.exception("unexpected error on %s %s", scope["method"], path)
                exc = InternalServerException()
            await _send(create_exception_response(request, exc), request, scope, receive,
                        send)


async def _send(response: Response[Any], request: Request[Any, Any, Any], scope: Scope,
                receive: Receive, send: Send) -> None:
    """Send ``response`` as Litestar's ``ASGIResponse`` would."""
    body = response.content
    if type(response) is not Response or not isinstance(body, bytes) or response.cookies:
        asgi: ASGIApp = response.to_asgi_response(app=None, request=request)
        await asgi(scope, receive, send)
        return
    status = response.status_code or 200
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
               for k, v in response.headers.items()]
    if status in _NO_BODY or status < 200:
        if body:
            raise InternalServerException("a response without content has a body")
    else:
        names = {k for k, _ in headers}
        if b"content-type" not in names:
            media = str(response.media_type or "application/json")
            if media.startswith("text/"):
                media = f"{media}; charset={response.encoding}"
            headers.append((b"content-type", media.encode("latin-1")))
        if b"content-length" not in names:
            headers.append((b"content-length", str(len(body)).encode("latin-1")))
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status,
                                     "headers": headers}
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body,
                                  "more_body": False}
    await send(end)
    if response.background is not None:
        await response.background()
