"""Registry bearer tokens (Docker token authentication, token-auth.md §5, §6): the ES256
signing key and its JWKS, issuing tokens, verifying them. The only module that touches
joserfc.

A token's header is ``{"alg": "ES256", "typ": "JWT", "kid": <RFC 7638 thumbprint>}``; its
claims are ``iss``, ``sub`` (account name, ``""`` for anonymous), ``aud`` (the service),
``exp``, ``nbf``, ``iat``, ``jti``, ``access`` and the private claim ``dtr`` =
``{"kind", "method", "account_id"?, "token_id"?, "scopes"?}`` from which the resource
server rebuilds the :class:`Principal` (``scopes``: a personal access token's
restrictions). Verification needs public keys only, so replicas verify what any replica
issued when they share the key file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast, get_args

from joserfc import jws, jwt
from joserfc.errors import JoseError, MissingAlgorithmError
from joserfc.jwk import ECKey

from dtr.auth.principal import AuthMethod, Principal, PrincipalKind
from dtr.auth.scopes import Scope
from dtr.config import ConfigError
from dtr.errors import InvalidToken

ALGORITHM = "ES256"
CURVE = "P-256"
PRIVATE_CLAIM = "dtr"
MAX_TOKEN_BYTES = 16 * 1024
_REGISTRY = jws.JWSRegistry(algorithms=[ALGORITHM])
_KINDS: tuple[str, ...] = get_args(PrincipalKind)
_METHODS: tuple[str, ...] = get_args(AuthMethod)


_REJECTION_CODES = {
    "malformed token": "malformed", "unsupported algorithm": "unsupported_algorithm",
    "unknown signing key": "unknown_key", "bad signature": "bad_signature",
    "wrong issuer": "wrong_issuer", "wrong audience": "wrong_audience",
    "token expired": "expired", "token not yet valid": "not_yet_valid",
    "malformed claims": "malformed_claims"}


class TokenRejected(InvalidToken):
    """A registry token failed verification.

    Attributes:
        reason: a stable code for the audit log (``malformed``, ``unsupported_algorithm``,
            ``unknown_key``, ``bad_signature``, ``wrong_issuer``, ``wrong_audience``,
            ``expired``, ``not_yet_valid``, ``malformed_claims``); the message is the
            short sentence the client sees.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _fail(message: str) -> TokenRejected:
    return TokenRejected(message, _REJECTION_CODES.get(message, "invalid"))


