"""S3 storage driver (MinIO or any S3-compatible store): the only module that imports
``minio``; like all of ``storage`` it imports no other dtr package. No blob is ever held
whole in memory (``get_bytes`` aside, for small objects).

Blocking SDK calls run on a private thread pool.

Writes: a write is one PUT when it fits in one part, else a multipart upload fed while
the body is still arriving. The incoming chunks are copied into part buffers (anonymous
memory maps of ``part_size`` bytes, reused from part to part and unmapped when the write
ends, so memory goes back to the OS whatever the allocator's settings); full parts upload
in worker threads (``_PARTS_IN_FLIGHT`` per write) while the event loop fills the next,
so memory per write stays at most ``(_PARTS_IN_FLIGHT + 1) * part_size`` whatever the
size, and nothing appears at the key until the upload completes. The SDK's public
``put_object`` cannot be fed from the event loop without a blocking file object and an
extra copy per part, so writes use its multipart primitives (``_create_multipart_upload``,
``_upload_part``, ``_upload_part_copy``, ``_complete_multipart_upload``,
``_abort_multipart_upload``, ``_put_object``); the SDK version is pinned
(``minio==7.2.20``) for that reason. ``compose`` copies its sources server-side as the
parts of one upload, several at a time.

Reads: ``reader`` streams the GET response: a worker thread reads the raw body (no
urllib3 decoding) in batches of up to ``_READ_BATCH`` bytes, as chunks of at most
``CHUNK``, one batch ahead of the consumer; the batch that reaches the end of the body
returns the connection to the pool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import mmap
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.datatypes import Object, Part
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error

from dtr.storage.base import (
    CHUNK,
    ChunkObserver,
    ObjectInfo,
    PathNotFound,
    StorageError,
    WriteAborted,
    check_path,
    observe_each,
)

T = TypeVar("T")

#: S3's smallest part (every part of a multipart upload but the last) and largest part.
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024**3
#: Part uploads one write keeps running while it receives the next part.
_PARTS_IN_FLIGHT = 2
#: Server-side part copies one compose keeps running.
_COPIES_IN_FLIGHT = 4
#: Most bytes one worker-thread read of a GET body gathers before handing them over.
#: 4 MiB read 855-1007 against 799-885 MB/s on 512 MiB pulls from MinIO (8 MiB: 600-657),
#: but the worker's RSS then grew with the blob (+63 MiB at 64 MiB, +119 MiB at 512 MiB,
#: full benchmark run): 2 MiB keeps it flat.
_READ_BATCH = 2 * CHUNK
#: The part size doubles every this many parts, so S3's 10 000-part cap is never reached.
_PARTS_PER_SIZE = 1000
_MISSING = frozenset({"NoSuchKey", "NoSuchBucket"})
_SDK_ERRORS = (MinioException, urllib3.exceptions.HTTPError, OSError)
_OCTET = "application/octet-stream"


def _guard(path: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` (in a worker thread) and turn SDK and network errors into ours."""
    try:
        return fn(*args, **kwargs)
    except S3Error as exc:
        if exc.code in _MISSING:
            raise PathNotFound(path) from exc
        raise StorageError(f"s3: {exc.code}: {exc.message} ({path})") from exc
    except _SDK_ERRORS as exc:
        raise StorageError(f"s3: {exc} ({path})") from exc


