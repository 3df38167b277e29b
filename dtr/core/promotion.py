"""PromotionService: copy a digest from one repository into another (``signing.md`` §8.8
flow 2, "push to staging → sign → promote") through core's own services, so every hook
sees the copy as it would see a push.

Order of work (each step a normal core operation):

1. read the manifest ``digest`` of the source through the read gate (and, for an index,
   every child manifest), with the caller's right to push on the source;
2. collect its referrers in the source — manifests whose ``subject`` is the digest (or a
   child) and legacy ``<alg>-<hex>.sig|.att|.sbom`` tags;
3. mount every blob those manifests reference into the target (cross-repository mount);
4. store the child manifests, the manifest and the referrers in the target by digest (the
   signing gate's observer verifies each signature as it arrives); legacy signature tags
   are written as tags (the gate exempts them);
5. write every requested tag in one manifest PUT (one transaction): the push gate decides
   for all of them at once, and a refusal leaves no tag written.

Contract: nothing here decides permissions — the caller passes what it may read; the push
gate alone decides whether the tags may be written (``dtr.errors.Denied`` propagates).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, select

from dtr.core.blobs import BlobService
from dtr.core.hooks import MayPush
from dtr.core.manifest import parse_manifest
from dtr.core.manifests import ManifestRecord, ManifestService
from dtr.core.reference import Digest, check_tag
from dtr.core.store import Store
from dtr.db.models import Manifest, Repository, Tag
from dtr.errors import Invalid, ManifestBlobUnknown

SIGNATURE_TAG = re.compile(r"^(sha256|sha512)-([0-9a-f]{64}|[0-9a-f]{128})\.(sig|att|sbom)$")
MAX_MANIFESTS = 1024
"""At most this many manifests (children and referrers) are copied by one promotion."""


@dataclass(frozen=True, slots=True)
class Promotion:
    """What a promotion did."""

    repository: str
    digest: str
    tags: tuple[str, ...]
    manifests: int
    """Manifests copied: the digest and, for an index, its children."""
    referrers: int
    """Referrers copied (signatures, attestations, SBOMs; legacy tags included)."""
    blobs_mounted: int


@dataclass(frozen=True, slots=True)
class _Referrer:
    digest: str
    tag: str | None
    """The legacy ``<alg>-<hex>.sig|.att|.sbom`` tag it is known by, if any."""


def parse_source(source: str) -> tuple[str, str]:
    """``repository@sha256:…`` as (repository, digest).

    Raises:
        Invalid: not a repository and a digest.
    """
    repository, sep, digest = source.rpartition("@")
    if not sep or not repository:
        raise Invalid(f"source {source!r} must be REPOSITORY@DIGEST", {"source": source})
    return repository, str(Digest.parse(digest))


class PromotionService:
    """Copies signed digests between repositories.

    Args:
        store: the metadata database and storage (referrer lookups).
        manifests: manifest reads and writes (the gates run there).
        blobs: cross-repository mounts.
    """

    def __init__(self, store: Store, manifests: ManifestService, blobs: BlobService) -> None:
        self.store = store
        self.manifests = manifests
        self.blobs = blobs

    async def promote(self, source: str, digest: str, target: str, tags: Sequence[str],
                      may_push_source: MayPush) -> Promotion:
        """Copy ``source@digest`` (children, blobs and referrers) into ``target`` and point
        ``tags`` at it atomically.

        Raises:
            ManifestUnknown: the digest (or a child) is not in the source.
            Denied: the read gate refused a source manifest, or the push gate refused the
                tags (nothing tagged; the copied content stays untagged, quarantined).
            ManifestBlobUnknown: a referenced blob is missing from the source.
            Invalid, TagInvalid, DigestInvalid: malformed input.
        """
        tags = tuple(dict.fromkeys(check_tag(t) for t in tags))
        if source == target:
            raise Invalid("source and target are the same repository", {"source": source})
        main = await self.manifests.get(source, digest, may_push_source)
        children = await self._children(source, main, may_push_source)
        referrers = await self.store.run(
            lambda s: _referrers(s, source, [digest, *(c.digest for c in children)]),
            write=False)
        if len(children) + len(referrers) > MAX_MANIFESTS:
            raise Invalid(f"at most {MAX_MANIFESTS} manifests are promoted at once")
        copies = [await self.manifests.get(source, ref.digest, may_push_source)
                  for ref in referrers]
        blobs: dict[str, None] = {}
        for record in (*children, main, *copies):
            for ref_blob in parse_manifest(record.content, record.media_type).blobs:
                blobs[str(ref_blob)] = None
        for blob in blobs:
            if not await self.blobs.mount(target, blob, [source], lambda _n: True):
                raise ManifestBlobUnknown(f"blob {blob} is not present in {source}",
                                          {"digest": blob})
        for record in (*children, main):
            await self.manifests.put(target, record.digest, record.media_type,
                                     record.content)
        for ref, record in zip(referrers, copies, strict=True):
            await self.manifests.put(target, ref.tag or record.digest, record.media_type,
                                     record.content)
        if tags:
            await self.manifests.put(target, main.digest, main.media_type, main.content,
                                     extra_tags=tags)
        return Promotion(target, main.digest, tags, 1 + len(children), len(referrers),
                         len(blobs))

    async def _children(self, source: str, main: ManifestRecord,
                        may_push: MayPush) -> list[ManifestRecord]:
        """The child manifests of an index, depth first (children before their parent)."""
        out: list[ManifestRecord] = []
        seen: set[str] = set()

        async def walk(record: ManifestRecord) -> None:
            for child in parse_manifest(record.content, record.media_type).manifests:
                if str(child) in seen or len(seen) >= MAX_MANIFESTS:
                    continue
                seen.add(str(child))
                found = await self.manifests.get(source, str(child), may_push)
                await walk(found)
                out.append(found)

        await walk(main)
        return out


def _referrers(s: Connection, repository: str, subjects: list[str]) -> list[_Referrer]:
    """The referrers of ``subjects`` in ``repository``: manifests with a ``subject``, then
    manifests tagged ``<alg>-<hex>.sig|.att|.sbom`` for a subject (oldest first, once each).
    """
    by_subject = s.execute(
        select(Manifest.digest)
        .join(Repository, Repository.id == Manifest.repository_id)
        .where(Repository.name == repository, Manifest.subject_digest.in_(subjects))
        .order_by(Manifest.created_at, Manifest.id)).scalars().all()
    prefixes = [d.replace(":", "-") + "." for d in subjects]
    tagged = s.execute(
        select(Tag.name, Manifest.digest)
        .join(Manifest, Manifest.id == Tag.manifest_id)
        .join(Repository, Repository.id == Manifest.repository_id)
        .where(Repository.name == repository,
               Tag.name.in_([p + ext for p in prefixes for ext in ("sig", "att", "sbom")]))
        .order_by(Tag.name)).all()
    out: dict[str, _Referrer] = {}
    for digest in by_subject:
        out.setdefault(digest, _Referrer(digest, None))
    for tag, digest in tagged:
        if SIGNATURE_TAG.match(tag):
            out[digest] = _Referrer(digest, tag)
    return list(out.values())
