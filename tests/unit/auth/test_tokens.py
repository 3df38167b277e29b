"""Registry tokens: key file creation (atomic, shared by racing processes), the RFC 7638
kid, the JWKS, issued tokens as an independent verifier sees them, and every way
verification must fail; plus the verified-token cache and its measured speed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from dtr.auth.principal import ANONYMOUS, Principal
from dtr.auth.scopes import Scope
from dtr.auth.tokens import Claims, TokenIssuer, TokenKeys, TokenVerifier
from dtr.config import ConfigError
from dtr.errors import InvalidToken

ROOT = Path(__file__).resolve().parents[3]
ISSUER, SERVICE = "dtr-test", "registry.example"
ALICE = Principal("user", "alice", account_id=7, method="password")
ACCESS: list[Scope | dict[str, Any]] = [Scope("repository", "team/app", ("pull", "push")),
          {"type": "registry", "name": "catalog", "actions": ["*"]}]


class Clock:
    def __init__(self, now: float = 1_900_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64d(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    head, body, sig = token.split(".")
    return json.loads(b64d(head)), json.loads(b64d(body)), b64d(sig)


def forge(header: dict[str, Any], claims: dict[str, Any],
          sign: Any = None) -> str:
    """A compact JWS made by hand (``sign(signing_input) -> signature bytes``)."""
    signing_input = (b64e(json.dumps(header).encode()) + "." +
                     b64e(json.dumps(claims).encode()))
    signature = sign(signing_input.encode()) if sign else b""
    return signing_input + "." + b64e(signature)


def es256(private: ec.EllipticCurvePrivateKey) -> Any:
    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return sign


def private_of(keys: TokenKeys) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(keys.signing.as_pem(private=True), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def thumbprint_by_hand(public: ec.EllipticCurvePublicKey) -> str:
    numbers = public.public_numbers()
    x = b64e(numbers.x.to_bytes(32, "big"))
    y = b64e(numbers.y.to_bytes(32, "big"))
    canonical = f'{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}'
    return b64e(hashlib.sha256(canonical.encode()).digest())


# -- keys -------------------------------------------------------------------------------------

def test_load_or_create_writes_a_private_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing.pem"
    keys = TokenKeys.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert [p.name for p in path.parent.iterdir()] == ["signing.pem"]  # no temp left
    assert TokenKeys.load_or_create(path).kid == keys.kid
    private = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp256r1"
    assert keys.kid == thumbprint_by_hand(private.public_key())


def test_kid_matches_a_hand_computed_rfc7638_thumbprint() -> None:
    # RFC 7638 §3.1 shape: SHA-256 over {"crv","kty","x","y"} sorted, no whitespace
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    keys = TokenKeys.from_pem(pem)
    assert keys.kid == thumbprint_by_hand(private.public_key())
    assert len(keys.kid) == 43


def test_jwks_lists_current_then_previous_public_keys(tmp_path: Path) -> None:
    old_private = ec.generate_private_key(ec.SECP256R1())
    old_public = tmp_path / "old.pub.pem"
    old_public.write_bytes(old_private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    older = TokenKeys.load_or_create(tmp_path / "older.pem")
    keys = TokenKeys.load_or_create(tmp_path / "current.pem",
                                    [old_public, tmp_path / "older.pem"])
    jwks = keys.jwks()
    kids = [k["kid"] for k in jwks["keys"]]
    assert kids == [keys.kid, thumbprint_by_hand(old_private.public_key()), older.kid]
    for key in jwks["keys"]:
        assert set(key) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
        assert (key["kty"], key["crv"], key["use"], key["alg"]) == ("EC", "P-256", "sig", "ES256")
    assert all("d" not in key for key in jwks["keys"])  # no private part


@pytest.mark.parametrize("content", [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nxx\n"])
def test_bad_key_files_are_config_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="token signing key"):
        TokenKeys.load_or_create(path)


def test_wrong_key_types_are_config_errors(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(65537, 2048)
    p384 = ec.generate_private_key(ec.SECP384R1())
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    files = {
        "rsa.pem": rsa_key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()),
        "p384.pem": p384.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()),
        "public.pem": public.public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConfigError):
            TokenKeys.load_or_create(tmp_path / name)
    with pytest.raises(ConfigError):
        TokenKeys.load_or_create(tmp_path / "ok.pem", [tmp_path / "p384.pem"])
    with pytest.raises(ConfigError):
        TokenKeys.load_or_create(tmp_path / "ok.pem", [tmp_path / "missing.pem"])
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigError):  # cannot create the folder
        TokenKeys.load_or_create(tmp_path / "file" / "key.pem")


def test_racing_threads_end_with_one_key(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    barrier = threading.Barrier(16)
    kids: list[str] = []

    def start() -> None:
        barrier.wait()
        kids.append(TokenKeys.load_or_create(path).kid)

    threads = [threading.Thread(target=start) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(kids) == 16
    assert len(set(kids)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["signing.pem"]


def test_racing_processes_end_with_one_key(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    start_at = time.time() + 3
    script = textwrap.dedent(f"""
        import time
        from dtr.auth.tokens import TokenKeys
        time.sleep(max(0.0, {start_at} - time.time()))
        print(TokenKeys.load_or_create({str(path)!r}).kid)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(6)]
    kids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(kids) == 1
    assert kids == {TokenKeys.load_or_create(path).kid}
    assert [p.name for p in tmp_path.iterdir()] == ["signing.pem"]


