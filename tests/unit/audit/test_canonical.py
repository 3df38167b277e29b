"""The chain's canonical form is RFC 8785: ``dtr.audit.chain.canonical`` writes the same
bytes as the ``rfc8785`` package for every kind of field value (quotes, backslashes,
control characters, non-ASCII, U+2028, emoji, nested details), so anyone can recompute a
hash from an export with any RFC 8785 implementation.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

import pytest
import rfc8785

from dtr.audit import chain
from dtr.events import SecurityEvent

TRICKY = ['plain', 'quote " and \\ backslash', "ctl \x00\x01\x08\t\n\x0b\x0c\r\x1f\x7f",
          "é ü ß 中文 \u2028\u2029 😀", "", "</script>", "a" * 600]


def body(row: dict[str, Any]) -> dict[str, Any]:
    out = {name: row[name] for name in chain.TEXT_FIELDS}
    out.update(seq=int(row["seq"]), time=chain.format_time(row["time"]),
               detail=json.loads(row["detail"]), prev_hash=row["prev_hash"])
    return out


@pytest.mark.parametrize("text", TRICKY)
def test_canonical_is_rfc8785(text: str) -> None:
    event = SecurityEvent("manifest.pulled", "allow", actor=text, user_agent=text,
                          reason=text, detail={"z": text, "a": [1, 2.5, None, True, {"b": text}],
                                               "n": 2**40})
    row = chain.row_of(event)
    row.update(seq=123456789, prev_hash="f" * 64)
    assert chain.canonical(row) == rfc8785.dumps(body(row))


def test_random_text_is_rfc8785() -> None:
    rng = random.Random(8785)
    for _ in range(300):
        text = "".join(chr(rng.choice([rng.randrange(0, 0x80), rng.randrange(0x80, 0xD800),
                                       rng.randrange(0xE000, 0x110000)]))
                       for _ in range(rng.randrange(0, 40)))
        event = SecurityEvent("a.b", "deny", actor=text, tag=text[:10],
                              time=rng.uniform(0, 2e9), detail={text: text})
        row = chain.row_of(event)
        row.update(seq=rng.randrange(1, 2**53), prev_hash=chain.GENESIS)
        assert chain.canonical(row) == rfc8785.dumps(body(row))
        assert row["time"].tzinfo == dt.UTC


def test_detail_text_is_canonicalised_unless_known_canonical() -> None:
    """A receiver rebuilding rows from JSON (any spacing, any key order) gets the hash the
    registry computed."""
    row = chain.row_of(SecurityEvent("a.b", "allow", detail={"b": [1, {"y": 2, "x": "é"}],
                                                              "a": None}))
    row.update(seq=1, prev_hash=chain.GENESIS)
    made = chain.link_hash(row, detail_is_canonical=True)
    loose = {**row, "detail": json.dumps({"a": None, "b": [1, {"x": "é", "y": 2}]},
                                         indent=1)}
    assert loose["detail"] != row["detail"]
    assert chain.link_hash(loose) == made == chain.link_hash(row)


def test_flat_details_written_by_the_c_encoder_are_rfc8785() -> None:
    """The fast path of ``detail_text`` (flat, ASCII keys, strings, booleans, null, safe
    integers) writes what the ``rfc8785`` package writes; other details take the package."""
    rng = random.Random(2025)
    edge = [0, -1, 2**53 - 1, -(2**53) + 1, True, False, None, *TRICKY]
    for _ in range(300):
        detail: dict[str, Any] = {}
        for _ in range(rng.randrange(0, 6)):
            key = "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(rng.randrange(0, 8)))
            detail[key] = rng.choice([*edge, "".join(
                chr(rng.choice([rng.randrange(0, 0x80), rng.randrange(0x80, 0xD800),
                                rng.randrange(0xE000, 0x110000)])) for _ in range(5))])
        assert chain.detail_text(detail) == rfc8785.dumps(detail).decode()
    for odd in ({"big": 2**53}, {"f": 1.5}, {"é": "x"}, {"l": [1, "a"]}, {"s": {"b", "a"}}):
        assert chain.detail_text(odd) == rfc8785.dumps(chain._plain(odd)).decode()
