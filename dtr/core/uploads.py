"""UploadService: start, append, status, finish (verify digest) and cancel blob uploads.

State lives in the database (``upload``, ``upload_part``) and storage (one immutable
segment per request body), so any replica can serve any request of an upload. Bytes are
hashed as they stream to storage; the running hash is kept per process as an
optimisation only — a replica that lacks it re-reads the segments to verify.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from sqlalchemy import Connection, Row, delete, insert, select, update

from dtr.core.blobs import BlobService
from dtr.core.reference import Digest
from dtr.core.store import Store, ensure_repo, storage_guard
from dtr.db.base import utcnow
from dtr.db.models import Repository, Upload, UploadPart
from dtr.errors import (
    BlobTooLarge,
    DigestInvalid,
    RangeInvalid,
    SizeInvalid,
    UploadInvalid,
    UploadUnknown,
)
from dtr.storage import paths
from dtr.storage.base import PathNotFound


@dataclass(frozen=True, slots=True)
class UploadState:
    """Where an upload stands: its id and how many bytes it holds."""

    id: str
    size: int


class _HashCache:
    """Running hashes of uploads this process appended to, keyed by upload id."""

    def __init__(self, capacity: int = 1024) -> None:
        self._items: OrderedDict[str, tuple[int, hashlib._Hash]] = OrderedDict()
        self.capacity = capacity

    def get(self, upload_id: str, offset: int, algorithm: str) -> hashlib._Hash | None:
        item = self._items.get(upload_id)
        if item is None or item[0] != offset or item[1].name != algorithm:
            return None
        return item[1].copy()

    def put(self, upload_id: str, offset: int, hasher: hashlib._Hash) -> None:
        self._items[upload_id] = (offset, hasher)
        self._items.move_to_end(upload_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        self._items.pop(upload_id, None)


class _Limited:
    """Wraps a byte stream: counts bytes and stops past a limit."""

    def __init__(self, chunks: AsyncIterable[bytes], limit: int, exact: int | None) -> None:
        self.chunks, self.limit, self.exact, self.count = chunks, limit, exact, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            self.count += len(chunk)
            if self.count > self.limit:
                raise BlobTooLarge(f"blob exceeds the limit of {self.limit} bytes")
            if self.exact is not None and self.count > self.exact:
                raise SizeInvalid("body is longer than Content-Length/Content-Range says")
            yield chunk


class UploadService:
    """Blob upload sessions."""

    def __init__(self, store: Store, blobs: BlobService) -> None:
        self.store = store
        self.blobs = blobs
        self._hashes = _HashCache()

    async def start(self, repository: str) -> UploadState:
        """Open an upload session in ``repository`` (created if new)."""
        upload_id = secrets.token_hex(16)

        def start(s: Connection) -> None:
            s.execute(insert(Upload).values(id=upload_id, repository_id=ensure_repo(s, repository),
                                            size=0, segments=0))

        await self.store.run(start)
        return UploadState(upload_id, 0)

    async def status(self, repository: str, upload_id: str) -> UploadState:
        """Current size of an upload.

        Raises:
            UploadUnknown: unknown, finished, cancelled, expired, or of another repository.
        """
        size = await self.store.run(lambda s: _load(s, repository, upload_id).size,
                                    write=False)
        return UploadState(upload_id, size)

    async def append(self, repository: str, upload_id: str, chunks: AsyncIterable[bytes],
                     content_range: tuple[int, int] | None = None,
                     content_length: int | None = None) -> UploadState:
        """Append a request body to the upload.

        ``content_range`` (inclusive) must start exactly at the current size, else
        ``RangeInvalid`` (416). Without it the body is appended at the current size
        (docker's streamed PATCH). A body that fails midway stores nothing.

        Raises:
            UploadUnknown, RangeInvalid, SizeInvalid, BlobTooLarge.
        """
        state = await self.status(repository, upload_id)
        size, _key = await self._append_at(upload_id, state.size, chunks, content_range,
                                           content_length)
        return UploadState(upload_id, size)

    async def _append_at(self, upload_id: str, offset: int, chunks: AsyncIterable[bytes],
                         content_range: tuple[int, int] | None,
                         content_length: int | None) -> tuple[int, str | None]:
        """Append at ``offset`` (the size last read); return the new size and the segment
        key (None when the body was empty). The size advances with a compare-and-set, so
        a concurrent append or a stale offset is refused with ``RangeInvalid``.
        """
        exact = content_length
        if content_range is not None:
            start, end = content_range
            if start != offset or end < start:
                raise RangeInvalid(
                    f"chunk starts at {start}, upload is at {offset}",
                    {"expected_start": offset})
            if content_length is not None and content_length != end - start + 1:
                raise RangeInvalid("Content-Range and Content-Length disagree")
            exact = end - start + 1
        hasher = self._hashes.get(upload_id, offset, "sha256")
        if hasher is None and offset == 0:
            hasher = hashlib.sha256()
        limited = _Limited(chunks, self.store.limits.max_blob_bytes - offset, exact)
        key = paths.upload_segment_key(upload_id, offset, secrets.token_hex(4))
        with storage_guard():
            # segments are scratch: commit (move/compose) makes the blob durable
            written = await self.store.storage.write(
                key, limited, hasher.update if hasher is not None else None, durable=False)
        if exact is not None and written != exact:
            await self.store.storage.delete(key)
            raise SizeInvalid(f"received {written} bytes, expected {exact}")
        if written == 0:
            await self.store.storage.delete(key)
            return offset, None

        def advance(s: Connection) -> bool:
            res = s.execute(
                update(Upload).where(Upload.id == upload_id, Upload.size == offset)
                .values(size=offset + written, segments=Upload.segments + 1,
                        updated_at=utcnow()))
            if res.rowcount != 1:
                return False
            s.execute(insert(UploadPart).values(upload_id=upload_id, offset=offset, key=key,
                                                size=written))
            return True

        committed = await self.store.run(advance)
        if not committed:
            await self.store.storage.delete(key)
            raise RangeInvalid("another request appended to this upload concurrently")
        if hasher is not None:
            self._hashes.put(upload_id, offset + written, hasher)
        return offset + written, key

    async def _rehash(self, keys: list[str], algorithm: str) -> hashlib._Hash:
        hasher = hashlib.new(algorithm)
        with storage_guard():
            for key in keys:
                async for chunk in await self.store.storage.reader(key):
                    hasher.update(chunk)
        return hasher

    async def finish(self, repository: str, upload_id: str, digest: str,
                     chunks: AsyncIterable[bytes] | None = None,
                     content_range: tuple[int, int] | None = None,
                     content_length: int | None = None) -> str:
        """Close the upload: append the final body if any, verify ``digest``, commit.

        Raises:
            DigestInvalid: malformed or unsupported digest, or the content does not match
                (the upload is discarded).
            UploadUnknown, RangeInvalid, SizeInvalid, BlobTooLarge.
        """
        want = Digest.parse(digest)

        def load(s: Connection) -> tuple[int, list[tuple[str, int]]]:
            row = _load(s, repository, upload_id)
            parts = s.execute(select(UploadPart.key, UploadPart.size)
                              .where(UploadPart.upload_id == upload_id)
                              .order_by(UploadPart.offset)).all()
            return row.size, [(k, n) for k, n in parts]

        expected, parts = await self.store.run(load, write=False)
        if chunks is not None and (content_length is None or content_length > 0):
            new_size, key = await self._append_at(upload_id, expected, chunks, content_range,
                                                  content_length)
            if key is not None:
                parts.append((key, new_size - expected))
                expected = new_size
        keys = [k for k, _ in parts]
        size = sum(n for _, n in parts)
        if size != expected:
            raise UploadInvalid("upload segments are inconsistent; start again")
        hasher = self._hashes.get(upload_id, size, want.algorithm)
        if hasher is None:
            try:
                hasher = await self._rehash(keys, want.algorithm)
            except PathNotFound:
                raise UploadInvalid("upload data is missing; start again") from None
        if hasher.hexdigest() != want.encoded:
            await self.cancel(repository, upload_id)
            raise DigestInvalid(f"content does not match digest {digest}",
                                {"digest": digest, "actual": f"{want.algorithm}:"
                                 f"{hasher.hexdigest()}"})
        await self.blobs.commit(repository, str(want), size, keys, upload_id)
        await self._drop_data(upload_id)
        return str(want)

    async def cancel(self, repository: str, upload_id: str) -> None:
        """Abandon the upload and delete its data.

        Raises:
            UploadUnknown: not known.
        """

        def cancel(s: Connection) -> None:
            _load(s, repository, upload_id)
            s.execute(delete(Upload).where(Upload.id == upload_id))  # parts cascade

        await self.store.run(cancel)
        await self._drop_data(upload_id)

    async def _drop_data(self, upload_id: str) -> None:
        self._hashes.drop(upload_id)
        with storage_guard():
            await self.store.storage.delete_prefix(paths.upload_prefix(upload_id))


def _load(s: Connection, repository: str, upload_id: str) -> Row[str, int]:
    """The upload row, checked to belong to ``repository``.

    Raises:
        UploadUnknown: unknown, finished, cancelled, expired, or of another repository.
    """
    row = s.execute(
        select(Upload.id, Upload.size).join(Repository, Repository.id == Upload.repository_id)
        .where(Upload.id == upload_id, Repository.name == repository)).first()
    if row is None:
        raise UploadUnknown(f"upload {upload_id} is not known", {"upload": upload_id})
    return row
