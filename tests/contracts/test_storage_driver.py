"""The StorageDriver contract (``dtr/storage/base.py``), run against every driver: memory,
filesystem, S3 on moto, S3 on a real MinIO server, and any S3 endpoint named by
``DTR_TEST_S3_URL`` (``http[s]://ACCESS:SECRET@host:port/bucket``); and the optional
``AppendableDriver`` capability (writes in place under a lock) against the drivers that
offer it (memory, filesystem; across processes for the filesystem)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from dtr.storage.base import (
    CHUNK,
    READ_CHUNK,
    AppendableDriver,
    InvalidPath,
    ObjectInfo,
    ObjectLocked,
    PathNotFound,
    StorageDriver,
    StorageError,
    WriteAborted,
)
from dtr.storage.filesystem import FilesystemDriver
from dtr.storage.memory import MemoryDriver
from dtr.storage.s3 import S3Driver
from tests.support.peers import free_port, minio

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024
PART = 5 * MIB  # the S3 drivers' part size: S3's minimum, so multipart starts early
BACKENDS = ["memory", "filesystem", "s3-moto", "s3-minio"]
if os.environ.get("DTR_TEST_S3_URL"):
    BACKENDS.append("s3-external")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- servers and drivers ------------------------------------------------------------------
@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer  # noqa: PLC0415 - slow import, only when used

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def minio_endpoint() -> Iterator[tuple[str, str, str]]:
    with minio() as server:
        yield server.endpoint, server.access_key, server.secret_key


def make_s3(request: pytest.FixtureRequest, backend: str, prefix: str) -> S3Driver:
    if backend == "s3-moto":
        endpoint = request.getfixturevalue("moto_endpoint")
        return S3Driver(endpoint, "contracts", "testing", "testing", secure=False,
                        prefix=prefix, part_size=PART)
    if backend == "s3-minio":
        endpoint, access, secret = request.getfixturevalue("minio_endpoint")
        return S3Driver(endpoint, "contracts", access, secret, secure=False, prefix=prefix,
                        part_size=PART)
    url = urlsplit(os.environ["DTR_TEST_S3_URL"])
    return S3Driver(f"{url.hostname}:{url.port}", url.path.strip("/") or "dtr-contracts",
                    unquote(url.username or ""), unquote(url.password or ""),
                    secure=url.scheme == "https", prefix=prefix, part_size=PART)


@pytest.fixture(params=BACKENDS)
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageDriver]:
    backend: str = request.param
    drv: StorageDriver
    if backend == "memory":
        drv = MemoryDriver()
    elif backend == "filesystem":
        drv = FilesystemDriver(tmp_path / "root", fsync=True)
    else:
        # One bucket per server; every test gets its own key prefix inside it.
        s3 = make_s3(request, backend, f"t-{uuid.uuid4().hex}")
        await s3.ensure_bucket()
        drv = s3
    assert isinstance(drv, StorageDriver)
    yield drv
    await drv.close()


# -- helpers -------------------------------------------------------------------------------
def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def chunked(data: bytes, size: int = 64 * 1024 + 7) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]
        await asyncio.sleep(0)


async def failing(data: bytes, exc: BaseException) -> AsyncIterator[bytes]:
    async for chunk in chunked(data):
        yield chunk
    raise exc


async def stalls(started: asyncio.Event) -> AsyncIterator[bytes]:
    """6 MiB, then set ``started`` and hang until cancelled."""
    yield blob(6 * MIB)
    started.set()
    await asyncio.Event().wait()
    yield b"never"


async def cancel_when_stalled(task: asyncio.Future[Any], started: asyncio.Event) -> None:
    """Cancel ``task`` once its :func:`stalls` source hangs; it must end cancelled."""
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def read_all(drv: StorageDriver, path: str, offset: int = 0,
                   length: int | None = None) -> bytes:
    out = []
    async for chunk in await drv.reader(path, offset, length):
        assert 0 < len(chunk) <= READ_CHUNK
        out.append(chunk)
    return b"".join(out)


async def listing(drv: StorageDriver, prefix: str) -> dict[str, int]:
    found: dict[str, int] = {}
    async for info in drv.list(prefix):
        assert isinstance(info, ObjectInfo)
        found[info.path] = info.size
    return found


async def assert_missing(drv: StorageDriver, path: str) -> None:
    with pytest.raises(PathNotFound):
        await drv.stat(path)
    with pytest.raises(PathNotFound):
        await drv.get_bytes(path)
    with pytest.raises(PathNotFound):
        await drv.reader(path)  # raises on open, before any iteration


# -- reads of missing objects ---------------------------------------------------------------
async def test_missing_object(driver: StorageDriver) -> None:
    await assert_missing(driver, "blobs/sha256/ab/nothing")
    with pytest.raises(PathNotFound):
        await driver.reader("blobs/sha256/ab/nothing", 10, 5)


async def test_prefix_of_an_object_is_not_an_object(driver: StorageDriver) -> None:
    await driver.put_bytes("a/b/c", b"x")
    await assert_missing(driver, "a/b")
    with pytest.raises(PathNotFound):
        await driver.move("a/b", "d")
    with pytest.raises(PathNotFound):
        await driver.compose(["a/b"], "d")
    await driver.delete("a/b")  # a prefix is not an object: nothing to delete
    assert await driver.get_bytes("a/b/c") == b"x"


# -- write and read --------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, CHUNK + 3, 12 * MIB + 5])
async def test_round_trip(driver: StorageDriver, size: int) -> None:
    data = blob(size, size)
    assert await driver.write("blobs/obj", chunked(data)) == size
    info = await driver.stat("blobs/obj")
    assert (info.path, info.size) == ("blobs/obj", size)
    assert abs(info.mtime - time.time()) < 300
    assert await read_all(driver, "blobs/obj") == data
    assert await driver.get_bytes("blobs/obj") == data


async def test_write_skips_empty_chunks(driver: StorageDriver) -> None:
    async def gen() -> AsyncIterator[bytes]:
        for part in (b"", b"ab", b"", b"c", b""):
            yield part

    assert await driver.write("k", gen()) == 3
    assert await driver.get_bytes("k") == b"abc"


async def test_write_replaces(driver: StorageDriver) -> None:
    await driver.put_bytes("k", blob(7 * MIB, 1))
    await driver.write("k", chunked(b"short"))
    assert await driver.get_bytes("k") == b"short"
    assert (await driver.stat("k")).size == 5


async def test_put_and_get_bytes(driver: StorageDriver) -> None:
    await driver.put_bytes("small/one", b"hello")
    assert await driver.get_bytes("small/one") == b"hello"
    await driver.put_bytes("small/empty", b"")
    assert await driver.get_bytes("small/empty") == b""
    big = blob(6 * MIB, 2)  # over the S3 part size: a multipart put
    await driver.put_bytes("small/big", big)
    assert await driver.get_bytes("small/big") == big


async def test_offset_and_length_reads(driver: StorageDriver) -> None:
    size = 3 * MIB + 17
    data = blob(size, 3)
    await driver.put_bytes("r", data)
    cases = [(0, None), (10, None), (10, 100), (CHUNK - 1, CHUNK + 2),
             (READ_CHUNK - 1, READ_CHUNK + 2), (READ_CHUNK + 1, None), (size - 5, 100),
             (size - 1, None), (size, None), (size + 10, None), (size + 10, 5), (0, 0),
             (7, 0), (0, size), (0, size + 100)]
    for offset, length in cases:
        end = size if length is None else offset + length
        assert await read_all(driver, "r", offset, length) == data[offset:end], (offset, length)


async def test_offset_reads_of_empty_object(driver: StorageDriver) -> None:
    await driver.put_bytes("e", b"")
    assert await read_all(driver, "e") == b""
    assert await read_all(driver, "e", 0, 10) == b""
    assert await read_all(driver, "e", 5) == b""


async def test_reader_closed_early(driver: StorageDriver) -> None:
    data = blob(4 * MIB, 4)
    await driver.put_bytes("r", data)
    for _ in range(20):  # each early close must release its file or connection
        it = await driver.reader("r")
        first = await it.__anext__()
        assert first == data[:len(first)]
        await it.aclose()  # type: ignore[attr-defined]
    assert await read_all(driver, "r", 5) == data[5:]


# -- atomicity -----------------------------------------------------------------------------------
@pytest.mark.parametrize("before_failure", [0, 100 * 1024, 11 * MIB])
async def test_failed_write_stores_nothing(driver: StorageDriver, before_failure: int) -> None:
    boom = ValueError("client went away")
    with pytest.raises(WriteAborted) as info:
        await driver.write("blobs/x", failing(blob(before_failure), boom))
    assert info.value.__cause__ is boom
    await assert_missing(driver, "blobs/x")
    assert await listing(driver, "blobs") == {}


@pytest.mark.parametrize("before_failure", [100 * 1024, 11 * MIB])
async def test_failed_write_keeps_old_object(driver: StorageDriver, before_failure: int) -> None:
    old = blob(1000, 5)
    await driver.put_bytes("k", old)
    with pytest.raises(WriteAborted):
        await driver.write("k", failing(blob(before_failure), RuntimeError("boom")))
    assert await driver.get_bytes("k") == old


async def test_storage_error_from_source_is_not_wrapped(driver: StorageDriver) -> None:
    with pytest.raises(PathNotFound):
        await driver.write("k", failing(b"abc", PathNotFound("elsewhere")))
    await assert_missing(driver, "k")


async def test_cancelled_write_stores_nothing(driver: StorageDriver) -> None:
    started = asyncio.Event()

    await cancel_when_stalled(asyncio.ensure_future(driver.write("k", stalls(started))),
                              started)
    await assert_missing(driver, "k")


async def test_observer_sees_every_byte_in_order(driver: StorageDriver) -> None:
    data = blob(12 * MIB + 3, 6)
    seen: list[bytes] = []
    hasher = hashlib.sha256()

    def observe(chunk: bytes) -> None:
        seen.append(bytes(chunk))
        hasher.update(chunk)

    assert await driver.write("k", chunked(data), observe) == len(data)
    assert b"".join(seen) == data
    assert hasher.digest() == hashlib.sha256(data).digest()


# -- compose and move -----------------------------------------------------------------------------
async def test_compose_one_source(driver: StorageDriver) -> None:
    data = blob(1000, 7)
    await driver.put_bytes("up/1", data)
    assert await driver.compose(["up/1"], "blobs/d") == len(data)
    assert await driver.get_bytes("blobs/d") == data
    assert await driver.get_bytes("up/1") == data  # sources stay


async def test_compose_small_sources(driver: StorageDriver) -> None:
    parts = [blob(100 * 1024 + i, i) for i in range(4)] + [b""]
    for i, part in enumerate(parts):
        await driver.put_bytes(f"up/{i}", part)
    await driver.put_bytes("blobs/d", b"old")
    names = [f"up/{i}" for i in range(len(parts))]
    assert await driver.compose(names, "blobs/d") == sum(map(len, parts))
    assert await driver.get_bytes("blobs/d") == b"".join(parts)
    assert len(await listing(driver, "up")) == len(parts)


async def test_compose_small_then_large(driver: StorageDriver) -> None:
    parts = [blob(1024, 8), blob(6 * MIB, 9)]
    for i, part in enumerate(parts):
        await driver.put_bytes(f"up/{i}", part)
    assert await driver.compose(["up/0", "up/1"], "d") == sum(map(len, parts))
    assert await read_all(driver, "d") == b"".join(parts)


async def test_compose_large_sources(driver: StorageDriver) -> None:
    parts = [blob(5 * MIB, 10), blob(6 * MIB + 1, 11), blob(1234, 12)]
    for i, part in enumerate(parts):
        await driver.put_bytes(f"up/{i}", part)
    names = ["up/0", "up/1", "up/2"]
    assert await driver.compose(names, "blobs/d") == sum(map(len, parts))
    assert await read_all(driver, "blobs/d") == b"".join(parts)
    assert (await driver.stat("blobs/d")).size == sum(map(len, parts))


async def test_compose_only_empty_sources(driver: StorageDriver) -> None:
    await driver.put_bytes("up/0", b"")
    await driver.put_bytes("up/1", b"")
    assert await driver.compose(["up/0", "up/1"], "d") == 0
    assert await driver.get_bytes("d") == b""


@pytest.mark.parametrize("sizes", [[10, 10], [6 * MIB, 10]])
async def test_compose_missing_source(driver: StorageDriver, sizes: list[int]) -> None:
    for i, size in enumerate(sizes):
        await driver.put_bytes(f"up/{i}", blob(size, i))
    await driver.put_bytes("d", b"old")
    with pytest.raises(PathNotFound):
        await driver.compose(["up/0", "up/gone", "up/1"], "d")
    with pytest.raises(PathNotFound):
        await driver.compose(["up/gone"], "d")
    assert await driver.get_bytes("d") == b"old"


async def test_move(driver: StorageDriver) -> None:
    data = blob(3000, 13)
    await driver.put_bytes("up/1", data)
    await driver.put_bytes("blobs/d", b"old")
    await driver.move("up/1", "blobs/d")
    assert await driver.get_bytes("blobs/d") == data
    await assert_missing(driver, "up/1")
    await driver.move("blobs/d", "other/place")
    assert await driver.get_bytes("other/place") == data


async def test_move_missing_source(driver: StorageDriver) -> None:
    await driver.put_bytes("d", b"old")
    with pytest.raises(PathNotFound):
        await driver.move("nothing/here", "d")
    assert await driver.get_bytes("d") == b"old"


# -- delete and list ------------------------------------------------------------------------------
async def test_delete_is_idempotent(driver: StorageDriver) -> None:
    await driver.put_bytes("a/b", b"x")
    await driver.delete("a/b")
    await assert_missing(driver, "a/b")
    await driver.delete("a/b")
    await driver.delete("never/was")


async def test_delete_prefix(driver: StorageDriver) -> None:
    for key in ("up/u1/0", "up/u1/1", "up/u1/deep/er/2", "up/u10/0", "up/u2", "other"):
        await driver.put_bytes(key, key.encode())
    assert await driver.delete_prefix("up/u1") == 3
    assert await listing(driver, "up") == {"up/u10/0": 8, "up/u2": 5}
    assert await driver.delete_prefix("up/u1") == 0
    assert await driver.delete_prefix("nothing") == 0
    assert await driver.get_bytes("other") == b"other"


async def test_list_is_recursive(driver: StorageDriver) -> None:
    keys = {"blobs/sha256/ab/ab01": 1, "blobs/sha256/ab/ab02": 2, "blobs/sha256/cd/cd03": 3,
            "blobs/x": 4, "blobsy/not-under": 5, "uploads/u/0": 6}
    for key, size in keys.items():
        await driver.put_bytes(key, b"z" * size)
    assert await listing(driver, "blobs") == {k: v for k, v in keys.items()
                                             if k.startswith("blobs/")}
    assert await listing(driver, "blobs/sha256/ab") == {"blobs/sha256/ab/ab01": 1,
                                                       "blobs/sha256/ab/ab02": 2}
    assert await listing(driver, "uploads/none") == {}
    async for info in driver.list("blobs/sha256/cd"):
        assert info.mtime > 0


async def test_list_many(driver: StorageDriver) -> None:
    await asyncio.gather(*(driver.put_bytes(f"many/{i:04d}", b"") for i in range(120)))
    assert len(await listing(driver, "many")) == 120
    assert await driver.delete_prefix("many") == 120


# -- keys ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["", "/abs", "a//b", "a/../b", "..", "a/./b", "trail/", "sp ace",
                                 "caf\u00e9", "a\\b", "q?x", "a/b#c"])
async def test_invalid_keys(driver: StorageDriver, bad: str) -> None:
    calls: list[Any] = [
        driver.stat(bad), driver.reader(bad), driver.write(bad, chunked(b"x")),
        driver.put_bytes(bad, b"x"), driver.get_bytes(bad), driver.compose([bad], "ok"),
        driver.compose(["ok"], bad), driver.move(bad, "ok"), driver.move("ok", bad),
        driver.delete(bad), driver.delete_prefix(bad), driver.presign_get(bad, 60)]
    await driver.put_bytes("ok", b"x")
    for i, call in enumerate(calls):
        try:
            await call
        except InvalidPath:
            continue
        pytest.fail(f"call {i} accepted {bad!r}")
    with pytest.raises(InvalidPath):
        await listing(driver, bad)
    assert await driver.get_bytes("ok") == b"x"


# -- presigned URLs, concurrency -------------------------------------------------------------------
async def test_presign_get(driver: StorageDriver) -> None:
    data = blob(2 * MIB, 14)
    await driver.put_bytes("blobs/p", data)
    url = await driver.presign_get("blobs/p", 60)
    if driver.name in ("memory", "filesystem"):
        assert url is None
        return
    assert url is not None
    async with httpx.AsyncClient() as http:
        r = await http.get(url)
    assert r.status_code == 200
    assert r.content == data


async def test_concurrent_writes(driver: StorageDriver) -> None:
    datas = {f"c/{i}": blob(6 * MIB + i, 100 + i) for i in range(6)}
    sizes = await asyncio.gather(*(driver.write(k, chunked(v)) for k, v in datas.items()))
    assert sizes == [len(v) for v in datas.values()]
    reads = await asyncio.gather(*(read_all(driver, k) for k in datas))
    assert reads == list(datas.values())


async def test_concurrent_writes_same_key(driver: StorageDriver) -> None:
    datas = [blob(2 * MIB, 200 + i) for i in range(4)]
    await asyncio.gather(*(driver.write("same", chunked(d)) for d in datas))
    assert await driver.get_bytes("same") in datas


# -- in-place writes (AppendableDriver) ---------------------------------------------------------
APPENDABLE = ["memory", "filesystem"]


@pytest.fixture(params=APPENDABLE)
async def appendable(request: pytest.FixtureRequest,
                     tmp_path: Path) -> AsyncIterator[AppendableDriver]:
    drv: StorageDriver = (MemoryDriver() if request.param == "memory"
                          else FilesystemDriver(tmp_path / "root", fsync=True))
    assert isinstance(drv, AppendableDriver)
    yield drv
    await drv.close()


def as_driver(drv: AppendableDriver) -> StorageDriver:
    assert isinstance(drv, StorageDriver)
    return drv


def test_which_drivers_append_in_place() -> None:
    assert not issubclass(S3Driver, AppendableDriver)
    assert issubclass(FilesystemDriver, AppendableDriver)
    assert issubclass(MemoryDriver, AppendableDriver)


async def test_open_append_creates_an_empty_object(appendable: AppendableDriver) -> None:
    drv = as_driver(appendable)
    async with appendable.open_append("up/a/data") as h:
        assert await h.size() == 0
    assert await drv.get_bytes("up/a/data") == b""
    assert await listing(drv, "up") == {"up/a/data": 0}


async def test_write_at_appends_in_place(appendable: AppendableDriver) -> None:
    drv = as_driver(appendable)
    first, second = blob(3 * MIB + 5, 1), blob(100 * 1024 + 1, 2)
    seen: list[bytes] = []
    async with appendable.open_append("up/data") as h:
        assert await h.write_at(0, chunked(first), seen.append) == len(first)
        assert await h.size() == len(first)
        assert await h.write_at(len(first), chunked(second), seen.append) == len(second)
        assert await h.size() == len(first) + len(second)
        assert await h.write_at(await h.size(), chunked(b"")) == 0
    assert b"".join(seen) == first + second
    assert await read_all(drv, "up/data") == first + second
    # the lock is gone: the object opens again and keeps its bytes
    async with appendable.open_append("up/data") as h:
        assert await h.size() == len(first) + len(second)


@pytest.mark.parametrize("size", [MIB, 2 * MIB, 2 * MIB + 1])
@pytest.mark.parametrize("piece", [64 * 1024, MIB])
async def test_write_at_bodies_ending_on_a_batch_boundary(appendable: AppendableDriver,
                                                         size: int, piece: int) -> None:
    drv = as_driver(appendable)
    data = blob(size, 3)
    seen: list[bytes] = []
    async with appendable.open_append("up/data") as h:
        assert await h.write_at(0, chunked(data, piece), seen.append) == size
        assert await h.size() == size
    assert b"".join(seen) == data
    assert await read_all(drv, "up/data") == data


async def test_sync_keeps_the_bytes(appendable: AppendableDriver) -> None:
    drv = as_driver(appendable)
    data = blob(MIB + 3, 4)
    async with appendable.open_append("up/data") as h:
        await h.sync()  # nothing written yet
        await h.write_at(0, chunked(data))
        await h.sync()
        assert await h.size() == len(data)
    await drv.move("up/data", "blobs/x")
    assert await read_all(drv, "blobs/x") == data


@pytest.mark.parametrize("durable", [True, False])
async def test_filesystem_sync_fsyncs_only_when_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool) -> None:
    drv = FilesystemDriver(tmp_path / "root", fsync=durable)
    synced: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    try:
        async with drv.open_append("up/data") as h:
            await h.write_at(0, chunked(b"abc"))
            await h.sync()
        assert len(synced) == (1 if durable else 0)
    finally:
        await drv.close()


async def test_write_at_overwrites_and_keeps_what_follows(appendable: AppendableDriver) -> None:
    drv = as_driver(appendable)
    async with appendable.open_append("up/data") as h:
        await h.write_at(0, chunked(b"0123456789"))
        assert await h.write_at(2, chunked(b"ab")) == 2
    assert await drv.get_bytes("up/data") == b"01ab456789"


async def test_truncate(appendable: AppendableDriver) -> None:
    drv = as_driver(appendable)
    async with appendable.open_append("up/data") as h:
        await h.write_at(0, chunked(b"0123456789"))
        await h.truncate(4)
        assert await h.size() == 4
        await h.truncate(4)
        with pytest.raises(ValueError):
            await h.truncate(5)
        with pytest.raises(ValueError):
            await h.truncate(-1)
        await h.write_at(4, chunked(b"xy"))
    assert await drv.get_bytes("up/data") == b"0123xy"


async def test_write_at_past_the_end_is_refused(appendable: AppendableDriver) -> None:
    drv = as_driver(appendable)
    async with appendable.open_append("up/data") as h:
        await h.write_at(0, chunked(b"abc"))
        for offset in (4, -1):
            with pytest.raises(ValueError):
                await h.write_at(offset, chunked(b"hole"))
        with pytest.raises(ValueError):
            await h.write_at(9, chunked(b""))
        assert await h.size() == 3
    assert await drv.get_bytes("up/data") == b"abc"


async def test_lock_is_exclusive_and_not_waited_for(appendable: AppendableDriver) -> None:
    async with appendable.open_append("up/data") as h:
        await h.write_at(0, chunked(b"held"))
        with pytest.raises(ObjectLocked):
            async with appendable.open_append("up/data"):
                pass
        async with appendable.open_append("up/other") as other:  # other keys are free
            await other.write_at(0, chunked(b"free"))
        assert await h.size() == 4
    async with appendable.open_append("up/data") as h:
        assert await h.size() == 4


async def test_lock_is_released_when_the_body_raises(appendable: AppendableDriver) -> None:
    with pytest.raises(RuntimeError):
        async with appendable.open_append("up/data"):
            raise RuntimeError("request failed")
    async with appendable.open_append("up/data") as h:
        assert await h.size() == 0


@pytest.mark.parametrize("before_failure", [0, 100 * 1024, 11 * MIB])
async def test_failed_write_at_is_cut_back(appendable: AppendableDriver,
                                           before_failure: int) -> None:
    drv = as_driver(appendable)
    kept = blob(1000, 3)
    boom = ConnectionResetError("client went away")
    async with appendable.open_append("up/data") as h:
        await h.write_at(0, chunked(kept + b"leftover of a crash"))
        with pytest.raises(WriteAborted) as info:
            await h.write_at(len(kept), failing(blob(before_failure), boom))
        assert info.value.__cause__ is boom
        assert await h.size() == len(kept)
        assert await h.write_at(len(kept), chunked(b"retry")) == 5
    assert await drv.get_bytes("up/data") == kept + b"retry"


async def test_storage_error_from_source_is_not_wrapped_in_place(
        appendable: AppendableDriver) -> None:
    async with appendable.open_append("up/data") as h:
        with pytest.raises(PathNotFound):
            await h.write_at(0, failing(b"abc", PathNotFound("elsewhere")))
        assert await h.size() == 0


async def test_cancelled_write_at_is_cut_back(appendable: AppendableDriver) -> None:
    drv = as_driver(appendable)
    started = asyncio.Event()

    async def append() -> None:
        async with appendable.open_append("up/data") as h:
            await h.write_at(3, stalls(started))

    await drv.put_bytes("up/data", b"old")
    await cancel_when_stalled(asyncio.ensure_future(append()), started)
    async with appendable.open_append("up/data") as h:  # the lock was released
        assert await h.size() == 3
    assert await drv.get_bytes("up/data") == b"old"


async def test_holder_may_move_the_object(appendable: AppendableDriver) -> None:
    drv = as_driver(appendable)
    data = blob(2 * MIB + 9, 4)
    async with appendable.open_append("up/data") as h:
        await h.write_at(0, chunked(data))
        await drv.move("up/data", "blobs/d")
    assert await read_all(drv, "blobs/d") == data
    await assert_missing(drv, "up/data")
    async with appendable.open_append("up/data") as h:  # a new, empty object
        assert await h.size() == 0
    assert await read_all(drv, "blobs/d") == data


async def test_delete_prefix_removes_an_object_written_in_place(
        appendable: AppendableDriver) -> None:
    drv = as_driver(appendable)
    async with appendable.open_append("up/x/data") as h:
        await h.write_at(0, chunked(b"abc"))
    assert await drv.delete_prefix("up/x") == 1
    await assert_missing(drv, "up/x/data")


async def test_concurrent_handles_on_other_keys(appendable: AppendableDriver) -> None:
    drv = as_driver(appendable)
    datas = {f"up/{i}/data": blob(3 * MIB + i, 300 + i) for i in range(4)}

    async def fill(key: str, data: bytes) -> None:
        async with appendable.open_append(key) as h:
            await h.write_at(0, chunked(data[:MIB]))
            await h.write_at(MIB, chunked(data[MIB:]))

    await asyncio.gather(*(fill(k, v) for k, v in datas.items()))
    assert [await read_all(drv, k) for k in datas] == list(datas.values())


_HOLDER = textwrap.dedent("""
    import asyncio, sys
    from dtr.storage.filesystem import FilesystemDriver

    async def main() -> None:
        drv = FilesystemDriver(sys.argv[1], fsync=False)
        async with drv.open_append("up/data"):
            print("locked", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await drv.close()

    asyncio.run(main())
""")


async def test_filesystem_lock_holds_across_processes(tmp_path: Path) -> None:
    """Two worker processes (or replicas on one disk) never write one file at once."""
    root = tmp_path / "root"
    drv = FilesystemDriver(root, fsync=False)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(root)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ObjectLocked):
            async with drv.open_append("up/data"):
                pass
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=30) == 0
        async with drv.open_append("up/data") as h:
            assert await h.write_at(0, chunked(b"mine")) == 4
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        await drv.close()


async def test_filesystem_move_of_a_written_file_is_a_rename(tmp_path: Path) -> None:
    """The upload file becomes the blob without a copy: same inode."""
    drv = FilesystemDriver(tmp_path / "root", fsync=True)
    try:
        async with drv.open_append("up/data") as h:
            await h.write_at(0, chunked(blob(MIB, 8)))
            inode = os.stat(drv.root / "up" / "data").st_ino
            await drv.move("up/data", "blobs/d")
        assert os.stat(drv.root / "blobs" / "d").st_ino == inode
    finally:
        await drv.close()


def _recording_pwritev(monkeypatch: pytest.MonkeyPatch, most: int | None = None) -> list[int]:
    """Replace ``os.pwritev`` by one that records each call's size (writing at most
    ``most`` bytes of it, like a short write); return the record.
    """
    sizes: list[int] = []
    real = os.pwritev

    def pwritev(fd: int, buffers: list[Any], offset: int) -> int:
        data = b"".join(bytes(b) for b in buffers)
        sizes.append(len(data))
        if len(sizes) > 10_000:
            raise RuntimeError("pwritev called in a loop")
        return real(fd, [data[:most] if most is not None else data], offset)

    monkeypatch.setattr(os, "pwritev", pwritev)
    return sizes


@pytest.mark.parametrize("piece", [408 * 1024, 64 * 1024 + 7, 3 * MIB])
async def test_filesystem_writes_in_calls_of_at_most_256_kib(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int) -> None:
    """Large ``pwritev`` calls make the page cache allocate large folios (slow on a
    ballooned VM: ``dtr/storage/filesystem.py``); every path writes at most 256 KiB a call,
    in as few calls as that allows.
    """
    sizes = _recording_pwritev(monkeypatch)
    drv = FilesystemDriver(tmp_path / "root", fsync=False)
    data = blob(9 * MIB + 5, 11)
    try:
        assert await drv.write("blobs/w", chunked(data, piece)) == len(data)
        async with drv.open_append("up/data") as h:
            assert await h.write_at(0, chunked(data, piece)) == len(data)
        assert await read_all(drv, "blobs/w") == data
        assert await read_all(drv, "up/data") == data
    finally:
        await drv.close()
    assert sum(sizes) == 2 * len(data)
    assert max(sizes) == 256 * 1024
    # at most one call short of 256 KiB per batch (~1 MiB, or one piece when larger)
    batches = 2 * (len(data) // min(piece, MIB) + 2)
    assert len(sizes) <= 2 * len(data) // (256 * 1024) + batches


@pytest.mark.parametrize("durable", [True, False])
async def test_filesystem_starts_writeback_every_2_mib(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool) -> None:
    """A durable write starts writeback of what it wrote every 2 MiB (an 8 MiB layer's
    final fsync then finds little to flush), in contiguous ranges; a scratch one never.
    """
    import dtr.storage.filesystem as fs  # noqa: PLC0415 - the module global is patched

    kicked: list[tuple[int, int]] = []
    monkeypatch.setattr(fs, "_START_WRITEBACK",
                        lambda fd, offset, n: kicked.append((offset, n)))
    drv = FilesystemDriver(tmp_path / "root", fsync=durable)
    data = blob(8 * MIB + 5, 13)
    try:
        await drv.write("blobs/w", chunked(data, 408 * 1024))
        if durable:
            assert len(kicked) >= 3
            assert [off for off, _n in kicked] == [sum(n for _o, n in kicked[:i])
                                                   for i in range(len(kicked))]
            assert all(2 * MIB <= n < 3 * MIB for _off, n in kicked)
        else:
            assert kicked == []
    finally:
        await drv.close()


async def test_filesystem_short_writes_are_resumed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = _recording_pwritev(monkeypatch, most=100_003)
    drv = FilesystemDriver(tmp_path / "root", fsync=False)
    data = blob(3 * MIB + 1, 12)
    try:
        await drv.write("blobs/w", chunked(data, 408 * 1024))
        async with drv.open_append("up/data") as h:
            await h.write_at(0, chunked(data[:MIB]))
            await h.write_at(MIB, chunked(data[MIB:], 408 * 1024))
        assert await read_all(drv, "blobs/w") == data
        assert await read_all(drv, "up/data") == data
    finally:
        await drv.close()
    assert sum(min(n, 100_003) for n in sizes) == 2 * len(data)


async def test_filesystem_write_that_writes_nothing_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``pwritev`` that returns 0 is an error, not a loop."""
    _recording_pwritev(monkeypatch, most=0)
    drv = FilesystemDriver(tmp_path / "root", fsync=False)
    try:
        with pytest.raises(StorageError, match="wrote nothing"):
            await drv.write("blobs/w", chunked(b"abc"))
        await assert_missing(drv, "blobs/w")
    finally:
        await drv.close()


