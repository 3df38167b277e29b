"""cosign recipes A (simple signing: legacy ``.sig`` and OCI 1.1 referrer) and B (v3 bundle
referrer), as decision tables: each row builds one signature object and names the verdict."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from dtr.signing import cosign
from dtr.signing.keys import TrustedKey
from dtr.signing.verdict import Format, Reason
from dtr.signing.verify import TrustMaterial, verify, verify_all
from tests.unit.signing.material import (
    OTHER,
    SUBJECT,
    SUBJECT_DESC,
    Blobs,
    PrivateKey,
    bundle_doc,
    bundle_manifest,
    legacy_manifest,
    new_key,
    public_pem,
    simple_payload,
    statement,
)

KEY = new_key("p256")
STRANGER = new_key("p256")
TRUST = TrustMaterial(cosign_keys=(TrustedKey.from_pem(public_pem(KEY)),))
KEY_ID = TRUST.cosign_keys[0].id

Build = Callable[[Blobs], bytes]


def _swap_payload(blobs: Blobs) -> bytes:
    """Stored payload bytes replaced behind the manifest's back."""
    manifest = legacy_manifest(blobs, [(KEY, simple_payload())])
    digest = json.loads(manifest)["layers"][0]["digest"]
    blobs[digest] = simple_payload(OTHER)
    return manifest


def _bad_annotation(blobs: Blobs) -> bytes:
    doc = json.loads(legacy_manifest(blobs, [(KEY, simple_payload())]))
    doc["layers"][0]["annotations"][cosign.SIGNATURE_ANNOTATION] = "!!not base64!!"
    return json.dumps(doc).encode()


def _missing_blob(blobs: Blobs) -> bytes:
    manifest = legacy_manifest(blobs, [(KEY, simple_payload())])
    del blobs[json.loads(manifest)["layers"][0]["digest"]]
    return manifest


def _oversized(blobs: Blobs) -> bytes:
    payload = simple_payload().replace(b'"optional": null', b'"optional": {"pad": "'
                                       + b"x" * (cosign.PAYLOAD_CAP + 1) + b'"}')
    return legacy_manifest(blobs, [(KEY, payload)])


def _duplicate_digest_keys(blobs: Blobs) -> bytes:
    payload = simple_payload().replace(
        b'"docker-manifest-digest"',
        b'"Docker-manifest-digest": "' + OTHER.encode() + b'", "docker-manifest-digest"')
    return legacy_manifest(blobs, [(KEY, payload)])


LEGACY: list[tuple[str, Build, Reason | None]] = [
    ("trusted", lambda b: legacy_manifest(b, [(KEY, simple_payload())]), None),
    ("spec-spelling", lambda b: legacy_manifest(
        b, [(KEY, simple_payload(key="Docker-manifest-digest"))]), None),
    ("untrusted-key", lambda b: legacy_manifest(b, [(STRANGER, simple_payload())]),
     Reason.UNTRUSTED_SIGNATURE),
    ("other-digest", lambda b: legacy_manifest(b, [(KEY, simple_payload(OTHER))]),
     Reason.WRONG_SUBJECT),
    ("other-payload-type", lambda b: legacy_manifest(
        b, [(KEY, simple_payload(kind="something else"))]), Reason.NOT_A_SIGNATURE),
    ("no-digest", lambda b: legacy_manifest(b, [(KEY, simple_payload(key="digest"))]),
     Reason.MALFORMED),
    ("digest-twice", _duplicate_digest_keys, Reason.MALFORMED),
    ("payload-not-json", lambda b: legacy_manifest(b, [(KEY, b"not json")]), Reason.MALFORMED),
    ("swapped-payload", _swap_payload, Reason.TAMPERED),
    ("bad-base64", _bad_annotation, Reason.MALFORMED),
    ("missing-blob", _missing_blob, Reason.MALFORMED),
    ("oversized", _oversized, Reason.MALFORMED),
]


