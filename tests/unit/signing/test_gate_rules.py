"""Decision tables of the signing gate's pure rules: which stored verdict counts toward a
policy (format, key status, retirement time, notation stores), repository globs and which
policy governs a repository, and the gate's exemptions for signature tags. The stateful
rules (states, k-of-n, inheritance, revocation, audit mode) run in
``tests/integration/test_signing_gate.py``.
"""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from dtr.core.hooks import ManifestWrite
from dtr.signing.gate import signature_subject
from dtr.signing.keys import TrustedKey
from dtr.signing.notation import NotationPolicy
from dtr.signing.policy import (
    ALL_FORMATS,
    LoadedKey,
    LoadedPolicy,
    PolicyError,
    PolicySet,
    normalise_formats,
    pattern_matches,
)
from dtr.signing.trust import counts
from tests.unit.signing import material as m

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
KEY = TrustedKey.from_pem(m.public_pem(m.new_key("p256")))


def policy(status: str = "active", retired_at: dt.datetime | None = None,
           formats: tuple[str, ...] = ALL_FORMATS, notation: bool = False,
           pattern: str = "prod/**", name: str = "p") -> LoadedPolicy:
    keys = {KEY.id: LoadedKey(KEY.id, status, retired_at, None, KEY)}
    stores = (NotationPolicy("n", (), ()),) if notation else ()
    return LoadedPolicy(1, name, pattern, True, "enforce", 1, False, formats, 1, keys, stores)


def row(signer: str | None = KEY.id, valid: bool = True, fmt: str = "cosign-bundle",
        first: dt.datetime = T0) -> SimpleNamespace:
    return SimpleNamespace(signer=signer, valid=valid, format=fmt, first_verified_at=first)


@pytest.mark.parametrize(("pol", "rec", "expected"), [
    (policy(), row(), True),
    (policy(), row(valid=False), False),
    (policy(), row(signer="f" * 64), False),
    (policy(), row(signer=None), False),
    (policy(formats=("notation-jws",)), row(), False),
    (policy(status="revoked"), row(), False),
    (policy(status="retired", retired_at=T0 + dt.timedelta(days=1)), row(), True),
    (policy(status="retired", retired_at=T0 - dt.timedelta(days=1)), row(), False),
    (policy(status="retired", retired_at=None), row(), False),
    (policy(notation=True), row(signer="CN=x", fmt="notation-jws"), True),
    (policy(), row(signer="CN=x", fmt="notation-jws"), False),
], ids=["active", "invalid", "unknown-key", "no-signer", "format-not-accepted", "revoked",
        "retired-after-receipt", "retired-before-receipt", "retired-no-time",
        "notation-with-store", "notation-without-store"])
def test_which_verdicts_count(pol: LoadedPolicy, rec: SimpleNamespace, expected: bool) -> None:
    assert counts(pol, rec) is expected


@pytest.mark.parametrize(("pattern", "repository", "expected"), [
    ("prod/**", "prod/app", True),
    ("prod/**", "prod/a/b", True),
    ("prod/**", "production/app", False),
    ("prod/*", "prod/app", True),
    ("prod/*", "prod/a/b", False),
    ("*/app", "prod/app", True),
    ("**", "anything/at/all", True),
    ("prod/app", "prod/app", True),
    ("prod/app", "prod/app2", False),
    ("team-*/app", "team-a/app", True),
])
def test_repository_globs(pattern: str, repository: str, expected: bool) -> None:
    assert pattern_matches(pattern, repository) is expected


def test_the_most_specific_policy_governs() -> None:
    broad = policy(pattern="prod/**", name="broad")
    narrow = policy(pattern="prod/app", name="narrow")
    ps = PolicySet(1, tuple(sorted([broad, narrow],
                                   key=lambda p: (p.pattern.count("*"), -len(p.pattern)))))
    assert ps.covering("prod/app") is narrow
    assert ps.covering("prod/other") is broad
    assert ps.covering("staging/app") is None


def test_formats_shorthands() -> None:
    assert normalise_formats(["cosign"]) == ("cosign-legacy", "cosign-oci11", "cosign-bundle")
    assert normalise_formats(["notation", "notation-jws"]) == ("notation-jws", "notation-cose")
    with pytest.raises(PolicyError):
        normalise_formats(["gpg"])


D = "sha256:" + "a" * 64


@pytest.mark.parametrize(("subject", "tags", "expected"), [
    (D, (), D),
    (None, ("sha256-" + "a" * 64 + ".sig",), D),
    (None, ("sha256-" + "a" * 64 + ".att",), D),
    (None, ("sha256-" + "a" * 64,), None),
    (None, ("1.0",), None),
])
def test_signature_objects_are_classified(subject: str | None, tags: tuple[str, ...],
                                          expected: str | None) -> None:
    write = ManifestWrite("prod/app", "sha256:" + "b" * 64, m.OCI_MANIFEST, None, subject,
                          b"{}", tags)
    assert signature_subject(write) == expected
