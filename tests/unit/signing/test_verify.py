"""The entry point: classification of signature manifests and failing closed on anything
that is not a signature dtr verifies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dtr.signing import cosign, notation
from dtr.signing.keys import TrustedKey
from dtr.signing.verdict import Format, Reason
from dtr.signing.verify import (
    MANIFEST_CAP,
    TrustMaterial,
    classify,
    distinct_signers,
    verify,
    verify_all,
)
from tests.unit.signing.material import (
    EMPTY,
    OCI_MANIFEST,
    SUBJECT,
    SUBJECT_DESC,
    Blobs,
    legacy_manifest,
    new_key,
    public_pem,
    simple_payload,
)

KEY = new_key("p256")
TRUST = TrustMaterial(cosign_keys=(TrustedKey.from_pem(public_pem(KEY)),))


def manifest(layers: list[str], **fields: Any) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": EMPTY, "digest": SUBJECT, "size": 2},
            "layers": [{"mediaType": m, "digest": SUBJECT, "size": 1} for m in layers],
            **fields}


CLASSIFY: list[tuple[str, dict[str, Any], Format | None]] = [
    ("legacy", manifest([cosign.SIMPLE_SIGNING]), Format.COSIGN_LEGACY),
    ("oci11", manifest([cosign.SIMPLE_SIGNING], subject=SUBJECT_DESC), Format.COSIGN_OCI11),
    ("bundle", manifest([cosign.BUNDLE_V03], artifactType=cosign.BUNDLE_V03,
                        subject=SUBJECT_DESC), Format.COSIGN_BUNDLE),
    ("jws", manifest([notation.JWS], artifactType=notation.NOTARY_SIGNATURE),
     Format.NOTATION_JWS),
    ("cose", manifest([notation.COSE], artifactType=notation.NOTARY_SIGNATURE),
     Format.NOTATION_COSE),
    ("notation-legacy-config", manifest([notation.JWS], config={
        "mediaType": notation.NOTARY_SIGNATURE, "digest": SUBJECT, "size": 2}),
     Format.NOTATION_JWS),
    ("cosign-att", manifest([cosign.DSSE_LAYER]), None),
    ("image", manifest(["application/vnd.oci.image.layer.v1.tar+gzip"]), None),
    ("sbom", manifest(["text/spdx+json"], artifactType="application/spdx+json"), None),
    ("index", {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": []}, None),
]


@pytest.mark.parametrize(("case", "doc", "fmt"), CLASSIFY, ids=[c for c, *_ in CLASSIFY])
def test_classify(case: str, doc: dict[str, Any], fmt: Format | None) -> None:
    assert classify(doc) == fmt


@pytest.mark.parametrize(("case", "body", "subject", "reason"), [
    ("not-json", b"<html>", SUBJECT, Reason.MALFORMED),
    ("json-array", b"[]", SUBJECT, Reason.MALFORMED),
    ("duplicate-keys", b'{"layers": [], "layers": []}', SUBJECT, Reason.MALFORMED),
    ("too-large", b" " * (MANIFEST_CAP + 1), SUBJECT, Reason.MALFORMED),
    ("bad-subject", json.dumps(manifest([cosign.SIMPLE_SIGNING])).encode(), "latest",
     Reason.MALFORMED),
    ("image", json.dumps(manifest(["application/octet-stream"])).encode(), SUBJECT,
     Reason.NOT_A_SIGNATURE),
    ("cosign-att", json.dumps(manifest([cosign.DSSE_LAYER])).encode(), SUBJECT,
     Reason.NOT_A_SIGNATURE),
    ("referrer-without-subject", json.dumps(manifest(
        [cosign.BUNDLE_V03], artifactType=cosign.BUNDLE_V03)).encode(), SUBJECT,
     Reason.MALFORMED),
    ("notation-two-layers", json.dumps(manifest(
        [notation.JWS, notation.JWS], artifactType=notation.NOTARY_SIGNATURE,
        subject=SUBJECT_DESC)).encode(), SUBJECT, Reason.MALFORMED),
    ("bundle-two-layers", json.dumps(manifest(
        [cosign.BUNDLE_V03, cosign.BUNDLE_V03], artifactType=cosign.BUNDLE_V03,
        subject=SUBJECT_DESC)).encode(), SUBJECT, Reason.MALFORMED),
])
def test_fails_closed(case: str, body: bytes, subject: str, reason: Reason) -> None:
    verdicts = verify_all(body, subject, Blobs(), TRUST)
    assert len(verdicts) == 1
    assert (verdicts[0].trusted, verdicts[0].reason) == (False, reason), verdicts[0]


def test_distinct_signers() -> None:
    other = new_key("ed25519")
    blobs = Blobs()
    body = legacy_manifest(blobs, [(KEY, simple_payload()), (KEY, simple_payload()),
                                   (other, simple_payload())])
    both = TrustMaterial(cosign_keys=(*TRUST.cosign_keys,
                                      TrustedKey.from_pem(public_pem(other))))
    assert distinct_signers(verify_all(body, SUBJECT, blobs, TRUST)) == \
        {TRUST.cosign_keys[0].id}
    assert len(distinct_signers(verify_all(body, SUBJECT, blobs, both))) == 2
    assert verify(body, SUBJECT, blobs, TrustMaterial()).reason == Reason.UNTRUSTED_SIGNATURE
