"""The seam the push path's short write transactions (an upload started, advanced, its
blob row claimed and linked; written in ``dtr.core``) are written against: a
:class:`Statement` and the :class:`ShortTx` that runs it, with its two executors, a
SQLAlchemy ``Connection`` (PostgreSQL, and SQLite when a transaction has to wait for the
write lock) and SQLite's bare ``sqlite3`` driver on the calling thread.

SQLAlchemy Core's execution path (pool checkout, events, compiled-statement setup,
result objects) costs ~100 µs of CPU per such transaction on top of the ~30 µs SQLite
itself takes, and a push makes three of them per blob on the event loop. So a
:class:`Statement` is compiled for SQLite once, with its bind processors, and
:class:`SqliteTx` runs it on the raw connection. A short transaction takes a
:class:`ShortTx`, never a ``Connection``: it cannot record events, so the
``Database.before_commit`` hooks (which chain recorded events) have nothing to do for it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql import Executable

T = TypeVar("T")

_SQLITE = sqlite.dialect(paramstyle="named")


class Statement:
    """One Core statement (or one per dialect, keyed by dialect name), with its SQLite
    text and bind processors compiled once.

    Every parameter the statement names must be given at each execution, except the ones
    the statement fixes itself (literals such as ``state = 'present'`` or ``+ 1``).
    Column defaults do not apply: pass every column an INSERT writes.

    Args:
        stmt: the statement, or ``{dialect name: statement}`` (``"sqlite"`` required).
    """

    __slots__ = ("_fixed", "_processors", "_stmts", "sql")

    def __init__(self, stmt: Executable | Mapping[str, Executable]) -> None:
        self._stmts: Mapping[str, Executable] = (
            stmt if isinstance(stmt, Mapping) else {"sqlite": stmt, "postgresql": stmt})
        compiled = self._stmts["sqlite"].compile(dialect=_SQLITE)  # type: ignore[attr-defined]
        self.sql: str = str(compiled)
        """The SQLite text, named parameters."""
        self._fixed = {name: bind.value for name, bind in compiled.binds.items()
                       if bind.value is not None}
        processors = {}
        for name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(_SQLITE).bind_processor(_SQLITE)
            if process is not None:
                processors[name] = process
        self._processors: dict[str, Callable[[Any], Any]] = processors

    def on(self, dialect: str) -> Executable:
        """The Core statement for a dialect."""
        return self._stmts[dialect]

    def sqlite_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with the statement's fixed values, processed for ``sqlite3``."""
        bound = dict(self._fixed)
        bound.update(params)
        for name, process in self._processors.items():
            if name in bound:
                bound[name] = process(bound[name])
        return bound


class ShortTx(Protocol):
    """The statements of one short write transaction (see the module docstring)."""

    def execute(self, stmt: Statement, params: Mapping[str, Any]) -> int:
        """Run ``stmt``; the number of rows it changed (-1 for a SELECT)."""
        ...

    def scalar(self, stmt: Statement, params: Mapping[str, Any]) -> Any:
        """Run a SELECT; the first column of its first row, or None without rows."""
        ...


class ConnectionTx:
    """A :class:`ShortTx` on a SQLAlchemy ``Connection`` (its transaction, its dialect)."""

    __slots__ = ("_dialect", "conn")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._dialect = conn.dialect.name

    def execute(self, stmt: Statement, params: Mapping[str, Any]) -> int:
        """See :class:`ShortTx`."""
        return int(self.conn.execute(stmt.on(self._dialect), params).rowcount)

    def scalar(self, stmt: Statement, params: Mapping[str, Any]) -> Any:
        """See :class:`ShortTx`."""
        return self.conn.execute(stmt.on(self._dialect), params).scalar()


class SqliteTx:
    """A :class:`ShortTx` on a bare ``sqlite3`` connection inside a transaction."""

    __slots__ = ("raw",)

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def execute(self, stmt: Statement, params: Mapping[str, Any]) -> int:
        """See :class:`ShortTx`."""
        return self.raw.execute(stmt.sql, stmt.sqlite_params(params)).rowcount

    def scalar(self, stmt: Statement, params: Mapping[str, Any]) -> Any:
        """See :class:`ShortTx`."""
        row = self.raw.execute(stmt.sql, stmt.sqlite_params(params)).fetchone()
        return None if row is None else row[0]


ShortFn = Callable[[ShortTx], T]