@pytest.mark.parametrize(("case", "build", "reason"), LEGACY, ids=[c for c, _, _ in LEGACY])
def test_legacy_decisions(case: str, build: Build, reason: Reason | None) -> None:
    blobs = Blobs()
    verdict = verify(build(blobs), SUBJECT, blobs, TRUST)
    assert (verdict.trusted, verdict.reason, verdict.format) == \
        (reason is None, reason, Format.COSIGN_LEGACY), verdict
    assert verdict.key_id == (KEY_ID if reason is None else None)


@pytest.mark.parametrize("kind", ["p384", "p521", "ed25519", "rsa2048", "rsa4096"])
def test_legacy_every_key_type(kind: str) -> None:
    key, blobs = new_key(kind), Blobs()
    trust = TrustMaterial(cosign_keys=(TrustedKey.from_pem(public_pem(key)),))
    assert verify(legacy_manifest(blobs, [(key, simple_payload())]), SUBJECT, blobs,
                  trust).trusted


def test_legacy_one_verdict_per_layer() -> None:
    """cosign appends a layer per re-signing; each is a signature of its own."""
    blobs = Blobs()
    manifest = legacy_manifest(blobs, [(STRANGER, simple_payload()), (KEY, simple_payload())])
    verdicts = verify_all(manifest, SUBJECT, blobs, TRUST)
    assert [v.reason for v in verdicts] == [Reason.UNTRUSTED_SIGNATURE, None]
    assert verify(manifest, SUBJECT, blobs, TRUST).key_id == KEY_ID
    two = TrustMaterial(cosign_keys=(*TRUST.cosign_keys,
                                     TrustedKey.from_pem(public_pem(STRANGER))))
    assert {v.key_id for v in verify_all(manifest, SUBJECT, blobs, two)} == \
        {KEY_ID, two.cosign_keys[1].id}


def test_oci11_simple_signing_referrer() -> None:
    blobs = Blobs()
    manifest = legacy_manifest(blobs, [(KEY, simple_payload())], subject=SUBJECT_DESC,
                               artifact_type=cosign.COSIGN_SIG_ARTIFACT)
    assert verify(manifest, SUBJECT, blobs, TRUST).format == Format.COSIGN_OCI11
    assert verify(manifest, SUBJECT, blobs, TRUST).trusted
    assert verify(manifest, OTHER, blobs, TRUST).reason == Reason.WRONG_SUBJECT


# -- bundles -----------------------------------------------------------------------------------
def test_pae_matches_the_dsse_spec() -> None:
    assert cosign.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def _bundle(key: PrivateKey = KEY, payload: bytes | None = None, **kw: Any) -> dict[str, Any]:
    return bundle_doc(key, payload if payload is not None else statement(), **kw)


