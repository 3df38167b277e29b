"""Test material for the signing verifiers, generated per test with ``cryptography``: keys of
every supported type, X.509 chains shaped like notation's (with knobs to break each rule),
and signature objects built the way cosign and notation build them (simple-signing
payloads, DSSE bundles, JWS and COSE envelopes) over an in-memory blob store."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import warnings
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dtr.signing import cosign, notation

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


SUBJECT = digest(b"the signed image manifest")
OTHER = digest(b"another image manifest")
SUBJECT_DESC = {"mediaType": OCI_MANIFEST, "digest": SUBJECT, "size": 1234}


class Blobs(dict[str, bytes]):
    """An in-memory ``BlobSource``."""

    def read(self, d: str) -> bytes:
        return self[d]

    def put(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        self[digest(data)] = data
        return {"mediaType": media_type, "digest": digest(data), "size": len(data), **extra}


def new_key(kind: str) -> PrivateKey:
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "p521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(65537, int(kind.removeprefix("rsa")))


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def cosign_sign(key: PrivateKey, data: bytes) -> bytes:
    """A signature as cosign makes it: DER ECDSA (hash by curve), RSA PKCS#1 v1.5 SHA-256,
    pure Ed25519."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}[
            key.curve.key_size]
        return key.sign(data, ec.ECDSA(algorithm))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data)


# -- cosign -----------------------------------------------------------------------------------
def simple_payload(subject: str = SUBJECT, *, key: str = "docker-manifest-digest",
                   kind: str = cosign.SIMPLE_SIGNING_TYPE) -> bytes:
    return json.dumps({"critical": {"identity": {"docker-reference": "reg/app"},
                                    "image": {key: subject}, "type": kind},
                       "optional": None}).encode()


def legacy_manifest(blobs: Blobs, signers: list[tuple[PrivateKey, bytes]],
                    *, subject: dict[str, Any] | None = None,
                    artifact_type: str | None = None) -> bytes:
    """A ``.sig`` manifest: one simple-signing layer per (key, payload)."""
    layers = [blobs.put(payload, cosign.SIMPLE_SIGNING, annotations={
        cosign.SIGNATURE_ANNOTATION: base64.b64encode(cosign_sign(key, payload)).decode()})
        for key, payload in signers]
    config = blobs.put(b"{}", "application/vnd.oci.image.config.v1+json")
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                           "layers": layers}
    if subject is not None:
        doc["subject"] = subject
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    return json.dumps(doc).encode()


def statement(subject: str = SUBJECT, *, predicate: str = cosign.SIGN_PREDICATE,
              kind: str = cosign.STATEMENT_V1) -> bytes:
    algorithm, hex_digest = subject.split(":")
    return json.dumps({"_type": kind, "subject": [{"digest": {algorithm: hex_digest}}],
                       "predicateType": predicate, "predicate": {}}).encode()


def bundle_doc(key: PrivateKey, payload: bytes, *, payload_type: str = cosign.IN_TOTO,
               hint: str | None = "auto", sign_as: bytes | None = None) -> dict[str, Any]:
    """A Sigstore bundle v0.3 with a DSSE envelope signed by ``key``."""
    if hint == "auto":
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        hint = base64.b64encode(hashlib.sha256(der).digest()).decode()
    signed = sign_as if sign_as is not None else cosign.pae(payload_type, payload)
    material: dict[str, Any] = {"publicKey": {"hint": hint}} if hint else {}
    return {"mediaType": cosign.BUNDLE_V03, "verificationMaterial": material,
            "dsseEnvelope": {"payload": base64.b64encode(payload).decode(),
                             "payloadType": payload_type,
                             "signatures": [{"sig": base64.b64encode(
                                 cosign_sign(key, signed)).decode(), "keyid": ""}]}}