# -- S3 only ---------------------------------------------------------------------------------
S3_BACKENDS = [b for b in BACKENDS if b.startswith("s3-")]


@pytest.mark.parametrize("backend", S3_BACKENDS)
async def test_s3_prefixes_isolate(request: pytest.FixtureRequest, backend: str) -> None:
    one = make_s3(request, backend, f"one-{uuid.uuid4().hex}/reg")
    two = make_s3(request, backend, f"two-{uuid.uuid4().hex}")
    try:
        await one.ensure_bucket()
        await one.ensure_bucket()  # idempotent
        await one.put_bytes("blobs/k", b"1")
        await assert_missing(two, "blobs/k")
        await two.put_bytes("blobs/k", b"2")
        assert await listing(one, "blobs") == {"blobs/k": 1}
        assert await one.get_bytes("blobs/k") == b"1"
        assert await two.delete_prefix("blobs") == 1
        assert await one.get_bytes("blobs/k") == b"1"
    finally:
        await one.close()
        await two.close()


def test_s3_part_size_bounds() -> None:
    for bad in (PART - 1, 5 * 1024**3 + 1):
        with pytest.raises(ValueError, match="part_size"):
            S3Driver("127.0.0.1:9", "b", "k", "s", part_size=bad)


async def test_s3_missing_bucket_is_not_found(minio_endpoint: tuple[str, str, str]) -> None:
    endpoint, access, secret = minio_endpoint
    drv = S3Driver(endpoint, f"nope-{uuid.uuid4().hex[:12]}", access, secret, secure=False)
    try:
        with pytest.raises(PathNotFound):
            await drv.stat("k")
    finally:
        await drv.close()