# -- issuing ----------------------------------------------------------------------------------

def test_issued_token_as_an_independent_verifier_sees_it() -> None:
    keys = TokenKeys.generate()
    clock = Clock()
    issued = TokenIssuer(keys, ISSUER, 300, clock=clock).issue(ALICE, SERVICE, ACCESS)
    header, claims, signature = segments(issued.token)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": keys.kid}
    assert claims == {
        "iss": ISSUER, "sub": "alice", "aud": SERVICE,
        "exp": 1_900_000_300, "nbf": 1_900_000_000, "iat": 1_900_000_000,
        "jti": issued.jti,
        "access": [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]},
                   {"type": "registry", "name": "catalog", "actions": ["*"]}],
        "dtr": {"kind": "user", "method": "password", "account_id": 7},
    }
    assert (issued.expires_in, issued.issued_at) == (300, "2030-03-17T17:46:40Z")
    # verify the ES256 signature with cryptography and the public key from the JWKS
    jwk = keys.jwks()["keys"][0]
    public = ec.EllipticCurvePublicNumbers(int.from_bytes(b64d(jwk["x"]), "big"),
                                           int.from_bytes(b64d(jwk["y"]), "big"),
                                           ec.SECP256R1()).public_key()
    signing_input = issued.token.rsplit(".", 1)[0].encode()
    assert len(signature) == 64  # JOSE raw r||s, not DER
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                               int.from_bytes(signature[32:], "big"))
    public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public.verify(der, signing_input + b"x", ec.ECDSA(hashes.SHA256()))


def test_anonymous_and_token_principals() -> None:
    keys = TokenKeys.generate()
    issuer = TokenIssuer(keys, ISSUER, 300)
    _, claims, _ = segments(issuer.issue(ANONYMOUS, SERVICE, []).token)
    assert claims["sub"] == ""
    assert claims["access"] == []
    assert claims["dtr"] == {"kind": "anonymous", "method": "anonymous"}
    pat = Principal("user", "alice", account_id=7, method="pat", token_id="AbC123",
                    scopes=("repository:acme/**:pull",))
    _, claims, _ = segments(issuer.issue(pat, SERVICE, []).token)
    assert claims["dtr"] == {"kind": "user", "method": "pat", "account_id": 7,
                             "token_id": "AbC123", "scopes": ["repository:acme/**:pull"]}
    jtis = {issuer.issue(ALICE, SERVICE, []).jti for _ in range(200)}
    assert len(jtis) == 200
    assert all(len(j) >= 22 for j in jtis)


