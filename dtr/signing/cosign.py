"""cosign signature verification against trusted public keys: recipe A (simple-signing
layers: the legacy ``sha256-<hex>.sig`` tag and the OCI 1.1 simple-signing referrer) and
recipe B (v3 Sigstore bundle referrer: DSSE PAE over an in-toto statement), ``signing.md``
§2 and §4.2-§4.3. Key-based only (no Rekor/Fulcio). Pure; never imports api or db.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from dtr.signing.keys import TrustedKey, verify_cosign
from dtr.signing.verdict import (
    BlobSource,
    Format,
    Reason,
    Refused,
    Verdict,
    b64_std,
    media_type,
    read_blob,
    strict_json,
)

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIG_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
OLD_BUNDLES = ("application/vnd.dev.sigstore.bundle+json;version=0.1",
               "application/vnd.dev.sigstore.bundle+json;version=0.2")
DSSE_LAYER = "application/vnd.dsse.envelope.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIMPLE_SIGNING_TYPE = "cosign container image signature"
IN_TOTO = "application/vnd.in-toto+json"
STATEMENT_V1 = "https://in-toto.io/Statement/v1"
STATEMENT_V01 = "https://in-toto.io/Statement/v0.1"
"""What ``cosign attest`` (v3.1) still writes; a valid in-toto statement type too."""
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"

PAYLOAD_CAP = 64 * 1024
"""Simple-signing payloads larger than this are refused (cosign allows 128 MiB)."""
BUNDLE_CAP = 1024 * 1024
"""Bundles larger than this are refused."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: the bytes a DSSE signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _ci_get(obj: dict[str, Any], key: str) -> Any:
    """``obj[key]`` matched case-insensitively as Go's ``encoding/json`` does; refuses a
    key present more than once under different cases (cosign and dtr could disagree).
    """
    hits = [k for k in obj if k.lower() == key.lower()]
    if len(hits) > 1:
        raise Refused(Reason.MALFORMED, f"payload holds {key!r} {len(hits)} times")
    return obj[hits[0]] if hits else None


def _sign_with(keys: Sequence[TrustedKey], signature: bytes, data: bytes,
               hint: str | None = None) -> TrustedKey | None:
    """The first trusted key ``signature`` verifies under (a hinted key first)."""
    ordered = sorted(keys, key=lambda k: k.id != hint)
    return next((k for k in ordered if verify_cosign(k.public_key, signature, data)), None)


def verify_simple_signing(manifest: dict[str, Any], subject: str, blobs: BlobSource,
                          keys: Sequence[TrustedKey], fmt: Format) -> list[Verdict]:
    """Recipe A: one verdict per simple-signing layer of ``manifest``.

    Each layer's payload is read through ``blobs`` (checked against the layer's digest
    and size, capped at 64 KiB), its signature (annotation
    ``dev.cosignproject.cosign/signature``, strict base64) is verified over the payload
    bytes exactly as stored under each trusted key, and the payload must be a cosign
    simple-signing payload whose ``critical.image.docker-manifest-digest`` equals
    ``subject`` (keys matched case-insensitively; a key present twice is refused).
    ``critical.identity.docker-reference`` is ignored, as cosign ignores it.
    A manifest with no simple-signing layer yields one NOT_A_SIGNATURE verdict.
    """
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        return [Verdict(False, fmt, subject, Reason.MALFORMED, "manifest has no layers list")]
    ours = [layer for layer in layers
            if isinstance(layer, dict) and media_type(layer) == SIMPLE_SIGNING]
    if not ours:
        kinds = sorted({media_type(x) or "?" for x in layers if isinstance(x, dict)})
        return [Verdict(False, fmt, subject, Reason.NOT_A_SIGNATURE,
                        f"no simple-signing layer (layers: {', '.join(kinds) or 'none'})")]
    out = []
    for layer in ours:
        try:
            out.append(_simple_signing_layer(layer, subject, blobs, keys, fmt))
        except Refused as refused:
            out.append(Verdict(False, fmt, subject, refused.reason, refused.message))
    return out


def _simple_signing_layer(layer: dict[str, Any], subject: str, blobs: BlobSource,
                          keys: Sequence[TrustedKey], fmt: Format) -> Verdict:
    annotations = layer.get("annotations")
    if not isinstance(annotations, dict):
        raise Refused(Reason.MALFORMED, "simple-signing layer has no annotations")
    signature = b64_std(annotations.get(SIGNATURE_ANNOTATION), SIGNATURE_ANNOTATION)
    payload = read_blob(blobs, layer, cap=PAYLOAD_CAP)
    key = _sign_with(keys, signature, payload)
    if key is None:
        raise Refused(Reason.UNTRUSTED_SIGNATURE,
                      "the signature verifies under none of the trusted keys")
    document = strict_json(payload, "simple-signing payload")
    critical = _ci_get(document, "critical")
    if not isinstance(critical, dict) or _ci_get(critical, "type") != SIMPLE_SIGNING_TYPE:
        raise Refused(Reason.NOT_A_SIGNATURE,
                      f"payload is not a {SIMPLE_SIGNING_TYPE!r} payload")
    image = _ci_get(critical, "image")
    signed = _ci_get(image, "docker-manifest-digest") if isinstance(image, dict) else None
    if not isinstance(signed, str):
        raise Refused(Reason.MALFORMED, "payload has no critical.image.docker-manifest-digest")
    if signed != subject:
        raise Refused(Reason.WRONG_SUBJECT, f"signature is over {signed}, not {subject}")
    return Verdict(True, fmt, subject, key_id=key.id,
                   message=f"signed by trusted key {key.id}")


