"""ReferrersService: the referrers API answer for a subject digest — manifests whose
``subject`` is the digest, merged with any client-written tag-schema index.
"""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import Connection, select

from dtr.core import mediatypes as mt
from dtr.core.manifest import index_descriptors
from dtr.core.reference import Digest, referrers_tag
from dtr.core.store import Store
from dtr.db.models import Manifest, Repository, Tag


class ReferrersService:
    """Builds referrer indexes."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def referrers(self, repository: str, subject: str,
                        artifact_type: str | None = None) -> list[dict[str, Any]]:
        """Descriptors of the manifests referring to ``subject`` (never raises NotFound).

        Raises:
            DigestInvalid: malformed subject digest.
        """
        digest = Digest.parse(subject)
        def load(s: Connection) -> tuple[list[Any], Any]:
            rows = s.execute(
                select(Manifest.digest, Manifest.media_type, Manifest.size,
                       Manifest.artifact_type, Manifest.content)
                .join(Repository, Repository.id == Manifest.repository_id)
                .where(Repository.name == repository, Manifest.subject_digest == subject)
                .order_by(Manifest.created_at, Manifest.id)).all()
            fallback = s.execute(
                select(Manifest.content, Manifest.media_type)
                .join(Tag, Tag.manifest_id == Manifest.id)
                .join(Repository, Repository.id == Manifest.repository_id)
                .where(Repository.name == repository,
                       Tag.name == referrers_tag(digest))).first()
            return list(rows), fallback

        rows, fallback = await self.store.run(load, write=False)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for dgst, media_type, size, atype, content in rows:
            desc: dict[str, Any] = {"mediaType": media_type, "digest": dgst, "size": size}
            if atype:
                desc["artifactType"] = atype
            annotations = _annotations(content)
            if annotations:
                desc["annotations"] = annotations
            out.append(desc)
            seen.add(dgst)
        if fallback is not None and fallback[1] in mt.INDEXES:
            for entry in index_descriptors(fallback[0]):
                if entry.get("digest") not in seen:
                    out.append(entry)
                    seen.add(str(entry.get("digest")))
        if artifact_type is not None:
            out = [d for d in out if d.get("artifactType") == artifact_type]
        return out


def _annotations(content: bytes) -> dict[str, str] | None:
    try:
        body = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return None
    ann = body.get("annotations") if isinstance(body, dict) else None
    return ann if isinstance(ann, dict) and ann else None


def referrers_index(descriptors: list[dict[str, Any]]) -> bytes:
    """The OCI image index body of a referrers response."""
    return msgspec.json.encode({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                "manifests": descriptors})
