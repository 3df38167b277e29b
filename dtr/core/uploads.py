"""UploadService: start, append, status, finish (verify digest) and cancel blob uploads.

State lives in the database (``upload``, ``upload_part``) and storage, so any replica can
serve any request of an upload. The bytes are stored one of two ways:

* **In place**, on a driver that can write in place (``AppendableDriver``: the filesystem).
  Every body is written at its offset into the upload's one file (``uploads/<id>/data``)
  while holding that file's exclusive lock. A busy lock is retried for up to 2 s (a
  request whose client went away may still be cutting its bytes back); still busy means a
  concurrent request, refused with ``RangeInvalid`` (416). Under the lock the upload size
  is read again and must be the offset the request expects; the file is cut to it
  (dropping what a failed or crashed writer left past it), the body is written and
  hashed, and the size advances with the same compare-and-set as below. A body that fails
  (short, too long, client gone) or loses the compare-and-set is cut off again; bytes
  below the committed size are never rewritten, so nothing stored is lost and a partial
  body never becomes part of the upload. ``finish`` holds the lock while it verifies the
  digest and while ``BlobService.commit`` moves the file to the blob key (fsync and
  rename: the bytes are written once, never copied), so no request can write into a file
  that is becoming a blob. Its ``upload_part`` rows all name the one file.
* **Segments**, on other drivers (S3): one immutable object per body, named by its offset;
  the size advances with a compare-and-set, so a concurrent append or a stale offset is
  refused with ``RangeInvalid``, and ``finish`` composes the segments into the blob. An
  upload whose first bytes are segments (written by an older dtr) keeps using segments
  on an appendable driver too; one that mixes both schemes is refused at ``finish``.

Bytes are hashed as they stream to storage; the running hash is kept per process as an
optimisation only — a replica that lacks it re-reads the upload's data to verify.

Upload lookups (status, finish) use the fast read path (``Store.reads``). A PUT that
carries the final body advances the upload and claims the blob row in one transaction,
after the digest is verified: a monolithic push costs one fast read (two in place: the
re-read under the lock) and two write transactions (that one, then the link).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar, cast

from sqlalchemy import Connection, Row, bindparam, delete, insert, select, update

from dtr.core.blobs import BlobService, claim_row
from dtr.core.reference import Digest
from dtr.core.store import Store, ensure_repo, storage_guard
from dtr.db.base import utcnow
from dtr.db.models import Repository, Upload, UploadPart
from dtr.db.short import ShortTx, Statement
from dtr.errors import (
    BlobTooLarge,
    DigestInvalid,
    RangeInvalid,
    SizeInvalid,
    UploadInvalid,
    UploadUnknown,
)
from dtr.storage import paths
from dtr.storage.base import AppendableDriver, AppendHandle, ObjectLocked, PathNotFound

T = TypeVar("T")

LOCK_WAIT_SECONDS = 2.0
"""How long a request waits for an upload file another request holds before a 416."""


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

        def start(tx: ShortTx) -> None:
            now = utcnow()
            tx.execute(_NEW_UPLOAD, {"id": upload_id, "repository_id": ensure_repo(tx, repository),
                                     "now": now})

        await self.store.run_short(start)
        return UploadState(upload_id, 0)

    async def status(self, repository: str, upload_id: str) -> UploadState:
        """Current size of an upload.

        Raises:
            UploadUnknown: unknown, finished, cancelled, expired, or of another repository.
        """
        size = await self.store.reads.upload_size(repository, upload_id)
        if size is None:
            raise UploadUnknown(f"upload {upload_id} is not known", {"upload": upload_id})
        return UploadState(upload_id, size)

    async def append(self, repository: str, upload_id: str, chunks: AsyncIterable[bytes],
                     content_range: tuple[int, int] | None = None,
                     content_length: int | None = None) -> UploadState:
        """Append a request body to the upload.

        ``content_range`` (inclusive) must start exactly at the current size, else
        ``RangeInvalid`` (416). Without it the body is appended at the current size
        (docker's streamed PATCH). A body that fails midway stores nothing: the upload
        keeps its size and the next body may start there.

        Raises:
            UploadUnknown, RangeInvalid (also: another request is appending), SizeInvalid,
            BlobTooLarge.
        """
        state = await self.status(repository, upload_id)
        storage = self._appendable()
        if storage is None:
            size, _key = await self._append_at(upload_id, state.size, chunks, content_range,
                                               content_length)
            return UploadState(upload_id, size)
        _expected_length(state.size, content_range, content_length)  # refuse before locking
        async with self._hold(storage, upload_id) as handle:
            size = await self._append_in_place(handle, repository, upload_id, state.size,
                                               chunks, content_range, content_length)
        return UploadState(upload_id, size)

    # -- in place ----------------------------------------------------------------------
    def _appendable(self) -> AppendableDriver | None:
        storage = self.store.storage
        return storage if isinstance(storage, AppendableDriver) else None

    @contextlib.asynccontextmanager
    async def _hold(self, storage: AppendableDriver,
                    upload_id: str) -> AsyncIterator[AppendHandle]:
        """The upload's data file, locked. A busy lock is retried for up to
        :data:`LOCK_WAIT_SECONDS` (a request whose client went away may still be cutting
        its bytes back); still busy after that is a concurrent request: 416.
        """
        key = paths.upload_data_key(upload_id)
        with storage_guard():
            async with contextlib.AsyncExitStack() as stack:
                delay, waited = 0.005, 0.0
                while True:
                    try:
                        handle = await stack.enter_async_context(storage.open_append(key))
                        break
                    except ObjectLocked:
                        if waited >= LOCK_WAIT_SECONDS:
                            raise RangeInvalid("another request is writing to this upload "
                                               "concurrently") from None
                    await asyncio.sleep(delay)
                    waited += delay
                    delay = min(delay * 2, 0.1)
                yield handle

    async def _recheck(self, repository: str, upload_id: str, expected: int,
                       handle: AppendHandle) -> int:
        """Under the lock: the upload must still be at ``expected`` bytes; return how many
        bytes the locked file holds.

        Raises:
            UploadUnknown: it ended meanwhile (its folder, which opening the lock may
                have created again, is removed).
            RangeInvalid: another request appended meanwhile.
        """
        size = await self.store.reads.upload_size(repository, upload_id)
        if size is None:
            with storage_guard():
                await self.store.storage.delete_prefix(paths.upload_prefix(upload_id))
            raise UploadUnknown(f"upload {upload_id} is not known", {"upload": upload_id})
        if size != expected:
            raise RangeInvalid("another request appended to this upload concurrently",
                               {"expected_start": size})
        with storage_guard():
            return await handle.size()

    async def _append_in_place(self, handle: AppendHandle, repository: str, upload_id: str,
                               offset: int, chunks: AsyncIterable[bytes],
                               content_range: tuple[int, int] | None,
                               content_length: int | None) -> int:
        """Under the lock: append at ``offset`` (the size last read); return the new size."""
        held = await self._recheck(repository, upload_id, offset, handle)
        if held < offset:
            # The file does not hold the upload: its bytes are segments (of an older dtr).
            size, _key = await self._append_at(upload_id, offset, chunks, content_range,
                                               content_length)
            return size
        hasher = self._running_hash(upload_id, offset)
        written = await self._write_in_place(handle, offset, held, chunks, content_range,
                                             content_length, hasher)
        if written == 0:
            return offset
        key = paths.upload_data_key(upload_id)
        if not await self.store.run_short(
                lambda tx: _advance(tx, upload_id, offset, written, key)):
            await self._cut(handle, offset)
            raise RangeInvalid("another request appended to this upload concurrently")
        if hasher is not None:
            self._hashes.put(upload_id, offset + written, hasher)
        return offset + written

    async def _write_in_place(self, handle: AppendHandle, offset: int, held: int,
                              chunks: AsyncIterable[bytes],
                              content_range: tuple[int, int] | None,
                              content_length: int | None,
                              hasher: hashlib._Hash | None) -> int:
        """Under the lock: cut the file to ``offset`` (it is ``held`` bytes long) and write
        a body there, feeding ``hasher``; return its size. A failed body is cut off again
        (by ``write_at``, or here when it is short).

        Raises:
            RangeInvalid, SizeInvalid, BlobTooLarge.
        """
        exact = _expected_length(offset, content_range, content_length)
        limited = _Limited(chunks, self.store.limits.max_blob_bytes - offset, exact)
        with storage_guard():
            if held > offset:  # what a failed or crashed writer left past the upload
                await handle.truncate(offset)
            written = await handle.write_at(offset, limited,
                                            hasher.update if hasher is not None else None)
        if exact is not None and written != exact:
            await self._cut(handle, offset)
            raise SizeInvalid(f"received {written} bytes, expected {exact}")
        return written

    def _running_hash(self, upload_id: str, offset: int) -> hashlib._Hash | None:
        """The sha256 of the upload's first ``offset`` bytes, if this process has it (or
        ``offset`` is 0); None otherwise (``finish`` re-reads the data).
        """
        hasher = self._hashes.get(upload_id, offset, "sha256")
        if hasher is None and offset == 0:
            hasher = hashlib.sha256()
        return hasher

    @staticmethod
    async def _cut(handle: AppendHandle, offset: int) -> None:
        """Best effort: drop what this request wrote past ``offset`` (the next writer
        cuts the file to the committed size anyway).
        """
        with contextlib.suppress(Exception):
            await handle.truncate(offset)

    async def _finish_in_place(self, handle: AppendHandle, repository: str, upload_id: str,
                               want: Digest, expected: int,
                               body: AsyncIterable[bytes] | None,
                               content_range: tuple[int, int] | None,
                               content_length: int | None) -> None:
        """Under the lock: append the final body, verify, make the file the blob.

        The body is verified before the upload advances; then one transaction advances
        the upload and claims the blob row while the file is made durable (both are
        waits: on the database and on the disk), and ``BlobService.commit`` moves the file
        to the blob key while the lock is still held.
        """
        held = await self._recheck(repository, upload_id, expected, handle)
        key = paths.upload_data_key(upload_id)
        if held < expected:
            raise UploadInvalid("upload data is missing; start again")
        hasher = self._hashes.get(upload_id, expected, want.algorithm)
        if hasher is None:  # another replica appended: hash what the file holds so far
            hasher = (await self._rehash([key], want.algorithm, expected) if expected
                      else hashlib.new(want.algorithm))
        size, claimed = expected, None
        if body is not None:
            written = await self._write_in_place(handle, expected, held, body, content_range,
                                                 content_length, hasher)
            size, held = expected + written, expected + written
        if held > size:
            with storage_guard():
                await handle.truncate(size)
        await self._verify(repository, upload_id, want, hasher)
        if size > expected:
            advanced, claimed = await _beside(
                self.store.run_short(lambda tx: _advance_and_claim(
                    tx, upload_id, expected, size - expected, key, str(want))),
                _sync(handle))
            if not advanced:
                await self._cut(handle, expected)
                raise RangeInvalid("another request appended to this upload concurrently")
            self._hashes.put(upload_id, size, hasher)
        await self.blobs.commit(repository, str(want), size, [key], upload_id,
                                claimed=claimed)

    async def _verify(self, repository: str, upload_id: str, want: Digest,
                      hasher: hashlib._Hash) -> None:
        """Compare the upload's hash with ``want``; on a mismatch discard the upload.

        Raises:
            DigestInvalid: the content does not match.
        """
        if hasher.hexdigest() != want.encoded:
            await self.cancel(repository, upload_id)
            raise DigestInvalid(f"content does not match digest {want}",
                                {"digest": str(want), "actual": f"{want.algorithm}:"
                                 f"{hasher.hexdigest()}"})

    # -- segments ----------------------------------------------------------------------
    async def _append_at(self, upload_id: str, offset: int, chunks: AsyncIterable[bytes],
                         content_range: tuple[int, int] | None,
                         content_length: int | None) -> tuple[int, str | None]:
        """Append a segment at ``offset`` (the size last read); return the new size and the
        segment key (None when the body was empty). The size advances with a
        compare-and-set, so a concurrent append or a stale offset is refused with
        ``RangeInvalid``.
        """
        hasher = self._running_hash(upload_id, offset)
        written, key = await self._write_segment(upload_id, offset, chunks, content_range,
                                                 content_length, hasher)
        if key is None:
            return offset, None
        committed = await self.store.run_short(
            lambda tx: _advance(tx, upload_id, offset, written, key))
        if not committed:
            await self.store.storage.delete(key)
            raise RangeInvalid("another request appended to this upload concurrently")
        if hasher is not None:
            self._hashes.put(upload_id, offset + written, hasher)
        return offset + written, key

    async def _write_segment(self, upload_id: str, offset: int, chunks: AsyncIterable[bytes],
                             content_range: tuple[int, int] | None,
                             content_length: int | None,
                             hasher: hashlib._Hash | None) -> tuple[int, str | None]:
        """Store a request body as a new segment at ``offset`` (not yet part of the
        upload), feeding ``hasher``; return its size and key (None when empty: nothing is
        kept).

        Raises:
            RangeInvalid, SizeInvalid, BlobTooLarge.
        """
        exact = _expected_length(offset, content_range, content_length)
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
            return 0, None
        return written, key

    async def _rehash(self, keys: list[str], algorithm: str,
                      length: int | None = None) -> hashlib._Hash:
        """Hash the objects ``keys`` in order (only the first ``length`` bytes of one).

        Raises:
            UploadInvalid: an object is missing or shorter than ``length``.
        """
        hasher = hashlib.new(algorithm)
        count = 0
        try:
            with storage_guard():
                for key in keys:
                    async for chunk in await self.store.storage.reader(key, 0, length):
                        hasher.update(chunk)
                        count += len(chunk)
        except PathNotFound:
            raise UploadInvalid("upload data is missing; start again") from None
        if length is not None and count != length:
            raise UploadInvalid("upload data is missing; start again")
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
            UploadInvalid: the upload's data is missing or inconsistent (start again).
        """
        want = Digest.parse(digest)
        body = chunks if content_length is None or content_length > 0 else None
        loaded = await self.store.reads.upload_parts(repository, upload_id)
        if loaded is None:
            raise UploadUnknown(f"upload {upload_id} is not known", {"upload": upload_id})
        expected, parts = loaded
        storage = self._appendable()
        data_key = paths.upload_data_key(upload_id)
        if storage is not None and all(k == data_key for k, _ in parts):
            if body is not None:
                _expected_length(expected, content_range, content_length)  # before locking
            async with self._hold(storage, upload_id) as handle:
                await self._finish_in_place(handle, repository, upload_id, want, expected,
                                            body, content_range, content_length)
            await self._drop_data(upload_id)
            return str(want)
        if any(k == data_key for k, _ in parts):
            raise UploadInvalid("upload data is inconsistent; start again")
        if not parts and body is not None:
            done = await self._finish_whole(repository, upload_id, want, body,
                                            content_range, content_length)
            if done is not None:
                return done
            body = None  # it was empty
        if body is not None:
            new_size, key = await self._append_at(upload_id, expected, body, content_range,
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
            hasher = await self._rehash(keys, want.algorithm)
        await self._verify(repository, upload_id, want, hasher)
        await self.blobs.commit(repository, str(want), size, keys, upload_id)
        await self._drop_data(upload_id)
        return str(want)

    async def _finish_whole(self, repository: str, upload_id: str, want: Digest,
                            chunks: AsyncIterable[bytes],
                            content_range: tuple[int, int] | None,
                            content_length: int | None) -> str | None:
        """Monolithic fast path (segments): the PUT carries the whole blob of an empty
        upload.

        The body is stored as the upload's one segment and verified; then one transaction
        advances the upload (the same compare-and-set as a PATCH, so a racing append
        still loses cleanly) and claims the blob row, and ``BlobService.commit`` moves the
        segment and links it. Returns None (nothing stored) for an empty body, which the
        ordinary path handles.
        """
        hasher = hashlib.new(want.algorithm)
        written, key = await self._write_segment(upload_id, 0, chunks, content_range,
                                                 content_length, hasher)
        if key is None:
            return None
        if hasher.hexdigest() != want.encoded:
            await self.store.storage.delete(key)
        await self._verify(repository, upload_id, want, hasher)
        advanced, claimed = await self.store.run_short(
            lambda tx: _advance_and_claim(tx, upload_id, 0, written, key, str(want)))
        if not advanced:
            await self.store.storage.delete(key)
            raise RangeInvalid("another request appended to this upload concurrently")
        self._hashes.put(upload_id, written, hasher)
        await self.blobs.commit(repository, str(want), written, [key], upload_id,
                                claimed=claimed)
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


async def _sync(handle: AppendHandle) -> None:
    with storage_guard():
        await handle.sync()


async def _beside(first: Awaitable[T], second: Awaitable[None]) -> T:
    """Await both at once; return ``first``'s result. Both have finished when this
    returns or raises (the first error wins, ``first``'s before ``second``'s).

    ``second`` starts first: ``first`` may run on the event loop without yielding (a
    short SQLite write), and ``second``'s blocking part must be on its thread by then.
    """
    later, sooner = await asyncio.gather(second, first, return_exceptions=True)
    for result in (sooner, later):
        if isinstance(result, BaseException):
            raise result
    return cast("T", sooner)


def _expected_length(offset: int, content_range: tuple[int, int] | None,
                     content_length: int | None) -> int | None:
    """The exact body length the headers announce (None: unknown).

    Raises:
        RangeInvalid: the range does not start at ``offset``, or disagrees with
            Content-Length.
    """
    if content_range is None:
        return content_length
    start, end = content_range
    if start != offset or end < start:
        raise RangeInvalid(f"chunk starts at {start}, upload is at {offset}",
                           {"expected_start": offset})
    if content_length is not None and content_length != end - start + 1:
        raise RangeInvalid("Content-Range and Content-Length disagree")
    return end - start + 1


def _advance(tx: ShortTx, upload_id: str, offset: int, written: int, key: str) -> bool:
    """Append the segment ``key`` (``written`` bytes at ``offset``) to the upload if it is
    still at ``offset`` (compare-and-set); False if it is not (or is gone).
    """
    if tx.execute(_ADVANCE, {"upload": upload_id, "old_size": offset,
                             "new_size": offset + written, "now": utcnow()}) != 1:
        return False
    tx.execute(_NEW_PART, {"upload_id": upload_id, "offset": offset, "key": key,
                           "size": written})
    return True


def _advance_and_claim(tx: ShortTx, upload_id: str, offset: int, written: int, key: str,
                       digest: str) -> tuple[bool, bool | None]:
    """:func:`_advance`, then claim the blob row of the whole upload (``offset + written``
    bytes) in the same transaction: (advanced, what ``claim_row`` returned).
    """
    if not _advance(tx, upload_id, offset, written, key):
        return False, None
    return True, claim_row(tx, digest, offset + written)


# Hot-path statements, built once (see ``dtr.core.store.per_dialect``).
_NEW_UPLOAD = Statement(insert(Upload).values(
    id=bindparam("id"), repository_id=bindparam("repository_id"), size=0, segments=0,
    created_at=bindparam("now"), updated_at=bindparam("now")))
_NEW_PART = Statement(insert(UploadPart).values(
    upload_id=bindparam("upload_id"), offset=bindparam("offset"), key=bindparam("key"),
    size=bindparam("size")))
_ADVANCE = Statement(
    update(Upload)
    .where(Upload.id == bindparam("upload"), Upload.size == bindparam("old_size"))
    .values(size=bindparam("new_size"), segments=Upload.segments + 1,
            updated_at=bindparam("now")))


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
