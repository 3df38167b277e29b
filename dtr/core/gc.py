"""Garbage collection (``dtr gc``): expire abandoned uploads, drop untagged quarantined
manifests of protected repositories past their grace period (the signing gate's
``signing_trust`` rows), drop links no manifest needs, delete blobs nothing links, and
sweep storage objects the database does not know.

Safe while the registry serves: every removal is a conditional statement a concurrent push
wins, and bytes are deleted only while the row that guards them is being deleted in the
same transaction (the other half of the protocol is ``BlobService.commit``). Imports
storage, db and core only; never api, auth, policy, signing, audit or litestar.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Exists,
    Select,
    and_,
    delete,
    exists,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.orm import aliased

from dtr.core.blobs import blob_key
from dtr.core.reference import Digest
from dtr.core.store import Store, storage_guard
from dtr.db.base import utcnow
from dtr.db.models import (
    Blob,
    Manifest,
    ManifestReference,
    RepositoryBlob,
    Tag,
    TrustState,
    Upload,
    UploadPart,
)
from dtr.errors import DigestInvalid
from dtr.storage import paths

BATCH = 500
"""Rows or objects handled per query, so memory stays flat on any registry size."""

Progress = Callable[[str], None]
"""Receives one human-readable progress line at a time."""


@dataclass(slots=True)
class GcReport:
    """What one collection removed (or, in a dry run, would remove)."""

    dry_run: bool = False
    uploads_removed: int = 0
    """Upload sessions (rows and their segments) past the maximum age."""
    manifests_removed: int = 0
    """Untagged quarantined manifests past the quarantine grace period."""
    links_removed: int = 0
    """Repository links to blobs no manifest of that repository references."""
    blobs_removed: int = 0
    """Blobs no repository links any more (row and bytes)."""
    bytes_reclaimed: int = 0
    """Storage bytes freed: blobs, expired upload segments and orphan objects."""
    orphans_removed: int = 0
    """Storage objects no row accounts for (left by crashes)."""
    duration: float = 0.0
    """Wall-clock seconds the run took."""

    def summary(self) -> str:
        """One human-readable line.

        For example ``gc: removed 3 uploads, 5 links, 4 blobs (12.3 MiB reclaimed),
        0 orphan objects in 0.4s``.
        """
        verb = "gc (dry run): would remove" if self.dry_run else "gc: removed"
        quarantined = (f"{_count(self.manifests_removed, 'quarantined manifest')}, "
                       if self.manifests_removed else "")
        return (f"{verb} {_count(self.uploads_removed, 'upload')}, {quarantined}"
                f"{_count(self.links_removed, 'link')}, {_count(self.blobs_removed, 'blob')} "
                f"({human_bytes(self.bytes_reclaimed)} reclaimed), "
                f"{_count(self.orphans_removed, 'orphan object')} in {self.duration:.1f}s")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def human_bytes(n: int) -> str:
    """``n`` bytes in binary units with one decimal (``512 B``, ``12.3 MiB``)."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _rowcount(result: object) -> int:
    return int(cast("CursorResult[Any]", result).rowcount)


def _referenced_in_repository() -> Exists:
    """EXISTS: a manifest of the link's own repository references the link's blob."""
    return exists().where(ManifestReference.manifest_id == Manifest.id,
                          Manifest.repository_id == RepositoryBlob.repository_id,
                          ManifestReference.digest == RepositoryBlob.digest,
                          ManifestReference.kind == "blob")


def _referenced_anywhere() -> Exists:
    """EXISTS: some manifest, in any repository, references the blob."""
    return exists().where(ManifestReference.digest == Blob.digest,
                          ManifestReference.kind == "blob")


def _collectable_quarantined(cutoff: dt.datetime) -> Any:
    """Manifest rows that are QUARANTINED, untagged, older than ``cutoff`` and no child of
    another manifest of their repository.
    """
    parent = aliased(Manifest)
    return and_(
        Manifest.created_at < cutoff,
        exists().where(TrustState.repository_id == Manifest.repository_id,
                       TrustState.digest == Manifest.digest,
                       TrustState.state == "QUARANTINED"),
        ~exists().where(Tag.manifest_id == Manifest.id),
        ~exists().where(ManifestReference.digest == Manifest.digest,
                        ManifestReference.kind == "manifest",
                        ManifestReference.manifest_id == parent.id,
                        parent.repository_id == Manifest.repository_id))


