"""BlobService: stat, read, mount (link) and unlink blobs of a repository; and the one
place a verified upload becomes a blob (``commit``), safe against concurrent GC.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, delete, exists, select, update

from dtr.core.hooks import RegistryEvent
from dtr.core.reference import Digest
from dtr.core.store import Store, ensure_repo, per_dialect, repo_id, storage_guard
from dtr.db.base import utcnow
from dtr.db.models import Blob, Repository, RepositoryBlob, Upload
from dtr.db.short import ConnectionTx, ShortTx, Statement
from dtr.errors import BlobUnknown, Unavailable, Unsupported, UploadInvalid
from dtr.storage import paths
from dtr.storage.base import PathNotFound


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A blob as a repository sees it."""

    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class BlobContent:
    """An opened blob: either bytes to stream or a URL to redirect to."""

    digest: str
    size: int
    start: int
    length: int
    chunks: AsyncIterator[bytes] | None
    redirect_url: str | None = None
    local_path: str | None = None
    """A local file with exactly the blob's bytes (whole-blob reads, filesystem driver)."""


def blob_key(digest: str) -> str:
    """The storage key of a blob digest."""
    d = Digest.parse(digest)
    return paths.blob_key(d.algorithm, d.encoded)


class BlobService:
    """Blobs as repositories see them (through links)."""

    def __init__(self, store: Store, *, redirect_expiry: int | None = None) -> None:
        self.store = store
        self.redirect_expiry = redirect_expiry

    async def stat(self, repository: str, digest: str) -> BlobInfo:
        """Size of a blob linked in the repository.

        Raises:
            BlobUnknown: not linked (or repository unknown).
        """
        Digest.parse(digest)
        size = await self.store.reads.blob_size(repository, digest)
        if size is None:
            raise BlobUnknown(f"blob {digest} is not known to {repository}", {"digest": digest})
        return BlobInfo(digest, int(size))

    async def open(self, repository: str, digest: str,
                   byte_range: tuple[int, int | None] | None = None, *,
                   local: bool = False) -> BlobContent:
        """Open a linked blob for reading, optionally a byte range (inclusive end).

        With redirects configured and supported by the driver, returns a presigned URL
        instead of bytes. With ``local`` (the caller can send files) and a driver that
        keeps objects as local files, returns the file's path instead of bytes.

        Raises:
            BlobUnknown: not linked, or its bytes are missing from storage.
        """
        info = await self.stat(repository, digest)
        key = blob_key(digest)
        start, length = 0, info.size
        if byte_range is not None:
            start = byte_range[0]
            end = info.size - 1 if byte_range[1] is None else min(byte_range[1], info.size - 1)
            length = max(0, end - start + 1)
        if self.redirect_expiry and byte_range is None:
            with storage_guard():
                url = await self.store.storage.presign_get(key, self.redirect_expiry)
            if url:
                return BlobContent(digest, info.size, 0, info.size, None, url)
        path = self.store.storage.local_file(key) if local and byte_range is None else None
        if path is not None:
            try:
                with storage_guard():
                    await self.store.storage.stat(key)
            except PathNotFound:
                raise BlobUnknown(f"blob {digest} content is missing",
                                  {"digest": digest}) from None
            return BlobContent(digest, info.size, 0, info.size, None, local_path=path)
        try:
            with storage_guard():
                chunks = await self.store.storage.reader(key, start, length)
        except PathNotFound:
            raise BlobUnknown(f"blob {digest} content is missing", {"digest": digest}) from None
        return BlobContent(digest, info.size, start, length, chunks)

    async def link(self, repository: str, digest: str) -> bool:
        """Link a present blob into the repository (creating it); True if linked.

        False when the blob is unknown or being garbage collected.
        """
        return await self.store.run_short(
            lambda tx: _link_present(tx, repository, digest, None))

    async def mount(self, repository: str, digest: str,
                    sources: list[str] | None, may_read: Callable[[str], bool]) -> bool:
        """Link ``digest`` into ``repository`` from a repository the caller may read.

        ``sources`` None means "any repository" (automatic mount); otherwise only those
        named. ``may_read`` is the caller's pull check, decided outside core. Returns False
        (never raises for an impossible mount) when no readable source links the blob.
        """
        Digest.parse(digest)

        def holders(s: Connection) -> list[str]:
            q = (select(Repository.name)
                 .join(RepositoryBlob, RepositoryBlob.repository_id == Repository.id)
                 .join(Blob, Blob.digest == RepositoryBlob.digest)
                 .where(RepositoryBlob.digest == digest, Blob.state == "present"))
            if sources is not None:
                q = q.where(Repository.name.in_(sources))
            return [n for (n,) in s.execute(q.limit(200)).all()]

        names = await self.store.run(holders, write=False)
        if not any(may_read(n) for n in names):
            return False

        def link(s: Connection) -> bool:
            if not _link_present(ConnectionTx(s), repository, digest, None):
                return False
            self.store.hooks.emit(s, RegistryEvent("blob.mounted", repository, digest))
            return True

        return await self.store.run(link, short=True)

    async def unlink(self, repository: str, digest: str) -> None:
        """Remove the blob from the repository (the bytes go at the next GC).

        Raises:
            Unsupported: deletes are disabled.
            BlobUnknown: not linked.
        """
        if not self.store.limits.delete_enabled:
            raise Unsupported("deletes are disabled on this registry")
        Digest.parse(digest)

        def unlink(s: Connection) -> None:
            rid = repo_id(s, repository)
            res = s.execute(delete(RepositoryBlob).where(
                RepositoryBlob.repository_id == rid, RepositoryBlob.digest == digest))
            if not res.rowcount:
                raise BlobUnknown(f"blob {digest} is not known to {repository}",
                                  {"digest": digest})
            self.store.hooks.emit(s, RegistryEvent("blob.deleted", repository, digest))

        await self.store.run(unlink)

    async def commit(self, repository: str, digest: str, size: int, parts: list[str],
                     upload_id: str | None = None, *, claimed: bool | None = None) -> None:
        """Make verified upload ``parts`` the blob ``digest``, link it, end the upload.

        ``parts`` are the storage keys whose concatenation is the blob, in order: one key
        (an upload written in place into one file, or a single segment) is moved to the
        blob key — fsync and rename on the filesystem, no copy — and several segments
        are composed. The caller keeps anyone from writing to them meanwhile.

        The blob row is claimed before the bytes move, a row GC is deleting is waited out,
        and the link is written only while the row is still ``present`` (GC claims only
        unlinked rows), so a concurrent ``dtr gc`` can never delete bytes a new link
        points at. A GC whose grace is shorter than the commit may still take the row
        between claim and link: the claim is then retried, and the upload fails only if
        the bytes GC deleted were already moved out of it. The upload row (``upload_id``)
        is deleted in the transaction that writes the link. ``claimed`` is the result of a
        :func:`claim_row` the caller already committed (True: inserted, False: touched),
        which then stands for the first claim.

        Raises:
            UploadInvalid: the upload's data is gone (expired or collected).
            Unavailable: GC kept taking the blob, or the storage failed.
        """
        key = blob_key(digest)
        for round_ in range(10):
            inserted = (claimed if round_ == 0 and claimed is not None
                        else await self._claim(digest, size))
            try:
                with storage_guard():
                    # Bytes already at the key (another push's, or ours from a round GC
                    # interrupted) are the same content: keep the upload's data unused.
                    # A row we inserted had no bytes GC could be deleting (GC deletes only
                    # under a row), so anything at the key is an orphan copy of the same
                    # content: replace it without looking.
                    if inserted or not await self._stored(key):
                        await self._place(parts, key)
            except Exception:
                if inserted:
                    await self.store.run(lambda s: _unclaim(s, digest))
                raise
            if await self.store.run_short(
                    lambda tx: _link_present(tx, repository, digest, upload_id)):
                return
        raise Unavailable("blob is being garbage collected; retry")

    async def _claim(self, digest: str, size: int) -> bool:
        """Insert the blob row, or touch a ``present`` one; True if inserted.

        Waits while GC holds the row in state ``deleting``.
        """
        for _attempt in range(600):
            row = await self.store.run_short(lambda tx: claim_row(tx, digest, size))
            if row is not None:
                return row
            await asyncio.sleep(0.05)
        raise Unavailable("blob is being garbage collected; retry")

    async def _stored(self, key: str) -> bool:
        try:
            await self.store.storage.stat(key)
        except PathNotFound:
            return False
        return True

    async def _place(self, parts: list[str], key: str) -> None:
        """Move the upload's one object, or compose its segments, to the blob key."""
        storage = self.store.storage
        try:
            if len(parts) == 1:
                await storage.move(parts[0], key)
            elif parts:
                await storage.compose(parts, key)
            else:
                await storage.put_bytes(key, b"")
        except PathNotFound:
            raise UploadInvalid("upload data is missing; start again") from None


