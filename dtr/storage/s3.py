"""S3 storage driver (MinIO or any S3-compatible store): the only module that imports
``minio``; like all of ``storage`` it imports no other dtr package.

Blocking SDK calls run on a private thread pool. A write is one PUT when it fits in one
part, else a multipart upload fed while the body is still arriving: parts upload in
worker threads (``_PARTS_IN_FLIGHT`` per write) while the event loop receives the next,
so memory per write stays near ``(_PARTS_IN_FLIGHT + 1) * part_size`` whatever the size,
and nothing appears at the key until the upload completes. The SDK's public
``put_object`` cannot be fed from the event loop without a blocking file object and an
extra copy per part, so writes use its multipart primitives (``_create_multipart_upload``,
``_upload_part``, ``_complete_multipart_upload``, ``_abort_multipart_upload``,
``_put_object``); the SDK version is pinned (``minio==7.2.20``) for that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
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
)

T = TypeVar("T")

#: S3's smallest part (every part of a multipart upload but the last) and largest part.
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024**3
#: Part uploads one write keeps running while it receives the next part.
_PARTS_IN_FLIGHT = 2
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

        Parts are cut at chunk boundaries once ``part_size`` bytes have arrived; an object
        smaller than one part is sent as a single PUT. The observer gets the source's
        chunks as they are, in batches of about :data:`CHUNK` bytes, in a worker thread.
        """
        upload = _Upload(self, path, self._key(path))
        part: list[bytes] = []
        part_bytes = total = 0
        batch: list[bytes] = []
        batch_bytes = 0
        observing: asyncio.Future[None] | None = None
        try:
            try:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    total += len(chunk)
                    part.append(chunk)
                    part_bytes += len(chunk)
                    if observer is not None:
                        batch.append(chunk)
                        batch_bytes += len(chunk)
                        if batch_bytes >= CHUNK:
                            if observing is not None:
                                await observing
                            observing = self._submit(path, _observe, observer, batch)
                            batch, batch_bytes = [], 0
                    if part_bytes >= upload.target():
                        await upload.add(part)
                        part, part_bytes = [], 0
            except StorageError:
                raise
            except Exception as exc:
                raise WriteAborted(f"source stream failed: {exc}") from exc
            if observing is not None:
                await observing
                observing = None
            if observer is not None and batch:
                await self._run(path, _observe, observer, batch)
            await upload.finish(part)
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

        Server-side (``UploadPartCopy``) when every non-empty source but the last is at
        least 5 MiB, as S3 requires of parts; otherwise the bytes are streamed through a
        new upload. Empty sources are skipped; a single source is a server-side copy.
        """
        dest_key = self._key(dest)
        keys = [self._key(src) for src in sources]
        infos = await asyncio.gather(*(self.stat(src) for src in sources))
        used = [(src, key, info.size)
                for src, key, info in zip(sources, keys, infos, strict=True) if info.size]
        total = sum(size for _, _, size in used)
        if not used:
            await self.put_bytes(dest, b"")
        elif len(used) == 1:
            await self._copy(used[0][0], dest)
        elif all(size >= MIN_PART_SIZE for _, _, size in used[:-1]):
            parts = [ComposeSource(self.bucket, key) for _, key, _ in used]
            await self._run(" + ".join(src for src, _, _ in used),
                            self._client.compose_object, self.bucket, dest_key, parts)
        else:
            total = await self.write(dest, self._concat([src for src, _, _ in used]))
        return total

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


def _observe(observer: ChunkObserver, chunks: list[bytes]) -> None:
    for chunk in chunks:
        observer(chunk)


async def _empty() -> AsyncIterator[bytes]:
    return
    yield  # pragma: no cover - makes this an async generator


class _Upload:
    """One object being written: a single PUT if it fits in one part, else multipart."""

    def __init__(self, driver: S3Driver, path: str, key: str) -> None:
        self._driver = driver
        self._client = driver._client
        self._path = path
        self._key = key
        self._upload_id: str | None = None
        self._creating: asyncio.Future[str] | None = None
        self._in_flight: set[asyncio.Future[Part]] = set()
        self._parts: list[Part] = []
        self._number = 0

    def target(self) -> int:
        """Size at which the part being received is cut and sent."""
        grown = self._driver.part_size << (self._number // _PARTS_PER_SIZE)
        return min(grown, MAX_PART_SIZE)

    async def add(self, chunks: list[bytes]) -> None:
        """Start uploading one part; wait first if too many are in flight."""
        if self._upload_id is None:
            # Kept as a future so that abort() can still learn the id after a cancel.
            self._creating = self._driver._submit(
                self._path, self._client._create_multipart_upload, self._driver.bucket,
                self._key, {"Content-Type": _OCTET})
            self._upload_id = await self._creating
        while len(self._in_flight) >= _PARTS_IN_FLIGHT:
            done, _ = await asyncio.wait(self._in_flight,
                                         return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                self._parts.append(fut.result())  # a failed part stays for abort()
                self._in_flight.discard(fut)
        self._number += 1
        self._in_flight.add(self._driver._submit(self._path, self._send_part,
                                                 self._upload_id, self._number, chunks))

    def _send_part(self, upload_id: str, number: int, chunks: list[bytes]) -> Part:
        etag = self._client._upload_part(self._driver.bucket, self._key, b"".join(chunks),
                                         None, upload_id, number)
        return Part(number, etag)

    async def finish(self, tail: list[bytes]) -> None:
        """Send the last part and complete the upload (or PUT a small object whole)."""
        if self._upload_id is None:
            await self._driver._run(self._path, _put, self._client, self._driver.bucket,
                                    self._key, tail)
            return
        if tail:
            await self.add(tail)
        while self._in_flight:
            fut = self._in_flight.pop()
            self._parts.append(await fut)
        self._parts.sort(key=lambda p: p.part_number)
        await self._driver._run(self._path, self._client._complete_multipart_upload,
                                self._driver.bucket, self._key, self._upload_id, self._parts)
        self._upload_id = self._creating = None

    async def abort(self) -> None:
        """Discard the uploaded parts (best effort: S3 lifecycle rules reap leftovers)."""
        for fut in self._in_flight:
            with contextlib.suppress(BaseException):
                await asyncio.shield(fut)
        self._in_flight.clear()
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


def _put(client: Minio, bucket: str, key: str, chunks: list[bytes]) -> None:
    client._put_object(bucket, key, b"".join(chunks), {"Content-Type": _OCTET})


class _Body:
    """Async iterator over a GET response that keeps one read ahead of the consumer.

    The HTTP connection goes back to the pool at the end of the body, or is closed by
    :meth:`aclose` (or an error) before then.
    """

    def __init__(self, driver: S3Driver, path: str, response: Any) -> None:
        self._pool = driver._pool
        self._path = path
        self._response = response
        self._closed = False
        self._pending: Future[bytes] | None = self._read_ahead()

    def _read_ahead(self) -> Future[bytes]:
        return self._pool.submit(_guard, self._path, self._response.read, CHUNK)

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self._closed or self._pending is None:
            raise StopAsyncIteration
        try:
            data: bytes = await asyncio.wrap_future(self._pending)
        except BaseException:
            await self.aclose()  # closes once the read in progress, if any, is over
            raise
        if not data:
            self._pending = None
            self._closed = True
            self._response.release_conn()
            raise StopAsyncIteration
        self._pending = self._read_ahead()
        return data

    async def aclose(self) -> None:
        """Stop reading and close the connection (after any read in progress)."""
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
