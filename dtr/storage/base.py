"""The ``StorageDriver`` seam: the only way dtr touches blob bytes.

A driver stores opaque objects under ``/``-separated keys (drawn in ``storage/paths.py``).
It knows nothing of OCI, digests, the database or HTTP. Every implementation passes
``tests/contracts/test_storage_driver.py``. All methods are coroutines or async iterators;
blocking I/O runs in worker threads, never on the event loop. No object is ever held
whole in memory except through :meth:`StorageDriver.get_bytes` (small objects only).

A driver may also offer an optional capability, :class:`AppendableDriver`: an object it
can lock and write in place at an offset (the filesystem and memory drivers do; S3 cannot).
Callers test for it with ``isinstance`` and fall back to immutable objects without it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: Size of the buffers drivers read and write in (1 MiB).
CHUNK = 1024 * 1024
#: The largest chunk a reader yields (2 MiB): a driver may read files in pieces of twice
#: :data:`CHUNK`, which streams a big blob with fewer hand-overs (``dtr.storage.filesystem``).
READ_CHUNK = 2 * CHUNK


class StorageError(Exception):
    """The backend failed (I/O error, network, permissions). Callers may retry."""


class PathNotFound(StorageError):
    """No object exists at the key."""

    def __init__(self, path: str) -> None:
        super().__init__(f"no object at {path}")
        self.path = path


class InvalidPath(StorageError):
    """The key is malformed (empty component, ``..``, leading ``/``)."""


class WriteAborted(StorageError):
    """The source stream failed before the write completed; nothing was stored."""


class ObjectLocked(StorageError):
    """Another holder (this process or another, on this host or one sharing the disk)
    has the object open through :meth:`AppendableDriver.open_append`.
    """

    def __init__(self, path: str) -> None:
        super().__init__(f"object {path} is locked by another writer")
        self.path = path


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What :meth:`StorageDriver.stat` and :meth:`StorageDriver.list` report."""

    path: str
    size: int
    mtime: float
    """Seconds since the epoch of the last write."""


ChunkObserver = Callable[[bytes], None]
"""Called with every chunk written, in order, in a worker thread (e.g. ``hasher.update``)."""


def observe_each(observer: ChunkObserver | None, pieces: list[bytes]) -> None:
    """Feed ``pieces`` to ``observer`` in order (nothing when there is no observer); the
    drivers call it in their I/O threads, one batch at a time.
    """
    if observer is not None:
        for piece in pieces:
            observer(piece)


