"""What the ``/v2`` handlers read from a request (``dtr.api.oci.params``), as decision
tables: ``Range`` of a blob read, ``Content-Range`` of a chunk, integer headers, and the
``n``/``last`` pagination with its ``Link``."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Request

from dtr.api.oci.params import content_range, int_header, next_link, page_params, parse_range
from dtr.errors import PaginationInvalid, RangeInvalid, UploadInvalid


def _request(headers: dict[str, str] | None = None, query: str = "") -> Request[Any, Any, Any]:
    scope: Any = {"type": "http", "method": "GET", "path": "/v2/a/b",
                  "query_string": query.encode(),
                  "headers": [(k.lower().encode(), v.encode())
                              for k, v in (headers or {}).items()]}
    return Request(scope)


# value, blob size, inclusive range (None: the whole blob)
RANGES = [
    (None, 100, None),
    ("", 100, None),
    ("bytes=0-9", 100, (0, 9)),
    (" bytes=0-9 ", 100, (0, 9)),
    ("bytes=10-", 100, (10, 99)),
    ("bytes=90-200", 100, (90, 99)),
    ("bytes=99-99", 100, (99, 99)),
    ("bytes=-10", 100, (90, 99)),
    ("bytes=-200", 100, (0, 99)),
]
BAD_RANGES = ["bytes=100-", "bytes=5-4", "bytes=-", "items=0-1", "bytes=0-1,3-4", "0-9",
              "bytes=a-b"]


@pytest.mark.parametrize(("value", "size", "expected"), RANGES)
def test_range(value: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(value, size) == expected


@pytest.mark.parametrize("value", BAD_RANGES)
def test_unsatisfiable_or_malformed_range(value: str) -> None:
    with pytest.raises(RangeInvalid):
        parse_range(value, 100)


@pytest.mark.parametrize(("value", "expected"), [
    ("0-1023", (0, 1023)), ("bytes 0-1023", (0, 1023)), ("bytes=5-9", (5, 9)),
    (" 7-7 ", (7, 7))])
def test_content_range(value: str, expected: tuple[int, int]) -> None:
    assert content_range(_request({"Content-Range": value})) == expected


def test_no_content_range() -> None:
    assert content_range(_request()) is None


@pytest.mark.parametrize("value", ["0-", "-5", "a-b", "0-1,2-3"])
def test_malformed_content_range(value: str) -> None:
    with pytest.raises(RangeInvalid):
        content_range(_request({"Content-Range": value}))


def test_int_header() -> None:
    assert int_header(_request({"Content-Length": "12"}), "content-length") == 12
    assert int_header(_request(), "content-length") is None
    with pytest.raises(UploadInvalid, match="invalid content-length header"):
        int_header(_request({"Content-Length": "twelve"}), "content-length")


@pytest.mark.parametrize(("query", "expected"), [
    ("", (None, None)), ("n=", (None, None)), ("n=5", (5, None)), ("n=0", (0, None)),
    ("last=a%2Fb", (None, "a/b")), ("n=2&last=", (2, None)), ("n=3&last=x", (3, "x"))])
def test_page_params(query: str, expected: tuple[int | None, str | None]) -> None:
    assert page_params(_request(query=query)) == expected


def test_page_size_must_be_a_number() -> None:
    with pytest.raises(PaginationInvalid):
        page_params(_request(query="n=ten"))


def test_next_link() -> None:
    assert next_link("/v2/_catalog", 5, "acme/app") == \
        '</v2/_catalog?n=5&last=acme%2Fapp>; rel="next"'
    assert next_link("/v2/a/tags/list", None, "v1") == '</v2/a/tags/list?last=v1>; rel="next"'