def test_malformed_access_entries_are_refused() -> None:
    issuer = TokenIssuer(TokenKeys.generate(), ISSUER, 300)
    with pytest.raises(ValueError, match="access"):
        issuer.issue(ALICE, SERVICE, [{"type": "repository", "name": "x", "actions": "pull"}])
    with pytest.raises(ValueError, match="lifetime"):
        TokenIssuer(TokenKeys.generate(), ISSUER, 0)


# -- verifying --------------------------------------------------------------------------------

@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys() -> TokenKeys:
    return TokenKeys.generate()


def make(keys: TokenKeys, clock: Clock) -> tuple[TokenIssuer, TokenVerifier]:
    return (TokenIssuer(keys, ISSUER, 300, clock=clock),
            TokenVerifier(keys, ISSUER, leeway_seconds=30, clock=clock))


def test_round_trip_rebuilds_the_principal(keys: TokenKeys, clock: Clock) -> None:
    issuer, verifier = make(keys, clock)
    issued = issuer.issue(ALICE, SERVICE, ACCESS)
    claims = verifier.verify(issued.token, SERVICE)
    assert isinstance(claims, Claims)
    assert (claims.sub, claims.kind, claims.jti, claims.iss, claims.aud) == (
        "alice", "user", issued.jti, ISSUER, (SERVICE,))
    assert (claims.iat, claims.nbf, claims.exp) == (1_900_000_000, 1_900_000_000, 1_900_000_300)
    assert claims.allows("repository", "team/app", "push")
    assert not claims.allows("repository", "team/app", "delete")
    assert not claims.allows("repository", "team/other", "pull")
    assert claims.allows("registry", "catalog", "anything")  # '*'
    assert claims.actions("repository", "team/app") == {"pull", "push"}
    assert claims.access[0]["actions"] == ("pull", "push")
    with pytest.raises(TypeError):
        claims.access[0]["name"] = "x"  # type: ignore[index]
    assert claims.principal() == Principal("user", "alice", account_id=7, method="password",
                                           token_id=issued.jti)
    pat = Principal("robot", "robot$acme+ci", account_id=9, method="refresh_token",
                    token_id="Tok1", scopes=("repository:acme/**:pull",))
    assert verifier.verify(issuer.issue(pat, SERVICE, []).token, SERVICE).principal() == pat
    anon = verifier.verify(issuer.issue(ANONYMOUS, SERVICE, []).token, SERVICE)
    assert anon.principal().is_anonymous
    assert anon.access == ()


def test_repeated_resources_are_merged(keys: TokenKeys, clock: Clock) -> None:
    issuer, verifier = make(keys, clock)
    access = [Scope("repository", "a/b", ("pull",)), Scope("repository", "a/c", ("*",)),
              Scope("repository", "a/b", ("push",))]
    claims = verifier.verify(issuer.issue(ALICE, SERVICE, access).token, SERVICE)
    assert claims.actions("repository", "a/b") == {"pull", "push"}
    assert claims.allows("repository", "a/b", "push")
    assert not claims.allows("repository", "a/b", "delete")
    assert claims.allows("repository", "a/c", "delete")
    assert not claims.allows("registry", "a/b", "pull")
    assert claims.actions("repository", "nope") == frozenset()


def test_the_cache_never_answers_for_another_string_nor_after_expiry(
        keys: TokenKeys, clock: Clock) -> None:
    issuer, verifier = make(keys, clock)
    token = issuer.issue(ALICE, SERVICE, ACCESS).token
    assert verifier.verify(token, SERVICE).sub == "alice"  # now cached
    head, body, sig = token.split(".")
    claims = json.loads(b64d(body))
    claims["access"][0]["actions"].append("delete")
    with pytest.raises(InvalidToken, match="bad signature"):
        verifier.verify(f"{head}.{b64e(json.dumps(claims).encode())}.{sig}", SERVICE)
    with pytest.raises(InvalidToken, match="wrong audience"):
        verifier.verify(token, "other.example")
    clock.now += 300 + 30
    with pytest.raises(InvalidToken, match="token expired"):
        verifier.verify(token, SERVICE)


