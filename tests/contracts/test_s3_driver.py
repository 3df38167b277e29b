"""S3 driver behaviour beyond the StorageDriver contract, on a real MinIO server: how writes
cut parts and give their buffers back, how reads return their connections, and how
compose copies many sources."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from dtr.storage import s3 as s3_module
from dtr.storage.base import CHUNK, PathNotFound
from dtr.storage.s3 import S3Driver
from tests.support.peers import minio

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024
PART = 5 * MIB


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[str, str, str]]:
    with minio() as server:
        yield server.endpoint, server.access_key, server.secret_key


@pytest.fixture
async def driver(endpoint: tuple[str, str, str]) -> AsyncIterator[S3Driver]:
    host, access, secret = endpoint
    drv = S3Driver(host, "s3-driver", access, secret, secure=False,
                   prefix=f"t-{uuid.uuid4().hex}", part_size=PART)
    await drv.ensure_bucket()
    yield drv
    await drv.close()


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def pieces(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    """``data`` cut into pieces of the given sizes, cycling through them."""
    start, i = 0, 0
    while start < len(data):
        size = sizes[i % len(sizes)]
        yield data[start:start + size]
        start += size
        i += 1
        await asyncio.sleep(0)


async def read_all(drv: S3Driver, path: str) -> bytes:
    out = []
    async for chunk in await drv.reader(path):
        assert 0 < len(chunk) <= CHUNK
        out.append(chunk)
    return b"".join(out)


async def etag(drv: S3Driver, path: str) -> str:
    st = await drv._run(path, drv._client.stat_object, drv.bucket, drv._key(path))
    return str(st.etag)


# -- writes -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "sizes", "parts"), [
    (PART, [PART], 1),                      # exactly one part: still a multipart upload
    (2 * PART, [PART - 1, 2], 2),            # chunks straddle the part boundary
    (2 * PART + 7, [3 * PART], 3),           # one chunk fills two parts and starts a third
    (3 * PART + 1, [MIB + 3, 7, 64 * 1024], 4),
])
async def test_parts_are_cut_at_part_size(driver: S3Driver, size: int, sizes: list[int],
                                          parts: int) -> None:
    data = blob(size, size)
    assert await driver.write("k", pieces(data, sizes)) == size
    assert await read_all(driver, "k") == data
    # A multipart object's ETag ends with its part count.
    assert (await etag(driver, "k")).endswith(f"-{parts}")


async def test_object_smaller_than_a_part_is_one_put(driver: S3Driver) -> None:
    data = blob(PART - 1, 1)
    await driver.write("k", pieces(data, [100_000]))
    assert "-" not in await etag(driver, "k")
    assert await driver.get_bytes("k") == data


def _mapped(upload: s3_module._Upload) -> list[object]:
    return [*upload._free, *([upload._buffer] if upload._buffer is not None else []),
            *upload._in_flight.values()]


async def test_part_buffers_are_reused_and_unmapped(driver: S3Driver) -> None:
    upload = s3_module._Upload(driver, "k", driver._key("k"))
    seen: set[int] = set()
    data = blob(6 * PART + 11, 2)
    async for chunk in pieces(data, [MIB + 1]):
        if upload.take(chunk):
            await upload.send()
        seen.update(id(b) for b in _mapped(upload))
    buffers = list(_mapped(upload))
    await upload.finish()
    # At most one part being filled plus those in flight, whatever the object's size.
    assert len(seen) <= s3_module._PARTS_IN_FLIGHT + 1
    assert _mapped(upload) == []
    assert all(b.closed for b in buffers)  # type: ignore[attr-defined]
    assert await driver.get_bytes("k") == data


async def test_failed_write_unmaps_its_buffers(driver: S3Driver) -> None:
    upload = s3_module._Upload(driver, "k", driver._key("k"))
    data = blob(3 * PART, 3)
    async for chunk in pieces(data, [MIB]):
        if upload.take(chunk):
            await upload.send()
    buffers = list(_mapped(upload))
    assert buffers
    await upload.abort()
    assert _mapped(upload) == []
    assert all(b.closed for b in buffers)  # type: ignore[attr-defined]
    with pytest.raises(PathNotFound):
        await driver.stat("k")


async def test_cancelled_multipart_write_stores_nothing(driver: S3Driver) -> None:
    gate = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        for i in range(4):
            yield blob(PART, 10 + i)
        gate.set()
        await asyncio.sleep(3600)
        yield b"never"

    task = asyncio.create_task(driver.write("k", slow()))
    await gate.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(PathNotFound):
        await driver.stat("k")
    # The driver still works afterwards.
    await driver.write("k", pieces(blob(2 * PART, 4), [MIB]))
    assert (await driver.stat("k")).size == 2 * PART


# -- reads -----------------------------------------------------------------------------------
def _connections(drv: S3Driver) -> int:
    pools = list(drv._http.pools._container.values())
    return sum(pool.num_connections for pool in pools)


@pytest.mark.parametrize("size", [1, CHUNK, CHUNK + 1, 5 * CHUNK + 3])
async def test_read_to_the_end_returns_the_connection(driver: S3Driver, size: int) -> None:
    data = blob(size, size)
    await driver.write("k", pieces(data, [MIB]))
    before = _connections(driver)
    for _ in range(5):
        assert await read_all(driver, "k") == data
    # Sequential reads to the end reuse one pooled connection.
    assert _connections(driver) - before <= 1


async def test_partial_reads_and_ranges(driver: S3Driver) -> None:
    data = blob(5 * CHUNK + 17, 5)
    await driver.write("k", pieces(data, [MIB]))
    for offset, length in [(0, 1), (CHUNK - 1, 2), (3, 3 * CHUNK), (2 * CHUNK, None)]:
        out = b""
        async for chunk in await driver.reader("k", offset, length):
            assert 0 < len(chunk) <= CHUNK
            out += chunk
        end = None if length is None else offset + length
        assert out == data[offset:end]


async def test_abandoned_reader_does_not_poison_the_pool(driver: S3Driver) -> None:
    data = blob(6 * CHUNK, 6)
    await driver.write("k", pieces(data, [MIB]))
    for _ in range(3):
        body = await driver.reader("k")
        assert len(await body.__anext__()) == CHUNK
        await body.aclose()  # type: ignore[attr-defined]
        with pytest.raises(StopAsyncIteration):
            await body.__anext__()
    assert await read_all(driver, "k") == data


async def test_concurrent_readers(driver: S3Driver) -> None:
    datas = {f"k{i}": blob(3 * CHUNK + i, 20 + i) for i in range(20)}
    for key, data in datas.items():
        await driver.write(key, pieces(data, [MIB]))
    reads = await asyncio.gather(*(read_all(driver, k) for k in datas))
    assert reads == list(datas.values())


# -- compose ---------------------------------------------------------------------------------
async def test_compose_many_sources_in_order(driver: S3Driver) -> None:
    count = 3 * s3_module._COPIES_IN_FLIGHT + 1
    datas = [blob(PART + i, 30 + i) for i in range(count)]
    datas[-1] = blob(123, 99)  # the last part may be small
    for i, data in enumerate(datas):
        await driver.put_bytes(f"seg/{i}", data)
    sources = [f"seg/{i}" for i in range(count)]
    assert await driver.compose(sources, "dest") == sum(len(d) for d in datas)
    assert await read_all(driver, "dest") == b"".join(datas)
    assert (await etag(driver, "dest")).endswith(f"-{count}")
    # The sources are left in place.
    assert (await driver.stat("seg/0")).size == PART


async def test_compose_with_a_missing_source_leaves_dest(driver: S3Driver) -> None:
    await driver.put_bytes("dest", b"old")
    await driver.put_bytes("a", blob(PART, 1))
    with pytest.raises(PathNotFound):
        await driver.compose(["a", "gone", "a"], "dest")
    assert await driver.get_bytes("dest") == b"old"
