"""``BlobSender``: who sends a whole blob from local files, as a decision table, and the
count of dtr's own streams (kept through exhaustion, closing and failure)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dtr.api.oci.responses import PATHSEND, BlobSender

MiB = 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Req:
    """Just what ``pathsend`` reads: the ASGI scope's extensions."""

    def __init__(self, pathsend: bool) -> None:
        self.scope: dict[str, Any] = {"extensions": {PATHSEND: {}} if pathsend else {}}


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _sender(clock: _Clock) -> BlobSender:
    return BlobSender(stream_min=16 * MiB, max_streams=1, pathsend_rate=1e9, clock=clock)


# server offers pathsend, blob size, dtr streams open, seconds since a 1 GB file was handed
# to the server (None: none was) -> the server sends it
TABLE = [
    (False, 1 * MiB, 0, None, False),      # no extension: dtr always streams
    (False, 512 * MiB, 0, None, False),
    (True, 1 * MiB, 0, None, True),        # small blob: the server's is cheaper
    (True, 16 * MiB - 1, 0, None, True),
    (True, 16 * MiB, 0, None, False),      # big blob, worker idle: dtr streams
    (True, 512 * MiB, 0, None, False),
    (True, 512 * MiB, 1, None, True),      # dtr already streams one: the server sends
    (True, 512 * MiB, 0, 0.5, True),       # the server still sends a 1 GB file (1 s)
    (True, 512 * MiB, 0, 1.0, False),      # ... and is done with it
]


@pytest.mark.parametrize(("offered", "size", "streams", "handed", "expected"), TABLE)
def test_who_sends_the_blob(offered: bool, size: int, streams: int, handed: float | None,
                            expected: bool) -> None:
    clock = _Clock()
    sender = _sender(clock)
    if handed is not None:
        sender.streams = 1  # so that the server takes it
        assert sender.pathsend(_Req(True), 1_000_000_000)  # type: ignore[arg-type]
        clock.now += handed
    sender.streams = streams
    assert sender.pathsend(_Req(offered), size) is expected  # type: ignore[arg-type]


def test_files_handed_over_queue_up() -> None:
    clock = _Clock()
    sender = _sender(clock)
    for _ in range(3):  # three 10 MB files at 1 GB/s, handed over at once: 30 ms
        assert sender.pathsend(_Req(True), 10_000_000)  # type: ignore[arg-type]
    clock.now += 0.025
    assert sender.pathsend(_Req(True), 64 * MiB)  # type: ignore[arg-type]
    clock.now += 0.06  # 85 ms in: the server still has 12 ms of the 64 MiB one to go
    assert sender.pathsend(_Req(True), 64 * MiB)  # type: ignore[arg-type]
    clock.now += 0.09  # 175 ms in, 164 ms of files handed over: done
    assert not sender.pathsend(_Req(True), 64 * MiB)  # type: ignore[arg-type]


async def _chunks(n: int, fail_at: int | None = None,
                  closed: list[bool] | None = None) -> AsyncIterator[bytes]:
    try:
        for i in range(n):
            if i == fail_at:
                raise OSError("disk gone")
            yield b"x" * 10
    finally:
        if closed is not None:
            closed.append(True)


@pytest.mark.anyio
async def test_a_stream_counts_until_exhausted() -> None:
    sender = BlobSender()
    body = sender.track(_chunks(3))
    assert sender.streams == 1
    assert [c async for c in body] == [b"x" * 10] * 3
    assert sender.streams == 0


@pytest.mark.anyio
async def test_a_stream_closed_early_stops_counting_and_closes_the_file() -> None:
    sender = BlobSender()
    closed: list[bool] = []
    body = sender.track(_chunks(5, closed=closed))
    assert await anext(body) == b"x" * 10
    await body.aclose()  # type: ignore[attr-defined]
    assert sender.streams == 0
    assert closed == [True]


@pytest.mark.anyio
async def test_a_failing_stream_stops_counting() -> None:
    sender = BlobSender()
    body = sender.track(_chunks(5, fail_at=2))
    with pytest.raises(OSError, match="disk gone"):
        _ = [c async for c in body]
    assert sender.streams == 0


@pytest.mark.anyio
async def test_a_stream_dropped_before_its_first_chunk_stops_counting() -> None:
    sender = BlobSender()
    body = sender.track(_chunks(3))
    assert sender.streams == 1
    del body  # the server never iterated it (the client went away first)
    gc.collect()
    assert sender.streams == 0
    closed_early = sender.track(_chunks(3))
    await closed_early.aclose()  # type: ignore[attr-defined]
    del closed_early
    gc.collect()
    assert sender.streams == 0
    done = sender.track(_chunks(2))
    assert [c async for c in done] == [b"x" * 10] * 2
    del done  # released once, not again when collected
    gc.collect()
    assert sender.streams == 0
