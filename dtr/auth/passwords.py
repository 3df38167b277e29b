"""Password hashing (argon2id) and random secrets (stored as SHA-256, compared in constant
time). The only module that touches argon2; imports nothing from dtr but ``dtr.errors``.

Passwords are slow to hash on purpose (≈45 ms with the parameters below on a 2-core host):
async code runs that work in a worker thread (:func:`hash_password_async`,
:func:`verify_password_async`) so the event loop keeps serving other requests. Random
secrets (robot secrets, token randoms) carry 256 bits, so a single SHA-256 suffices.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import secrets

import anyio.to_thread
from argon2 import PasswordHasher, Type
from argon2.exceptions import Argon2Error, InvalidHashError, VerifyMismatchError

from dtr.errors import Invalid

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
"""Longer input is refused so hashing cost stays bounded (argon2 itself would accept it)."""
RESERVED_PREFIXES = ("dtr_pat_", "dtr_rt_")
"""Token prefixes: a password that looks like a token is checked as a token."""
SECRET_BYTES = 32

# argon2id, 32 MiB, 2 passes, 2 lanes: above the OWASP minimum (19 MiB, t=2) and measured
# at ≈45 ms (p90 ≈50 ms) per verify on the 2-core reference host. Stored hashes carry
# their own parameters, so changing these keeps old hashes verifiable
# (see :func:`needs_rehash`).
HASHER = PasswordHasher(time_cost=2, memory_cost=32 * 1024, parallelism=2, hash_len=32,
                        salt_len=16, type=Type.ID)


def check_password(password: str) -> None:
    """Check a new password against the password rules.

    Raises:
        Invalid: shorter than 8 or longer than 1024 characters, or shaped like a dtr token.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Invalid(f"password: use at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise Invalid(f"password: use at most {MAX_PASSWORD_LENGTH} characters")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid("password: not valid Unicode text") from None
    if password.startswith(RESERVED_PREFIXES):
        raise Invalid("password: must not start with dtr_pat_ or dtr_rt_ (token prefixes)")


def hash_password(password: str) -> str:
    """The argon2id hash (PHC string) of ``password``. Blocks ≈45 ms; does not validate."""
    return HASHER.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    """True if ``password`` matches ``password_hash``. Never raises.

    A missing (``None``) or malformed hash costs the same argon2 work as a real one and
    returns False, so response time does not reveal whether the account exists.
    """
    if password_hash is None or len(password) > MAX_PASSWORD_LENGTH:
        dummy_verify(password[:MAX_PASSWORD_LENGTH])
        return False
    try:
        return HASHER.verify(password_hash, password)
    except VerifyMismatchError:
        return False
    except (Argon2Error, ValueError):  # undecodable hash: spend the time anyway
        dummy_verify(password)
        return False


def dummy_verify(password: str) -> None:
    """Spend one argon2 verification on a throw-away hash (for unknown accounts)."""
    with contextlib.suppress(Argon2Error, ValueError):
        HASHER.verify(_dummy_hash(), password)


def needs_rehash(password_hash: str) -> bool:
    """True if ``password_hash`` was made with other parameters than :data:`HASHER`'s."""
    try:
        return HASHER.check_needs_rehash(password_hash)
    except (InvalidHashError, ValueError):
        return True


async def hash_password_async(password: str) -> str:
    """:func:`hash_password` in a worker thread."""
    return await anyio.to_thread.run_sync(hash_password, password)


async def verify_password_async(password: str, password_hash: str | None) -> bool:
    """:func:`verify_password` in a worker thread."""
    return await anyio.to_thread.run_sync(verify_password, password, password_hash)


def new_secret() -> str:
    """A fresh random secret: 32 bytes from ``secrets``, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    """The stored form of a random secret: SHA-256, lowercase hex."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def secrets_equal(a: str, b: str) -> bool:
    """Constant-time string equality (``hmac.compare_digest`` over UTF-8 bytes)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"),
                               b.encode("utf-8", "surrogatepass"))


def secret_matches(secret: str, secret_hash: str | None) -> bool:
    """True if ``secret`` hashes to ``secret_hash``.

    Without a stored hash it compares against a dummy, so both paths cost the same.
    """
    return secrets_equal(hash_secret(secret), secret_hash or _DUMMY_SECRET_HASH) \
        and secret_hash is not None


_DUMMY_SECRET_HASH = "0" * 64


@functools.cache
def _dummy_hash() -> str:
    return HASHER.hash(secrets.token_urlsafe(16))
