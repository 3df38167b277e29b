"""The hash chain: how an audit event becomes a row (:func:`row_of`), how its hash is
computed (:func:`link_hash`), how events are appended under the chain lock
(:func:`append`) and how stored rows are checked (:class:`ChainWalker`).

``hash(n) = SHA-256(RFC 8785 canonical JSON of event n's fields, with "seq": n and
"prev_hash": hash(n-1))``, hex; the first event's ``prev_hash`` is 64 zeros. Any change to
a stored field, a deleted, inserted or reordered row breaks the link at the first row
affected, which is what the walker names.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring  # the C escaper when available
from typing import Any

import rfc8785
from sqlalchemy import Connection, insert, select, update

from dtr.db.models import AuditEvent, AuditHead
from dtr.events import SecurityEvent

GENESIS = "0" * 64
TEXT_FIELDS = ("action", "outcome", "actor_kind", "actor_id", "actor", "method", "token_id",
               "client_ip", "user_agent", "request_id", "org", "repository", "tag",
               "digest", "resource", "reason", "rule")
"""Every text field of an event, in column order (limits: the column widths)."""
_WIDTHS = {c.name: getattr(c.type, "length", None) for c in AuditEvent.__table__.columns}
_FIELD_WIDTHS = tuple((name, _WIDTHS.get(name) or 1 << 30) for name in TEXT_FIELDS)
COLUMNS = ("seq", "time", *TEXT_FIELDS, "detail", "prev_hash", "hash")
"""The columns of an event row, in the order exports write them."""


def format_time(when: dt.datetime) -> str:
    """The canonical text of an event time: UTC, microseconds, ``Z``."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _plain(value: Any) -> Any:
    """``value`` as JSON types RFC 8785 accepts (sets sorted, bytes and others as text,
    integers beyond 2**53 as text).
    """
    return json.loads(json.dumps(value, default=_default),
                      parse_int=lambda s: int(s) if abs(int(s)) < 2**53 else s)


def _default(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=str)
    return str(value)


def row_of(event: SecurityEvent) -> dict[str, Any]:
    """The row of ``event`` without its chain fields (``seq``, ``prev_hash``, ``hash``):
    text fields clipped to their columns, ``detail`` as canonical JSON text, ``time`` to
    the microsecond.
    """
    row: dict[str, Any] = {}
    for name, width in _FIELD_WIDTHS:
        value = getattr(event, name)
        value = value if type(value) is str else str(value or "")
        row[name] = value if len(value) <= width else value[: width - 1] + "…"
    row["time"] = dt.datetime.fromtimestamp(event.time, dt.UTC)
    try:
        row["detail"] = rfc8785.dumps(dict(event.detail)).decode()
    except (rfc8785.CanonicalizationError, TypeError, ValueError):
        row["detail"] = rfc8785.dumps(_plain(dict(event.detail))).decode()
    return row


_KEYS = tuple(sorted((*TEXT_FIELDS, "seq", "time", "detail", "prev_hash")))
_string = encode_basestring
"""A JSON string as RFC 8785 writes it: only ``"``, ``\\`` and control characters escaped
(``\\b \\t \\n \\f \\r`` short, others ``\\u00xx``), everything else as is."""


def canonical(row: Mapping[str, Any], *, detail_is_canonical: bool = False) -> bytes:
    """The bytes a row's hash covers: RFC 8785 JSON of every column but ``hash``, with
    ``time`` as :func:`format_time` text and ``detail`` (JSON text) as its JSON value;
    ``detail_is_canonical``: the text is RFC 8785 already (:func:`row_of` made it), so it
    is used as is rather than parsed and written again.

    Written directly (every member is a string but ``seq``, an integer, and ``detail``,
    canonical already); ``tests/unit/audit`` holds it to ``rfc8785.dumps`` of the same
    object.
    """
    parts = []
    for key in _KEYS:
        if key == "seq":
            value = str(int(row["seq"]))
        elif key == "detail":
            value = (str(row["detail"]) if detail_is_canonical
                     else rfc8785.dumps(json.loads(row["detail"])).decode())
        elif key == "time":
            value = _string(format_time(row["time"]))
        else:
            value = _string(str(row[key]))
        parts.append(f'"{key}":{value}')
    return ("{" + ",".join(parts) + "}").encode()


