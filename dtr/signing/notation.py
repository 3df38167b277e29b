"""notation (Notary Project) signature verification: recipe C (JWS, ``application/jose+json``)
and recipe D (COSE_Sign1, ``application/cose``) envelopes, the certificate chain checked
against trust stores under notation's rules, the trusted-identity match and the payload's
target descriptor (``signing.md`` §3, §4.4-§4.5). Scheme ``notary.x509`` only; no
timestamps, no revocation checks. Pure; never imports api or db.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dtr.signing.keys import (
    JOSE_ALGS,
    ChainError,
    KeyMaterialError,
    TrustStore,
    alg_for_key,
    load_certificates,
    load_der_certificates,
    verify_jose,
)
from dtr.signing.verdict import (
    BlobSource,
    Format,
    Reason,
    Refused,
    Verdict,
    b64_std,
    b64url,
    check_digest,
    media_type,
    read_blob,
    strict_json,
)

JWS = "application/jose+json"
COSE = "application/cose"
NOTARY_SIGNATURE = "application/vnd.cncf.notary.signature"
PAYLOAD_TYPE = "application/vnd.cncf.notary.payload.v1+json"
SCHEME = "io.cncf.notary.signingScheme"
SIGNING_TIME = "io.cncf.notary.signingTime"
AUTHENTIC_TIME = "io.cncf.notary.authenticSigningTime"
EXPIRY = "io.cncf.notary.expiry"
UNDERSTOOD_CRIT = frozenset({SCHEME, SIGNING_TIME, EXPIRY, AUTHENTIC_TIME})
ENVELOPE_CAP = 1024 * 1024
COSE_ALGS = {-37: "PS256", -38: "PS384", -39: "PS512", -7: "ES256", -35: "ES384",
             -36: "ES512"}
_MANDATORY_RDNS = ("C", "ST", "O")


def _parse_dn(text: str) -> dict[str, str]:
    """``C=US, ST=WA, O=x, CN=y`` → {attribute: value}; backslash escapes honoured;
    refuses empty parts and repeated attributes (as notation does).
    """
    parts, current, escaped = [], "", False
    for char in text:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    out: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key, value = key.strip().upper(), value.strip()
        if not sep or not key or not value or key in out:
            raise ValueError(f"invalid distinguished name {text!r}")
        out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class TrustedIdentity:
    """One notation ``trustedIdentities`` entry: ``*`` or ``x509.subject: <DN>``.

    A leaf matches when every attribute of the DN is in its subject with the same value
    (notation's subset rule); the DN must name at least C, ST and O.
    """

    raw: str
    attributes: Mapping[str, str] | None
    """``None`` for ``*`` (any identity)."""

    @classmethod
    def parse(cls, text: str) -> TrustedIdentity:
        """Parse an entry; raises ``ValueError`` for anything but ``*`` or a valid
        ``x509.subject:`` DN with C, ST and O.
        """
        if text.strip() == "*":
            return cls("*", None)
        prefix = "x509.subject:"
        if not text.startswith(prefix):
            raise ValueError(f"trusted identity must be '*' or start with {prefix!r}")
        attributes = _parse_dn(text[len(prefix):])
        missing = [rdn for rdn in _MANDATORY_RDNS if rdn not in attributes]
        if missing:
            raise ValueError(f"trusted identity {text!r} lacks {', '.join(missing)}")
        return cls(text, attributes)

    def matches(self, leaf: x509.Certificate) -> bool:
        """True if ``leaf``'s subject satisfies this identity."""
        if self.attributes is None:
            return True
        subject: dict[str, str] = {}
        for attribute in leaf.subject:
            name = attribute.rfc4514_attribute_name.upper()
            if name in subject or not isinstance(attribute.value, str):
                return False
            subject[name] = attribute.value
        return all(subject.get(k) == v for k, v in self.attributes.items())


@dataclass(frozen=True, slots=True)
class NotationPolicy:
    """A notation trust-policy statement reduced to what verification needs: the ``ca``
    trust stores a signature must chain to and the identities trusted to sign.
    """

    name: str
    stores: tuple[TrustStore, ...]
    identities: tuple[TrustedIdentity, ...]


@dataclass(frozen=True, slots=True)
class _Envelope:
    alg: str
    signed: bytes
    signature: bytes
    chain: list[x509.Certificate]
    payload: bytes
    expiry: dt.datetime | None


def verify_notation(manifest: dict[str, Any], subject: str, blobs: BlobSource,
                    policies: Sequence[NotationPolicy], now: dt.datetime) -> Verdict:
    """Recipes C and D: a notation signature referrer (the caller has checked that the
    manifest's ``subject`` descriptor names ``subject``).

    Checks, in order: one envelope layer (JWS or COSE, ≤ 1 MiB, bytes match the digest);
    protected headers (``alg``, content type, every ``crit`` entry understood, scheme
    ``notary.x509``, signing time present); ``alg`` is the one notation pairs with the
    leaf key; the signature under the leaf key (else TAMPERED); the chain to a root of a
    policy's trust stores under notation's X.509 rules at ``now`` and the leaf subject
    against the policy's trusted identities (else UNTRUSTED_SIGNATURE, or EXPIRED); the
    envelope's own expiry; the payload's ``targetArtifact`` equal to ``subject`` and to
    the manifest's subject descriptor (media type, size) (else WRONG_SUBJECT).
    """
    layers = manifest.get("layers")
    kind = media_type(layers[0]) if isinstance(layers, list) and len(layers) == 1 \
        and isinstance(layers[0], dict) else None
    fmt = Format.NOTATION_COSE if kind == COSE else Format.NOTATION_JWS
    if kind not in (JWS, COSE):
        return Verdict(False, fmt, subject, Reason.MALFORMED,
                       "a notation signature has one JWS or COSE layer")
    try:
        data = read_blob(blobs, layers[0], cap=ENVELOPE_CAP)  # type: ignore[index]
        envelope = _parse_jws(data) if kind == JWS else _parse_cose(data)
        _check_signed(envelope)
        chain = chain_pem(envelope.chain)
        try:
            identity = _trusted(envelope.chain, policies, now)
        except Refused as untrusted:
            try:
                _check_claims(envelope, manifest.get("subject"), subject, now)
            except Refused:
                raise untrusted from None
            return Verdict(False, fmt, subject, untrusted.reason, untrusted.message,
                           chain_pem=chain)
        _check_claims(envelope, manifest.get("subject"), subject, now)
    except Refused as refused:
        return Verdict(False, fmt, subject, refused.reason, refused.message)
    return Verdict(True, fmt, subject, identity=identity, message=f"signed by {identity}",
                   chain_pem=chain)


def chain_pem(chain: Sequence[x509.Certificate]) -> str:
    """A certificate chain as the PEM text a verdict keeps (leaf first)."""
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)