def test_tampered_payload(keys: TokenKeys, clock: Clock) -> None:
    issuer, verifier = make(keys, clock)
    head, body, sig = issuer.issue(ALICE, SERVICE, ACCESS).token.split(".")
    claims = json.loads(b64d(body))
    claims["access"][0]["actions"].append("delete")
    tampered = f"{head}.{b64e(json.dumps(claims).encode())}.{sig}"
    with pytest.raises(InvalidToken, match="bad signature"):
        verifier.verify(tampered, SERVICE)
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    with pytest.raises(InvalidToken, match="bad signature"):
        verifier.verify(f"{head}.{body}.{flipped}", SERVICE)


def test_wrong_key(keys: TokenKeys, clock: Clock) -> None:
    _, verifier = make(keys, clock)
    other = TokenKeys.generate()
    stranger = TokenIssuer(other, ISSUER, 300, clock=clock).issue(ALICE, SERVICE, ACCESS)
    with pytest.raises(InvalidToken, match="unknown signing key"):
        verifier.verify(stranger.token, SERVICE)
    # same kid as ours, signed with another key
    _, claims, _ = segments(stranger.token)
    forged = forge({"alg": "ES256", "typ": "JWT", "kid": keys.kid}, claims,
                   es256(private_of(other)))
    with pytest.raises(InvalidToken, match="bad signature"):
        verifier.verify(forged, SERVICE)
    # and the hand-made signing works when the key is right (the forge helper is sound)
    genuine = forge({"alg": "ES256", "typ": "JWT", "kid": keys.kid}, claims,
                    es256(private_of(keys)))
    assert verifier.verify(genuine, SERVICE).sub == "alice"


def test_algorithm_confusion_is_refused(keys: TokenKeys, clock: Clock) -> None:
    issuer, verifier = make(keys, clock)
    _, claims, _ = segments(issuer.issue(ALICE, SERVICE, ACCESS).token)
    public_pem = keys.signing.as_pem(private=False)
    cases = {
        "none": forge({"alg": "none", "typ": "JWT", "kid": keys.kid}, claims),
        "None": forge({"alg": "None", "kid": keys.kid}, claims),
        "HS256 keyed with the public key": forge(
            {"alg": "HS256", "typ": "JWT", "kid": keys.kid}, claims,
            lambda data: hmac.new(public_pem, data, hashlib.sha256).digest()),
        "ES384": forge({"alg": "ES384", "kid": keys.kid}, claims, es256(private_of(keys))),
        "missing alg": forge({"kid": keys.kid}, claims, es256(private_of(keys))),
    }
    for name, token in cases.items():
        with pytest.raises(InvalidToken, match="unsupported algorithm"):
            verifier.verify(token, SERVICE)
        assert name


def test_expiry_not_before_and_leeway(keys: TokenKeys, clock: Clock) -> None:
    issuer, verifier = make(keys, clock)
    token = issuer.issue(ALICE, SERVICE, ACCESS).token
    clock.now += 300 + 29  # within the 30 s leeway
    verifier.verify(token, SERVICE)
    clock.now += 1
    with pytest.raises(InvalidToken, match="token expired"):
        verifier.verify(token, SERVICE)  # cached, still re-checked
    fresh = TokenVerifier(keys, ISSUER, clock=clock)
    with pytest.raises(InvalidToken, match="token expired"):
        fresh.verify(token, SERVICE)  # cold
    clock.now = 1_900_000_000.0 - 31
    with pytest.raises(InvalidToken, match="not yet valid"):
        TokenVerifier(keys, ISSUER, clock=clock).verify(token, SERVICE)
    clock.now += 2
    TokenVerifier(keys, ISSUER, clock=clock).verify(token, SERVICE)