async def test_s3_dead_store_raises_storage_error() -> None:
    with minio() as server:
        drv = S3Driver(server.endpoint, "dead", server.access_key, server.secret_key,
                       secure=False, part_size=PART)
        await drv.ensure_bucket()
        await drv.put_bytes("k", b"before")
        assert await drv.get_bytes("k") == b"before"
    # The server is gone (its port now refuses connections).
    # Every call goes through the same error mapping; a few kinds are enough.
    checks: list[Any] = [drv.stat("k"), drv.reader("k"),
                         drv.write("k2", chunked(blob(6 * MIB))), drv.delete_prefix("a"),
                         drv.compose(["k"], "k3")]
    start = time.monotonic()
    try:
        for call in checks:
            with pytest.raises(StorageError) as info:
                await call
            assert not isinstance(info.value, PathNotFound)
    finally:
        await drv.close()
    assert time.monotonic() - start < 30


async def test_s3_unreachable_endpoint() -> None:
    drv = S3Driver(f"127.0.0.1:{free_port()}", "bucket", "k", "secret-key", secure=False)
    try:
        with pytest.raises(StorageError):
            await drv.ensure_bucket()
        with pytest.raises(StorageError):
            await listing(drv, "x")
    finally:
        await drv.close()


async def test_s3_bad_credentials(minio_endpoint: tuple[str, str, str]) -> None:
    endpoint, _, _ = minio_endpoint
    drv = S3Driver(endpoint, "contracts", "wrong", "wrong-secret", secure=False,
                   region="us-east-1")
    try:
        with pytest.raises(StorageError) as info:
            await drv.put_bytes("k", b"x")
        assert not isinstance(info.value, PathNotFound)
    finally:
        await drv.close()