def recheck(verdict: Verdict, policies: Sequence[NotationPolicy], at: dt.datetime) -> Verdict:
    """``verdict`` as the trust stores and identities of ``policies`` decide it at ``at``,
    when it kept its chain (a notation verdict only the trust check could change: see
    :attr:`Verdict.chain_pem`); any other verdict unchanged. Only the chain and the leaf's
    identity are checked again (``UNTRUSTED_SIGNATURE`` or ``EXPIRED``, as verification
    would decide): a trust-store edit cannot change the envelope's signature or claims.
    """
    if verdict.chain_pem is None:
        return verdict
    try:
        try:
            certificates = load_certificates(verdict.chain_pem)
        except KeyMaterialError:
            raise Refused(Reason.UNTRUSTED_SIGNATURE,
                          "the stored certificate chain does not load") from None
        identity = _trusted(certificates, policies, at)
    except Refused as refused:
        return replace(verdict, trusted=False, reason=refused.reason, message=refused.message,
                       identity=None)
    return replace(verdict, trusted=True, reason=None, message=f"signed by {identity}",
                   identity=identity)


def _check_signed(envelope: _Envelope) -> None:
    leaf = envelope.chain[0]
    if alg_for_key(leaf.public_key()) != envelope.alg:
        raise Refused(Reason.MALFORMED, f"alg {envelope.alg} does not match the leaf key")
    if not verify_jose(leaf.public_key(), envelope.alg, envelope.signature, envelope.signed):
        raise Refused(Reason.TAMPERED, "the signature does not verify under its own leaf "
                                       "certificate")