def test_wrong_audience_and_issuer(keys: TokenKeys, clock: Clock) -> None:
    issuer, verifier = make(keys, clock)
    token = issuer.issue(ALICE, SERVICE, ACCESS).token
    with pytest.raises(InvalidToken, match="wrong audience"):
        verifier.verify(token, "other.example")
    verifier.verify(token, SERVICE)
    with pytest.raises(InvalidToken, match="wrong audience"):
        verifier.verify(token, "other.example")  # cached, still re-checked
    foreign = TokenIssuer(keys, "someone-else", 300, clock=clock).issue(ALICE, SERVICE, [])
    with pytest.raises(InvalidToken, match="wrong issuer"):
        verifier.verify(foreign.token, SERVICE)


def test_audience_list_is_accepted(keys: TokenKeys, clock: Clock) -> None:
    _, verifier = make(keys, clock)
    claims = {"iss": ISSUER, "sub": "alice", "aud": ["a.example", SERVICE], "exp": 1_900_000_300,
              "nbf": 1_900_000_000, "iat": 1_900_000_000, "jti": "j", "access": []}
    token = forge({"alg": "ES256", "typ": "JWT", "kid": keys.kid}, claims, es256(private_of(keys)))
    got = verifier.verify(token, SERVICE)
    assert got.aud == ("a.example", SERVICE)
    assert got.principal() == Principal("user", "alice", method="bearer", token_id="j")


@pytest.mark.parametrize("change", [
    {"sub": 5}, {"exp": "soon"}, {"exp": True}, {"jti": None}, {"access": "all"},
    {"access": [{"type": "repository", "name": "x"}]}, {"aud": 3}, {"aud": []},
    {"dtr": {"kind": "admin"}}, {"dtr": {"method": "magic"}}, {"dtr": {"kind": "anonymous"}},
    {"dtr": {"account_id": "7"}}, {"dtr": {"scopes": "repository:x:pull"}},
])
def test_malformed_claims(keys: TokenKeys, clock: Clock, change: dict[str, Any]) -> None:
    _, verifier = make(keys, clock)
    claims = {"iss": ISSUER, "sub": "alice", "aud": SERVICE, "exp": 1_900_000_300,
              "nbf": 1_900_000_000, "iat": 1_900_000_000, "jti": "j", "access": [], **change}
    token = forge({"alg": "ES256", "typ": "JWT", "kid": keys.kid}, claims, es256(private_of(keys)))
    with pytest.raises(InvalidToken, match="malformed claims"):
        verifier.verify(token, SERVICE)


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c", "a.b.c.d", "é.é.é",
                                   "x" * 20_000, "eyJhbGciOiJFUzI1NiJ9.e30."])
def test_malformed_tokens(keys: TokenKeys, clock: Clock, token: str) -> None:
    _, verifier = make(keys, clock)
    with pytest.raises(InvalidToken):
        verifier.verify(token, SERVICE)


def test_previous_key_rotation(tmp_path: Path, clock: Clock) -> None:
    old = TokenKeys.load_or_create(tmp_path / "old.pem")
    old_token = TokenIssuer(old, ISSUER, 300, clock=clock).issue(ALICE, SERVICE, ACCESS).token
    rotated = TokenKeys.load_or_create(tmp_path / "new.pem", [tmp_path / "old.pem"])
    assert rotated.kid != old.kid
    issuer, verifier = make(rotated, clock)
    assert verifier.verify(old_token, SERVICE).sub == "alice"  # still accepted
    _, header_kid = segments(issuer.issue(ALICE, SERVICE, []).token)[0].popitem()
    assert header_kid == rotated.kid  # new tokens are signed with the new key
    dropped = TokenKeys.load_or_create(tmp_path / "new.pem")
    with pytest.raises(InvalidToken, match="unknown signing key"):
        TokenVerifier(dropped, ISSUER, clock=clock).verify(old_token, SERVICE)


