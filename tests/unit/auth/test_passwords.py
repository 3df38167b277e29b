"""Passwords (argon2id) and random secrets: round trips, never raising on bad hashes,
constant cost for unknown accounts, the event loop left free, and the measured cost."""

from __future__ import annotations

import hashlib
import hmac
import re
import statistics
import time

import anyio
import pytest
from argon2 import PasswordHasher, Type

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


def _median_ms(fn: object, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def test_verify_cost_is_bounded_and_the_same_for_unknown_accounts() -> None:
    stored = hash_password(PASSWORD)
    verify_password("warm up", None)
    known = _median_ms(lambda: verify_password(PASSWORD, stored))
    wrong = _median_ms(lambda: verify_password("wrong password", stored))
    unknown = _median_ms(lambda: verify_password(PASSWORD, None))
    malformed = _median_ms(lambda: verify_password(PASSWORD, "$argon2id$garbage"))
    print(f"argon2id verify median: right {known:.1f} ms, wrong {wrong:.1f} ms, "
          f"unknown account {unknown:.1f} ms, malformed hash {malformed:.1f} ms")
    assert known < 250, "argon2 verify far above the ~45 ms budget (or a very busy host)"
    for other in (wrong, unknown, malformed):
        assert 0.5 < other / known < 2.0


@pytest.mark.anyio
async def test_async_verify_leaves_the_event_loop_free() -> None:
    stored = hash_password(PASSWORD)
    gaps: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.sleep(0.01)
        results = [await verify_password_async(PASSWORD, stored) for _ in range(3)]
        done.set()
    assert results == [True, True, True]
    assert len(gaps) > 10
    # a verify on the loop thread would stall the ticker for ~45 ms each time
    assert statistics.median(gaps) < 0.02


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