class GarbageCollector:
    """Mark-and-sweep over the metadata database and object storage.

    Args:
        store: the shared core dependencies (sessions and storage driver).
        upload_max_age: seconds after which an untouched upload is abandoned.
        blob_grace: seconds a link or blob no manifest references is kept after it was
            created or last linked (protects pushes whose manifest has not arrived yet).
        quarantine_grace: seconds an untagged QUARANTINED manifest (signing gate) is kept
            after it was pushed, so push → sign → tag is not raced; None keeps them all.
        batch_size: rows or objects per query.
    """

    def __init__(self, store: Store, *, upload_max_age: float, blob_grace: float,
                 quarantine_grace: float | None = None, batch_size: int = BATCH) -> None:
        self.store = store
        self.upload_max_age = upload_max_age
        self.blob_grace = blob_grace
        self.quarantine_grace = quarantine_grace
        self.batch_size = batch_size

    async def run(self, *, dry_run: bool = False, progress: Progress | None = None) -> GcReport:
        """Collect once: uploads, then links, then blobs, then orphan objects.

        Args:
            dry_run: count what would go and remove nothing.
            progress: called with human-readable progress lines.

        Returns:
            what was removed (or would be).

        Raises:
            Unavailable: the database or the object store failed; what was already
                removed stays removed and the next run continues.
        """
        started = time.monotonic()
        now = utcnow()
        sweep = _Sweep(self.store, GcReport(dry_run=dry_run), progress or (lambda _m: None),
                       now - dt.timedelta(seconds=self.upload_max_age),
                       now - dt.timedelta(seconds=self.blob_grace), self.batch_size)
        await sweep.uploads()
        await sweep.orphan_uploads()
        if self.quarantine_grace is not None:
            await sweep.quarantined(now - dt.timedelta(seconds=self.quarantine_grace))
        await sweep.links()
        await sweep.blobs()
        await sweep.orphan_blobs()
        sweep.report.duration = time.monotonic() - started
        return sweep.report