def verify_bundle(manifest: dict[str, Any], subject: str, blobs: BlobSource,
                  keys: Sequence[TrustedKey]) -> Verdict:
    """Recipe B: a cosign v3 bundle referrer (the caller has checked its ``subject``).

    The single layer must be a Sigstore bundle v0.3 holding a DSSE envelope (a
    ``messageSignature`` is a blob signature: NOT_A_SIGNATURE; a certificate means
    keyless: UNSUPPORTED). The one DSSE signature is verified over the PAE of
    (``payloadType``, payload) under the trusted keys, the hinted key first (the hint is a
    lookup only). The in-toto statement (v1, or v0.1 as ``cosign attest`` writes) must
    carry predicate type ``https://sigstore.dev/cosign/sign/v1`` (anything else is an attestation:
    NOT_A_SIGNATURE) and a subject whose digest equals ``subject``.
    """
    try:
        return _bundle(manifest, subject, blobs, keys)
    except Refused as refused:
        return Verdict(False, Format.COSIGN_BUNDLE, subject, refused.reason, refused.message)


def _bundle(manifest: dict[str, Any], subject: str, blobs: BlobSource,
            keys: Sequence[TrustedKey]) -> Verdict:
    layers = manifest.get("layers")
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        raise Refused(Reason.MALFORMED, "a bundle referrer has exactly one layer")
    if media_type(layers[0]) in OLD_BUNDLES:
        raise Refused(Reason.UNSUPPORTED, "Sigstore bundles before v0.3 are not accepted")
    if media_type(layers[0]) != BUNDLE_V03:
        raise Refused(Reason.MALFORMED, f"layer is {media_type(layers[0])}, not {BUNDLE_V03}")
    bundle = strict_json(read_blob(blobs, layers[0], cap=BUNDLE_CAP), "bundle")
    if bundle.get("mediaType") != BUNDLE_V03:
        raise Refused(Reason.UNSUPPORTED, f"bundle media type {bundle.get('mediaType')!r}")
    material = bundle.get("verificationMaterial")
    if not isinstance(material, dict):
        raise Refused(Reason.MALFORMED, "bundle has no verificationMaterial")
    if "certificate" in material or "x509CertificateChain" in material:
        raise Refused(Reason.UNSUPPORTED, "keyless (certificate) bundles are not verified")
    if "messageSignature" in bundle:
        raise Refused(Reason.NOT_A_SIGNATURE, "a blob signature (messageSignature) bundle")
    envelope = bundle.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        raise Refused(Reason.MALFORMED, "bundle has no dsseEnvelope")
    payload_type = envelope.get("payloadType")
    if payload_type != IN_TOTO:
        raise Refused(Reason.NOT_A_SIGNATURE, f"DSSE payload type {payload_type!r}")
    payload = b64_std(envelope.get("payload"), "DSSE payload", urlsafe_ok=True)
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or len(signatures) != 1 \
            or not isinstance(signatures[0], dict):
        raise Refused(Reason.MALFORMED, "a cosign DSSE envelope has exactly one signature")
    signature = b64_std(signatures[0].get("sig"), "DSSE signature", urlsafe_ok=True)
    hint = _hint(material)
    key = _sign_with(keys, signature, pae(IN_TOTO, payload), hint)
    if key is None:
        if hint is not None and any(k.id == hint for k in keys):
            raise Refused(Reason.TAMPERED, f"signature fails under its trusted key {hint}")
        raise Refused(Reason.UNTRUSTED_SIGNATURE,
                      "the signature verifies under none of the trusted keys")
    statement = strict_json(payload, "in-toto statement")
    if statement.get("_type") not in (STATEMENT_V1, STATEMENT_V01):
        raise Refused(Reason.MALFORMED, f"statement type {statement.get('_type')!r}")
    predicate = statement.get("predicateType")
    if predicate != SIGN_PREDICATE:
        raise Refused(Reason.NOT_A_SIGNATURE,
                      f"predicate type {predicate!r}: an attestation, not a signature")
    algorithm, hex_digest = subject.split(":", 1)
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise Refused(Reason.MALFORMED, "statement has no subject")
    signed = [s.get("digest", {}).get(algorithm) for s in subjects
              if isinstance(s, dict) and isinstance(s.get("digest"), dict)]
    if hex_digest not in signed:
        raise Refused(Reason.WRONG_SUBJECT,
                      f"statement subjects {signed} do not include {subject}")
    return Verdict(True, Format.COSIGN_BUNDLE, subject, key_id=key.id,
                   message=f"signed by trusted key {key.id}")


def _hint(material: dict[str, Any]) -> str | None:
    """The bundle's public-key hint as a dtr key id (hex), if it is a SHA-256."""
    public_key = material.get("publicKey")
    hint = public_key.get("hint") if isinstance(public_key, dict) else None
    if not isinstance(hint, str):
        return None
    try:
        raw = base64.b64decode(hint, validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 32 else None
