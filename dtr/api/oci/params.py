"""What the ``/v2`` handlers read from a request besides its path: the integer headers of
an upload, ``Content-Range`` of a chunk, ``Range`` of a blob read, and the ``n``/``last``
pagination of tag and catalog lists (with the ``Link`` header of the next page).

Malformed values raise the domain error the OCI error table renders (``BLOB_UPLOAD_INVALID``,
``RANGE_INVALID`` → 416, ``PAGINATION_NUMBER_INVALID``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from litestar import Request

from dtr.errors import PaginationInvalid, RangeInvalid, UploadInvalid

Req = Request[Any, Any, Any]
CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?([0-9]+)-([0-9]+)$")
RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")


def int_header(request: Req, name: str) -> int | None:
    """Header ``name`` as an integer, None when absent.

    Raises:
        UploadInvalid: not an integer.
    """
    value = request.headers.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UploadInvalid(f"invalid {name} header") from None


def content_range(request: Req) -> tuple[int, int] | None:
    """The inclusive ``start, end`` of a chunk's ``Content-Range`` (``0-1023``, also
    ``bytes 0-1023`` and ``bytes=0-1023``), None when absent.

    Raises:
        RangeInvalid: malformed.
    """
    value = request.headers.get("content-range")
    if value is None:
        return None
    m = CONTENT_RANGE.match(value.strip())
    if not m:
        raise RangeInvalid(f"invalid Content-Range {value!r}")
    return int(m.group(1)), int(m.group(2))


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """An inclusive byte range from a ``Range`` header, None for the whole blob.

    Raises:
        RangeInvalid: unsatisfiable or malformed.
    """
    if not value:
        return None
    m = RANGE.match(value.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise RangeInvalid(f"unsupported Range {value!r}")
    if not m.group(1):
        suffix = int(m.group(2))
        return max(0, size - suffix), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        raise RangeInvalid(f"range {value!r} not satisfiable for {size} bytes")
    return start, min(end, size - 1)


def page_params(request: Req) -> tuple[int | None, str | None]:
    """``n`` (None when absent or empty) and ``last`` (None when absent or empty).

    Raises:
        PaginationInvalid: ``n`` is not an integer.
    """
    n_raw = request.query_params.get("n")
    try:
        n = int(n_raw) if n_raw not in (None, "") else None
    except ValueError:
        raise PaginationInvalid(f"invalid n {n_raw!r}") from None
    return n, request.query_params.get("last") or None


def next_link(path: str, n: int | None, last: str) -> str:
    """The ``Link`` header value of the page after ``last``."""
    query = urlencode({**({"n": n} if n is not None else {}), "last": last})
    return f'<{path}?{query}>; rel="next"'
