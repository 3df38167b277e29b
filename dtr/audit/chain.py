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
import itertools
import json
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    return when.astimezone(dt.UTC).isoformat(timespec="microseconds")[:26] + "Z"


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


_SAFE_INT = 2**53
_flat_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                              allow_nan=False).encode


def detail_text(detail: Mapping[str, Any]) -> str:
    """``detail`` as RFC 8785 JSON text.

    A flat mapping of ASCII keys to strings, booleans, ``None`` and integers within
    2**53 (what nearly every event carries) is written by the C JSON encoder: for those
    values its output (sorted keys, no spaces, strings escaped as RFC 8785 does) is the
    RFC 8785 form, which ``tests/unit/audit`` holds it to. Anything else goes through
    the ``rfc8785`` package; values it cannot take (sets, bytes, big integers) are made
    plain JSON first.
    """
    if not detail:
        return "{}"
    for key, value in detail.items():
        if type(key) is not str or not key.isascii():
            break
        kind = type(value)
        if kind is str or kind is bool or value is None:
            continue
        if kind is int and -_SAFE_INT < value < _SAFE_INT:
            continue
        break
    else:
        return _flat_json(detail)
    try:
        return rfc8785.dumps(dict(detail)).decode()
    except (rfc8785.CanonicalizationError, TypeError, ValueError):
        return rfc8785.dumps(_plain(dict(detail))).decode()


_fields_of = operator.attrgetter(*TEXT_FIELDS)
_WIDTH_LIST = tuple(width for _, width in _FIELD_WIDTHS)


def _texts(event: SecurityEvent) -> tuple[str, ...]:
    """The text fields of ``event`` in :data:`TEXT_FIELDS` order, clipped to their
    columns.
    """
    values: tuple[Any, ...] = _fields_of(event)
    if all(type(v) is str for v in values) and not any(
            map(operator.gt, map(len, values), _WIDTH_LIST)):
        return values
    out = []
    for value, width in zip(values, _WIDTH_LIST, strict=True):
        text = value if type(value) is str else str(value or "")
        out.append(text if len(text) <= width else text[: width - 1] + "…")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Entry:
    """An event ready to be chained: its text fields (in :data:`TEXT_FIELDS` order,
    clipped to their columns), its time (seconds since the epoch) and its ``detail`` as
    RFC 8785 text. What the recorder queues and the audit relay carries between processes.
    """

    texts: tuple[str, ...]
    time: float
    detail: str


def entry_of(event: SecurityEvent) -> Entry:
    """``event`` ready to be chained (see :class:`Entry`)."""
    return Entry(_texts(event), event.time, detail_text(event.detail))


def row_of(event: SecurityEvent) -> dict[str, Any]:
    """The row of ``event`` without its chain fields (``seq``, ``prev_hash``, ``hash``):
    text fields clipped to their columns, ``detail`` as canonical JSON text, ``time`` to
    the microsecond.
    """
    row: dict[str, Any] = dict(zip(TEXT_FIELDS, _texts(event), strict=True))
    row["time"] = dt.datetime.fromtimestamp(event.time, dt.UTC)
    row["detail"] = detail_text(event.detail)
    return row


_KEYS = tuple(sorted((*TEXT_FIELDS, "seq", "time", "detail", "prev_hash")))
_string = encode_basestring
"""A JSON string as RFC 8785 writes it: only ``"``, ``\\`` and control characters escaped
(``\\b \\t \\n \\f \\r`` short, others ``\\u00xx``), everything else as is."""
_SLOTS = (*TEXT_FIELDS, "time", "prev_hash", "detail", "seq")
"""The arguments of :func:`_canonical`'s template, escaped strings first."""
_TEMPLATE = "{" + ",".join(f'"{k}":%s' for k in _KEYS) + "}"
_in_key_order = operator.itemgetter(*(_SLOTS.index(k) for k in _KEYS))


def _canonical(texts: tuple[str, ...], seq: int, time_text: str, detail: str,
               prev_hash: str) -> bytes:
    escaped = (*map(_string, (*texts, time_text, prev_hash)), detail, str(seq))
    text: str = _TEMPLATE % _in_key_order(escaped)
    return text.encode()


def canonical(row: Mapping[str, Any], *, detail_is_canonical: bool = False) -> bytes:
    """The bytes a row's hash covers: RFC 8785 JSON of every column but ``hash``, with
    ``time`` as :func:`format_time` text and ``detail`` (JSON text) as its JSON value;
    ``detail_is_canonical``: the text is RFC 8785 already (:func:`row_of` made it), so it
    is used as is rather than parsed and written again.

    Written directly (every member is a string but ``seq``, an integer, and ``detail``,
    canonical already); ``tests/unit/audit`` holds it to ``rfc8785.dumps`` of the same
    object.
    """
    detail = (str(row["detail"]) if detail_is_canonical
              else rfc8785.dumps(json.loads(row["detail"])).decode())
    return _canonical(tuple(str(row[name]) for name in TEXT_FIELDS), int(row["seq"]),
                      format_time(row["time"]), detail, str(row["prev_hash"]))


def link_hash(row: Mapping[str, Any], *, detail_is_canonical: bool = False) -> str:
    """The hash of ``row`` (its ``prev_hash`` included; see :func:`canonical`)."""
    return hashlib.sha256(canonical(row, detail_is_canonical=detail_is_canonical)).hexdigest()