class _Sweep:
    """One collection run: its cutoffs, its report and the phases."""

    def __init__(self, store: Store, report: GcReport, say: Progress,
                 upload_cutoff: dt.datetime, blob_cutoff: dt.datetime, batch: int) -> None:
        self.store = store
        self.report = report
        self.dry = report.dry_run
        self.say = say
        self.upload_cutoff = upload_cutoff
        self.blob_cutoff = blob_cutoff
        self.batch = batch
        self.verb = "would remove" if self.dry else "removed"

    # -- (a) uploads -------------------------------------------------------------------
    async def uploads(self) -> None:
        """Delete upload sessions untouched since the cutoff, rows and segments."""
        self.say(f"gc: uploads: expiring sessions untouched since {_iso(self.upload_cutoff)}")
        removed, last = 0, ""
        while True:
            async with self.store.read() as s:
                rows = (await s.execute(
                    select(Upload.id, Upload.size)
                    .where(Upload.updated_at < self.upload_cutoff, Upload.id > last)
                    .order_by(Upload.id).limit(self.batch))).all()
            if not rows:
                break
            last = rows[-1][0]
            for upload_id, size in rows:
                if self.dry or await self._drop_upload(upload_id):
                    removed += 1
                    self.report.bytes_reclaimed += int(size)
            self.say(f"gc: uploads: {self.verb} {removed} sessions so far")
        self.report.uploads_removed += removed
        self.say(f"gc: uploads: {self.verb} {_count(removed, 'expired session')}")

    async def _drop_upload(self, upload_id: str) -> bool:
        async with self.store.tx() as s:
            # An append that touched the session since the scan wins.
            res = await s.execute(delete(Upload).where(
                Upload.id == upload_id, Upload.updated_at < self.upload_cutoff))
            if not _rowcount(res):
                return False
            await s.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id))
        with storage_guard():
            await self.store.storage.delete_prefix(paths.upload_prefix(upload_id))
        return True

    async def orphan_uploads(self) -> None:
        """Delete upload folders without a session row whose newest object is old."""
        folders: dict[str, tuple[float, int, int]] = {}
        with storage_guard():
            async for info in self.store.storage.list(paths.UPLOADS):
                parts = info.path.split("/")
                if len(parts) < 3:
                    continue
                newest, size, count = folders.get(parts[1], (0.0, 0, 0))
                folders[parts[1]] = (max(newest, info.mtime), size + info.size, count + 1)
        cutoff = self.upload_cutoff.timestamp()
        old = sorted(k for k, (newest, _s, _c) in folders.items() if newest < cutoff)
        removed = 0
        for start in range(0, len(old), self.batch):
            chunk = old[start:start + self.batch]
            async with self.store.read() as s:
                known = set((await s.execute(
                    select(Upload.id).where(Upload.id.in_(chunk)))).scalars())
            for upload_id in chunk:
                if upload_id in known:
                    continue
                _newest, size, count = folders[upload_id]
                if not self.dry:
                    with storage_guard():
                        count = await self.store.storage.delete_prefix(
                            paths.upload_prefix(upload_id))
                removed += count
                self.report.bytes_reclaimed += size
        self.report.orphans_removed += removed
        self.say(f"gc: uploads: {self.verb} {_count(removed, 'orphan segment')}")

    # -- (a') quarantined manifests -----------------------------------------------------
    async def quarantined(self, cutoff: dt.datetime) -> None:
        """Delete untagged QUARANTINED manifests pushed before ``cutoff`` that no other
        manifest of the repository lists (index children stay with their index).
        """
        self.say(f"gc: quarantine: dropping untagged quarantined manifests pushed before "
                 f"{_iso(cutoff)}")
        removed, last = 0, 0
        while True:
            q = (select(Manifest.id).where(_collectable_quarantined(cutoff), Manifest.id > last)
                 .order_by(Manifest.id).limit(self.batch))
            async with self.store.read() as s:
                ids = [int(i) for i in (await s.execute(q)).scalars()]
            if not ids:
                break
            last = ids[-1]
            for mid in ids:
                if self.dry or await self._drop_quarantined(mid, cutoff):
                    removed += 1
        self.report.manifests_removed += removed
        self.say(f"gc: quarantine: {self.verb} {_count(removed, 'quarantined manifest')}")

    async def _drop_quarantined(self, mid: int, cutoff: dt.datetime) -> bool:
        async with self.store.tx() as s:
            # re-checked under the write lock: a tag written or a signature that made the
            # digest trusted since the scan wins
            row = (await s.execute(select(Manifest.repository_id, Manifest.digest).where(
                Manifest.id == mid, _collectable_quarantined(cutoff)))).first()
            if row is None:
                return False
            await s.execute(delete(ManifestReference).where(ManifestReference.manifest_id == mid))
            await s.execute(delete(Manifest).where(Manifest.id == mid))
            await s.execute(delete(TrustState).where(TrustState.repository_id == row[0],
                                                     TrustState.digest == row[1]))
        return True

    # -- (b) links ---------------------------------------------------------------------
    async def links(self) -> None:
        """Delete links no manifest of the same repository references, past the grace."""
        self.say(f"gc: links: dropping unreferenced links created before "
                 f"{_iso(self.blob_cutoff)}")
        removed = 0
        last: tuple[int, str] | None = None
        while True:
            q = (select(RepositoryBlob.repository_id, RepositoryBlob.digest)
                 .where(RepositoryBlob.created_at < self.blob_cutoff,
                        ~_referenced_in_repository())
                 .order_by(RepositoryBlob.repository_id, RepositoryBlob.digest)
                 .limit(self.batch))
            if last is not None:
                q = q.where(tuple_(RepositoryBlob.repository_id, RepositoryBlob.digest)
                            > tuple_(*last))
            async with self.store.read() as s:
                keys = [(int(r), str(d)) for r, d in (await s.execute(q)).all()]
            if not keys:
                break
            last = keys[-1]
            removed += len(keys) if self.dry else await self._drop_links(keys)
            self.say(f"gc: links: {self.verb} {removed} so far")
        self.report.links_removed += removed
        self.say(f"gc: links: {self.verb} {_count(removed, 'link')}")

    async def _drop_links(self, keys: list[tuple[int, str]]) -> int:
        pk = tuple_(RepositoryBlob.repository_id, RepositoryBlob.digest)
        async with self.store.tx() as s:
            # PostgreSQL: lock first (skipping links a manifest push holds), then decide in
            # a new statement, whose snapshot sees manifests committed while we waited.
            locked = [(int(r), str(d)) for r, d in (await s.execute(
                select(RepositoryBlob.repository_id, RepositoryBlob.digest)
                .where(pk.in_(keys)).with_for_update(skip_locked=True))).all()]
            if not locked:
                return 0
            res = await s.execute(delete(RepositoryBlob).where(
                pk.in_(locked), RepositoryBlob.created_at < self.blob_cutoff,
                ~_referenced_in_repository()))
            return _rowcount(res)

    # -- (c) blobs ---------------------------------------------------------------------
    async def blobs(self) -> None:
        """Delete blobs nothing links or references, last linked before the grace."""
        self.say(f"gc: blobs: deleting unlinked blobs last linked before "
                 f"{_iso(self.blob_cutoff)}")
        removed = reclaimed = 0
        if not self.dry:
            # Rows an interrupted run (or a concurrent one) left half-deleted.
            async for digest, size in self._scan(select(Blob.digest, Blob.size)
                                                 .where(Blob.state == "deleting")):
                if await self._finish(digest):
                    removed += 1
                    reclaimed += size
        # A dry run counts as if the link phase had removed what it would remove.
        linked = exists().where(RepositoryBlob.digest == Blob.digest,
                                RepositoryBlob.created_at >= self.blob_cutoff if self.dry
                                else true())
        candidates = (select(Blob.digest, Blob.size)
                      .where(Blob.state == "present", Blob.last_linked_at < self.blob_cutoff,
                             ~linked, ~_referenced_anywhere()))
        async for digest, size in self._scan(candidates):
            if self.dry or (await self._claim(digest) and await self._finish(digest)):
                removed += 1
                reclaimed += size
                if removed % self.batch == 0:
                    self.say(f"gc: blobs: {self.verb} {removed} so far")
        self.report.blobs_removed += removed
        self.report.bytes_reclaimed += reclaimed
        self.say(f"gc: blobs: {self.verb} {_count(removed, 'blob')} "
                 f"({human_bytes(reclaimed)})")

    async def _scan(self, query: Select[str, int]) -> AsyncIterator[tuple[str, int]]:
        """Yield ``(digest, size)`` rows of ``query`` in digest order, a batch at a time."""
        last = ""
        while True:
            async with self.store.read() as s:
                rows = (await s.execute(query.where(Blob.digest > last)
                                        .order_by(Blob.digest).limit(self.batch))).all()
            if not rows:
                return
            last = rows[-1][0]
            for digest, size in rows:
                yield str(digest), int(size)

    async def _claim(self, digest: str) -> bool:
        """Mark a blob ``deleting`` unless a push linked, touched or referenced it."""
        async with self.store.tx() as s:
            res = await s.execute(
                update(Blob).where(
                    Blob.digest == digest, Blob.state == "present",
                    Blob.last_linked_at < self.blob_cutoff,
                    ~exists().where(RepositoryBlob.digest == Blob.digest),
                    ~_referenced_anywhere())
                .values(state="deleting"))
            return _rowcount(res) == 1

    async def _finish(self, digest: str) -> bool:
        """Delete a ``deleting`` blob's row and, in the same transaction, its bytes.

        The row delete holds the row (PostgreSQL) or the database write lock (SQLite)
        until the bytes are gone, so no commit can re-create the blob in between; if the
        storage delete fails the row stays ``deleting`` for the next run.
        """
        async with self.store.tx() as s:
            res = await s.execute(delete(Blob).where(Blob.digest == digest,
                                                     Blob.state == "deleting"))
            if not _rowcount(res):
                return False
            with storage_guard():
                await self.store.storage.delete(blob_key(digest))
        return True

    # -- (d) orphan blob objects -------------------------------------------------------
    async def orphan_blobs(self) -> None:
        """Delete objects under ``blobs/`` that no blob row accounts for, past the grace."""
        cutoff = self.blob_cutoff.timestamp()
        removed = 0
        pending: dict[str, int] = {}
        with storage_guard():
            async for info in self.store.storage.list(paths.BLOBS):
                digest = _digest_of_key(info.path)
                if digest is None or info.mtime >= cutoff:
                    continue
                pending[digest] = info.size
                if len(pending) >= self.batch:
                    removed += await self._drop_orphans(pending)
                    pending = {}
        removed += await self._drop_orphans(pending)
        self.report.orphans_removed += removed
        self.say(f"gc: blobs: {self.verb} {_count(removed, 'orphan object')}")

    async def _drop_orphans(self, objects: dict[str, int]) -> int:
        if not objects:
            return 0
        async with self.store.read() as s:
            known = set((await s.execute(
                select(Blob.digest).where(Blob.digest.in_(list(objects))))).scalars())
        removed = 0
        for digest, size in objects.items():
            if digest not in known and (self.dry or await self._drop_orphan(digest, size)):
                removed += 1
                self.report.bytes_reclaimed += size
        return removed

    async def _drop_orphan(self, digest: str, size: int) -> bool:
        """Claim an unknown digest with a ``deleting`` placeholder row, then delete it.

        A commit that inserted the row first wins (the insert does nothing); one that
        comes later waits the placeholder out, then writes its own bytes.
        """
        now = utcnow()
        async with self.store.tx() as s:
            stmt = self.store.insert(Blob).values(
                digest=digest, size=size, state="deleting", created_at=now, last_linked_at=now)
            res = await s.execute(stmt.on_conflict_do_nothing(index_elements=["digest"]))
            if not _rowcount(res):
                return False
        return await self._finish(digest)


def _digest_of_key(key: str) -> str | None:
    """The digest a ``blobs/<alg>/<xx>/<encoded>`` key stores, or None for other keys."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != paths.BLOBS:
        return None
    try:
        digest = str(Digest.parse(f"{parts[1]}:{parts[3]}"))
    except DigestInvalid:
        return None
    return digest if blob_key(digest) == key else None
