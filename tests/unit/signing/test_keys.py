"""Trusted key material: PEM parsing and key ids, the cosign and JOSE signature schemes per
key type, and certificate chains under notation's X.509 rules (one case per rule)."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import ExtendedKeyUsageOID

from dtr.signing.keys import (
    ChainError,
    KeyMaterialError,
    TrustedKey,
    TrustStore,
    alg_for_key,
    load_certificates,
    load_der_certificates,
    verify_cosign,
    verify_jose,
)
from tests.unit.signing.material import (
    NOW,
    certificate,
    cosign_sign,
    jose_sign,
    name,
    new_key,
    pki,
    public_pem,
    usage,
)

KINDS = ["p256", "p384", "p521", "ed25519", "rsa2048", "rsa3072"]


@pytest.mark.parametrize("kind", KINDS)
def test_key_id_is_sha256_of_spki_der(kind: str) -> None:
    key = new_key(kind)
    trusted = TrustedKey.from_pem(public_pem(key))
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    assert trusted.id == hashlib.sha256(der).hexdigest()
    assert TrustedKey.from_pem(public_pem(key).decode()).id == trusted.id


@pytest.mark.parametrize("pem", [
    b"not pem",
    new_key("p256").private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
    public_pem(new_key("rsa1024")),
    ec.generate_private_key(ec.SECP224R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
], ids=["garbage", "private-key", "rsa-1024", "p224"])
def test_unusable_keys_are_refused(pem: bytes) -> None:
    with pytest.raises(KeyMaterialError):
        TrustedKey.from_pem(pem)


@pytest.mark.parametrize("kind", KINDS)
def test_cosign_scheme_per_key_type(kind: str) -> None:
    key, other = new_key(kind), new_key(kind)
    data = b'{"critical":{}}'
    public = TrustedKey.from_pem(public_pem(key)).public_key
    signature = cosign_sign(key, data)
    assert verify_cosign(public, signature, data)
    assert not verify_cosign(public, signature, data + b" ")
    assert not verify_cosign(public, cosign_sign(other, data), data)
    assert not verify_cosign(public, b"", data)


def test_cosign_ecdsa_refuses_raw_r_s() -> None:
    key = new_key("p256")
    r, s = utils.decode_dss_signature(cosign_sign(key, b"x"))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert not verify_cosign(TrustedKey.from_pem(public_pem(key)).public_key, raw, b"x")


@pytest.mark.parametrize(("kind", "alg"), [
    ("p256", "ES256"), ("p384", "ES384"), ("p521", "ES512"), ("rsa2048", "PS256"),
    ("rsa3072", "PS384"), ("rsa4096", "PS512")])
def test_jose_schemes(kind: str, alg: str) -> None:
    key = new_key(kind)
    assert alg_for_key(key.public_key()) == alg
    signature = jose_sign(key, alg, b"p.q")
    assert verify_jose(key.public_key(), alg, signature, b"p.q")
    assert not verify_jose(key.public_key(), alg, signature, b"p.r")
    wrong = "PS512" if alg != "PS512" else "PS256"
    assert not verify_jose(key.public_key(), wrong, signature, b"p.q")


def test_jose_refuses_der_ecdsa_and_pkcs1() -> None:
    ec_key, rsa_key = new_key("p256"), new_key("rsa2048")
    assert not verify_jose(ec_key.public_key(), "ES256", cosign_sign(ec_key, b"d"), b"d")
    assert not verify_jose(rsa_key.public_key(), "PS256", cosign_sign(rsa_key, b"d"), b"d")
    assert not verify_jose(new_key("ed25519").public_key(), "ES256", b"0" * 64, b"d")
    assert alg_for_key(new_key("ed25519").public_key()) is None


# -- chains ------------------------------------------------------------------------------------
def test_notation_shaped_chain_verifies() -> None:
    material = pki()
    store = TrustStore.from_pem("ca", [material.pem()])
    path = store.verify_chain(material.chain, NOW)
    assert [c.subject for c in path] == [c.subject for c in material.chain]
    # the root need not be sent: the store supplies it
    assert len(store.verify_chain(material.chain[:2], NOW)) == 3


def test_self_signed_leaf_in_store_verifies() -> None:
    """What ``notation cert generate-test`` makes: a self-signed code-signing leaf."""
    key = new_key("rsa2048")
    cert = certificate(name("test"), key, name("test"), key, ca=False,
                       eku=[ExtendedKeyUsageOID.CODE_SIGNING])
    store = TrustStore.from_pem("test", [cert.public_bytes(serialization.Encoding.PEM)])
    assert store.verify_chain([cert], NOW) == [cert]


def test_serial_zero_self_signed_leaf_loads_and_verifies() -> None:
    """``notation cert generate-test`` draws serials from 0-199; notation trusts serial 0,
    and loading one must not warn (the test suite turns warnings into errors)."""
    key = new_key("rsa2048")
    cert = certificate(name("test"), key, name("test"), key, ca=False,
                       eku=[ExtendedKeyUsageOID.CODE_SIGNING], serial=0)
    pem, der = (cert.public_bytes(e) for e in (serialization.Encoding.PEM,
                                                  serialization.Encoding.DER))
    assert bytes.fromhex("a003020102020100") in der  # version v3, then serial INTEGER 0
    store = TrustStore.from_pem("test", [pem])
    assert store.verify_chain(load_certificates(pem), NOW) == [cert]
    assert load_der_certificates([der]) == [cert]


def test_chain_to_another_root_is_refused() -> None:
    material, stranger = pki(), pki()
    with pytest.raises(ChainError):
        TrustStore.from_pem("ca", [stranger.pem()]).verify_chain(material.chain, NOW)


LEAF_CASES: list[tuple[str, dict[str, Any]]] = [
    ("ku-not-critical", {"ku_critical": False}),
    ("ku-key-encipherment", {"ku": usage(sign=True, encipher=True)}),
    ("ku-no-digital-signature", {"ku": usage(encipher=True)}),
    ("eku-server-auth", {"eku": [ExtendedKeyUsageOID.SERVER_AUTH]}),
    ("eku-any", {"eku": [ExtendedKeyUsageOID.CODE_SIGNING,
                         ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]}),
    ("eku-timestamping", {"eku": [ExtendedKeyUsageOID.TIME_STAMPING]}),
]


@pytest.mark.parametrize(("case", "leaf"), LEAF_CASES, ids=[c for c, _ in LEAF_CASES])
def test_leaf_profile_violations_are_refused(case: str, leaf: dict[str, Any]) -> None:
    material = pki(**leaf)
    with pytest.raises(ChainError):
        TrustStore.from_pem("ca", [material.pem()]).verify_chain(material.chain, NOW)


def test_leaf_without_eku_is_accepted() -> None:
    material = pki(eku=None)
    TrustStore.from_pem("ca", [material.pem()]).verify_chain(material.chain, NOW)


def _with_intermediate(**ca: Any) -> tuple[TrustStore, list[Any]]:
    root_key, inter_key, leaf_key = new_key("p256"), new_key("p256"), new_key("p256")
    root = certificate(name("Root"), root_key, name("Root"), root_key, ca=True)
    inter = certificate(name("Inter"), inter_key, root.subject, root_key, **{"ca": True, **ca})
    leaf = certificate(name("Leaf"), leaf_key, inter.subject, inter_key, ca=False)
    store = TrustStore.from_pem("ca", [root.public_bytes(serialization.Encoding.PEM)])
    return store, [leaf, inter, root]


@pytest.mark.parametrize("ca", [
    {"ku": usage(sign=True)}, {"ku_critical": False}, {"ca": False}, {"bc_critical": False},
], ids=["no-keycertsign", "ku-not-critical", "not-a-ca", "bc-not-critical"])
def test_ca_profile_violations_are_refused(ca: dict[str, Any]) -> None:
    store, chain = _with_intermediate(**ca)
    with pytest.raises(ChainError):
        store.verify_chain(chain, NOW)


def test_expired_and_not_yet_valid_certificates() -> None:
    expired = pki(not_after=NOW - dt.timedelta(seconds=1))
    with pytest.raises(ChainError) as err:
        TrustStore.from_pem("ca", [expired.pem()]).verify_chain(expired.chain, NOW)
    assert err.value.expired
    future = pki(not_before=NOW + dt.timedelta(hours=1))
    with pytest.raises(ChainError) as err:
        TrustStore.from_pem("ca", [future.pem()]).verify_chain(future.chain, NOW)
    assert err.value.expired


def test_trust_store_needs_certificates() -> None:
    with pytest.raises(KeyMaterialError):
        TrustStore.from_pem("empty", [b"nothing here"])
    with pytest.raises(ChainError):
        TrustStore.from_pem("ca", [pki().pem()]).verify_chain([], NOW)