def test_cache_is_bounded(keys: TokenKeys, clock: Clock) -> None:
    issuer = TokenIssuer(keys, ISSUER, 300, clock=clock)
    verifier = TokenVerifier(keys, ISSUER, cache_size=3, clock=clock)
    tokens = [issuer.issue(ALICE, SERVICE, []).token for _ in range(10)]
    for token in tokens:
        verifier.verify(token, SERVICE)
        assert len(verifier._cache) <= 3
    assert list(verifier._cache) == tokens[-3:]
    clock.now += 400  # all expired: the next insert sweeps them
    later = TokenIssuer(keys, ISSUER, 300, clock=clock).issue(ALICE, SERVICE, []).token
    verifier.verify(later, SERVICE)
    assert list(verifier._cache) == [later]


def test_cached_verification_returns_the_claims_already_checked(keys: TokenKeys) -> None:
    issuer = TokenIssuer(keys, ISSUER, 300)
    verifier = TokenVerifier(keys, ISSUER)
    tokens = [issuer.issue(ALICE, SERVICE, ACCESS).token for _ in range(50)]
    first = [verifier.verify(t, SERVICE) for t in tokens]
    again = [verifier.verify(t, SERVICE) for t in tokens]
    # the same objects: served from the cache, the signature was not checked again
    assert all(a is b for a, b in zip(first, again, strict=True))


def test_keys_from_environment_are_not_needed(keys: TokenKeys) -> None:
    # the verifier needs only public keys: a JWKS-only copy verifies what the issuer signed
    public_only = TokenKeys(keys.signing, keys.kid, dict(keys.verifying))
    token = TokenIssuer(keys, ISSUER, 300).issue(ALICE, SERVICE, []).token
    assert all(not k.is_private for k in public_only.verifying.values())
    assert TokenVerifier(public_only, ISSUER).verify(token, SERVICE).sub == "alice"
    assert os.environ.get("DTR_TOKEN_KEY") is None


def test_an_issued_token_is_remembered_as_its_verification_would_read_it(
        keys: TokenKeys, clock: Clock) -> None:
    issuer, verifier = make(keys, clock)
    pat = Principal("user", "alice", account_id=7, method="pat", token_id="Tok1",
                    scopes=("repository:team/**:pull",))
    for principal in (ALICE, pat, ANONYMOUS):
        issued = issuer.issue(principal, SERVICE, ACCESS)
        independent = TokenVerifier(keys, ISSUER, clock=clock).verify(issued.token, SERVICE)
        assert issued.claims == independent
        verifier.remember_issued(issued, issuer)
        assert verifier._cache[issued.token] is issued.claims
        assert verifier.verify(issued.token, SERVICE) is issued.claims
    with pytest.raises(InvalidToken, match="wrong audience"):  # still checked on every use
        verifier.verify(issued.token, "other.example")
    clock.now += 400
    with pytest.raises(InvalidToken, match="token expired"):
        verifier.verify(issued.token, SERVICE)


def test_only_tokens_of_an_accepted_issuer_and_key_are_remembered(
        keys: TokenKeys, clock: Clock, tmp_path: Path) -> None:
    verifier = TokenVerifier(keys, ISSUER, clock=clock)
    other_key = TokenIssuer(TokenKeys.load_or_create(tmp_path / "other.pem"), ISSUER, 300,
                            clock=clock)
    other_iss = TokenIssuer(keys, "someone-else", 300, clock=clock)
    for issuer in (other_key, other_iss):
        issued = issuer.issue(ALICE, SERVICE, ACCESS)
        verifier.remember_issued(issued, issuer)
        assert issued.token not in verifier._cache
        with pytest.raises(InvalidToken):
            verifier.verify(issued.token, SERVICE)