_INSERT_COLUMNS = ("seq", "time", *TEXT_FIELDS, "detail", "prev_hash", "hash")
_ROWS_PER_INSERT = (256, 32, 4, 1)
"""The row counts an ``INSERT`` statement carries (22 parameters a row: within every
backend's limit of 32766). A batch is cut into the largest that fit, so at most four
statements per dialect are ever built and prepared, whatever the batch sizes."""
_MARKS: dict[str, Callable[[int], str]] = {
    "qmark": lambda i: "?", "format": lambda i: "%s", "numeric": lambda i: f":{i}",
    "numeric_dollar": lambda i: f"${i}"}
_inserts: dict[tuple[str, str, int], str] = {}
_binders: dict[tuple[str, str], Callable[[dt.datetime, str], Any]] = {}


def _insert_sql(conn: Connection, rows: int) -> str | None:
    """The driver-level multi-row ``INSERT`` of ``rows`` event rows for the connection's
    dialect (None: a paramstyle this does not write).
    """
    dialect = conn.dialect
    key = (dialect.name, dialect.driver, rows)
    sql = _inserts.get(key)
    if sql is None:
        mark = _MARKS.get(dialect.paramstyle)
        if mark is None:
            return None
        preparer = dialect.identifier_preparer
        width = len(_INSERT_COLUMNS)
        values = ", ".join(
            "(" + ", ".join(mark(r * width + i + 1) for i in range(width)) + ")"
            for r in range(rows))
        sql = _inserts[key] = (
            f"INSERT INTO {preparer.format_table(AuditEvent.__table__)} "  # noqa: S608 - model names
            f"({', '.join(preparer.quote(c) for c in _INSERT_COLUMNS)}) VALUES {values}")
    return sql


def _time_binder(conn: Connection) -> Callable[[dt.datetime, str], Any]:
    """How the ``time`` column is bound on the connection's dialect, from an event's time
    and its :func:`format_time` text.

    The type's own bind processor (or the datetime itself when it has none), except where
    that processor writes the canonical text with a space for the ``T`` and without the
    ``Z`` (SQLite: ``YYYY-MM-DD HH:MM:SS.ffffff``): there the text is cut from the
    canonical one, which costs a fraction of formatting the datetime again. Which one is
    decided once per dialect by comparing both on sample times.
    """
    key = (conn.dialect.name, conn.dialect.driver)
    binder = _binders.get(key)
    if binder is None:
        kind = AuditEvent.__table__.c.time.type
        process = kind.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        if process is None:
            binder = _as_datetime
        else:
            samples = (dt.datetime(2026, 11, 30, 13, 5, 7, 123456, dt.UTC),
                       dt.datetime(1999, 1, 2, 3, 4, 5, 0, dt.UTC))
            if all(_cut(when, format_time(when)) == process(when) for when in samples):
                binder = _cut
            else:
                def binder(when: dt.datetime, _text: str) -> Any:
                    return process(when)
        _binders[key] = binder
    return binder


def _as_datetime(when: dt.datetime, _text: str) -> dt.datetime:
    return when


def _cut(_when: dt.datetime, text: str) -> str:
    return text[:10] + " " + text[11:26]


def _insert(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert event rows (tuples in :data:`_INSERT_COLUMNS` order) with as few statements
    as possible: each one crosses into the driver once (on SQLite one ``sqlite3_step``
    and one release of the GIL per statement, not per row).
    """
    start = 0
    while start < len(rows):
        size = next(n for n in _ROWS_PER_INSERT if n <= len(rows) - start)
        part = rows[start:start + size]
        start += size
        sql = _insert_sql(conn, size)
        if sql is None:
            conn.execute(insert(AuditEvent), [dict(zip(_INSERT_COLUMNS, r, strict=True))
                                              for r in part])
        else:
            conn.exec_driver_sql(sql, tuple(itertools.chain.from_iterable(part)))


def append(conn: Connection, events: Sequence[SecurityEvent | Entry]) -> tuple[int, str]:
    """Chain ``events`` after the current head and insert them, in the caller's
    transaction. Takes the chain lock (the ``audit_head`` row) until the transaction ends:
    call it last, right before commit (``Database.before_commit``), so the lock is held
    only while committing.

    The rows go in with driver-level multi-row ``INSERT`` statements of prepared tuples
    (the SQLAlchemy ``insert`` costs more per row than chaining it).

    Returns:
        The new head: the last event's ``seq`` and ``hash`` (unchanged when ``events`` is
        empty).
    """
    if not events:
        return head(conn)
    found = conn.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)
                         .with_for_update()).one()
    seq, prev = int(found.seq), str(found.hash)
    bind = _time_binder(conn)
    rows: list[tuple[Any, ...]] = []
    for event in events:
        entry = event if isinstance(event, Entry) else entry_of(event)
        seq += 1
        texts, detail = entry.texts, entry.detail
        when = dt.datetime.fromtimestamp(entry.time, dt.UTC)
        text = format_time(when)
        digest = hashlib.sha256(_canonical(texts, seq, text, detail, prev)).hexdigest()
        rows.append((seq, bind(when, text), *texts, detail, prev, digest))
        prev = digest
    _insert(conn, rows)
    conn.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=seq, hash=prev))
    return seq, prev


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