def bundle_manifest(blobs: Blobs, bundle: dict[str, Any] | bytes, *,
                    subject: dict[str, Any] = SUBJECT_DESC,
                    layer_type: str = cosign.BUNDLE_V03) -> bytes:
    data = bundle if isinstance(bundle, bytes) else json.dumps(bundle).encode()
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": cosign.BUNDLE_V03,
        "config": blobs.put(b"{}", EMPTY), "layers": [blobs.put(data, layer_type)],
        "subject": subject}).encode()


# -- X.509 ------------------------------------------------------------------------------------
def name(cn: str, org: str = "Notary") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                      x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "WA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def usage(*, sign: bool = False, cert_sign: bool = False,
          encipher: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=sign, content_commitment=False,
                         key_encipherment=encipher, data_encipherment=False,
                         key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def certificate(subject: x509.Name, key: PrivateKey, issuer: x509.Name,
                issuer_key: PrivateKey, *, ca: bool, ku: x509.KeyUsage | None = None,
                ku_critical: bool = True, bc_critical: bool = True,
                eku: list[x509.ObjectIdentifier] | None = None,
                not_before: dt.datetime = NOW - dt.timedelta(days=1),
                not_after: dt.datetime = NOW + dt.timedelta(days=30),
                hash_alg: hashes.HashAlgorithm | None = None,
                serial: int | None = None) -> x509.Certificate:
    if serial == 0:
        return _serial_zero(certificate(subject, key, issuer, issuer_key, ca=ca, ku=ku,
                                        ku_critical=ku_critical, bc_critical=bc_critical,
                                        eku=eku, not_before=not_before, not_after=not_after,
                                        serial=1), issuer_key)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key())
               .serial_number(serial or x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                              critical=bc_critical))
    if ku is None:
        ku = usage(cert_sign=True) if ca else usage(sign=True)
    builder = builder.add_extension(ku, critical=ku_critical)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if isinstance(issuer_key, ed25519.Ed25519PrivateKey):
        return builder.sign(issuer_key, None)
    return builder.sign(issuer_key, hash_alg or hashes.SHA256())


def _serial_zero(cert: x509.Certificate, issuer_key: PrivateKey) -> x509.Certificate:
    """``cert`` (serial 1, RSA-signed) re-issued with serial 0, as ``notation cert
    generate-test`` does one time in 200; cryptography's builder refuses to make one."""
    assert isinstance(issuer_key, rsa.RSAPrivateKey)
    assert cert.serial_number == 1
    serial_one = bytes.fromhex("a003020102020101")  # version v3, then INTEGER 1
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(serial_one) == 1
    tbs_zero = tbs.replace(serial_one, serial_one[:-1] + b"\0")
    signature = issuer_key.sign(tbs_zero, padding.PKCS1v15(), hashes.SHA256())
    der = cert.public_bytes(serialization.Encoding.DER)
    with warnings.catch_warnings():  # cryptography warns that RFC 5280 forbids serial 0
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(
            der.replace(tbs, tbs_zero).replace(cert.signature, signature))


@dataclass
class Pki:
    """root → intermediate → leaf, notation-shaped by default."""

    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: PrivateKey

    @property
    def chain(self) -> list[x509.Certificate]:
        return [self.leaf, self.intermediate, self.root]

    def pem(self, cert: x509.Certificate | None = None) -> bytes:
        return (cert or self.root).public_bytes(serialization.Encoding.PEM)


def pki(leaf_kind: str = "rsa2048", *, leaf_cn: str = "signer", at: dt.datetime = NOW,
        **leaf: Any) -> Pki:
    """root → intermediate → leaf, valid from a day before ``at`` to 30 days after (tests
    that verify at the real time pass ``at=dt.datetime.now(dt.UTC)``)."""
    window = {"not_before": at - dt.timedelta(days=1), "not_after": at + dt.timedelta(days=30)}
    root_key, inter_key, leaf_key = new_key("p384"), new_key("p256"), new_key(leaf_kind)
    root = certificate(name("Root CA"), root_key, name("Root CA"), root_key, ca=True,
                       **window)
    inter = certificate(name("Intermediate CA"), inter_key, root.subject, root_key, ca=True,
                        **window)
    leaf.setdefault("eku", [ExtendedKeyUsageOID.CODE_SIGNING])
    for bound, when in window.items():
        leaf.setdefault(bound, when)
    cert = certificate(name(leaf_cn), leaf_key, inter.subject, inter_key, ca=False, **leaf)
    return Pki(root, inter, cert, leaf_key)


