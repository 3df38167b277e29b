"""The reads of a credential check on the embedded database, inline on the event loop.

Every login (one per registry token a client fetches) reads the failed-login rows of its
name and address and the account or token row. Through ``Database.run`` that is a worker
thread hop plus a SQLAlchemy transaction, several hundred microseconds, more than the
queries. On SQLite these reads run on a plain ``sqlite3`` connection of this process
instead (read-only, autocommit: WAL readers never wait for writers; a query takes
microseconds), with statements compiled once from the models and results converted by
the columns' own SQLAlchemy types, so a login still reads the database every time: a
disabled account, a new password, a revoked token or a lock-out counted by another
process count at once. PostgreSQL keeps ``Database.run`` (no thread there).

The connection is ``dtr.db.reads.ReadOnlySqlite``, the one the pull path's fast reads use;
this module owns the login statements and their result conversion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.sql.selectable import SelectBase

from dtr.db.models import LoginFailure
from dtr.db.reads import ReadOnlySqlite

Row = tuple[Any, ...]
_DIALECT = sqlite.dialect(paramstyle="named")


class _Statement:
    """One SELECT compiled for ``sqlite3`` (named parameters), with its columns' result
    conversions (``None`` where a value is stored as read).
    """

    def __init__(self, stmt: SelectBase) -> None:
        self.sql = str(stmt.compile(dialect=_DIALECT))
        self.names = tuple(str(c.key) for c in stmt.selected_columns)
        self.convert: tuple[Callable[[Any], Any] | None, ...] = tuple(
            c.type.dialect_impl(_DIALECT).result_processor(_DIALECT, None)
            for c in stmt.selected_columns)

    def row(self, raw: Sequence[Any]) -> Row:
        return tuple(v if f is None else f(v) for f, v in zip(self.convert, raw, strict=True))


# the limiter's keys of one check: the account's and the address's ("" never matches)
FAILURES = _Statement(select(LoginFailure.key, LoginFailure.count, LoginFailure.window_start)
                      .where(LoginFailure.key.in_([bindparam("k1"), bindparam("k2")])))


class InlineLoginReads:
    """Login reads on the process's read-only ``sqlite3`` connection
    (:class:`dtr.db.reads.ReadOnlySqlite`, opened on first use).

    Args:
        path: the SQLite database file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._sqlite = ReadOnlySqlite(path)

    @classmethod
    def for_url(cls, url: str) -> InlineLoginReads | None:
        """A reader for a file SQLite URL; None for PostgreSQL and in-memory databases."""
        parsed = make_url(url)
        path = parsed.database
        if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
            return None
        return cls(path)

    def all(self, stmt: _Statement, params: dict[str, Any]) -> list[Row]:
        """Every row of ``stmt``, converted.

        Raises:
            Unavailable: the database cannot be read.
        """
        return [stmt.row(r) for r in self._sqlite.all(stmt.sql, params)]

    def one(self, stmt: _Statement, params: dict[str, Any]) -> dict[str, Any] | None:
        """The first row of ``stmt`` as a dict by column key, or None."""
        rows = self.all(stmt, params)
        return dict(zip(stmt.names, rows[0], strict=True)) if rows else None

    def close(self) -> None:
        """Close the connection (it reopens on the next read)."""
        self._sqlite.close()


def statement(stmt: SelectBase) -> _Statement:
    """Compile ``stmt`` for :class:`InlineLoginReads`."""
    return _Statement(stmt)