def _check_claims(envelope: _Envelope, descriptor: object, subject: str,
                  now: dt.datetime) -> None:
    if envelope.expiry is not None and envelope.expiry <= now:
        raise Refused(Reason.EXPIRED, f"signature expired at {envelope.expiry.isoformat()}")
    target = strict_json(envelope.payload, "notation payload").get("targetArtifact")
    if not isinstance(target, dict):
        raise Refused(Reason.MALFORMED, "payload has no targetArtifact")
    signed = check_digest(target.get("digest"))
    if signed != subject:
        raise Refused(Reason.WRONG_SUBJECT, f"signature is over {signed}, not {subject}")
    if isinstance(descriptor, dict) and (
            target.get("mediaType") != descriptor.get("mediaType")
            or target.get("size") != descriptor.get("size")):
        raise Refused(Reason.WRONG_SUBJECT,
                      "signed media type/size differ from the subject descriptor")


def _trusted(chain: list[x509.Certificate], policies: Sequence[NotationPolicy],
             now: dt.datetime) -> str:
    """The leaf's identity if some policy trusts the chain and the identity; else refuse."""
    leaf = chain[0]
    problems: list[str] = []
    expired = False
    for policy in policies:
        for store in policy.stores:
            try:
                store.verify_chain(chain, now)
            except ChainError as exc:
                expired = expired or exc.expired
                problems.append(str(exc))
                continue
            if any(identity.matches(leaf) for identity in policy.identities):
                return leaf.subject.rfc4514_string()
            problems.append(f"{leaf.subject.rfc4514_string()} is not a trusted identity of "
                            f"policy {policy.name}")
    if expired and not any("trusted identity" in p for p in problems):
        raise Refused(Reason.EXPIRED, "; ".join(problems))
    raise Refused(Reason.UNTRUSTED_SIGNATURE,
                  "; ".join(problems) or "no notation trust policy is configured")


def _check_crit(crit: object, present: set[str]) -> None:
    if not isinstance(crit, (list, tuple)) or not crit \
            or not all(isinstance(c, str) for c in crit):
        raise Refused(Reason.MALFORMED, "crit must be a non-empty list of header names")
    unknown = sorted(set(crit) - UNDERSTOOD_CRIT)
    if unknown:
        raise Refused(Reason.UNSUPPORTED, f"critical headers not understood: {unknown}")
    if SCHEME not in crit or not set(crit) <= present:
        raise Refused(Reason.MALFORMED, "crit must list the signing scheme and only "
                                        "headers that are present")
    for name in (EXPIRY, AUTHENTIC_TIME):
        if name in present and name not in crit:
            raise Refused(Reason.MALFORMED, f"{name} must be marked critical")


def _check_scheme(scheme: object, signing_time: object) -> None:
    if scheme == "notary.x509.signingAuthority":
        raise Refused(Reason.UNSUPPORTED, "signing scheme notary.x509.signingAuthority")
    if scheme != "notary.x509":
        raise Refused(Reason.MALFORMED, f"unknown signing scheme {scheme!r}")
    if signing_time is None:
        raise Refused(Reason.MALFORMED, "notary.x509 signatures carry a signing time")


def _certificates(ders: Sequence[bytes]) -> list[x509.Certificate]:
    if not ders:
        raise Refused(Reason.MALFORMED, "envelope carries no certificate chain")
    try:
        return load_der_certificates(ders)
    except KeyMaterialError:
        raise Refused(Reason.MALFORMED, "envelope certificate is not valid DER") from None


def _time(value: object, what: str) -> dt.datetime:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    raise Refused(Reason.MALFORMED, f"{what} is not a time with a zone")