# -- bodies of many odd-sized pieces (drivers batch pieces without joining them) ----------------
def odd_pieces(data: bytes, seed: int = 0) -> list[bytes]:
    """``data`` cut into pieces of mixed sizes: tiny, odd, around 64 KiB, server-sized
    (~400 KiB) and past 1 MiB, in a random order.
    """
    rnd = random.Random(seed)
    sizes = [1, 2, 7, 511, 4093, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 400 * 1024 + 3,
             CHUNK + 17, 3 * MIB + 5]
    pieces, at = [], 0
    while at < len(data):
        n = rnd.choice(sizes)
        pieces.append(data[at:at + n])
        at += n
    return pieces


async def from_pieces(pieces: list[bytes], fail: BaseException | None = None,
                      ) -> AsyncIterator[bytes]:
    for i, piece in enumerate(pieces):
        yield piece
        if i % 3 == 0:
            await asyncio.sleep(0)
    if fail is not None:
        raise fail


def recorder() -> tuple[list[bytes], Any]:
    seen: list[bytes] = []

    def observe(chunk: bytes) -> None:
        seen.append(bytes(chunk))

    return seen, observe


@pytest.mark.parametrize("size", [1, 1000, 70 * 1024, 9 * MIB + 13])
async def test_write_of_odd_sized_pieces(driver: StorageDriver, size: int) -> None:
    data = blob(size, 21)
    seen, observe = recorder()
    assert await driver.write("odd/k", from_pieces(odd_pieces(data, size)), observe) == size
    assert b"".join(seen) == data
    assert await read_all(driver, "odd/k") == data