# -- notation ---------------------------------------------------------------------------------
def jose_sign(key: PrivateKey, alg: str, data: bytes) -> bytes:
    """A JWS/COSE signature: raw r‖s for ES*, PSS (salt = hash length) for PS*."""
    algorithm = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[
        alg[2:]]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(algorithm)))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.sign(data, padding.PSS(mgf=padding.MGF1(algorithm),
                                      salt_length=algorithm.digest_size), algorithm)


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def target(descriptor: dict[str, Any] = SUBJECT_DESC) -> bytes:
    return json.dumps({"targetArtifact": descriptor}).encode()


def default_alg(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return {2048: "PS256", 3072: "PS384", 4096: "PS512"}[key.key_size]
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return {256: "ES256", 384: "ES384", 521: "ES512"}[key.curve.key_size]


def jws(material: Pki, payload: bytes | None = None, *, alg: str | None = None,
        header: dict[str, Any] | None = None, drop: tuple[str, ...] = (),
        chain: list[x509.Certificate] | None = None, key: PrivateKey | None = None) -> bytes:
    """A notation JWS envelope (flattened JSON) signed by the leaf key."""
    alg = alg or default_alg(material.leaf_key)
    protected: dict[str, Any] = {"alg": alg, "cty": notation.PAYLOAD_TYPE,
                                 "crit": [notation.SCHEME],
                                 notation.SCHEME: "notary.x509",
                                 notation.SIGNING_TIME: "2026-11-29T11:00:00Z"}
    protected.update(header or {})
    for name_ in drop:
        protected.pop(name_, None)
    p64, b64 = b64u(json.dumps(protected).encode()), b64u(payload or target())
    signature = jose_sign(key or material.leaf_key, alg, f"{p64}.{b64}".encode())
    x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
           for c in (chain if chain is not None else material.chain)]
    return json.dumps({"payload": b64, "protected": p64, "header": {
        "x5c": x5c, "io.cncf.notary.signingAgent": "unit-test"},
        "signature": b64u(signature)}).encode()


COSE_ALG_IDS = {v: k for k, v in notation.COSE_ALGS.items()}


def cose(material: Pki, payload: bytes | None = None, *, alg: str | None = None,
         header: dict[Any, Any] | None = None, tag: int = 18,
         chain: list[x509.Certificate] | None = None) -> bytes:
    """A notation COSE_Sign1 envelope signed by the leaf key."""
    alg = alg or default_alg(material.leaf_key)
    protected_map: dict[Any, Any] = {
        1: COSE_ALG_IDS[alg], 2: [notation.SCHEME], 3: notation.PAYLOAD_TYPE,
        notation.SCHEME: "notary.x509",
        notation.SIGNING_TIME: cbor2.CBORTag(1, int(NOW.timestamp()) - 3600)}
    protected_map.update(header or {})
    protected = cbor2.dumps(protected_map)
    body = payload or target()
    signature = jose_sign(material.leaf_key, alg,
                          cbor2.dumps(["Signature1", protected, b"", body]))
    x5chain = [c.public_bytes(serialization.Encoding.DER)
               for c in (chain if chain is not None else material.chain)]
    return cbor2.dumps(cbor2.CBORTag(tag, [protected, {33: x5chain}, body, signature]))


def notation_manifest(blobs: Blobs, envelope: bytes, *, media_type: str = notation.JWS,
                      subject: dict[str, Any] = SUBJECT_DESC) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": notation.NOTARY_SIGNATURE, "config": blobs.put(b"{}", EMPTY),
        "layers": [blobs.put(envelope, media_type)], "subject": subject}).encode()
