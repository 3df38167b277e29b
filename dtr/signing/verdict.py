"""What a signature verification answers (``Verdict``, ``Reason``, ``Format``), the one seam
verifiers read stored blobs through (``BlobSource``), and the strict byte-level helpers every
recipe shares (digest checks, strict base64, duplicate-free JSON). Pure: no DB, no HTTP.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class Format(StrEnum):
    """The signature formats dtr recognises (``signing.md`` §2-§3)."""

    COSIGN_LEGACY = "cosign-legacy"
    """Simple-signing layers under the ``sha256-<hex>.sig`` tag (cosign ≤ v2, v3 legacy)."""
    COSIGN_OCI11 = "cosign-oci11"
    """The same simple-signing layers in an OCI 1.1 referrer (cosign v2 experimental)."""
    COSIGN_BUNDLE = "cosign-bundle"
    """A Sigstore bundle v0.3 (DSSE over an in-toto statement) as a referrer (cosign v3)."""
    NOTATION_JWS = "notation-jws"
    """A notation JWS envelope (``application/jose+json``) as a referrer."""
    NOTATION_COSE = "notation-cose"
    """A notation COSE_Sign1 envelope (``application/cose``) as a referrer."""


class Reason(StrEnum):
    """Why a signature does not make its subject trusted."""

    UNTRUSTED_SIGNATURE = "UNTRUSTED_SIGNATURE"
    """Well formed, but made by no trusted key / chains to no trusted root / wrong identity."""
    WRONG_SUBJECT = "WRONG_SUBJECT"
    """A valid signature, but over another digest than the subject asked about."""
    NOT_A_SIGNATURE = "NOT_A_SIGNATURE"
    """Not an image signature: an attestation, an SBOM, a blob signature, another artifact."""
    TAMPERED = "TAMPERED"
    """Stored bytes do not match their digests, or a signature fails under its own key."""
    MALFORMED = "MALFORMED"
    """Unparseable or structurally invalid: wrong media types, bad encodings, missing fields."""
    UNSUPPORTED = "UNSUPPORTED"
    """Well formed but outside what dtr verifies (keyless bundles, signing-authority scheme)."""
    EXPIRED = "EXPIRED"
    """The signature's own expiry, or a certificate's validity, has passed."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of verifying one signature against one subject digest.

    ``trusted`` is true only when every check passed; then ``reason`` is ``None`` and
    ``key_id`` (cosign: lowercase hex SHA-256 of the key's DER SubjectPublicKeyInfo) or
    ``identity`` (notation: the leaf certificate's subject, RFC 4514) names the signer.
    When ``trusted`` is false, ``reason`` says why and ``message`` says it for humans.
    """

    trusted: bool
    format: Format | None
    subject: str
    reason: Reason | None = None
    message: str = ""
    key_id: str | None = None
    identity: str | None = None
    chain_pem: str | None = None
    """notation: the envelope's certificate chain (PEM, leaf first) when every check but
    the trust one passed (trusted, or refused only for its chain or identity), so that an
    edit of the trust stores can check the chain again without the envelope."""


class BlobSource(Protocol):
    """Where a verifier reads the blobs (config, layers) a signature manifest references."""

    def read(self, digest: str) -> bytes:
        """Return the bytes stored under ``digest``; raise ``KeyError`` if there are none.

        The bytes are returned as stored: the verifier itself checks them against the
        digest and size the manifest declares (a source may lie or be corrupt).
        """
        ...


class Refused(Exception):
    """Raised inside a recipe to stop at the first failed check with its reason."""

    def __init__(self, reason: Reason, message: str) -> None:
        """Carry ``reason`` and a human ``message``."""
        super().__init__(message)
        self.reason = reason
        self.message = message


DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")


def check_digest(digest: object) -> str:
    """Return ``digest`` if it is a canonical ``sha256:``/``sha512:`` digest, else refuse."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise Refused(Reason.MALFORMED, f"not a canonical digest: {digest!r}")
    return digest


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """``<algorithm>:<hex>`` of ``data`` (``sha256`` or ``sha512``)."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def read_blob(blobs: BlobSource, descriptor: object, *, cap: int) -> bytes:
    """Read the blob ``descriptor`` names, after checking its size against ``cap``, and
    check the bytes against the descriptor's ``digest`` and ``size``.

    Raises ``Refused``: MALFORMED for a bad descriptor, an oversized blob or a missing blob;
    TAMPERED when the stored bytes do not match the descriptor.
    """
    if not isinstance(descriptor, dict):
        raise Refused(Reason.MALFORMED, "descriptor is not an object")
    digest = check_digest(descriptor.get("digest"))
    size = descriptor.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise Refused(Reason.MALFORMED, f"descriptor {digest} has no valid size")
    if size > cap:
        raise Refused(Reason.MALFORMED, f"blob {digest} is {size} bytes (limit {cap})")
    try:
        data = blobs.read(digest)
    except KeyError:
        raise Refused(Reason.MALFORMED, f"blob {digest} is not stored") from None
    if len(data) != size or digest_of(data, digest.split(":", 1)[0]) != digest:
        raise Refused(Reason.TAMPERED, f"stored bytes of {digest} do not match their digest")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise Refused(Reason.MALFORMED, f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def strict_json(data: bytes | str, what: str) -> dict[str, Any]:
    """Parse a JSON object, refusing (MALFORMED) invalid JSON, non-objects, duplicate keys,
    and NaN/Infinity.
    """

    def _no_constants(name: str) -> Any:
        raise Refused(Reason.MALFORMED, f"{what}: JSON constant {name} is not allowed")

    try:
        value = json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(Reason.MALFORMED, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Refused(Reason.MALFORMED, f"{what} is not a JSON object")
    return value


def b64_std(text: object, what: str, *, urlsafe_ok: bool = False) -> bytes:
    """Strict standard base64 (padding required); with ``urlsafe_ok`` the URL-safe
    alphabet is tolerated too. Refuses (MALFORMED) anything else.
    """
    if not isinstance(text, str) or not text:
        raise Refused(Reason.MALFORMED, f"{what} is missing or not a string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        if urlsafe_ok:
            try:
                return base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                pass
        raise Refused(Reason.MALFORMED, f"{what} is not valid base64") from None


def b64url(text: object, what: str) -> bytes:
    """Strict unpadded base64url (RFC 7515 §2); refuses (MALFORMED) anything else."""
    if not isinstance(text, str) or not _B64URL_RE.match(text) or len(text) % 4 == 1:
        raise Refused(Reason.MALFORMED, f"{what} is not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def media_type(obj: dict[str, Any], key: str = "mediaType") -> str | None:
    """``obj[key]`` if it is a string, else ``None``."""
    value = obj.get(key)
    return value if isinstance(value, str) else None
