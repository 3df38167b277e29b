"""The verification entry point: given a stored signature manifest's bytes, the subject
digest it is offered for, a ``BlobSource`` and the trusted material, classify the manifest
(cosign legacy / OCI 1.1 simple signing / v3 bundle, notation JWS / COSE) and run the
matching recipe. Fails closed: anything unrecognised is refused. Pure: no DB, no HTTP.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dtr.signing import cosign, notation
from dtr.signing.keys import TrustedKey
from dtr.signing.notation import NotationPolicy
from dtr.signing.verdict import (
    BlobSource,
    Format,
    Reason,
    Refused,
    Verdict,
    check_digest,
    media_type,
    strict_json,
)

IMAGE_MANIFESTS = ("application/vnd.oci.image.manifest.v1+json",
                   "application/vnd.docker.distribution.manifest.v2+json")
MANIFEST_CAP = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TrustMaterial:
    """What a signature may be trusted by: cosign public keys and notation policies."""

    cosign_keys: tuple[TrustedKey, ...] = ()
    notation: tuple[NotationPolicy, ...] = ()


def classify(manifest: dict[str, Any]) -> Format | None:
    """The signature format a parsed manifest carries, or ``None`` if it carries none.

    Only the manifest's own fields are used (media types, ``artifactType``, ``subject``);
    nothing is verified here. A cosign ``.att`` (DSSE layers) or any other artifact is
    ``None``.
    """
    if media_type(manifest) not in (*IMAGE_MANIFESTS, None):
        return None
    layers = manifest.get("layers")
    kinds = [media_type(x) for x in layers if isinstance(x, dict)] \
        if isinstance(layers, list) else []
    config = manifest.get("config")
    config_type = media_type(config) if isinstance(config, dict) else None
    artifact = media_type(manifest, "artifactType") or config_type
    if artifact == notation.NOTARY_SIGNATURE:
        return Format.NOTATION_COSE if kinds == [notation.COSE] else Format.NOTATION_JWS
    if artifact == cosign.BUNDLE_V03 or any(
            k in (cosign.BUNDLE_V03, *cosign.OLD_BUNDLES) for k in kinds):
        return Format.COSIGN_BUNDLE
    if cosign.SIMPLE_SIGNING in kinds:
        if "subject" in manifest or artifact == cosign.COSIGN_SIG_ARTIFACT:
            return Format.COSIGN_OCI11
        return Format.COSIGN_LEGACY
    return None


def verify_all(manifest_bytes: bytes, subject: str, blobs: BlobSource, trust: TrustMaterial,
               *, now: dt.datetime | None = None) -> list[Verdict]:
    """Verify every signature ``manifest_bytes`` holds for the manifest ``subject``.

    One verdict per signature: a legacy ``.sig`` manifest holds one per simple-signing
    layer (cosign appends a layer per re-signing); every other format holds exactly one.
    ``now`` (default: the current time, UTC) is when certificates must be valid.
    A referrer (a manifest with ``subject``) offered for another digest is WRONG_SUBJECT
    before anything else is read. Never raises for bad input: it is a verdict.
    """
    if len(manifest_bytes) > MANIFEST_CAP:
        return [Verdict(False, None, subject, Reason.MALFORMED,
                        "signature manifest is too large")]
    try:
        check_digest(subject)
        manifest = strict_json(manifest_bytes, "signature manifest")
    except Refused as refused:
        return [Verdict(False, None, subject, refused.reason, refused.message)]
    fmt = classify(manifest)
    if fmt is None:
        return [Verdict(False, None, subject, Reason.NOT_A_SIGNATURE,
                        "not a cosign or notation signature manifest "
                        f"(artifactType {manifest.get('artifactType')!r})")]
    described = manifest.get("subject")
    if fmt is not Format.COSIGN_LEGACY:
        target = described.get("digest") if isinstance(described, dict) else None
        if target is None:
            return [Verdict(False, fmt, subject, Reason.MALFORMED, "referrer has no subject")]
        if target != subject:
            return [Verdict(False, fmt, subject, Reason.WRONG_SUBJECT,
                            f"referrer's subject is {target}, not {subject}")]
    if fmt in (Format.COSIGN_LEGACY, Format.COSIGN_OCI11):
        return cosign.verify_simple_signing(manifest, subject, blobs, trust.cosign_keys, fmt)
    if fmt is Format.COSIGN_BUNDLE:
        return [cosign.verify_bundle(manifest, subject, blobs, trust.cosign_keys)]
    when = now if now is not None else dt.datetime.now(dt.UTC)
    return [notation.verify_notation(manifest, subject, blobs, trust.notation, when)]


def verify(manifest_bytes: bytes, subject: str, blobs: BlobSource, trust: TrustMaterial,
           *, now: dt.datetime | None = None) -> Verdict:
    """One verdict for a signature manifest: the first trusted signature it holds, else
    the refusal of its first signature (see ``verify_all``).
    """
    verdicts = verify_all(manifest_bytes, subject, blobs, trust, now=now)
    return next((v for v in verdicts if v.trusted), verdicts[0])


def distinct_signers(verdicts: Sequence[Verdict]) -> set[str]:
    """The distinct trusted signers (key ids / identities) among ``verdicts`` — what a
    ``min_signatures`` policy counts.
    """
    return {v.key_id or v.identity or "" for v in verdicts if v.trusted}
