"""Passwords (argon2id) and random secrets: round trips, never raising on bad hashes,
one argon2 verification for unknown accounts, and the event loop left free (no timing
assertions: the work done is counted, not timed)."""

from __future__ import annotations

import hashlib
import hmac
import re
import threading

import pytest
from argon2 import PasswordHasher, Type, extract_parameters

from dtr.auth import passwords
from dtr.auth.passwords import (
    HASHER,
    check_password,
    hash_password,
    hash_secret,
    needs_rehash,
    new_secret,
    secret_matches,
    secrets_equal,
    verify_password,
    verify_password_async,
)
from dtr.errors import Invalid

PASSWORD = "correct horse battery staple"


def test_hash_is_argon2id_with_the_configured_cost() -> None:
    stored = hash_password(PASSWORD)
    assert stored.startswith("$argon2id$v=19$m=32768,t=2,p=2$")
    assert PASSWORD not in stored
    assert hash_password(PASSWORD) != stored  # salted
    assert not needs_rehash(stored)


def test_verify_round_trip() -> None:
    stored = hash_password(PASSWORD)
    assert verify_password(PASSWORD, stored)
    assert not verify_password(PASSWORD + "!", stored)
    assert not verify_password("", stored)


@pytest.mark.parametrize("bad", [None, "", "plaintext", "$argon2id$v=19$m=8,t=1,p=1$xx$yy",
                                 "$argon2id$garbage", "$2b$12$abcdefghijklmnopqrstuv",
                                 "0" * 64])
def test_verify_never_raises_on_a_bad_hash(bad: str | None) -> None:
    assert verify_password(PASSWORD, bad) is False


@pytest.mark.parametrize("password", ["", "\ud800 lone surrogate", "x" * 5000, "\x00\x00"])
def test_verify_never_raises_on_odd_input(password: str) -> None:
    stored = hash_password(PASSWORD)
    assert verify_password(password, stored) is False
    assert verify_password(password, None) is False


def test_old_parameters_still_verify_and_ask_for_rehash() -> None:
    old = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    assert verify_password(PASSWORD, old)
    assert needs_rehash(old)
    assert needs_rehash("not a hash")


class _CountingHasher:
    """Wraps the real argon2 hasher and records every verification and its thread."""

    def __init__(self, real: PasswordHasher) -> None:
        self.real = real
        self.verified: list[str] = []
        self.threads: list[int] = []

    def verify(self, stored: str, password: str) -> bool:
        self.verified.append(stored)
        self.threads.append(threading.get_ident())
        return self.real.verify(stored, password)

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> _CountingHasher:
    spy = _CountingHasher(HASHER)
    monkeypatch.setattr(passwords, "HASHER", spy)
    return spy


@pytest.mark.parametrize("stored", [None, "$argon2id$garbage", "plaintext"])
def test_unknown_accounts_and_bad_hashes_cost_one_full_argon2_verify(
        counting: _CountingHasher, stored: str | None) -> None:
    """Response time must not reveal whether an account exists: every path that cannot
    verify spends exactly one argon2 verification at the configured cost."""
    assert verify_password(PASSWORD, stored) is False
    real = [h for h in counting.verified if h.startswith("$argon2id$v=19$m=32768,t=2,p=2$")]
    assert len(real) == 1
    assert extract_parameters(real[0]) == extract_parameters(hash_password("x" * 8))


def test_a_known_account_costs_one_argon2_verify(counting: _CountingHasher) -> None:
    stored = hash_password(PASSWORD)
    assert verify_password("wrong password", stored) is False
    assert verify_password(PASSWORD, stored) is True
    assert counting.verified == [stored, stored]


@pytest.mark.anyio
async def test_async_verify_runs_off_the_event_loop_thread(counting: _CountingHasher) -> None:
    stored = hash_password(PASSWORD)
    results = [await verify_password_async(PASSWORD, stored) for _ in range(3)]
    assert results == [True, True, True]
    assert len(counting.threads) == 3
    assert threading.get_ident() not in counting.threads


@pytest.mark.parametrize(("password", "message"), [
    ("short", "at least 8"),
    ("x" * 1025, "at most 1024"),
    ("dtr_pat_abcdefghijkl_xyz", "token prefixes"),
    ("dtr_rt_looks-like-a-token", "token prefixes"),
    ("bad \ud800 password", "Unicode"),
])
def test_check_password_rejects(password: str, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        check_password(password)


def test_check_password_accepts() -> None:
    check_password("12345678")
    check_password("ünïcödé pässwörd")


def test_new_secret_is_32_random_bytes_urlsafe() -> None:
    made = {new_secret() for _ in range(100)}
    assert len(made) == 100
    for secret in made:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)


def test_secret_hash_is_sha256_hex() -> None:
    assert hash_secret("abc") == hashlib.sha256(b"abc").hexdigest()
    assert hash_secret("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_secret_compare_is_constant_time_and_handles_missing_rows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    secret = new_secret()
    assert secret_matches(secret, hash_secret(secret))
    assert not secret_matches(secret + "x", hash_secret(secret))
    assert not secret_matches(secret, None)
    assert len(calls) == 3  # the missing row still costs one comparison
    assert secrets_equal("a", "a")
    assert not secrets_equal("a", "b")


def test_the_hasher_is_argon2id() -> None:
    assert HASHER.type is Type.ID
    assert HASHER.memory_cost >= 19 * 1024  # OWASP minimum for argon2id