@runtime_checkable
class StorageDriver(Protocol):
    """Object storage for blobs and in-progress uploads.

    Keys are relative ``/``-separated strings of components matching ``[A-Za-z0-9._-]+``
    (no ``..``); :func:`check_path` enforces that and drivers call it.
    """

    name: str
    """Short driver name for logs and errors (``filesystem``, ``s3``, ``memory``)."""

    async def stat(self, path: str) -> ObjectInfo:
        """Return size and mtime of the object at ``path``.

        Raises:
            PathNotFound: no object there.
        """
        ...

    async def reader(self, path: str, offset: int = 0,
                     length: int | None = None) -> AsyncIterator[bytes]:
        """Open the object and return an iterator over its bytes from ``offset``.

        The object is opened before this coroutine returns, so a missing object raises
        here, not on the first ``__anext__``. ``length`` None reads to the end; chunks are
        at most :data:`READ_CHUNK` bytes. An offset at or past the end yields nothing.

        Raises:
            PathNotFound: no object there.
        """
        ...

    async def write(self, path: str, chunks: AsyncIterable[bytes],
                    observer: ChunkObserver | None = None, *, durable: bool = True) -> int:
        """Store the bytes of ``chunks`` at ``path``, replacing any object there.

        Atomic: readers see either the old object or the whole new one, never a part.
        If ``chunks`` raises, or the backend fails, nothing is stored at ``path``, the
        partial data is discarded and the error propagates (``WriteAborted`` wraps a
        non-storage error from the source). ``observer`` sees every byte written, in order.
        ``durable`` (when the driver is configured for durability) makes the object survive
        a crash once this returns; ``durable=False`` is for scratch objects (upload
        segments) whose durability :meth:`move` and :meth:`compose` provide later.

        Returns:
            the number of bytes written.
        """
        ...

    async def put_bytes(self, path: str, data: bytes) -> None:
        """Store a small object atomically (same guarantees as :meth:`write`)."""
        ...

    async def get_bytes(self, path: str) -> bytes:
        """Return a small object whole.

        Raises:
            PathNotFound: no object there.
        """
        ...

    async def compose(self, sources: list[str], dest: str) -> int:
        """Atomically and durably make ``dest`` the concatenation of ``sources`` (in order).

        Sources are left in place (the caller deletes them). With one source this may be
        a copy or a server-side operation. ``dest`` may already exist and is replaced.

        Returns:
            the size of ``dest``.

        Raises:
            PathNotFound: a source is missing; ``dest`` is unchanged.
        """
        ...

    async def move(self, src: str, dest: str) -> None:
        """Atomically and durably move ``src`` to ``dest``, replacing ``dest``.

        ``src`` may have been written with ``durable=False``; ``dest`` is durable after.

        Raises:
            PathNotFound: ``src`` is missing; ``dest`` is unchanged.
        """
        ...

    async def delete(self, path: str) -> None:
        """Delete the object at ``path``; deleting a missing object is not an error."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix + '/'``.

        Returns:
            how many objects were deleted.
        """
        ...

    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Iterate over every object under ``prefix + '/'`` (recursively), any order."""
        ...

    async def presign_get(self, path: str, expires_seconds: int) -> str | None:
        """Return a URL a client can GET the object from directly, or None if unsupported."""
        ...

    def local_file(self, path: str) -> str | None:
        """The local file that holds the object, for zero-copy responses; None when the
        driver keeps objects elsewhere. Does not check that the object exists.
        """
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...


@runtime_checkable
class AppendHandle(Protocol):
    """An object opened for writing in place, under an exclusive lock (see
    :meth:`AppendableDriver.open_append`). Methods must not be called concurrently.
    """

    async def size(self) -> int:
        """The object's current size in bytes."""
        ...

    async def write_at(self, offset: int, chunks: AsyncIterable[bytes],
                       observer: ChunkObserver | None = None) -> int:
        """Write the bytes of ``chunks`` starting at ``offset``, extending the object.

        Bytes past the end of what is written are left as they were (the caller truncates
        first when it wants them gone). Not atomic and not durable: readers may see part
        of the write, and a crash may lose it (``move`` of the object makes it durable).
        If ``chunks`` raises, or the backend fails, the object is truncated back to
        ``offset`` (when the backend still allows it) and the error propagates
        (``WriteAborted`` wraps a non-storage error from the source). The truncation
        happens, and every byte of this call is on its way to the object, before the lock
        can be released, even when the calling task is cancelled. ``observer`` sees every
        byte written, in order.

        Returns:
            the number of bytes written.

        Raises:
            ValueError: ``offset`` is negative or past the end of the object (no holes).
        """
        ...

    async def truncate(self, size: int) -> None:
        """Cut the object to ``size`` bytes (``size`` at most its current size).

        Raises:
            ValueError: ``size`` is negative or past the end of the object.
        """
        ...

    async def sync(self) -> None:
        """Make the bytes written so far durable, as :meth:`StorageDriver.move` of the
        object would; a later ``move`` then has less (or nothing) of that work left.

        Optional to call: it lets a caller overlap that wait with other work (it may run
        while the caller awaits something else, but not beside another handle method).
        A no-op where writes are durable once acknowledged.
        """
        ...


@runtime_checkable
class AppendableDriver(Protocol):
    """Optional capability of a :class:`StorageDriver`: objects written in place.

    Tested in ``tests/contracts/test_storage_driver.py`` for every driver that has it.
    """

    def open_append(self, path: str) -> AbstractAsyncContextManager[AppendHandle]:
        """Open (creating it empty if missing) the object at ``path`` for writing in place,
        holding an exclusive lock until the context exits.

        The lock is not waited for: if any other handle on the same object is open — in
        this process or another, including another host sharing the storage — this raises
        :class:`ObjectLocked` at once. The handle follows the object it locked: the holder
        may :meth:`StorageDriver.move` it (e.g. to commit it), after which the handle must
        not write again. Writes, deletes and moves by callers that do not hold the lock
        are not prevented; callers who write in place must all go through a handle.

        Raises:
            ObjectLocked: another handle holds the object.
        """
        ...


def check_path(path: str) -> str:
    """Validate a storage key and return it.

    Raises:
        InvalidPath: empty, absolute, with an empty or dot-only component, or with
            characters outside ``[A-Za-z0-9._-]``.
    """
    if _KEY.fullmatch(path) is None:
        raise InvalidPath(f"invalid storage key {path!r}")
    return path


#: One or more ``/``-separated components of ``[A-Za-z0-9._-]``, none ``.`` or ``..``.
_COMPONENT = r"(?!\.\.?(?:/|\Z))[A-Za-z0-9._-]+"
_KEY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
