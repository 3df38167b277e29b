"""ManifestService: get, put (validate references, run the push gate on tag writes, emit
events) and delete manifests; tags are written here because a tag write is a manifest
event the signing gate must see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select

from dtr.core.blobs import blob_key
from dtr.core.hooks import ManifestWrite, MayPush, RegistryEvent, TagWrite
from dtr.core.manifest import ParsedManifest, parse_manifest
from dtr.core.reference import Digest, check_tag, digest_of, is_digest_reference
from dtr.core.store import (
    Store,
    ensure_repo,
    for_dialect,
    per_dialect,
    repo_id,
    storage_guard,
)
from dtr.db.base import utcnow
from dtr.db.models import Blob, Manifest, ManifestReference, RepositoryBlob, Tag
from dtr.errors import (
    Denied,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestTooLarge,
    ManifestUnknown,
    TooManyTags,
    Unavailable,
    Unsupported,
)
from dtr.storage.base import PathNotFound


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """A stored manifest: its digest, media type and exact bytes."""

    digest: str
    media_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a manifest PUT did."""

    digest: str
    tags: list[str]
    subject: str | None


class ManifestService:
    """Manifests and tags of repositories."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, repository: str, reference: str,
                  may_push: MayPush | None = None) -> ManifestRecord:
        """The manifest a tag or digest names, if the read gate lets the caller have it.

        ``may_push`` answers whether the caller may push to ``repository`` (the read gate
        lets pushers read quarantined digests); None means the caller may.

        Raises:
            ManifestUnknown: no such manifest or tag (or repository).
            DigestInvalid, TagInvalid: malformed reference.
            Denied: the read gate refused (quarantined or revoked digest).
        """
        by_digest = is_digest_reference(reference)
        if by_digest:
            Digest.parse(reference)
        else:
            check_tag(reference)
        row = await self.store.reads.manifest(repository, reference, by_digest)
        if row is None:
            raise ManifestUnknown(f"manifest {reference} is not known to {repository}",
                                  {"reference": reference})
        await self.store.hooks.reads.check_read(repository, reference, row[0],
                                                 may_push or _yes)
        return ManifestRecord(row[0], row[1], row[2])

    async def read_blob(self, digest: str) -> bytes:
        """The bytes of a stored blob (small ones: signature payloads and envelopes).

        Raises:
            KeyError: no such blob.
            Unavailable: object storage failed.
        """
        try:
            with storage_guard():
                return await self.store.storage.get_bytes(blob_key(digest))
        except (PathNotFound, DigestInvalid):
            raise KeyError(digest) from None

    async def put(self, repository: str, reference: str, content_type: str | None,
                  body: bytes, extra_tags: Sequence[str] = ()) -> PutResult:
        """Store a manifest and point tags at it.

        ``reference`` is a tag or the digest the body must hash to; ``extra_tags`` are the
        ``?tag=`` parameters. Referenced blobs and child manifests must be in the
        repository; ``subject`` and non-distributable layers are never checked.

        Raises:
            ManifestTooLarge, ManifestInvalid, DigestInvalid, TagInvalid, TooManyTags,
            ManifestBlobUnknown, Denied (push gate; the denial is recorded through
            the event sinks in a transaction of its own, since the push's is rolled back).
        """
        if len(body) > self.store.limits.max_manifest_bytes:
            raise ManifestTooLarge(
                f"manifest exceeds {self.store.limits.max_manifest_bytes} bytes")
        tags = [check_tag(t) for t in extra_tags]
        if len(tags) > self.store.limits.max_tags_per_request:
            raise TooManyTags(f"at most {self.store.limits.max_tags_per_request} tags")
        if is_digest_reference(reference):
            want = Digest.parse(reference)
            if not want.matches(body):
                raise DigestInvalid(f"manifest does not match digest {reference}",
                                    {"digest": reference})
            digest = str(want)
        else:
            tags.insert(0, check_tag(reference))
            digest = str(digest_of(body))
        parsed = parse_manifest(body, content_type)
        tags = list(dict.fromkeys(tags))
        subject = str(parsed.subject.digest) if parsed.subject else None
        hooks = self.store.hooks
        write = ManifestWrite(repository, digest, parsed.media_type, parsed.artifact_type,
                              subject, body, tuple(tags),
                              tuple(dict.fromkeys(str(d) for d in parsed.manifests)))
        prepared = await hooks.observer.prepare(write, self.read_blob)

        def put(s: Connection) -> None:
            rid = ensure_repo(s, repository)
            _check_references(s, rid, parsed)
            mid = _upsert_manifest(s, rid, digest, parsed, body)
            hooks.emit(s, RegistryEvent("manifest.pushed", repository, digest,
                                        detail={"media_type": parsed.media_type,
                                                "size": len(body)}))
            hooks.observer.stored(s, write, prepared)
            for tag in tags:
                hooks.gate.check_tag_write(s, TagWrite(
                    repository, tag, digest, parsed.media_type, parsed.artifact_type, subject))
                previous = _write_tag(s, rid, tag, mid)
                hooks.emit(s, RegistryEvent("tag.written", repository, digest, tag,
                                            {"previous": previous}))

        try:
            await self.store.run(put, short=True)
        except Denied as denied:
            if hooks.sinks:
                detail = denied.detail if isinstance(denied.detail, dict) else {}
                event = RegistryEvent("tag.denied", repository, digest,
                                      detail.get("tag") or (tags[0] if tags else None),
                                      {"message": denied.message, **detail})
                await self.store.run(lambda s: hooks.emit(s, event))
            raise
        return PutResult(digest, tags, str(parsed.subject.digest) if parsed.subject else None)

    async def delete(self, repository: str, reference: str) -> None:
        """Delete a tag, or a manifest by digest together with every tag pointing at it.

        Raises:
            Unsupported: deletes disabled.
            NameUnknown, ManifestUnknown.
        """
        if not self.store.limits.delete_enabled:
            raise Unsupported("deletes are disabled on this registry")
        by_digest = is_digest_reference(reference)
        if by_digest:
            Digest.parse(reference)
        else:
            check_tag(reference)
        hooks = self.store.hooks

        def delete_(s: Connection) -> None:
            rid = repo_id(s, repository)
            if by_digest:
                # Lock the manifest row before its tags, the order a push takes them in
                # (manifest, then tag): the opposite order deadlocks against a push.
                found = s.execute(select(Manifest.id, Manifest.subject_digest).where(
                    Manifest.repository_id == rid, Manifest.digest == reference)
                    .with_for_update()).first()
                if found is None:
                    raise ManifestUnknown(f"manifest {reference} is not known",
                                          {"reference": reference})
                mid, subject = found
                s.execute(delete(Tag).where(Tag.manifest_id == mid))
                s.execute(delete(ManifestReference).where(ManifestReference.manifest_id == mid))
                s.execute(delete(Manifest).where(Manifest.id == mid))
                hooks.emit(s, RegistryEvent("manifest.deleted", repository, reference))
                hooks.observer.deleted(s, repository, reference, subject)
            else:
                target = s.execute(select(Manifest.digest).join(
                    Tag, Tag.manifest_id == Manifest.id).where(
                    Tag.repository_id == rid, Tag.name == reference)).scalar()
                res = s.execute(delete(Tag).where(Tag.repository_id == rid,
                                                  Tag.name == reference))
                if not res.rowcount:
                    raise ManifestUnknown(f"tag {reference} is not known",
                                          {"reference": reference})
                hooks.emit(s, RegistryEvent("tag.deleted", repository,
                                            None if target is None else str(target),
                                            reference))
                if target is not None:
                    hooks.observer.tag_deleted(s, repository, reference, str(target))

        await self.store.run(delete_)


async def _yes() -> bool:
    return True


# Hot-path statements of a manifest PUT, built once and executed with bound parameters
# (see ``dtr.core.store.per_dialect``): building them per call cost more CPU than the SQL.
_PRESENT_BLOBS = (
    select(RepositoryBlob.digest)
    .join(Blob, Blob.digest == RepositoryBlob.digest)
    .where(RepositoryBlob.repository_id == bindparam("rid"),
           RepositoryBlob.digest.in_(bindparam("digests", expanding=True)),
           Blob.state == "present")
    # FOR SHARE: gc must not remove these links before this manifest commits
    .with_for_update(read=True, of=RepositoryBlob))
_PRESENT_CHILDREN = select(Manifest.digest).where(
    Manifest.repository_id == bindparam("rid"),
    Manifest.digest.in_(bindparam("digests", expanding=True)))
# Locked: a concurrent DELETE by digest must not remove the row between this lookup and
# the tag insert that points at it (foreign-key violation otherwise).
_MANIFEST_ID = (select(Manifest.id)
                .where(Manifest.repository_id == bindparam("rid"),
                       Manifest.digest == bindparam("digest"))
                .with_for_update())
_NEW_MANIFEST = per_dialect(
    lambda ins: ins(Manifest)
    .on_conflict_do_nothing(index_elements=["repository_id", "digest"])
    .returning(Manifest.id))
_NEW_REFERENCES = per_dialect(lambda ins: ins(ManifestReference).on_conflict_do_nothing())


def _tag_upsert(ins: Any) -> Any:
    stmt = ins(Tag)
    return stmt.on_conflict_do_update(
        index_elements=["repository_id", "name"],
        set_={"manifest_id": stmt.excluded.manifest_id, "updated_at": stmt.excluded.updated_at})


_TAG_UPSERT = per_dialect(_tag_upsert)
# Locked (the tag row only): the digest a tag pointed at before this write, exact even
# when pushes to the same tag race. The upsert takes the same lock right after.
_TAG_TARGET = (select(Manifest.digest)
               .join(Tag, Tag.manifest_id == Manifest.id)
               .where(Tag.repository_id == bindparam("rid"), Tag.name == bindparam("tag"))
               .with_for_update(of=Tag))


def _check_references(s: Connection, rid: int, parsed: ParsedManifest) -> None:
    """Every referenced blob and child manifest must be in the repository.

    Raises:
        ManifestBlobUnknown: the first missing one.
    """
    blobs = sorted({str(d) for d in parsed.blobs})
    if blobs:
        found = set(s.execute(_PRESENT_BLOBS, {"rid": rid, "digests": blobs}).scalars())
        missing = [d for d in blobs if d not in found]
        if missing:
            raise ManifestBlobUnknown(f"blob {missing[0]} is not in the repository",
                                      {"digest": missing[0]})
    children = sorted({str(d) for d in parsed.manifests})
    if children:
        found = set(s.execute(_PRESENT_CHILDREN, {"rid": rid, "digests": children}).scalars())
        missing = [d for d in children if d not in found]
        if missing:
            raise ManifestBlobUnknown(f"manifest {missing[0]} is not in the repository",
                                      {"digest": missing[0]})


def _upsert_manifest(s: Connection, rid: int, digest: str, parsed: ParsedManifest,
                     body: bytes) -> int:
    """The id of the manifest row, inserted with its reference edges if new."""
    key = {"rid": rid, "digest": digest}
    row = {"repository_id": rid, "digest": digest, "media_type": parsed.media_type,
           "size": len(body), "content": body, "artifact_type": parsed.artifact_type,
           "subject_digest": str(parsed.subject.digest) if parsed.subject else None,
           "created_at": utcnow()}
    for _attempt in range(10):
        existing = s.execute(_MANIFEST_ID, key).scalar()
        if existing is not None:
            return int(existing)
        mid = s.execute(for_dialect(s, _NEW_MANIFEST), row).scalar()
        if mid is None:
            # PostgreSQL: a concurrent push inserted the row first (and a concurrent
            # delete may have removed it again since): look it up again, locked.
            continue
        refs = {(str(d), "blob") for d in parsed.blobs}
        refs |= {(str(d), "manifest") for d in parsed.manifests}
        if refs:
            s.execute(for_dialect(s, _NEW_REFERENCES),
                      [{"manifest_id": mid, "digest": d, "kind": k} for d, k in sorted(refs)])
        return int(mid)
    raise Unavailable("the manifest is being pushed and deleted concurrently; retry")


def _write_tag(s: Connection, rid: int, tag: str, mid: int) -> str:
    """Point ``tag`` at manifest ``mid`` (insert or move).

    Returns:
        The digest the tag pointed at before, ``""`` for a new tag.
    """
    previous = s.execute(_TAG_TARGET, {"rid": rid, "tag": tag}).scalar()
    s.execute(for_dialect(s, _TAG_UPSERT), {"repository_id": rid, "name": tag,
                                            "manifest_id": mid, "updated_at": utcnow()})
    return str(previous or "")