def claim_row(tx: ShortTx, digest: str, size: int) -> bool | None:
    """Insert the blob row (True), touch a ``present`` one (False), or None while GC
    holds it in state ``deleting``.

    INSERT … ON CONFLICT DO NOTHING: concurrent commits of the same digest (one layer
    pushed to several repositories at once) must not race a SELECT-then-INSERT into a
    unique violation. A row GC has claimed is waited out, never revived.
    """
    now = utcnow()
    if tx.execute(_CLAIM, {"digest": digest, "size": size, "now": now}) == 1:
        return True
    return False if tx.execute(_TOUCH, {"blob": digest, "now": now}) == 1 else None


def _unclaim(s: Connection, digest: str) -> None:
    """Drop a row a commit inserted but could not give bytes (unless now linked)."""
    s.execute(delete(Blob).where(Blob.digest == digest, Blob.state == "present",
                                 ~exists().where(RepositoryBlob.digest == Blob.digest)))


def _link_present(tx: ShortTx, repository: str, digest: str, upload_id: str | None) -> bool:
    """Link the blob if its row is still ``present``; False if GC took it meanwhile.

    The row is updated first, so on SQLite the write lock, and on PostgreSQL the row
    lock, keeps GC from claiming it before the link is in. Ends ``upload_id`` if given.
    """
    now = utcnow()
    if tx.execute(_TOUCH, {"blob": digest, "now": now}) != 1:
        return False
    rid = ensure_repo(tx, repository)
    tx.execute(_LINK, {"repository_id": rid, "digest": digest, "now": now})
    if upload_id is not None:
        tx.execute(_END_UPLOAD, {"upload": upload_id})
    return True


# Hot-path statements, built once (see ``dtr.core.store.per_dialect``).
_CLAIM = Statement(per_dialect(
    lambda ins: ins(Blob).values(digest=bindparam("digest"), size=bindparam("size"),
                                 state="present", created_at=bindparam("now"),
                                 last_linked_at=bindparam("now"))
    .on_conflict_do_nothing(index_elements=["digest"])))
_TOUCH = Statement(update(Blob).where(Blob.digest == bindparam("blob"), Blob.state == "present")
                   .values(last_linked_at=bindparam("now")))
_LINK = Statement(per_dialect(
    lambda ins: ins(RepositoryBlob).values(repository_id=bindparam("repository_id"),
                                           digest=bindparam("digest"),
                                           created_at=bindparam("now"))
    .on_conflict_do_nothing()))
_END_UPLOAD = Statement(delete(Upload).where(Upload.id == bindparam("upload")))
