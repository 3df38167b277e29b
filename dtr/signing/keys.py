"""Trusted key material: cosign public keys (PEM SubjectPublicKeyInfo; id = lowercase hex
SHA-256 of the DER), the signature schemes each key type verifies with, and notation's
X.509 trust stores with certificate-chain validation under notation's rules
(``signing.md`` §2.4, §3.5, §4.1). Pure ``cryptography``; never imports api or db.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

MIN_RSA_BITS = 2048
_EC_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512,
}


class KeyMaterialError(ValueError):
    """A key or certificate is unusable (unparseable, unsupported type, too small)."""


def key_id(public_key: PublicKey) -> str:
    """Dtr's key id: lowercase hex SHA-256 of the DER SubjectPublicKeyInfo.

    The same bytes cosign hashes for a bundle's ``publicKey.hint`` (which is base64).
    """
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _check_key(public_key: object) -> PublicKey:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in _EC_HASHES:
            raise KeyMaterialError(f"unsupported EC curve {public_key.curve.name}")
        return public_key
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise KeyMaterialError(
                f"RSA key of {public_key.key_size} bits (minimum {MIN_RSA_BITS})")
        return public_key
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return public_key
    raise KeyMaterialError(f"unsupported key type {type(public_key).__name__}")


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A trusted cosign public key and its id."""

    id: str
    public_key: PublicKey

    @classmethod
    def from_pem(cls, pem: bytes | str) -> TrustedKey:
        """Parse a PEM ``PUBLIC KEY`` (what ``cosign generate-key-pair`` writes as
        ``cosign.pub``): ECDSA P-256/P-384/P-521, Ed25519 or RSA ≥ 2048 bits.

        Raises ``KeyMaterialError`` for anything else (private keys, certificates, small RSA).
        """
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            loaded = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyMaterialError(f"not a PEM public key: {exc}") from None
        public_key = _check_key(loaded)
        return cls(key_id(public_key), public_key)

    @property
    def hint(self) -> str:
        """The key id as cosign writes it in a bundle hint (standard base64)."""
        return base64.b64encode(bytes.fromhex(self.id)).decode()


def verify_cosign(public_key: PublicKey, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` is cosign's signature of ``data`` under ``public_key``.

    The scheme comes from the key type only (never from the signature object): ECDSA with
    an ASN.1 DER signature and SHA-256/384/512 for P-256/P-384/P-521 (raw r‖s is refused,
    as cosign does), RSA PKCS#1 v1.5 with SHA-256, pure Ed25519.
    """
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            algorithm = _EC_HASHES[public_key.curve.name]()
            public_key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            public_key.verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


# JOSE/COSE algorithm ↔ key, as notation requires it (signing.md §3.3).
JOSE_ALGS: dict[str, tuple[str, int, type[hashes.HashAlgorithm]]] = {
    "PS256": ("rsa", 2048, hashes.SHA256), "PS384": ("rsa", 3072, hashes.SHA384),
    "PS512": ("rsa", 4096, hashes.SHA512), "ES256": ("secp256r1", 32, hashes.SHA256),
    "ES384": ("secp384r1", 48, hashes.SHA384), "ES512": ("secp521r1", 66, hashes.SHA512),
}


def alg_for_key(public_key: object) -> str | None:
    """The one JOSE algorithm notation allows for ``public_key`` (None: no such algorithm)."""
    for alg, (kind, size, _) in JOSE_ALGS.items():
        if kind == "rsa" and isinstance(public_key, rsa.RSAPublicKey) \
                and public_key.key_size == size:
            return alg
        if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == kind:
            return alg
    return None


def verify_jose(public_key: object, alg: str, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` (JWS/COSE encoding) verifies ``data`` under ``public_key`` with
    ``alg``, which must be the algorithm notation pairs with that key (``alg_for_key``).

    ES*: raw r‖s of twice the curve's byte length; PS*: RSASSA-PSS, MGF1 with the same
    hash, salt length = hash length.
    """
    if alg not in JOSE_ALGS or alg_for_key(public_key) != alg:
        return False
    _, size, hash_cls = JOSE_ALGS[alg]
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if len(signature) != 2 * size:
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            der = utils.encode_dss_signature(r, s)
            public_key.verify(der, data, ec.ECDSA(hash_cls()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            algorithm = hash_cls()
            public_key.verify(signature, data,
                              padding.PSS(mgf=padding.MGF1(algorithm),
                                          salt_length=algorithm.digest_size), algorithm)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


# -- notation: trust stores and certificate chains ------------------------------------------

class ChainError(ValueError):
    """A certificate chain fails notation's rules; ``expired`` marks validity failures."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        """Carry the message and whether the failure is about validity periods."""
        super().__init__(message)
        self.expired = expired


@contextmanager
def _zero_serials_tolerated() -> Iterator[None]:
    """Parse certificates whose serial number is zero without cryptography's warning.

    ``notation cert generate-test`` draws serials from 0-199 (Go's x509 accepts 0), and
    notation verifies with such certificates; so does dtr. cryptography parses them but
    warns that RFC 5280 forbids it. Only that warning is silenced, and only while parsing.
    ``catch_warnings`` is process-wide: should two threads overlap, the worst outcome is
    this one narrow filter staying installed.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Parsed a serial number which wasn't positive",
                                CryptographyDeprecationWarning)
        yield


def load_certificates(pem: bytes | str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; raises ``KeyMaterialError`` if there is none."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        with _zero_serials_tolerated():
            certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise KeyMaterialError(f"not a PEM certificate bundle: {exc}") from None
    return certs


def load_der_certificates(ders: Iterable[bytes]) -> list[x509.Certificate]:
    """The DER certificates of a signature's chain, in order; raises ``KeyMaterialError``
    at the first that does not parse.
    """
    try:
        with _zero_serials_tolerated():
            return [x509.load_der_x509_certificate(der) for der in ders]
    except ValueError as exc:
        raise KeyMaterialError(f"not a DER certificate: {exc}") from None


@dataclass(frozen=True, slots=True)
class TrustStore:
    """A notation ``ca`` trust store: the root certificates signatures must chain to.

    notation's trust store holds roots (intermediates are discouraged but, as in notation,
    any certificate in the store is a trust anchor).
    """

    name: str
    roots: tuple[x509.Certificate, ...]

    @classmethod
    def from_pem(cls, name: str, pems: Iterable[bytes | str]) -> TrustStore:
        """A store named ``name`` from PEM files' contents (each may hold several certs)."""
        roots = tuple(cert for pem in pems for cert in load_certificates(pem))
        if not roots:
            raise KeyMaterialError(f"trust store {name} holds no certificate")
        return cls(name, roots)

    def verify_chain(self, chain: Sequence[x509.Certificate],
                     now: dt.datetime) -> list[x509.Certificate]:
        """Validate ``chain`` (leaf first, as in ``x5c``/``x5chain``) at time ``now`` and
        return the verified path, leaf to trust anchor.

        Path building, signatures up the chain, validity periods and CA basicConstraints
        (``cA``, path length) come from ``cryptography.x509.verification`` with a
        permissive extension policy (notation certificates carry no SANs, which the
        WebPKI defaults demand); notation's own rules are then checked on the verified
        path by ``check_notation_profile``. Raises ``ChainError``.
        """
        if not chain:
            raise ChainError("no certificate chain")
        for cert in chain:
            if cert.not_valid_after_utc < now or cert.not_valid_before_utc > now:
                raise ChainError(f"certificate {cert.subject.rfc4514_string()} is not "
                                 f"valid at {now.isoformat()}", expired=True)
        ca_policy = verification.ExtensionPolicy.permit_all().require_present(
            x509.BasicConstraints, verification.Criticality.CRITICAL, None)
        builder = (verification.PolicyBuilder().store(verification.Store(list(self.roots)))
                   .time(now).max_chain_depth(8)
                   .extension_policies(ca_policy=ca_policy,
                                       ee_policy=verification.ExtensionPolicy.permit_all()))
        try:
            verified = builder.build_client_verifier().verify(chain[0], list(chain[1:]))
        except verification.VerificationError as exc:
            raise ChainError(f"chain does not lead to trust store {self.name}: {exc}") from None
        path = list(verified.chain)
        check_notation_profile(path)
        return path


