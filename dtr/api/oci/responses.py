"""Who sends a whole blob from the filesystem driver: the ASGI server, through the
``http.response.pathsend`` extension, or dtr, streaming the file (:class:`BlobSender`).

granian sends a path by reading it 128 KiB at a time through tokio's blocking pool, one
read after the other. dtr streams 1 MiB reads done on a thread while granian writes the
previous one, and copies each into granian under the GIL: faster for one big pull, dearer
when many run at once (the copies all run on the one event loop). Measured on the
embedded default (2 workers, 2 cores, a new connection per pull, 30 November), the policy
below against the same server with pathsend only, alternating:

* one pull at a time: 512 MiB 3,668 against 2,912 MB/s, 1 GiB 3,756 against 2,677,
  64 MiB 3,050 against 2,460 (0.30 against 0.33-0.39 ms of server CPU per MB);
* several at once: 64 MiB x 4 clients 3,453 against 3,774 MB/s, x 16 clients 3,459
  against 3,546 (0.32 against 0.28 ms/MB);
* streaming every blob instead: one 16 MiB pull 2,972 against 2,016 MB/s, one 8 MiB pull
  2,280 against 2,472, sixteen 8 MiB pulls at once 2,337 against 3,166 (0.54 against
  0.39 ms/MB).

So a worker streams a blob of :data:`STREAM_MIN` bytes or more itself only while it sends
nothing else, and leaves the rest to the server.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar import Request, Response
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Send

PATHSEND = "http.response.pathsend"
STREAM_MIN = 16 * 1024 * 1024
"""Smallest blob a worker streams itself (below it pathsend costs less CPU per byte)."""
STREAM_MAX = 1
"""Most blobs one worker streams at once; more go out through pathsend."""
PATHSEND_RATE = 2.5e9
"""Bytes a second granian sends a file at (measured: 2.2-2.6 GB/s for one pull): how long a
worker counts a file it handed over as still being sent."""


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


class BlobSender:
    """Decides, per whole-blob ``GET`` from a driver with local files, whether the ASGI
    server sends the file (pathsend) or dtr streams it (one instance per worker: what it
    counts is the worker's own).

    Contract: :meth:`pathsend` is False when the server lacks the extension. Otherwise it
    is False (dtr streams) only for a blob of ``stream_min`` bytes or more while the worker
    sends nothing else: fewer than ``max_streams`` streams of its own open, and every file
    it handed to the server expected to be sent by now (its size at ``pathsend_rate``
    bytes a second, one after the other). Every body dtr streams goes through
    :meth:`track`, which counts it until the body is exhausted or closed (a client that
    goes away mid-blob closes it).
    """

    def __init__(self, stream_min: int = STREAM_MIN, max_streams: int = STREAM_MAX,
                 pathsend_rate: float = PATHSEND_RATE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream_min = stream_min
        self.max_streams = max_streams
        self.pathsend_rate = pathsend_rate
        self.clock = clock
        self.streams = 0
        self.busy_until = 0.0

    def pathsend(self, request: Request[Any, Any, Any], size: int) -> bool:
        """True when the server should send this blob of ``size`` bytes itself."""
        if not supports_pathsend(request):
            return False
        now = self.clock()
        if (size >= self.stream_min and self.streams < self.max_streams
                and now >= self.busy_until):
            return False
        self.busy_until = max(self.busy_until, now) + size / self.pathsend_rate
        return True

    def track(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks``, counted as one open stream until exhausted, failed or closed, or
        dropped before it started (a client gone before the first chunk: the server then
        never iterates the body, and a generator that never started runs no ``finally``).
        """
        self.streams += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.streams -= 1

        body = self._counted(chunks, release)
        weakref.finalize(body, release)
        return body

    @staticmethod
    async def _counted(chunks: AsyncIterator[bytes],
                       release: Callable[[], None]) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            release()
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