def _parse_jws(data: bytes) -> _Envelope:
    """Recipe C: a flattened JWS JSON serialization."""
    envelope = strict_json(data, "JWS envelope")
    if set(envelope) != {"payload", "protected", "header", "signature"}:
        raise Refused(Reason.MALFORMED, f"JWS members {sorted(envelope)} are not the "
                                        "flattened serialization's")
    protected_b64, payload_b64 = envelope["protected"], envelope["payload"]
    header = strict_json(b64url(protected_b64, "protected header"), "protected header")
    unprotected = envelope["header"]
    if not isinstance(unprotected, dict) or set(unprotected) & set(header):
        raise Refused(Reason.MALFORMED, "unprotected header missing or overlapping")
    alg = header.get("alg")
    if alg not in JOSE_ALGS:
        raise Refused(Reason.MALFORMED, f"alg {alg!r} is not one notation uses")
    if header.get("cty") != PAYLOAD_TYPE:
        raise Refused(Reason.NOT_A_SIGNATURE, f"content type {header.get('cty')!r}")
    _check_crit(header.get("crit"), set(header))
    _check_scheme(header.get(SCHEME), header.get(SIGNING_TIME))
    _time(header[SIGNING_TIME], SIGNING_TIME)
    expiry = _time(header[EXPIRY], EXPIRY) if EXPIRY in header else None
    x5c = unprotected.get("x5c")
    if not isinstance(x5c, list):
        raise Refused(Reason.MALFORMED, "JWS header has no x5c chain")
    chain = _certificates([b64_std(cert, "x5c certificate") for cert in x5c])
    signed = f"{protected_b64}.{payload_b64}".encode("ascii")
    return _Envelope(str(alg), signed, b64url(envelope["signature"], "JWS signature"), chain,
                     b64url(payload_b64, "JWS payload"), expiry)


def _cbor(data: bytes, what: str) -> Any:
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError):
        raise Refused(Reason.MALFORMED, f"{what} is not valid CBOR") from None
    if stream.read(1):
        raise Refused(Reason.MALFORMED, f"{what} has trailing bytes")
    return value


def _parse_cose(data: bytes) -> _Envelope:
    """Recipe D: a tagged COSE_Sign1 (CBOR tag 18)."""
    message = _cbor(data, "COSE envelope")
    if not isinstance(message, cbor2.CBORTag) or message.tag != 18 \
            or not isinstance(message.value, (list, tuple)) or len(message.value) != 4:
        raise Refused(Reason.MALFORMED, "not a tagged COSE_Sign1 message")
    protected, unprotected, payload, signature = message.value
    if not all(isinstance(x, bytes) for x in (protected, payload, signature)) \
            or not isinstance(unprotected, Mapping):
        raise Refused(Reason.MALFORMED, "COSE_Sign1 members have the wrong types")
    header = _cbor(protected, "COSE protected header")
    if not isinstance(header, Mapping) or set(header) & set(unprotected):
        raise Refused(Reason.MALFORMED, "COSE protected header missing or overlapping")
    label = header.get(1)
    alg = COSE_ALGS.get(label) if isinstance(label, int) else None
    if alg is None:
        raise Refused(Reason.MALFORMED, f"COSE alg {label!r} is not one notation uses")
    if header.get(3) != PAYLOAD_TYPE:
        raise Refused(Reason.NOT_A_SIGNATURE, f"content type {header.get(3)!r}")
    names = {k for k in header if isinstance(k, str)}
    _check_crit(header.get(2), names)
    _check_scheme(header.get(SCHEME), header.get(SIGNING_TIME))
    _time(header[SIGNING_TIME], SIGNING_TIME)
    expiry = _time(header[EXPIRY], EXPIRY) if EXPIRY in header else None
    x5chain = unprotected.get(33)
    ders = [x5chain] if isinstance(x5chain, bytes) else x5chain
    if not isinstance(ders, (list, tuple)) or not all(isinstance(d, bytes) for d in ders):
        raise Refused(Reason.MALFORMED, "COSE x5chain (label 33) is missing")
    signed = cbor2.dumps(["Signature1", protected, b"", payload])
    return _Envelope(alg, signed, signature, _certificates(ders), payload, expiry)
