"""notation recipes C (JWS) and D (COSE) as decision tables, plus trusted identities."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from dtr.signing import notation
from dtr.signing.keys import TrustStore, load_certificates
from dtr.signing.notation import NotationPolicy, TrustedIdentity, recheck
from dtr.signing.verdict import Format, Reason, Verdict
from dtr.signing.verify import TrustMaterial, verify
from tests.unit.signing.material import (
    NOW,
    OTHER,
    SUBJECT,
    SUBJECT_DESC,
    Blobs,
    Pki,
    certificate,
    cose,
    jws,
    name,
    new_key,
    notation_manifest,
    pki,
    target,
)

PKI = pki()
STRANGER = pki()
ANYONE = (TrustedIdentity.parse("*"),)


def trust(store_pki: Any = PKI, identities: tuple[TrustedIdentity, ...] = ANYONE
          ) -> TrustMaterial:
    store = TrustStore.from_pem("ca", [store_pki.pem()])
    return TrustMaterial(notation=(NotationPolicy("p", (store,), identities),))


TRUST = trust()
Build = Callable[[], bytes]


def _unprotected_overlap() -> bytes:
    doc = json.loads(jws(PKI))
    doc["header"]["alg"] = "PS256"
    return json.dumps(doc).encode()


def _general_serialization() -> bytes:
    doc = json.loads(jws(PKI))
    doc["signatures"] = []
    return json.dumps(doc).encode()


def _payload_swapped() -> bytes:
    doc = json.loads(jws(PKI))
    doc["payload"] = base64.urlsafe_b64encode(target({**SUBJECT_DESC, "digest": OTHER})
                                              ).decode().rstrip("=")
    return json.dumps(doc).encode()


JWS_CASES: list[tuple[str, Build, TrustMaterial, str, Reason | None]] = [
    ("trusted", lambda: jws(PKI), TRUST, SUBJECT, None),
    ("no-root-in-x5c", lambda: jws(PKI, chain=PKI.chain[:2]), TRUST, SUBJECT, None),
    ("with-expiry", lambda: jws(PKI, header={notation.EXPIRY: "2027-01-01T00:00:00Z",
                                             "crit": [notation.SCHEME, notation.EXPIRY]}),
     TRUST, SUBJECT, None),
    ("expired", lambda: jws(PKI, header={notation.EXPIRY: "2026-01-01T00:00:00Z",
                                         "crit": [notation.SCHEME, notation.EXPIRY]}),
     TRUST, SUBJECT, Reason.EXPIRED),
    ("expiry-not-critical", lambda: jws(PKI, header={notation.EXPIRY: "2027-01-01T00:00:00Z"}),
     TRUST, SUBJECT, Reason.MALFORMED),
    ("untrusted-root", lambda: jws(PKI), trust(STRANGER), SUBJECT,
     Reason.UNTRUSTED_SIGNATURE),
    ("no-policy", lambda: jws(PKI), TrustMaterial(), SUBJECT, Reason.UNTRUSTED_SIGNATURE),
    ("wrong-identity", lambda: jws(PKI), trust(identities=(TrustedIdentity.parse(
        "x509.subject: C=US, ST=WA, O=Notary, CN=someone else"),)), SUBJECT,
     Reason.UNTRUSTED_SIGNATURE),
    ("identity-subset", lambda: jws(PKI), trust(identities=(TrustedIdentity.parse(
        "x509.subject: C=US, ST=WA, O=Notary, CN=signer"),)), SUBJECT, None),
    ("other-digest", lambda: jws(PKI, target({**SUBJECT_DESC, "digest": OTHER})), TRUST,
     SUBJECT, Reason.WRONG_SUBJECT),
    ("other-size", lambda: jws(PKI, target({**SUBJECT_DESC, "size": 1})), TRUST, SUBJECT,
     Reason.WRONG_SUBJECT),
    ("referrer-of-other", lambda: jws(PKI), TRUST, OTHER, Reason.WRONG_SUBJECT),
    ("payload-swapped", _payload_swapped, TRUST, SUBJECT, Reason.TAMPERED),
    ("signed-by-other-key", lambda: jws(PKI, key=new_key("rsa2048")), TRUST, SUBJECT,
     Reason.TAMPERED),
    ("alg-not-for-key", lambda: jws(PKI, alg="PS384", key=new_key("rsa3072")), TRUST,
     SUBJECT, Reason.MALFORMED),
    ("alg-none", lambda: jws(PKI, header={"alg": "none"}), TRUST, SUBJECT, Reason.MALFORMED),
    ("unknown-crit", lambda: jws(PKI, header={"crit": [notation.SCHEME, "x.plugin"],
                                              "x.plugin": "1"}), TRUST, SUBJECT,
     Reason.UNSUPPORTED),
    ("scheme-not-crit", lambda: jws(PKI, header={"crit": [notation.SIGNING_TIME]}), TRUST,
     SUBJECT, Reason.MALFORMED),
    ("no-crit", lambda: jws(PKI, drop=("crit",)), TRUST, SUBJECT, Reason.MALFORMED),
    ("signing-authority", lambda: jws(PKI, header={
        notation.SCHEME: "notary.x509.signingAuthority"}), TRUST, SUBJECT,
     Reason.UNSUPPORTED),
    ("unknown-scheme", lambda: jws(PKI, header={notation.SCHEME: "x"}), TRUST, SUBJECT,
     Reason.MALFORMED),
    ("no-signing-time", lambda: jws(PKI, drop=(notation.SIGNING_TIME,)), TRUST, SUBJECT,
     Reason.MALFORMED),
    ("bad-signing-time", lambda: jws(PKI, header={notation.SIGNING_TIME: "yesterday"}), TRUST,
     SUBJECT, Reason.MALFORMED),
    ("other-content-type", lambda: jws(PKI, header={"cty": "application/json"}), TRUST,
     SUBJECT, Reason.NOT_A_SIGNATURE),
    ("overlapping-headers", _unprotected_overlap, TRUST, SUBJECT, Reason.MALFORMED),
    ("general-serialization", _general_serialization, TRUST, SUBJECT, Reason.MALFORMED),
    ("not-json", lambda: b"not json", TRUST, SUBJECT, Reason.MALFORMED),
]


@pytest.mark.parametrize(("case", "build", "material", "subject", "reason"), JWS_CASES,
                         ids=[c for c, *_ in JWS_CASES])
def test_jws_decisions(case: str, build: Build, material: TrustMaterial, subject: str,
                       reason: Reason | None) -> None:
    blobs = Blobs()
    verdict = verify(notation_manifest(blobs, build()), subject, blobs, material, now=NOW)
    assert (verdict.trusted, verdict.reason, verdict.format) == \
        (reason is None, reason, Format.NOTATION_JWS), verdict
    if reason is None:
        assert verdict.identity == PKI.leaf.subject.rfc4514_string()


@pytest.mark.parametrize("kind", ["p256", "p384", "p521", "rsa3072", "rsa4096"])
def test_jws_every_key_type(kind: str) -> None:
    material, blobs = pki(kind), Blobs()
    verdict = verify(notation_manifest(blobs, jws(material)), SUBJECT, blobs, trust(material),
                     now=NOW)
    assert verdict.trusted, verdict


def test_expired_certificate_is_expired() -> None:
    material, blobs = pki(not_after=NOW - dt.timedelta(hours=1)), Blobs()
    verdict = verify(notation_manifest(blobs, jws(material)), SUBJECT, blobs,
                     trust(material), now=NOW)
    assert verdict.reason == Reason.EXPIRED


def test_serial_zero_certificate_from_generate_test() -> None:
    """``notation cert generate-test`` gives serial 0 one time in 200; notation trusts it."""
    key = new_key("rsa2048")
    cert = certificate(name("test"), key, name("test"), key, ca=False,
                       eku=[ExtendedKeyUsageOID.CODE_SIGNING], serial=0)
    material, blobs = Pki(cert, cert, cert, key), Blobs()
    for envelope, media_type in ((jws(material, chain=[cert]), notation.JWS),
                                 (cose(material, chain=[cert]), notation.COSE)):
        verdict = verify(notation_manifest(blobs, envelope, media_type=media_type), SUBJECT,
                         blobs, trust(material), now=NOW)
        assert verdict.trusted, verdict


def _verdict(envelope: bytes, material: TrustMaterial, subject: str = SUBJECT) -> Verdict:
    blobs = Blobs()
    return verify(notation_manifest(blobs, envelope), subject, blobs, material, now=NOW)


def test_a_verdict_keeps_the_chain_when_only_trust_can_change() -> None:
    """The chain is kept for a trusted verdict and one refused only for its chain or
    identity (what a trust-store edit can change), never for any other refusal."""
    trusted, untrusted = _verdict(jws(PKI), TRUST), _verdict(jws(PKI), trust(STRANGER))
    assert untrusted.reason == Reason.UNTRUSTED_SIGNATURE
    for verdict in (trusted, untrusted):
        assert verdict.chain_pem is not None
        assert load_certificates(verdict.chain_pem) == PKI.chain
    # tampered, or untrusted but also over another subject: nothing to check again later
    swapped = _verdict(_payload_swapped(), trust(STRANGER))
    wrong = _verdict(jws(PKI, target({**SUBJECT_DESC, "digest": OTHER})), trust(STRANGER))
    assert (swapped.reason, wrong.reason) == (Reason.TAMPERED, Reason.UNTRUSTED_SIGNATURE)
    assert (swapped.chain_pem, wrong.chain_pem) == (None, None)


def test_recheck_decides_a_kept_chain_by_the_stores_of_now() -> None:
    trusted, untrusted = _verdict(jws(PKI), TRUST), _verdict(jws(PKI), trust(STRANGER))
    stores, strangers = TRUST.notation, trust(STRANGER).notation
    assert recheck(trusted, stores, NOW) == trusted
    dropped = recheck(trusted, strangers, NOW)
    assert (dropped.trusted, dropped.reason, dropped.identity) == \
        (False, Reason.UNTRUSTED_SIGNATURE, None)
    gained = recheck(untrusted, stores, NOW)
    assert (gained.trusted, gained.reason, gained.identity) == \
        (True, None, PKI.leaf.subject.rfc4514_string())
    later = recheck(trusted, stores, NOW + dt.timedelta(days=60))
    assert later.reason == Reason.EXPIRED
    named = trust(PKI, (TrustedIdentity.parse("x509.subject: C=US, ST=WA, O=Other"),))
    assert recheck(trusted, named.notation, NOW).reason == Reason.UNTRUSTED_SIGNATURE
    # a verdict without a chain (cosign, or any other refusal) is left as it is
    swapped = _verdict(_payload_swapped(), TRUST)
    assert recheck(swapped, strangers, NOW) is swapped


def test_tampered_envelope_bytes() -> None:
    blobs = Blobs()
    manifest = notation_manifest(blobs, jws(PKI))
    layer = json.loads(manifest)["layers"][0]["digest"]
    blobs[layer] = blobs[layer][:-2] + b"}}"
    assert verify(manifest, SUBJECT, blobs, TRUST, now=NOW).reason == Reason.TAMPERED


# -- COSE ----------------------------------------------------------------------------------
def _cose_swapped() -> bytes:
    message = cbor2.loads(cose(PKI))
    protected, unprotected, _, signature = message.value
    return cbor2.dumps(cbor2.CBORTag(18, [protected, dict(unprotected),
                                          target({**SUBJECT_DESC, "digest": OTHER}),
                                          signature]))


COSE_CASES: list[tuple[str, Build, str, Reason | None]] = [
    ("trusted", lambda: cose(PKI), SUBJECT, None),
    ("other-pki", lambda: cose(pki("p256")), SUBJECT, Reason.UNTRUSTED_SIGNATURE),
    ("other-digest", lambda: cose(PKI, target({**SUBJECT_DESC, "digest": OTHER})), SUBJECT,
     Reason.WRONG_SUBJECT),
    ("payload-swapped", _cose_swapped, SUBJECT, Reason.TAMPERED),
    ("expired", lambda: cose(PKI, header={notation.EXPIRY: cbor2.CBORTag(
        1, int(NOW.timestamp()) - 1), 2: [notation.SCHEME, notation.EXPIRY]}), SUBJECT,
     Reason.EXPIRED),
    ("unknown-crit", lambda: cose(PKI, header={2: [notation.SCHEME, "x"], "x": 1}), SUBJECT,
     Reason.UNSUPPORTED),
    ("alg-mismatch", lambda: cose(PKI, header={1: -7}), SUBJECT, Reason.MALFORMED),
    ("unknown-alg", lambda: cose(PKI, header={1: -8}), SUBJECT, Reason.MALFORMED),
    ("other-content-type", lambda: cose(PKI, header={3: "application/json"}), SUBJECT,
     Reason.NOT_A_SIGNATURE),
    ("untagged", lambda: cose(PKI, tag=98), SUBJECT, Reason.MALFORMED),
    ("trailing-bytes", lambda: cose(PKI) + b"\x00", SUBJECT, Reason.MALFORMED),
    ("not-cbor", lambda: b"\xff\xff", SUBJECT, Reason.MALFORMED),
]


@pytest.mark.parametrize(("case", "build", "subject", "reason"), COSE_CASES,
                         ids=[c for c, *_ in COSE_CASES])
def test_cose_decisions(case: str, build: Build, subject: str,
                        reason: Reason | None) -> None:
    blobs = Blobs()
    manifest = notation_manifest(blobs, build(), media_type=notation.COSE)
    verdict = verify(manifest, subject, blobs, TRUST, now=NOW)
    assert (verdict.trusted, verdict.reason, verdict.format) == \
        (reason is None, reason, Format.NOTATION_COSE), verdict


# -- identities ------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "", "CN=x", "x509.subject: CN=x", "x509.subject: C=US, ST=WA", "x509.subject: C=US, C=CA,"
    " ST=WA, O=x", "x509.subject: C=US, ST=WA, O=", "x509.subject: C=US, ST=WA, Ox"])
def test_invalid_identities(text: str) -> None:
    with pytest.raises(ValueError):
        TrustedIdentity.parse(text)


def test_identity_matching() -> None:
    leaf = PKI.leaf  # C=US, ST=WA, O=Notary, CN=signer
    assert TrustedIdentity.parse("*").matches(leaf)
    assert TrustedIdentity.parse("x509.subject: C=US, ST=WA, O=Notary").matches(leaf)
    assert TrustedIdentity.parse("x509.subject: o=Notary, st=WA, c=US, cn=signer").matches(leaf)
    assert not TrustedIdentity.parse("x509.subject: C=US, ST=WA, O=Notary, OU=x").matches(leaf)
    assert not TrustedIdentity.parse("x509.subject: C=US, ST=WA, O=Notary Inc").matches(leaf)
    escaped = pki(leaf_cn="a, b").leaf
    assert TrustedIdentity.parse(r"x509.subject: C=US, ST=WA, O=Notary, CN=a\, b").matches(
        escaped)
