"""In-memory storage driver for unit tests: objects are ``bytes`` in a dict.

It keeps the whole :class:`~dtr.storage.base.StorageDriver` contract (atomic writes,
``PathNotFound``, ``WriteAborted``, key validation) so unit tests of upper layers behave as
they would on disk or S3, but it holds every object in RAM: never use it in production.
It is an :class:`~dtr.storage.base.AppendableDriver` too (the lock is a set of paths).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator

from dtr.storage.base import (
    CHUNK,
    AppendHandle,
    ChunkObserver,
    ObjectInfo,
    ObjectLocked,
    PathNotFound,
    StorageError,
    WriteAborted,
    check_path,
)


class MemoryDriver:
    """A :class:`~dtr.storage.base.StorageDriver` over a dict (tests only).

    Operations complete without yielding to the event loop between the check and the
    change, so each one is atomic with respect to the others.
    """

    name = "memory"

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, float]] = {}
        self._locked: set[str] = set()

    def _get(self, path: str) -> tuple[bytes, float]:
        try:
            return self._objects[check_path(path)]
        except KeyError:
            raise PathNotFound(path) from None

    async def stat(self, path: str) -> ObjectInfo:
        """See :meth:`StorageDriver.stat`."""
        data, mtime = self._get(path)
        return ObjectInfo(path, len(data), mtime)

    async def reader(self, path: str, offset: int = 0,
                     length: int | None = None) -> AsyncIterator[bytes]:
        """See :meth:`StorageDriver.reader`."""
        data, _ = self._get(path)
        end = len(data) if length is None else min(len(data), offset + length)
        return self._iter(data, offset, end)

    @staticmethod
    async def _iter(data: bytes, start: int, end: int) -> AsyncIterator[bytes]:
        view = memoryview(data)
        for pos in range(start, end, CHUNK):
            yield bytes(view[pos:min(pos + CHUNK, end)])

    async def write(self, path: str, chunks: AsyncIterable[bytes],
                    observer: ChunkObserver | None = None, *, durable: bool = True) -> int:
        """See :meth:`StorageDriver.write`. The observer runs inline, not in a thread."""
        check_path(path)
        parts: list[bytes] = []
        try:
            async for chunk in chunks:
                if chunk:
                    if observer is not None:
                        observer(chunk)
                    parts.append(bytes(chunk))
        except StorageError:
            raise
        except Exception as exc:
            raise WriteAborted(f"source stream failed: {exc}") from exc
        data = b"".join(parts)
        self._objects[path] = (data, time.time())
        return len(data)

    async def put_bytes(self, path: str, data: bytes) -> None:
        """See :meth:`StorageDriver.put_bytes`."""
        self._objects[check_path(path)] = (bytes(data), time.time())

    async def get_bytes(self, path: str) -> bytes:
        """See :meth:`StorageDriver.get_bytes`."""
        return self._get(path)[0]

    async def compose(self, sources: list[str], dest: str) -> int:
        """See :meth:`StorageDriver.compose`."""
        check_path(dest)
        data = b"".join(self._get(src)[0] for src in sources)
        self._objects[dest] = (data, time.time())
        return len(data)

    @contextlib.asynccontextmanager
    async def open_append(self, path: str) -> AsyncIterator[AppendHandle]:
        """See :meth:`AppendableDriver.open_append`."""
        check_path(path)
        if path in self._locked:
            raise ObjectLocked(path)
        self._locked.add(path)
        try:
            if path not in self._objects:
                self._objects[path] = (b"", time.time())
            yield _MemoryHandle(self, path)
        finally:
            self._locked.discard(path)

    async def move(self, src: str, dest: str) -> None:
        """See :meth:`StorageDriver.move`."""
        check_path(dest)
        entry = self._get(src)
        self._objects[dest] = entry
        if src != dest:
            del self._objects[src]

    async def delete(self, path: str) -> None:
        """See :meth:`StorageDriver.delete`."""
        self._objects.pop(check_path(path), None)

    async def delete_prefix(self, prefix: str) -> int:
        """See :meth:`StorageDriver.delete_prefix`."""
        start = check_path(prefix) + "/"
        doomed = [key for key in self._objects if key.startswith(start)]
        for key in doomed:
            del self._objects[key]
        return len(doomed)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """See :meth:`StorageDriver.list`."""
        start = check_path(prefix) + "/"
        found = [ObjectInfo(key, len(data), mtime)
                 for key, (data, mtime) in self._objects.items() if key.startswith(start)]
        for info in found:
            yield info

    async def presign_get(self, path: str, expires_seconds: int) -> str | None:
        """In-memory objects have no URL."""
        check_path(path)
        return None

    def local_file(self, path: str) -> str | None:
        """Objects are not local files."""
        return None

    async def close(self) -> None:
        """Drop every object."""
        self._objects.clear()


class _MemoryHandle:
    """An :class:`~dtr.storage.base.AppendHandle` on one key of a :class:`MemoryDriver`."""

    def __init__(self, driver: MemoryDriver, path: str) -> None:
        self._driver = driver
        self._path = path

    def _data(self) -> bytes:
        return self._driver._get(self._path)[0]

    def _set(self, data: bytes) -> None:
        self._driver._objects[self._path] = (data, time.time())

    async def size(self) -> int:
        """See :meth:`AppendHandle.size`."""
        return len(self._data())

    async def truncate(self, size: int) -> None:
        """See :meth:`AppendHandle.truncate`."""
        data = self._data()
        if size < 0 or size > len(data):
            raise ValueError(f"cannot truncate {self._path} ({len(data)} bytes) to {size}")
        self._set(data[:size])

    async def sync(self) -> None:
        """See :meth:`AppendHandle.sync`: memory has nothing to make durable."""
        self._data()  # the object must still exist

    async def write_at(self, offset: int, chunks: AsyncIterable[bytes],
                       observer: ChunkObserver | None = None) -> int:
        """See :meth:`AppendHandle.write_at`. The bytes appear when the call returns."""
        data = self._data()
        if offset < 0 or offset > len(data):
            raise ValueError(f"offset {offset} is past the end of {self._path} "
                             f"({len(data)} bytes)")
        buf = bytearray(data)
        pos = offset
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                if observer is not None:
                    observer(chunk)
                buf[pos:pos + len(chunk)] = chunk
                pos += len(chunk)
        except BaseException as exc:
            with contextlib.suppress(PathNotFound):
                self._set(self._data()[:offset])
            if isinstance(exc, StorageError) or not isinstance(exc, Exception):
                raise
            raise WriteAborted(f"source stream failed: {exc}") from exc
        self._set(bytes(buf))
        return pos - offset