def _edit(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


def _forged_statement(b: Blobs) -> bytes:
    doc = _bundle()
    doc["dsseEnvelope"]["payload"] = base64.b64encode(statement(OTHER)).decode()
    return bundle_manifest(b, doc, subject={**SUBJECT_DESC, "digest": OTHER})


BUNDLES: list[tuple[str, Build, str, Reason | None]] = [
    ("trusted", lambda b: bundle_manifest(b, _bundle()), SUBJECT, None),
    ("no-hint", lambda b: bundle_manifest(b, _bundle(hint=None)), SUBJECT, None),
    ("lying-hint", lambda b: bundle_manifest(b, _bundle(hint=base64.b64encode(
        b"\x00" * 32).decode())), SUBJECT, None),
    ("untrusted-key", lambda b: bundle_manifest(b, _bundle(STRANGER)), SUBJECT,
     Reason.UNTRUSTED_SIGNATURE),
    ("forged-statement", _forged_statement, OTHER, Reason.TAMPERED),
    ("not-over-pae", lambda b: bundle_manifest(b, _bundle(sign_as=statement())), SUBJECT,
     Reason.TAMPERED),
    ("referrer-of-other", lambda b: bundle_manifest(b, _bundle()), OTHER,
     Reason.WRONG_SUBJECT),
    ("statement-of-other", lambda b: bundle_manifest(
        b, _bundle(payload=statement(OTHER))), SUBJECT, Reason.WRONG_SUBJECT),
    ("attestation", lambda b: bundle_manifest(b, _bundle(payload=statement(
        predicate="https://slsa.dev/provenance/v1"))), SUBJECT, Reason.NOT_A_SIGNATURE),
    ("attestation-v0.1", lambda b: bundle_manifest(b, _bundle(payload=statement(
        predicate="https://cosign.sigstore.dev/attestation/v1",
        kind=cosign.STATEMENT_V01))), SUBJECT, Reason.NOT_A_SIGNATURE),
    ("other-payload-type", lambda b: bundle_manifest(
        b, _bundle(payload_type="text/plain")), SUBJECT, Reason.NOT_A_SIGNATURE),
    ("message-signature", lambda b: bundle_manifest(b, _edit(
        _bundle(), ("messageSignature",), {"signature": "AA=="})), SUBJECT,
     Reason.NOT_A_SIGNATURE),
    ("keyless", lambda b: bundle_manifest(b, _edit(
        _bundle(), ("verificationMaterial", "certificate"), {"rawBytes": "AA=="})), SUBJECT,
     Reason.UNSUPPORTED),
    ("old-bundle", lambda b: bundle_manifest(b, _bundle(), layer_type=cosign.OLD_BUNDLES[0]),
     SUBJECT, Reason.UNSUPPORTED),
    ("two-signatures", lambda b: bundle_manifest(b, _edit(
        _bundle(), ("dsseEnvelope", "signatures"), [{"sig": "AA=="}, {"sig": "AA=="}])),
     SUBJECT, Reason.MALFORMED),
    ("no-envelope", lambda b: bundle_manifest(b, _edit(_bundle(), ("dsseEnvelope",), None)),
     SUBJECT, Reason.MALFORMED),
    ("statement-type", lambda b: bundle_manifest(b, _bundle(payload=statement(
        kind="https://example.com/Statement"))), SUBJECT, Reason.MALFORMED),
    ("not-json", lambda b: bundle_manifest(b, b"{not json"), SUBJECT, Reason.MALFORMED),
    ("duplicate-keys", lambda b: bundle_manifest(
        b, b'{"mediaType": "x", "mediaType": "y"}'), SUBJECT, Reason.MALFORMED),
]


@pytest.mark.parametrize(("case", "build", "subject", "reason"), BUNDLES,
                         ids=[c for c, *_ in BUNDLES])
def test_bundle_decisions(case: str, build: Build, subject: str,
                          reason: Reason | None) -> None:
    blobs = Blobs()
    verdict = verify(build(blobs), subject, blobs, TRUST)
    assert (verdict.trusted, verdict.reason, verdict.format) == \
        (reason is None, reason, Format.COSIGN_BUNDLE), verdict
    if reason is None:
        assert verdict.key_id == KEY_ID


def test_bundle_tampered_layer_bytes() -> None:
    blobs = Blobs()
    manifest = bundle_manifest(blobs, _bundle())
    layer = json.loads(manifest)["layers"][0]["digest"]
    blobs[layer] = blobs[layer].replace(b'"keyid": ""', b'"keyid": "x"')
    assert verify(manifest, SUBJECT, blobs, TRUST).reason == Reason.TAMPERED


@pytest.mark.parametrize("kind", ["p384", "ed25519", "rsa3072"])
def test_bundle_every_key_type(kind: str) -> None:
    key, blobs = new_key(kind), Blobs()
    trust = TrustMaterial(cosign_keys=(TrustedKey.from_pem(public_pem(key)),))
    assert verify(bundle_manifest(blobs, bundle_doc(key, statement())), SUBJECT, blobs,
                  trust).trusted