async def test_write_of_many_tiny_pieces(driver: StorageDriver) -> None:
    data = blob(300 * 1024 + 5, 22)
    pieces = [data[i:i + 3] for i in range(0, len(data), 3)]
    seen, observe = recorder()
    assert await driver.write("tiny/k", from_pieces(pieces), observe) == len(data)
    assert b"".join(seen) == data
    assert await driver.get_bytes("tiny/k") == data


@pytest.mark.parametrize("size", [10, 5 * MIB + 1, 13 * MIB + 3])
async def test_write_failing_mid_batch_stores_nothing(driver: StorageDriver, size: int) -> None:
    boom = ConnectionResetError("client went away")
    with pytest.raises(WriteAborted) as info:
        await driver.write("mid/k", from_pieces(odd_pieces(blob(size, 23), size), boom))
    assert info.value.__cause__ is boom
    await assert_missing(driver, "mid/k")
    assert await listing(driver, "mid") == {}


@pytest.mark.parametrize("size", [1, 1000, 70 * 1024, 9 * MIB + 13])
async def test_write_at_of_odd_sized_pieces(appendable: AppendableDriver, size: int) -> None:
    drv = as_driver(appendable)
    head = blob(333, 24)
    data = blob(size, 25)
    seen, observe = recorder()
    async with appendable.open_append("up/odd/data") as h:
        await h.write_at(0, chunked(head))
        assert await h.write_at(len(head), from_pieces(odd_pieces(data, size)),
                                observe) == size
        assert await h.size() == len(head) + size
    assert b"".join(seen) == data
    assert await drv.get_bytes("up/odd/data") == head + data


