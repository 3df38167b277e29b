"""Reading the audit log for auditors: filters (:class:`AuditFilter`), pages newest or oldest
first with opaque keyset cursors on ``seq`` (:func:`query_page`), counts (:func:`count`),
the page-by-page row stream exports are made of (:func:`stream_pages`), and pages of signed
checkpoints (:func:`checkpoint_page`).

Filters and how each reaches an index of ``audit_event``:

* ``since`` / ``until``: ``since <= time < until`` (``ix_audit_event_time``, or the primary
  key (seq, time) read backwards; partition pruning on PostgreSQL).
* ``actor``: the account name, exactly (``ix_audit_event_actor`` = (actor, seq)).
* ``action``: exactly, or a prefix with a trailing ``*`` (``auth.*``)
  (``ix_audit_event_action``; ``LIKE 'auth.%'`` on PostgreSQL, whose
  ``varchar_pattern_ops`` index serves it under any collation; ``GLOB 'auth.*'`` on SQLite).
* ``repository``: a glob with the repository-glob semantics of the access policy and of
  token scopes (``*`` stays inside one ``/``-separated part, ``**`` crosses ``/``, the rest
  is literal; ``prod/**`` matches ``prod/x/y``). SQL matches it with every ``*`` and ``**``
  as "anything" — exact for ``**``, narrowed through ``ix_audit_event_repository`` by the
  literal prefix, or on PostgreSQL through ``ix_audit_event_repository_reversed`` by the
  literal suffix when the glob starts with ``*``; a single ``*`` is then checked on the
  rows in Python (a slash count in SQL would hide from the planner how many rows the
  prefix selects), reading on until the page is full.
* ``outcome``: ``allow``, ``deny`` or ``error`` (``ix_audit_event_outcome``).

Every read is ordered by ``seq``; a page reads one row more than it returns to know whether
another follows. Nothing here holds more than one page of rows.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, Connection, Select, and_, func, select

from dtr.audit.chain import COLUMNS, format_time, head
from dtr.audit.checkpoints import Checkpoint
from dtr.db.database import Database
from dtr.db.models import AuditCheckpoint, AuditEvent
from dtr.errors import Invalid
from dtr.globs import glob_match

Order = Literal["asc", "desc"]
OUTCOMES = ("allow", "deny", "error")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
EXPORT_PAGE = 2000
"""Rows per database read of an export (one chunk of the stream)."""
_SCAN = 2000
"""Most rows read per step while a glob is matched in Python."""
_ACTION = re.compile(r"[A-Za-z0-9._:/-]+\*?")
_GLOB = re.compile(r"[A-Za-z0-9._/*:@+-]+")
_CURSOR = re.compile(r"(\d{1,19}):(asc|desc)")


# -- globs ------------------------------------------------------------------------------------

def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _sqlite_glob(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _wildcard(column: Any, pieces: Sequence[str], postgres: bool) -> ColumnElement[bool]:
    """``column`` matches the literal ``pieces`` joined by "anything" (case-sensitive;
    index-served for the first piece).
    """
    if postgres:
        return column.like("%".join(_like(p) for p in pieces), escape="\\")  # type: ignore[no-any-return]
    return column.op("GLOB")("*".join(_sqlite_glob(p) for p in pieces))  # type: ignore[no-any-return]


# -- filters ----------------------------------------------------------------------------------

def parse_time(value: str, name: str) -> dt.datetime:
    """An RFC 3339 time (``2026-11-30T08:00:00Z``, ``…+01:00``) or a date (midnight UTC).

    Raises:
        Invalid: not such a time, or no time zone.
    """
    text = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
        when = dt.datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise Invalid(f"{name}: {value!r} is not an RFC 3339 time "
                      "(2026-11-30T08:00:00Z)") from None
    if when.tzinfo is None:
        raise Invalid(f"{name}: {value!r} has no time zone (add Z or +hh:mm)")
    return when.astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which events to read (every field optional; all given ones must hold).

    Attributes:
        since: events at or after this time.
        until: events before this time.
        actor: the actor's name, exactly.
        action: the action exactly, or a prefix ending in ``*`` (``auth.*``).
        repository: a repository glob (``prod/**``, ``acme/*``, ``acme/app``).
        outcome: ``allow``, ``deny`` or ``error``.
    """

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    actor: str | None = None
    action: str | None = None
    repository: str | None = None
    outcome: str | None = None

    @classmethod
    def parse(cls, *, since: str | None = None, until: str | None = None,
              actor: str | None = None, action: str | None = None,
              repository: str | None = None, outcome: str | None = None) -> AuditFilter:
        """A filter from request text (empty values mean "no filter").

        Raises:
            Invalid: a time that is not RFC 3339, an action with a ``*`` elsewhere than at
                its end, a repository glob with characters a repository cannot have, an
                unknown outcome, or ``since`` not before ``until``.
        """
        start = parse_time(since, "since") if since else None
        end = parse_time(until, "until") if until else None
        if start and end and start >= end:
            raise Invalid("since must be before until")
        if action and not _ACTION.fullmatch(action):
            raise Invalid(f"action: {action!r} is not an action name, or a prefix ending "
                          "in * (auth.*)")
        if repository and (not _GLOB.fullmatch(repository) or "***" in repository):
            raise Invalid(f"repository: {repository!r} is not a repository glob "
                          "(* = one path part, ** = any)")
        if outcome and outcome not in OUTCOMES:
            raise Invalid(f"outcome: {outcome!r} is not one of {', '.join(OUTCOMES)}")
        return cls(since=start, until=end, actor=actor or None, action=action or None,
                   repository=repository or None, outcome=outcome or None)

    def params(self) -> dict[str, str]:
        """The filter as request query parameters (for links to the next page)."""
        found = {"since": format_time(self.since) if self.since else None,
                 "until": format_time(self.until) if self.until else None,
                 "actor": self.actor, "action": self.action, "repository": self.repository,
                 "outcome": self.outcome}
        return {k: v for k, v in found.items() if v}

    @property
    def exact_in_sql(self) -> bool:
        """False when the repository glob has a single ``*`` (SQL then narrows the rows by
        its literal parts and :meth:`keeps` decides).
        """
        return "*" not in (self.repository or "").replace("**", "")

    def keeps(self, row: Mapping[str, Any]) -> bool:
        """True if ``row`` matches (the part SQL could not decide: the repository glob)."""
        return self.repository is None or glob_match(self.repository, str(row["repository"]))

    def where(self, postgres: bool) -> list[ColumnElement[bool]]:
        """The SQL conditions (exact, except the mixed globs :attr:`exact_in_sql` names)."""
        conds: list[ColumnElement[bool]] = []
        if self.since is not None:
            conds.append(AuditEvent.time >= self.since)
        if self.until is not None:
            conds.append(AuditEvent.time < self.until)
        if self.actor is not None:
            conds.append(AuditEvent.actor == self.actor)
        if self.outcome is not None:
            conds.append(AuditEvent.outcome == self.outcome)
        if self.action is not None:
            if self.action.endswith("*"):
                if self.action != "*":
                    conds.append(_wildcard(AuditEvent.action, [self.action[:-1], ""],
                                           postgres))
            else:
                conds.append(AuditEvent.action == self.action)
        if self.repository is not None:
            conds.extend(self._glob(postgres))
        return conds

    def _glob(self, postgres: bool) -> list[ColumnElement[bool]]:
        glob = str(self.repository)
        if "*" not in glob:
            return [AuditEvent.repository == glob]
        # "Anything" for every * and **: exact for **, a superset for * (no slash test in
        # SQL: it would hide from the planner how many rows the prefix selects).
        pieces = re.split(r"\*\*?", glob)
        conds = [_wildcard(AuditEvent.repository, pieces, postgres)]
        if postgres and not pieces[0] and pieces[-1]:
            # No literal prefix to narrow by: the literal suffix, through the index on
            # reverse(repository).
            conds.append(func.reverse(AuditEvent.repository).like(
                _like(pieces[-1][::-1]) + "%", escape="\\"))
        return conds