def link_hash(row: Mapping[str, Any], *, detail_is_canonical: bool = False) -> str:
    """The hash of ``row`` (its ``prev_hash`` included; see :func:`canonical`)."""
    return hashlib.sha256(canonical(row, detail_is_canonical=detail_is_canonical)).hexdigest()


def append(conn: Connection, events: Sequence[SecurityEvent]) -> list[dict[str, Any]]:
    """Chain ``events`` after the current head and insert them, in the caller's
    transaction. Takes the chain lock (the ``audit_head`` row) until the transaction ends:
    call it last, right before commit (``Database.before_commit``), so the lock is held
    only while committing.

    Returns:
        The rows written, with their ``seq`` and ``hash``.
    """
    if not events:
        return []
    head = conn.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)
                        .with_for_update()).one()
    seq, prev = int(head.seq), str(head.hash)
    rows: list[dict[str, Any]] = []
    for event in events:
        seq += 1
        row = row_of(event)
        row["seq"], row["prev_hash"] = seq, prev
        row["hash"] = prev = link_hash(row, detail_is_canonical=True)
        rows.append(row)
    conn.execute(insert(AuditEvent), rows)
    conn.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=seq, hash=prev))
    return rows


def head(conn: Connection) -> tuple[int, str]:
    """The last chained event's ``seq`` and ``hash`` (``(0, GENESIS)`` when empty)."""
    found = conn.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
    return int(found.seq), str(found.hash)


@dataclass(frozen=True, slots=True)
class Break:
    """Where the chain is broken.

    Attributes:
        seq: the first sequence number that does not verify.
        problem: ``modified`` (the row's fields do not match its hash), ``deleted`` (rows
            are missing before it), ``inserted`` (a row with a sequence number already
            seen or not following its predecessor), ``reordered`` (its link names a
            different predecessor), ``head`` (the chain head disagrees with the last row:
            rows missing at the end), ``anchor`` (the first row after a retention cut does
            not match its signed checkpoint).
        message: a sentence for people.
    """

    seq: int
    problem: str
    message: str


class ChainWalker:
    """Checks rows in ``seq`` order, one at a time (constant memory).

    Args:
        start_seq: the sequence number expected first (1, or the first after a retention
            checkpoint).
        start_hash: the hash the first row must link to (``GENESIS`` or the checkpoint's).
    """

    def __init__(self, start_seq: int = 1, start_hash: str = GENESIS) -> None:
        self.expected = start_seq
        self.prev = start_hash
        self.checked = 0

    def feed(self, row: Mapping[str, Any]) -> Break | None:
        """Check the next row; a :class:`Break` at the first one that does not verify."""
        seq = int(row["seq"])
        if seq < self.expected:
            return Break(seq, "inserted", f"event {seq} appears after event "
                         f"{self.expected - 1}: a row was inserted or reordered")
        if seq > self.expected:
            return Break(self.expected, "deleted",
                         f"events {self.expected}..{seq - 1} are missing")
        if link_hash(row) != row["hash"]:
            return Break(seq, "modified", f"event {seq} does not match its hash: "
                         "its fields were changed")
        if row["prev_hash"] != self.prev:
            return Break(seq, "reordered", f"event {seq} links to a different predecessor: "
                         "rows were replaced, inserted or reordered before it")
        self.prev = str(row["hash"])
        self.expected = seq + 1
        self.checked += 1
        return None

    def walk(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[Break]:
        """Feed every row; yields the first break (then stops)."""
        for row in rows:
            found = self.feed(row)
            if found is not None:
                yield found
                return