@pytest.mark.parametrize("size", [10, 5 * MIB + 1, 13 * MIB + 3])
async def test_write_at_failing_mid_batch_is_cut_back(appendable: AppendableDriver,
                                                      size: int) -> None:
    drv = as_driver(appendable)
    kept = blob(1234, 26)
    boom = ConnectionResetError("client went away")
    async with appendable.open_append("up/mid/data") as h:
        await h.write_at(0, chunked(kept))
        with pytest.raises(WriteAborted) as info:
            await h.write_at(len(kept), from_pieces(odd_pieces(blob(size, 27), size), boom))
        assert info.value.__cause__ is boom
        assert await h.size() == len(kept)
    assert await drv.get_bytes("up/mid/data") == kept


async def test_failing_observer_stores_nothing(driver: StorageDriver) -> None:
    def observe(chunk: bytes) -> None:
        raise StorageError("observer failed")

    with pytest.raises(StorageError):
        await driver.write("obs/k", from_pieces(odd_pieces(blob(6 * MIB, 28))), observe)
    await assert_missing(driver, "obs/k")
    assert await listing(driver, "obs") == {}


async def test_delete_prefix_counts_nested_objects(driver: StorageDriver) -> None:
    for key in ("tree/a", "tree/b/c", "tree/b/d/e", "treeish/x"):
        await driver.put_bytes(key, b"1")
    assert await driver.delete_prefix("tree") == 3
    assert await listing(driver, "tree") == {}
    assert await driver.get_bytes("treeish/x") == b"1"
    assert await driver.delete_prefix("treeish/x") == 0  # an object is not a prefix


@pytest.mark.parametrize("key", ["a", "a/b", "...", "a/.b/c.", "A-z_0.9/x"])
async def test_key_rules_accept(driver: StorageDriver, key: str) -> None:
    await driver.put_bytes(key, b"v")
    assert await driver.get_bytes(key) == b"v"


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", ".", "a/..", "../a", "a/./b",
                                 "a b", "a\n", "é", "a/\u0661"])
async def test_key_rules_refuse(driver: StorageDriver, key: str) -> None:
    with pytest.raises(InvalidPath):
        await driver.put_bytes(key, b"v")
