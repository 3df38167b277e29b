"""Exports of the audit log: the matching events in ``seq`` order as JSON Lines or CSV, as
an async iterator of byte chunks (one per page read, :func:`dtr.audit.query.stream_pages`),
so an export of any size holds one page in memory. The API streams it to the client; the
CLI writes it to a file.

* JSONL (``application/x-ndjson``): one event per line, every stored column in the order of
  :data:`dtr.audit.chain.COLUMNS` (``seq``, ``time``, …, ``detail``, ``prev_hash``,
  ``hash``), ``time`` as RFC 3339 UTC text with microseconds, ``detail`` as a JSON object
  (the stored canonical text, byte for byte).
* CSV (``text/csv``, RFC 4180): a header row of the same column names, then one row per
  event, ``detail`` as its canonical JSON text.

Both carry what the chain hashes, so an export can be re-verified outside dtr
(``hash = SHA-256(RFC 8785 JSON of every column but hash, with detail parsed)``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Literal

import msgspec

from dtr.audit.chain import COLUMNS, format_time
from dtr.audit.query import AuditFilter, stream_pages
from dtr.db.database import Database

Format = Literal["jsonl", "csv"]
MEDIA_TYPES: dict[Format, str] = {"jsonl": "application/x-ndjson", "csv": "text/csv"}
_ENCODER = msgspec.json.Encoder()


def jsonl_line(row: Mapping[str, Any]) -> bytes:
    """One event as a JSON line (newline included)."""
    body: dict[str, Any] = {name: row[name] for name in COLUMNS}
    body["seq"] = int(row["seq"])
    body["time"] = format_time(row["time"])
    body["detail"] = msgspec.Raw(str(row["detail"]).encode())
    return _ENCODER.encode(body) + b"\n"


def csv_text(rows: Iterable[Mapping[str, Any]], header: bool = False) -> str:
    """Rows as CSV text (with the header row first when asked)."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")
    if header:
        out.writerow(COLUMNS)
    for row in rows:
        out.writerow([format_time(row[name]) if name == "time" else row[name]
                      for name in COLUMNS])
    return buf.getvalue()


async def export(db: Database, flt: AuditFilter, fmt: Format, *,
                 upto: int | None = None, page: int | None = None) -> AsyncIterator[bytes]:
    """The export of the events matching ``flt`` in ``fmt``, chunk by chunk.

    Args:
        db: the metadata database.
        flt: which events.
        fmt: ``jsonl`` or ``csv``.
        upto: the last ``seq`` to include (the chain head when the export started).
        page: rows per read (default :data:`dtr.audit.query.EXPORT_PAGE`).
    """
    if fmt == "csv":
        yield csv_text((), header=True).encode()
    kw = {"page": page} if page else {}
    async for rows in stream_pages(db, flt, upto=upto, **kw):
        if fmt == "csv":
            yield csv_text(rows).encode()
        else:
            yield b"".join(jsonl_line(row) for row in rows)