@dataclass(frozen=True)
class TokenKeys:
    """The signing key (EC P-256 private) and every public key tokens may carry.

    Attributes:
        signing: the current private key.
        kid: its RFC 7638 thumbprint (the ``kid`` header of issued tokens).
        verifying: ``kid`` → public key, current first, then previous keys (rotation).
    """

    signing: ECKey
    kid: str
    verifying: Mapping[str, ECKey]

    @classmethod
    def generate(cls, previous: Iterable[ECKey] = ()) -> TokenKeys:
        """Keys with a fresh in-memory signing key (tests, single-process tools)."""
        return cls._build(ECKey.generate_key(CURVE), previous)

    @classmethod
    def from_pem(cls, pem: bytes, previous: Iterable[bytes] = ()) -> TokenKeys:
        """Keys from a PEM private key and PEM public or private previous keys.

        Raises:
            ValueError: a key is not EC P-256 (or the current one is not private).
        """
        return cls._build(_import(pem, private=True), (_import(p) for p in previous))

    @classmethod
    def load_or_create(cls, path: Path | str,
                       previous_paths: Iterable[Path | str] = ()) -> TokenKeys:
        """Load the PEM private key at ``path``, generating it first if the file is missing.

        Generation is atomic and race-free: the key is written to an exclusive temporary
        file (mode 0600) beside ``path`` and hard-linked into place, which fails if another
        process got there first; the loser then loads the winner's key, so processes
        starting together end with the same key.

        Args:
            path: the signing key file.
            previous_paths: retired public or private PEM keys still accepted and published.

        Raises:
            ConfigError: a file cannot be read or is not an EC P-256 PEM key.
        """
        target = Path(path)
        try:
            if not target.exists():
                _create_key_file(target)
            return cls.from_pem(target.read_bytes(), [Path(p).read_bytes()
                                                      for p in previous_paths])
        except (OSError, ValueError) as exc:
            raise ConfigError(f"token signing key: {exc}") from exc

    @classmethod
    def _build(cls, signing: ECKey, previous: Iterable[ECKey]) -> TokenKeys:
        kid = signing.thumbprint()
        verifying: dict[str, ECKey] = {kid: ECKey.import_key(signing.public_key)}
        for key in previous:
            verifying.setdefault(key.thumbprint(), ECKey.import_key(key.public_key))
        return cls(signing, kid, verifying)

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The JSON Web Key Set of the public keys, current first.

        Served for resource servers, and usable as a stock distribution registry's
        ``auth.token.jwks`` file.
        """
        keys = []
        for kid, key in self.verifying.items():
            keys.append({**key.as_dict(private=False), "kid": kid, "use": "sig",
                         "alg": ALGORITHM})
        return {"keys": keys}


def _import(pem: bytes, *, private: bool = False) -> ECKey:
    try:
        key = ECKey.import_key(pem)
    except (JoseError, ValueError, TypeError) as exc:
        raise ValueError("not a PEM EC key") from exc
    if key.curve_name != CURVE:
        raise ValueError(f"key curve is {key.curve_name}, need {CURVE}")
    if private and not key.is_private:
        raise ValueError("the signing key must be a private key")
    return key


def _create_key_file(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    pem = ECKey.generate_key(CURVE).as_pem(private=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, target)  # never replaces a key another process already placed
        except FileExistsError:
            pass
        except OSError:  # no hard links on this filesystem: rename unless someone won
            if not target.exists():
                os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A signed registry token and what the token endpoint returns with it.

    Attributes:
        token: the compact JWT.
        expires_in: lifetime in seconds.
        issued_at: issue time, RFC 3339 (``2026-01-02T03:04:05Z``).
        jti: the token's unique id.
        claims: what a verifier reads from the token (see
            :meth:`TokenVerifier.remember_issued`).
    """

    token: str
    expires_in: int
    issued_at: str
    jti: str
    claims: Claims | None = None


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified claims of a registry token.

    Attributes:
        sub: the account name (``""`` anonymous).
        access: the granted resources, read-only mappings ``{"type": str, "name": str,
            "actions": tuple[str, ...]}`` (the JWT ``access`` claim).
        jti: the token id.
        exp: expiry (Unix seconds).
        iat: issue time (Unix seconds).
        kind: ``user``, ``robot`` or ``anonymous``.
        nbf: not-before (Unix seconds).
        iss: the issuer.
        aud: the audiences.
        method: how the caller authenticated at the token endpoint.
        account_id: the account row id, if any.
        token_id: the personal access or refresh token used at the token endpoint, if any.
        scopes: that personal access token's restrictions (``None`` = none).
        subject: the policy subject (``user:<sub>``, ``robot:<sub>``, ``anonymous``),
            computed once (the audit context names it on every ``/v2`` request).
    """

    sub: str
    access: tuple[Mapping[str, Any], ...]
    jti: str
    exp: int
    iat: int
    kind: PrincipalKind
    nbf: int
    iss: str
    aud: tuple[str, ...]
    method: AuthMethod
    account_id: int | None
    token_id: str | None
    scopes: tuple[str, ...] | None = None
    _granted: dict[tuple[str, str], frozenset[str]] = field(
        init=False, repr=False, compare=False, default_factory=dict)
    subject: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "subject",
                           "anonymous" if self.kind == "anonymous" else f"{self.kind}:{self.sub}")
        # (type, name) → actions, built once: the resource server asks on every request
        granted: dict[tuple[str, str], set[str]] = {}
        for item in self.access:
            granted.setdefault((item["type"], item["name"]), set()).update(item["actions"])
        object.__setattr__(self, "_granted", {k: frozenset(v) for k, v in granted.items()})

    def actions(self, type: str, name: str) -> frozenset[str]:
        """Every action granted on resource ``type:name`` (``*`` kept as is)."""
        return self._granted.get((type, name), frozenset())

    def allows(self, type: str, name: str, action: str) -> bool:
        """True if the token grants ``action`` (or ``*``) on resource ``type:name``."""
        granted = self._granted.get((type, name))
        return granted is not None and (action in granted or "*" in granted)

    def principal(self) -> Principal:
        """The caller the token was issued to.

        ``token_id`` is the personal access or refresh token used at the token endpoint,
        else the JWT's ``jti``; ``scopes`` are that token's restrictions.
        """
        if self.kind == "anonymous":
            return Principal("anonymous", "", method="anonymous", token_id=self.jti)
        return Principal(self.kind, self.sub, account_id=self.account_id, method=self.method,
                         token_id=self.token_id or self.jti, scopes=self.scopes)


class TokenIssuer:
    """Signs registry tokens.

    Args:
        keys: the signing keys.
        issuer: the ``iss`` claim.
        lifetime_seconds: ``exp - iat`` and ``expires_in``.
        clock: the current Unix time (tests).
    """

    def __init__(self, keys: TokenKeys, issuer: str, lifetime_seconds: int, *,
                 clock: Callable[[], float] = time.time) -> None:
        if lifetime_seconds < 1:
            raise ValueError("lifetime_seconds must be positive")
        self.keys = keys
        self.issuer = issuer
        self.lifetime = lifetime_seconds
        self.clock = clock
        self._header = {"alg": ALGORITHM, "typ": "JWT", "kid": keys.kid}

    def issue(self, principal: Principal, audience: str,
              access: Iterable[Scope | Mapping[str, Any]], *,
              lifetime: int | None = None) -> IssuedToken:
        """Sign a token for ``principal`` valid at ``audience`` granting ``access``.

        Args:
            principal: who the token is for.
            audience: the service (``aud``).
            access: granted resources, as :class:`Scope` or ``{"type", "name", "actions"}``
                mappings; may be empty (``docker login``).
            lifetime: seconds the token lives (``None`` = the issuer's lifetime; keyless CI
                exchanges pass their trust's).

        Raises:
            ValueError: an access entry is malformed, or ``lifetime`` is not positive.
        """
        seconds = self.lifetime if lifetime is None else lifetime
        if seconds < 1:
            raise ValueError("lifetime must be positive")
        iat = int(self.clock())
        jti = secrets.token_urlsafe(16)
        private: dict[str, Any] = {"kind": principal.kind, "method": principal.method}
        if principal.account_id is not None:
            private["account_id"] = principal.account_id
        if principal.token_id is not None and principal.method in ("pat", "refresh_token",
                                                                    "federation"):
            private["token_id"] = principal.token_id
        if principal.scopes is not None:
            private["scopes"] = list(principal.scopes)
        claims = {
            "iss": self.issuer,
            "sub": "" if principal.is_anonymous else principal.name,
            "aud": audience,
            "exp": iat + seconds,
            "nbf": iat,
            "iat": iat,
            "jti": jti,
            "access": [_access_entry(a) for a in access],
            PRIVATE_CLAIM: private,
        }
        token = jwt.encode(self._header, claims, self.keys.signing, registry=_REGISTRY)
        issued_at = dt.datetime.fromtimestamp(iat, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        # the claims hold JSON types only: read exactly as a verifier reads the payload
        try:
            read: Claims | None = _claims(claims)
        except InvalidToken:  # a token no verifier accepts: nothing to remember
            read = None
        return IssuedToken(token, seconds, issued_at, jti, read)


def _access_entry(entry: Scope | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(entry, Scope):
        return entry.to_dict()
    scope = _scope(entry)
    if scope is None:
        raise ValueError(f"malformed access entry: {entry!r}")
    return scope.to_dict()


def _scope(entry: object) -> Scope | None:
    if not isinstance(entry, Mapping):
        return None
    rtype, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
    if not (isinstance(rtype, str) and isinstance(name, str) and isinstance(actions, list)
            and all(isinstance(a, str) for a in actions)):
        return None
    return Scope(rtype, name, tuple(actions))


class TokenVerifier:
    """Verifies registry tokens and remembers the verified ones until they expire.

    Checks, in order: size and shape; header ``alg`` is exactly ES256 (``none``, HS256 and
    every other algorithm are refused before any key is used); ``kid`` names a current or
    previous key; the signature; ``iss``; ``aud`` contains the audience; ``exp`` and
    ``nbf`` within ``leeway_seconds``; well-formed ``sub``, ``jti``, ``access``.

    A verified token is cached (token string → :class:`Claims`) until its expiry, so a
    client's next request costs a dict lookup plus the time and audience checks; so is a
    token this process has just issued (:meth:`remember_issued`). The cache holds at most
    ``cache_size`` tokens (expired ones are swept, then oldest first).

    Args:
        keys: the keys (public parts are enough).
        issuer: the only accepted ``iss``.
        leeway_seconds: clock skew allowed on ``exp`` and ``nbf``.
        cache_size: the most tokens remembered.
        clock: the current Unix time (tests).
    """

    def __init__(self, keys: TokenKeys, issuer: str, leeway_seconds: int = 30, *,
                 cache_size: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.issuer = issuer
        self.leeway = leeway_seconds
        self.cache_size = cache_size
        self.clock = clock
        self._cache: dict[str, Claims] = {}
        self._lock = threading.Lock()
        self._swept = 0.0

    def verify(self, token: str, audience: str) -> Claims:
        """The claims of ``token`` if it is valid for ``audience`` now.

        Raises:
            TokenRejected: (an ``InvalidToken``) with a short message (``malformed
                token``, ``unsupported algorithm``, ``unknown signing key``, ``bad
                signature``, ``wrong issuer``, ``wrong audience``, ``token expired``,
                ``token not yet valid``, ``malformed claims``) and its ``reason`` code.
        """
        now = self.clock()
        claims = self._cache.get(token)
        if claims is None:
            claims = self._verify_signed(token)
            self._check(claims, audience, now)
            self._remember(token, claims, now)
            return claims
        self._check(claims, audience, now)
        return claims

    def remember_issued(self, issued: IssuedToken, issuer: TokenIssuer) -> None:
        """Cache a token this process has just signed as verified.

        The client's first request with it then skips the signature check, which could not
        fail: the signature is this process's own. Only for an issuer whose ``iss`` and
        signing key (by its RFC 7638 thumbprint) this verifier accepts; ``aud``, ``exp``
        and ``nbf`` are still checked on every use.
        """
        if (issued.claims is None or issuer.issuer != self.issuer
                or issuer.keys.kid not in self.keys.verifying
                or len(issued.token) > MAX_TOKEN_BYTES):
            return
        self._remember(issued.token, issued.claims, self.clock())

    def _check(self, claims: Claims, audience: str, now: float) -> None:
        if audience not in claims.aud:
            raise _fail("wrong audience")
        if now >= claims.exp + self.leeway:
            raise _fail("token expired")
        if now < claims.nbf - self.leeway:
            raise _fail("token not yet valid")

    def _verify_signed(self, token: str) -> Claims:
        if len(token) > MAX_TOKEN_BYTES:
            raise _fail("malformed token")
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=_REGISTRY)
            header = obj.headers()
        except MissingAlgorithmError as exc:
            raise _fail("unsupported algorithm") from exc
        except (JoseError, ValueError, UnicodeError) as exc:
            raise _fail("malformed token") from exc
        if header.get("alg") != ALGORITHM:
            raise _fail("unsupported algorithm")
        kid = header.get("kid")
        key = self.keys.verifying.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise _fail("unknown signing key")
        try:
            valid = jws.validate_compact(obj, key, registry=_REGISTRY)
        except (JoseError, ValueError) as exc:
            raise _fail("bad signature") from exc
        if not valid:
            raise _fail("bad signature")
        try:
            payload = json.loads(obj.payload)
        except ValueError as exc:
            raise _fail("malformed claims") from exc
        if not isinstance(payload, dict):
            raise _fail("malformed claims")
        if payload.get("iss") != self.issuer:
            raise _fail("wrong issuer")
        return _claims(payload)

    def _remember(self, token: str, claims: Claims, now: float) -> None:
        with self._lock:
            if len(self._cache) >= self.cache_size:
                if now - self._swept >= 1.0:
                    self._swept = now
                    for key in [k for k, c in self._cache.items()
                                if now >= c.exp + self.leeway]:
                        del self._cache[key]
                while len(self._cache) >= self.cache_size:
                    del self._cache[next(iter(self._cache))]
            self._cache[token] = claims


def _claims(payload: dict[str, Any]) -> Claims:
    aud = payload.get("aud")
    auds = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()
    numbers = [payload.get(k) for k in ("exp", "nbf", "iat")]
    sub, jti = payload.get("sub"), payload.get("jti")
    access = payload.get("access", [])
    private = payload.get(PRIVATE_CLAIM)
    private = private if isinstance(private, dict) else {}
    if not (all(isinstance(a, str) for a in auds) and auds
            and all(isinstance(n, int) and not isinstance(n, bool) for n in numbers)
            and isinstance(sub, str) and isinstance(jti, str) and isinstance(access, list)):
        raise _fail("malformed claims")
    entries = [_scope(entry) for entry in access]
    kind = private.get("kind", "anonymous" if not sub else
                       "robot" if sub.startswith("robot$") else "user")
    method = private.get("method", "bearer")
    account_id, token_id = private.get("account_id"), private.get("token_id")
    scopes = private.get("scopes")
    if (None in entries or kind not in _KINDS or method not in _METHODS
            or (kind == "anonymous") != (sub == "")
            or not (account_id is None or isinstance(account_id, int))
            or not (token_id is None or isinstance(token_id, str))
            or not (scopes is None or (isinstance(scopes, list)
                                       and all(isinstance(s, str) for s in scopes)))):
        raise _fail("malformed claims")
    exp, nbf, iat = (cast(int, n) for n in numbers)
    access_items = tuple(MappingProxyType({"type": s.type, "name": s.name,
                                           "actions": s.actions})
                         for s in cast(list[Scope], entries))
    return Claims(sub=sub, access=access_items, jti=jti, exp=exp, iat=iat, kind=kind, nbf=nbf,
                  iss=payload["iss"], aud=cast(tuple[str, ...], auds), method=method,
                  account_id=account_id, token_id=token_id,
                  scopes=None if scopes is None else tuple(scopes))
