"""Zero-copy blob responses: the ASGI ``http.response.pathsend`` extension (granian serves
the file itself, with sendfile) for whole-blob GETs from the filesystem driver.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Send

PATHSEND = "http.response.pathsend"


def supports_pathsend(request: Request[Any, Any, Any]) -> bool:
    """True when the ASGI server offers ``http.response.pathsend``."""
    return PATHSEND in (request.scope.get("extensions") or {})


class _ASGIPathSend(ASGIResponse):
    __slots__ = ("path",)

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path

    async def send_body(self, send: Send, receive: Receive) -> None:
        await send({"type": PATHSEND, "path": self.path})  # type: ignore[arg-type]


class PathSendResponse(Response[bytes]):
    """A response whose body is the file at ``path`` (``size`` bytes), sent by the server."""

    def __init__(self, path: str, size: int, *, status_code: int, media_type: str,
                 headers: dict[str, str]) -> None:
        super().__init__(b"", status_code=status_code, media_type=media_type, headers=headers)
        self.path = path
        self.size = size

    def to_asgi_response(self, app: Any, request: Request[Any, Any, Any],
                         **kwargs: Any) -> ASGIResponse:
        """The ASGI response that emits ``http.response.pathsend``."""
        return _ASGIPathSend(self.path, status_code=self.status_code, content_length=self.size,
                             headers=self.headers, media_type=str(self.media_type),
                             is_head_response=kwargs.get("is_head_response", False))