_LEAF_FORBIDDEN_EKU = {ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
                       ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH,
                       ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.TIME_STAMPING}


def _key_size_ok(cert: x509.Certificate) -> None:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise ChainError("certificate key cannot be parsed") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ChainError(f"RSA key of {key.key_size} bits in {cert.subject.rfc4514_string()}")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < 256:
        raise ChainError(f"EC key of {key.curve.key_size} bits")


def check_notation_profile(path: Sequence[x509.Certificate]) -> None:
    """Notation's certificate rules (``signing.md`` §3.5) on a verified path, leaf first.

    * no SHA-1 signatures; RSA ≥ 2048 bits, EC ≥ 256 bits;
    * CA certificates: basicConstraints critical with ``cA=true``; keyUsage critical with
      keyCertSign;
    * leaf: keyUsage critical with digitalSignature and nothing else but (tolerated, as
      notation does) contentCommitment; if an EKU is present it may hold codeSigning and
      must not hold anyEKU, serverAuth, clientAuth, emailProtection or timeStamping.

    A self-signed leaf that is itself the trust anchor (``notation cert generate-test``)
    is checked as a leaf. Raises ``ChainError``.
    """
    for index, cert in enumerate(path):
        if isinstance(cert.signature_hash_algorithm, hashes.SHA1):
            raise ChainError(f"SHA-1 signature on {cert.subject.rfc4514_string()}")
        _key_size_ok(cert)
        name = cert.subject.rfc4514_string()
        try:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        except x509.ExtensionNotFound:
            raise ChainError(f"{name} has no keyUsage extension") from None
        if not usage.critical:
            raise ChainError(f"{name}: keyUsage is not critical")
        if index == 0:
            _check_leaf(cert, usage.value, name)
            continue
        try:
            basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            raise ChainError(f"CA {name} has no basicConstraints") from None
        if not basic.critical or not basic.value.ca:
            raise ChainError(f"CA {name}: basicConstraints must be critical with cA=true")
        if not usage.value.key_cert_sign:
            raise ChainError(f"CA {name}: keyUsage lacks keyCertSign")


def _check_leaf(cert: x509.Certificate, usage: x509.KeyUsage, name: str) -> None:
    if not usage.digital_signature:
        raise ChainError(f"leaf {name}: keyUsage lacks digitalSignature")
    forbidden = [usage.key_encipherment, usage.data_encipherment, usage.key_agreement,
                 usage.key_cert_sign, usage.crl_sign]
    if usage.key_agreement:
        forbidden += [usage.encipher_only, usage.decipher_only]
    if any(forbidden):
        raise ChainError(f"leaf {name}: keyUsage allows more than signing")
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is not None and basic.ca:
        raise ChainError(f"leaf {name} is a CA certificate")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if any(oid in _LEAF_FORBIDDEN_EKU for oid in eku):
        raise ChainError(f"leaf {name}: extendedKeyUsage is not for code signing")


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the certificate's DER (notation's thumbprints, lowercased)."""
    return cert.fingerprint(hashes.SHA256()).hex()