# -- cursors ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the next page starts: after ``seq``, in ``order``."""

    seq: int
    order: Order

    def encode(self) -> str:
        """The opaque cursor text (URL-safe base64)."""
        return base64.urlsafe_b64encode(f"{self.seq}:{self.order}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Read a cursor made by :meth:`encode`.

        Raises:
            Invalid: it is not one.
        """
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raw = ""
        found = _CURSOR.fullmatch(raw)
        if found is None:
            raise Invalid("cursor: not a cursor this API returned")
        order: Order = "asc" if found.group(2) == "asc" else "desc"
        return cls(int(found.group(1)), order)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of events and the cursor of the next (None on the last page)."""

    rows: list[dict[str, Any]]
    next: Cursor | None


# -- reads ------------------------------------------------------------------------------------

_SELECTED = [getattr(AuditEvent, c) for c in COLUMNS]


def _rows(conn: Connection, flt: AuditFilter, order: Order, after: int | None,
          limit: int, upto: int | None = None) -> list[dict[str, Any]]:
    """Up to ``limit`` matching rows after ``after`` in ``order`` (and at most ``upto``)."""
    postgres = conn.dialect.name == "postgresql"
    base: Select[Any] = select(*_SELECTED)
    conds = flt.where(postgres)
    if upto is not None:
        conds.append(AuditEvent.seq <= upto)
    out: list[dict[str, Any]] = []
    step = limit
    while len(out) < limit:
        where = list(conds)
        if after is not None:
            where.append(AuditEvent.seq > after if order == "asc" else AuditEvent.seq < after)
        stmt = base.where(and_(*where)) if where else base
        stmt = stmt.order_by(AuditEvent.seq.asc() if order == "asc"
                             else AuditEvent.seq.desc()).limit(step)
        batch = [dict(r._mapping) for r in conn.execute(stmt)]
        out.extend(r for r in batch if flt.keeps(r))
        if len(batch) < step:
            break
        after = int(batch[-1]["seq"])
        step = min(max(step * 2, limit), _SCAN)  # rows SQL could not rule out: read more
    return out[:limit]


def _clamp(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit: between 1 and {MAX_LIMIT}")
    return limit


def _position(order: Order | None, default: Order,
              cursor: str | None) -> tuple[int | None, Order]:
    """Where a page starts (the ``seq`` after which to read, or None) and in which order:
    the cursor's, else ``order``, else ``default``.

    Raises:
        Invalid: a bad cursor, or a cursor of the other order than ``order``.
    """
    if not cursor:
        return None, order or default
    mark = Cursor.decode(cursor)
    if order is not None and order != mark.order:
        raise Invalid(f"cursor: it continues a listing in {mark.order} order, not {order}")
    return mark.seq, mark.order


async def query_page(db: Database, flt: AuditFilter, *, order: Order | None = None,
                     limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page:
    """One page of matching events, newest first (``order="asc"``: oldest first).

    Args:
        db: the metadata database.
        flt: which events.
        order: ``desc`` (default) or ``asc``; a cursor carries its own order.
        limit: events per page (1..1000).
        cursor: the ``next`` of the previous page (with the same filter).

    Raises:
        Invalid: a bad limit or cursor, or a cursor of the other order.
    """
    _clamp(limit)
    after, chosen = _position(order, "desc", cursor)

    def read(conn: Connection) -> list[dict[str, Any]]:
        return _rows(conn, flt, chosen, after, limit + 1)

    rows = await db.run(read, write=False)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, Cursor(int(rows[-1]["seq"]), chosen) if more else None)


async def count(db: Database, flt: AuditFilter, upto: int | None = None) -> int:
    """How many events match ``flt`` (with ``seq`` at most ``upto``)."""

    def read(conn: Connection) -> int:
        conds = flt.where(conn.dialect.name == "postgresql")
        if upto is not None:
            conds.append(AuditEvent.seq <= upto)
        if flt.exact_in_sql:
            stmt = select(func.count()).select_from(AuditEvent)
            return int(conn.execute(stmt.where(and_(*conds)) if conds else stmt).scalar_one())
        per_name = conn.execute(select(AuditEvent.repository, func.count())
                                .where(and_(*conds)).group_by(AuditEvent.repository))
        return sum(int(n) for name, n in per_name if glob_match(str(flt.repository), name))

    return await db.run(read, write=False)


async def chain_head(db: Database) -> int:
    """The sequence number of the last chained event (0 when there is none)."""
    return (await db.run(head, write=False))[0]


async def stream_pages(db: Database, flt: AuditFilter, *, page: int = EXPORT_PAGE,
                       upto: int | None = None) -> AsyncIterator[list[dict[str, Any]]]:
    """The matching events in ``seq`` order, one page (one short read transaction) at a
    time, so memory holds one page whatever the size of the log.

    Args:
        db: the metadata database.
        flt: which events.
        page: rows per read.
        upto: stop after this ``seq`` (exports pass the chain head they started at, so a
            busy registry cannot make them run forever).
    """
    after: int | None = None
    while True:
        def read(conn: Connection, after: int | None = after) -> list[dict[str, Any]]:
            return _rows(conn, flt, "asc", after, page, upto)

        rows = await db.run(read, write=False)
        if rows:
            yield rows
        if len(rows) < page:
            return
        after = int(rows[-1]["seq"])


def event_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored row as the API shows it: ``time`` as RFC 3339 text, ``detail`` as an
    object, every other column as stored.
    """
    out = {name: row[name] for name in COLUMNS}
    out["seq"] = int(row["seq"])
    out["time"] = format_time(row["time"])
    out["detail"] = json.loads(row["detail"])
    return out


@dataclass(frozen=True, slots=True)
class CheckpointPage:
    """One page of checkpoints and the cursor of the next (None on the last page)."""

    checkpoints: list[Checkpoint]
    next: Cursor | None


async def checkpoint_page(db: Database, *, order: Order | None = None,
                          limit: int = DEFAULT_LIMIT,
                          cursor: str | None = None) -> CheckpointPage:
    """One page of signed checkpoints, oldest first (``order="desc"``: newest first).

    Raises:
        Invalid: a bad limit or cursor, or a cursor of the other order.
    """
    _clamp(limit)
    after, chosen = _position(order, "asc", cursor)

    def read(conn: Connection) -> list[Checkpoint]:
        stmt = select(AuditCheckpoint.__table__)
        if after is not None:
            stmt = stmt.where(AuditCheckpoint.seq > after if chosen == "asc"
                              else AuditCheckpoint.seq < after)
        stmt = stmt.order_by(AuditCheckpoint.seq.asc() if chosen == "asc"
                             else AuditCheckpoint.seq.desc()).limit(limit + 1)
        return [Checkpoint(r.seq, r.hash, r.time, r.kind, r.key_id, r.signature)
                for r in conn.execute(stmt)]

    found = await db.run(read, write=False)
    more = len(found) > limit
    found = found[:limit]
    return CheckpointPage(found, Cursor(found[-1].seq, chosen) if more else None)
