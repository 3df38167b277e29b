"""Parse and validate manifests and indexes; extract what they reference.

The bytes are never re-serialised: parsing only reads them. The result says which blobs
and child manifests must exist in the repository, the ``subject`` (never checked for
existence), the artifact type the referrers API reports, and the annotations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from dtr.core import mediatypes as mt
from dtr.core.reference import Digest
from dtr.errors import DigestInvalid, ManifestInvalid


@dataclass(frozen=True, slots=True)
class Descriptor:
    """The fields of an OCI descriptor dtr uses."""

    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    urls: bool = False


@dataclass(slots=True)
class ParsedManifest:
    """What a manifest says about itself and its references."""

    media_type: str
    blobs: list[Digest] = field(default_factory=list)
    """Blobs that must be linked in the repository (config, distributable layers)."""
    manifests: list[Digest] = field(default_factory=list)
    """Child manifests that must exist in the repository (index entries)."""
    subject: Descriptor | None = None
    artifact_type: str | None = None
    """``artifactType``, else ``config.mediaType`` for image manifests (referrers rule)."""
    annotations: dict[str, str] | None = None


def _descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ManifestInvalid(f"{where}: descriptor must be an object")
    media_type = obj.get("mediaType")
    digest = obj.get("digest")
    size = obj.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestInvalid(f"{where}: mediaType is required")
    if not isinstance(digest, str):
        raise ManifestInvalid(f"{where}: digest is required")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalid(f"{where}: size must be a non-negative integer")
    try:
        parsed = Digest.parse(digest)
    except DigestInvalid as exc:
        raise ManifestInvalid(f"{where}: {exc.message}") from None
    annotations = obj.get("annotations")
    if annotations is not None and not isinstance(annotations, dict):
        raise ManifestInvalid(f"{where}: annotations must be an object")
    artifact_type = obj.get("artifactType")
    urls = obj.get("urls")
    return Descriptor(media_type, parsed, size,
                      artifact_type if isinstance(artifact_type, str) else None,
                      annotations, bool(urls))


def _media_type(content_type: str | None, body: dict[str, Any]) -> str:
    declared = body.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestInvalid("mediaType must be a string")
    header = (content_type or "").split(";", 1)[0].strip().lower()
    if header in mt.SCHEMA1 or declared in mt.SCHEMA1 or body.get("schemaVersion") == 1:
        raise ManifestInvalid("schema1 is not supported")
    if header in mt.MANIFEST_TYPES:
        if declared and declared != header:
            raise ManifestInvalid(
                f"mediaType {declared!r} does not match Content-Type {header!r}")
        return header
    if declared in mt.MANIFEST_TYPES:
        return str(declared)
    if declared:
        raise ManifestInvalid(f"unsupported manifest media type {declared!r}")
    if "manifests" in body:
        return mt.OCI_INDEX
    if "config" in body or "layers" in body:
        return mt.OCI_MANIFEST
    raise ManifestInvalid("cannot tell the manifest media type (no Content-Type or mediaType)")


def parse_manifest(data: bytes, content_type: str | None) -> ParsedManifest:
    """Parse manifest bytes as sent with ``content_type``.

    Raises:
        ManifestInvalid: not JSON, schema1, unknown media type, or a schema violation.
    """
    try:
        body = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ManifestInvalid(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ManifestInvalid("manifest must be a JSON object")
    media_type = _media_type(content_type, body)
    if body.get("schemaVersion") != 2:
        raise ManifestInvalid("schemaVersion must be 2")
    out = ParsedManifest(media_type)
    annotations = body.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, dict) or not all(
                isinstance(v, str) for v in annotations.values()):
            raise ManifestInvalid("annotations must map strings to strings")
        out.annotations = annotations
    artifact_type = body.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid("artifactType must be a string")
    if "subject" in body and body["subject"] is not None:
        out.subject = _descriptor(body["subject"], "subject")
    if media_type in mt.INDEXES:
        entries = body.get("manifests")
        if not isinstance(entries, list):
            raise ManifestInvalid("index: manifests must be a list")
        for i, entry in enumerate(entries):
            d = _descriptor(entry, f"manifests[{i}]")
            out.manifests.append(d.digest)
        out.artifact_type = artifact_type
        return out
    if media_type == mt.OCI_ARTIFACT:
        blobs = body.get("blobs", [])
        if not isinstance(blobs, list):
            raise ManifestInvalid("artifact: blobs must be a list")
        for i, entry in enumerate(blobs):
            d = _descriptor(entry, f"blobs[{i}]")
            if not (d.urls or mt.is_nondistributable(d.media_type)):
                out.blobs.append(d.digest)
        out.artifact_type = artifact_type
        return out
    config = _descriptor(body.get("config"), "config")
    out.blobs.append(config.digest)
    layers = body.get("layers")
    if layers is None and media_type == mt.DOCKER_MANIFEST:
        raise ManifestInvalid("layers is required")
    if not isinstance(layers, list | None):
        raise ManifestInvalid("layers must be a list")
    for i, entry in enumerate(layers or []):
        d = _descriptor(entry, f"layers[{i}]")
        if not (d.urls or mt.is_nondistributable(d.media_type)):
            out.blobs.append(d.digest)
    out.artifact_type = artifact_type or config.media_type
    return out


def index_descriptors(data: bytes) -> list[dict[str, Any]]:
    """The raw descriptor objects of an index (for merging tag-schema referrer indexes)."""
    try:
        body = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return []
    entries = body.get("manifests") if isinstance(body, dict) else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