class S3Driver:
    """A :class:`~dtr.storage.base.StorageDriver` over one S3 bucket.

    Args:
        endpoint: ``host:port`` of the S3 endpoint, no scheme.
        bucket: the bucket; :meth:`ensure_bucket` creates it.
        access_key: access key id (empty for anonymous access).
        secret_key: secret access key.
        region: the bucket's region; None asks the server once.
        secure: use HTTPS (verified against the system trust store).
        prefix: key prefix inside the bucket, so several registries can share it.
        part_size: multipart part size in bytes (5 MiB to 5 GiB).
        threads: size of the private thread pool and of the HTTP connection pool.

    Raises:
        ValueError: ``part_size`` is out of S3's bounds.
    """

    name = "s3"

    def __init__(self, endpoint: str, bucket: str, access_key: str, secret_key: str, *,
                 region: str | None = None, secure: bool = True, prefix: str = "",
                 part_size: int = 16 * 1024 * 1024, threads: int = 16) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE}")
        self.bucket = bucket
        self.part_size = part_size
        stripped = prefix.strip("/")
        self._prefix = f"{check_path(stripped)}/" if stripped else ""
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dtr-s3")
        # Short connect timeout and few retries: a dead store must fail a request in
        # seconds, not minutes (the SDK default is 5 min and 5 retries).
        self._http = urllib3.PoolManager(
            # Open readers hold a connection between chunks, hence more than ``threads``.
            timeout=urllib3.Timeout(connect=10, read=120), maxsize=4 * threads,
            retries=urllib3.Retry(total=3, backoff_factor=0.2,
                                  status_forcelist=(500, 502, 503, 504)))
        self._client = Minio(endpoint, access_key=access_key or None,
                             secret_key=secret_key or None, secure=secure, region=region,
                             http_client=self._http)

    # -- helpers -----------------------------------------------------------------------
    def _key(self, path: str) -> str:
        return self._prefix + check_path(path)

    def _submit(self, path: str, fn: Callable[..., T], *args: Any,
                **kwargs: Any) -> asyncio.Future[T]:
        return asyncio.wrap_future(self._pool.submit(_guard, path, fn, *args, **kwargs))

    async def _run(self, path: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._submit(path, fn, *args, **kwargs)

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (safe to race with other replicas).

        Raises:
            StorageError: the store is unreachable or refuses.
        """

        def _ensure() -> None:
            if self._client.bucket_exists(self.bucket):
                return
            try:
                self._client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        await self._run(self.bucket, _ensure)

    # -- StorageDriver -----------------------------------------------------------------
    async def stat(self, path: str) -> ObjectInfo:
        """See :meth:`StorageDriver.stat`."""
        st = await self._run(path, self._client.stat_object, self.bucket, self._key(path))
        mtime = st.last_modified.timestamp() if st.last_modified else 0.0
        return ObjectInfo(path, int(st.size or 0), mtime)

    async def reader(self, path: str, offset: int = 0,
                     length: int | None = None) -> AsyncIterator[bytes]:
        """See :meth:`StorageDriver.reader`. Reads one chunk ahead of the consumer."""
        key = self._key(path)

        def _open() -> Any:
            if length is not None and length <= 0:
                self._client.stat_object(self.bucket, key)
                return None
            try:
                return self._client.get_object(self.bucket, key, offset=offset,
                                               length=length or 0)
            except S3Error as exc:
                if exc.code != "InvalidRange":
                    raise
            # The offset is at or past the end; the object exists only if stat says so.
            self._client.stat_object(self.bucket, key)
            return None

        response = await self._run(path, _open)
        if response is None:
            return _empty()
        return _Body(self, path, response)

    async def write(self, path: str, chunks: AsyncIterable[bytes],
                    observer: ChunkObserver | None = None, *, durable: bool = True) -> int:
        """See :meth:`StorageDriver.write`.

        The bytes are copied into part buffers of exactly ``part_size`` bytes (a chunk may
        straddle two parts); an object of at most one part is sent as a single PUT. The
        observer gets the source's chunks as they are, in batches of about :data:`CHUNK`
        bytes, in a worker thread.
        """
        upload = _Upload(self, path, self._key(path))
        total = 0
        batch: list[bytes] = []
        batch_bytes = 0
        observing: asyncio.Future[None] | None = None
        try:
            try:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    total += len(chunk)
                    if observer is not None:
                        batch.append(chunk)
                        batch_bytes += len(chunk)
                        if batch_bytes >= CHUNK:
                            if observing is not None:
                                await observing
                            observing = self._submit(path, observe_each, observer, batch)
                            batch, batch_bytes = [], 0
                    if upload.take(chunk):
                        await upload.send()
            except StorageError:
                raise
            except Exception as exc:
                raise WriteAborted(f"source stream failed: {exc}") from exc
            if observing is not None:
                await observing
                observing = None
            if observer is not None and batch:
                await self._run(path, observe_each, observer, batch)
            await upload.finish()
        except BaseException:
            if observing is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(observing)
            await upload.abort()
            raise
        return total

    async def put_bytes(self, path: str, data: bytes) -> None:
        """See :meth:`StorageDriver.put_bytes`."""
        if len(data) > self.part_size:

            async def one() -> AsyncIterator[bytes]:
                yield data

            await self.write(path, one())
            return
        await self._run(path, self._client._put_object, self.bucket, self._key(path),
                        data, {"Content-Type": _OCTET})

    async def get_bytes(self, path: str) -> bytes:
        """See :meth:`StorageDriver.get_bytes`."""
        key = self._key(path)

        def _get() -> bytes:
            response = self._client.get_object(self.bucket, key)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        return await self._run(path, _get)

    async def compose(self, sources: list[str], dest: str) -> int:
        """See :meth:`StorageDriver.compose`.

        Server-side (``UploadPartCopy``, :data:`_COPIES_IN_FLIGHT` at a time, each guarded
        by the source's ETag) when every non-empty source but the last is at least 5 MiB,
        as S3 requires of parts; otherwise the bytes are streamed through a new upload.
        Empty sources are skipped; a single source is a server-side copy.
        """
        dest_key = self._key(dest)
        keys = [self._key(src) for src in sources]
        stats = await asyncio.gather(*(
            self._run(src, self._client.stat_object, self.bucket, key)
            for src, key in zip(sources, keys, strict=True)))
        used = [(src, key, int(st.size or 0), st.etag or "")
                for src, key, st in zip(sources, keys, stats, strict=True) if st.size]
        total = sum(size for _, _, size, _ in used)
        if not used:
            await self.put_bytes(dest, b"")
        elif len(used) == 1:
            await self._copy(used[0][0], dest)
        elif all(size >= MIN_PART_SIZE for _, _, size, _ in used[:-1]):
            await self._compose_parts(" + ".join(src for src, _, _, _ in used), dest_key,
                                      [(key, size, etag) for _, key, size, etag in used])
        else:
            total = await self.write(dest, self._concat([src for src, _, _, _ in used]))
        return total

    async def _compose_parts(self, label: str, dest_key: str,
                             sources: list[tuple[str, int, str]]) -> None:
        """One multipart upload of ``dest_key`` whose parts are server-side copies of
        ``sources`` (key, size, ETag); a source over 5 GiB is copied in ranges.
        """
        copies: list[dict[str, str]] = []
        for key, size, etag in sources:
            head = {"x-amz-copy-source": quote(f"/{self.bucket}/{key}"),
                    "x-amz-copy-source-if-match": etag}
            if size <= MAX_PART_SIZE:
                copies.append(head)
                continue
            for start in range(0, size, MAX_PART_SIZE):
                end = min(start + MAX_PART_SIZE, size) - 1
                copies.append({**head, "x-amz-copy-source-range": f"bytes={start}-{end}"})
        upload_id = await self._run(label, self._client._create_multipart_upload,
                                    self.bucket, dest_key, {"Content-Type": _OCTET})
        slots = asyncio.Semaphore(_COPIES_IN_FLIGHT)

        async def copy(number: int, headers: dict[str, str]) -> Part:
            async with slots:
                etag, _ = await self._run(label, self._client._upload_part_copy, self.bucket,
                                          dest_key, upload_id, number, headers)
            return Part(number, etag)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(copy(number, headers))
                         for number, headers in enumerate(copies, 1)]
            await self._run(label, self._client._complete_multipart_upload, self.bucket,
                            dest_key, upload_id, [task.result() for task in tasks])
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._submit(
                    label, self._client._abort_multipart_upload, self.bucket, dest_key,
                    upload_id))
            if isinstance(exc, BaseExceptionGroup):  # the first failed copy says why
                raise exc.exceptions[0] from None
            raise

    async def _concat(self, sources: list[str]) -> AsyncIterator[bytes]:
        for src in sources:
            async for chunk in await self.reader(src):
                yield chunk

    async def _copy(self, src: str, dest: str) -> None:
        """Server-side copy (the SDK switches to multipart copy above 5 GiB)."""
        if src == dest:
            await self.stat(src)
            return
        await self._run(src, self._client.copy_object, self.bucket, self._key(dest),
                        CopySource(self.bucket, self._key(src)))

    async def move(self, src: str, dest: str) -> None:
        """See :meth:`StorageDriver.move`. A server-side copy, then the source's delete."""
        self._key(dest)
        await self._copy(src, dest)
        if src != dest:
            await self.delete(src)

    async def delete(self, path: str) -> None:
        """See :meth:`StorageDriver.delete`."""
        await self._run(path, self._client.remove_object, self.bucket, self._key(path))

    async def delete_prefix(self, prefix: str) -> int:
        """See :meth:`StorageDriver.delete_prefix`. Batches of 1000 keys per request."""
        start = self._key(prefix) + "/"

        def _delete() -> int:
            count = 0

            def doomed() -> Iterator[DeleteObject]:
                nonlocal count
                for obj in self._client.list_objects(self.bucket, prefix=start,
                                                     recursive=True):
                    if obj.object_name and not obj.is_dir:
                        count += 1
                        yield DeleteObject(obj.object_name)

            errors = list(self._client.remove_objects(self.bucket, doomed()))
            if errors:
                raise StorageError(f"s3: {len(errors)} objects under {prefix} were not "
                                   f"deleted, first: {errors[0]}")
            return count

        return await self._run(prefix, _delete)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """See :meth:`StorageDriver.list`. Pages of 1000 keys are fetched in a thread."""
        start = self._key(prefix) + "/"
        found = iter(self._client.list_objects(self.bucket, prefix=start, recursive=True))
        cut = len(self._prefix)
        while True:
            page: list[Object] = await self._run(
                prefix, lambda: list(itertools.islice(found, 1000)))
            if not page:
                return
            for obj in page:
                if obj.object_name and not obj.is_dir:
                    mtime = obj.last_modified.timestamp() if obj.last_modified else 0.0
                    yield ObjectInfo(obj.object_name[cut:], int(obj.size or 0), mtime)

    async def presign_get(self, path: str, expires_seconds: int) -> str | None:
        """A presigned GET URL valid for ``expires_seconds`` (clamped to 1 s .. 7 days).

        The URL is signed locally; the object's existence is not checked.
        """
        expires = timedelta(seconds=min(max(expires_seconds, 1), 7 * 24 * 3600))
        url: str = await self._run(path, self._client.presigned_get_object, self.bucket,
                                   self._key(path), expires=expires)
        return url

    def local_file(self, path: str) -> str | None:
        """Objects are not local files."""
        return None

    async def close(self) -> None:
        """Shut the thread pool down and drop pooled connections."""
        self._pool.shutdown(wait=False)
        self._http.clear()


async def _empty() -> AsyncIterator[bytes]:
    return
    yield  # pragma: no cover - makes this an async generator


class _Upload:
    """One object being written: a single PUT if it fits in one part, else multipart.

    Parts are assembled in anonymous memory maps of the part size, at most
    ``_PARTS_IN_FLIGHT + 1`` per write and reused from part to part: no per-part
    allocation (nor the page faults of fresh memory for every part), and the memory goes
    back to the OS when the write ends, whatever the allocator's thresholds.
    """

    def __init__(self, driver: S3Driver, path: str, key: str) -> None:
        self._driver = driver
        self._client = driver._client
        self._path = path
        self._key = key
        self._upload_id: str | None = None
        self._creating: asyncio.Future[str] | None = None
        self._in_flight: dict[asyncio.Future[Part], mmap.mmap] = {}
        self._parts: list[Part] = []
        self._number = 0
        self._free: list[mmap.mmap] = []
        self._buffer: mmap.mmap | None = None
        self._filled = 0
        self._rest: memoryview | None = None

    def target(self) -> int:
        """Size of the part being received: it is sent when this many bytes are in."""
        grown = self._driver.part_size << (self._number // _PARTS_PER_SIZE)
        return min(grown, MAX_PART_SIZE)

    def take(self, chunk: bytes | memoryview) -> bool:
        """Copy ``chunk`` into the part buffer; True when a full part awaits :meth:`send`.

        A chunk that fills the part is cut there; :meth:`send` carries its rest over.
        """
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = self._new_buffer()
        room = len(buffer) - self._filled
        if len(chunk) < room:
            buffer[self._filled:self._filled + len(chunk)] = chunk
            self._filled += len(chunk)
            return False
        view = memoryview(chunk)
        buffer[self._filled:] = view[:room]
        self._filled = len(buffer)
        self._rest = view[room:]
        return True

    def _new_buffer(self) -> mmap.mmap:
        size = self.target()
        while self._free:
            buffer = self._free.pop()
            if len(buffer) == size:
                return buffer
            _unmap(buffer)  # the part size has grown
        return mmap.mmap(-1, size)

    async def send(self) -> None:
        """Upload the full part buffer (waiting first if too many parts are in flight),
        then start the next part with the rest of the chunk that filled it.
        """
        while True:
            rest, self._rest = self._rest, None
            await self._add()
            if not rest or not self.take(rest):
                return

    async def _add(self) -> None:
        """Start uploading the filled buffer as the next part."""
        buffer, filled = self._buffer, self._filled
        assert buffer is not None
        self._buffer, self._filled = None, 0
        if self._upload_id is None:
            try:
                # Kept as a future so that abort() can still learn the id after a cancel.
                self._creating = self._driver._submit(
                    self._path, self._client._create_multipart_upload, self._driver.bucket,
                    self._key, {"Content-Type": _OCTET})
                self._upload_id = await self._creating
            except BaseException:
                self._free.append(buffer)
                raise
        while len(self._in_flight) >= _PARTS_IN_FLIGHT:
            try:
                done, _ = await asyncio.wait(self._in_flight,
                                             return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                self._free.append(buffer)
                raise
            for fut in done:
                self._free.append(self._in_flight.pop(fut))
                self._parts.append(fut.result())  # a failed part fails the write
        self._number += 1
        fut = self._driver._submit(self._path, self._send_part, self._upload_id,
                                   self._number, buffer, filled)
        self._in_flight[fut] = buffer

    def _send_part(self, upload_id: str, number: int, buffer: mmap.mmap, size: int) -> Part:
        with memoryview(buffer) as view, view[:size] as body:
            etag = self._client._upload_part(self._driver.bucket, self._key, body,  # type: ignore[arg-type]
                                             None, upload_id, number)
        return Part(number, etag)

    async def finish(self) -> None:
        """Send the last part and complete the upload (or PUT a small object whole)."""
        try:
            if self._upload_id is None:
                await self._driver._run(self._path, _put, self._client, self._driver.bucket,
                                        self._key, self._buffer, self._filled)
                return
            if self._filled:
                await self._add()
            while self._in_flight:
                fut = next(iter(self._in_flight))
                # Shielded: a cancel must not mark the part done while its thread still
                # reads the buffer (abort() waits for it before unmapping).
                self._parts.append(await asyncio.shield(fut))
                self._free.append(self._in_flight.pop(fut))
            self._parts.sort(key=lambda p: p.part_number)
            await self._driver._run(self._path, self._client._complete_multipart_upload,
                                    self._driver.bucket, self._key, self._upload_id,
                                    self._parts)
            self._upload_id = self._creating = None
        finally:
            if not self._in_flight:
                self._release()

    def _release(self) -> None:
        """Unmap the part buffers (none is in use any more)."""
        buffers = [*self._free, *([self._buffer] if self._buffer is not None else [])]
        self._free, self._buffer, self._filled, self._rest = [], None, 0, None
        for buffer in buffers:
            _unmap(buffer)

    async def abort(self) -> None:
        """Discard the uploaded parts (best effort: S3 lifecycle rules reap leftovers)."""
        for fut, buffer in self._in_flight.items():
            with contextlib.suppress(BaseException):
                await asyncio.shield(fut)
            self._free.append(buffer)
        self._in_flight.clear()
        self._release()
        if self._upload_id is None and self._creating is not None:
            with contextlib.suppress(BaseException):
                self._upload_id = await asyncio.shield(self._creating)
        self._creating = None
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._driver._submit(
                    self._path, self._client._abort_multipart_upload, self._driver.bucket,
                    self._key, upload_id))


def _unmap(buffer: mmap.mmap) -> None:
    """Give a part buffer's memory back now; if a view of it is still alive somewhere
    (an SDK error holding the request), the last reference unmaps it instead.
    """
    with contextlib.suppress(BufferError):
        buffer.close()


def _put(client: Minio, bucket: str, key: str, buffer: mmap.mmap | None, size: int) -> None:
    if buffer is None:
        client._put_object(bucket, key, b"", {"Content-Type": _OCTET})
        return
    with memoryview(buffer) as view, view[:size] as body:
        client._put_object(bucket, key, body, {"Content-Type": _OCTET})  # type: ignore[arg-type]


class _Body:
    """Async iterator over a GET response, read in batches in worker threads.

    A worker thread reads a batch of chunks (:data:`CHUNK` bytes each; the first batch one
    chunk, then doubling up to :data:`_READ_BATCH` bytes) while the consumer takes the
    previous batch, so one thread hop and at most one event-loop wake-up serve a whole
    batch. The batch that reaches the end of the body gives the HTTP connection back to
    the pool from its thread; :meth:`aclose` (or an error) closes it before then.
    """

    def __init__(self, driver: S3Driver, path: str, response: Any) -> None:
        self._pool = driver._pool
        self._path = path
        self._response = response
        self._ready: collections.deque[bytes] = collections.deque()
        self._batch = CHUNK
        self._closed = False
        self._pending: Future[tuple[list[bytes], bool]] | None = self._read_ahead()

    def _read_ahead(self) -> Future[tuple[list[bytes], bool]]:
        size, self._batch = self._batch, min(2 * self._batch, _READ_BATCH)
        return self._pool.submit(_guard, self._path, _read_batch, self._response, size)

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self._ready:
            return self._ready.popleft()
        if self._closed or self._pending is None:
            raise StopAsyncIteration
        try:
            chunks, end = await asyncio.wrap_future(self._pending)
        except BaseException:
            await self.aclose()  # closes once the read in progress, if any, is over
            raise
        if end:  # the connection is back in the pool
            self._pending = None
            self._closed = True
        else:
            self._pending = self._read_ahead()
        if not chunks:
            raise StopAsyncIteration
        self._ready.extend(chunks)
        return self._ready.popleft()

    async def aclose(self) -> None:
        """Stop reading and close the connection (after any read in progress)."""
        self._ready.clear()
        if self._closed:
            return
        self._closed = True
        pending, self._pending = self._pending, None
        if pending is None:
            self._release()
        else:
            pending.add_done_callback(lambda _: self._release())

    def _release(self) -> None:
        self._response.close()
        self._response.release_conn()


def _read_batch(response: Any, size: int) -> tuple[list[bytes], bool]:
    """Read about ``size`` bytes of the body (in a worker thread) as chunks of at most
    :data:`CHUNK` bytes; the flag is True, and the connection released, at the end.

    ``decode_content=False``: the stored bytes as they are, without urllib3's decoding
    buffer (dtr stores no ``Content-Encoding``).
    """
    chunks: list[bytes] = []
    got = 0
    while got < size:
        data: bytes = response.read(CHUNK, decode_content=False)
        if data:
            chunks.append(data)
            got += len(data)
        if not data or response.length_remaining == 0:
            response.release_conn()
            return chunks, True
    return chunks, False
