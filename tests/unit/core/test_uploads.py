"""UploadService: the monolithic PUT (one body into an empty upload), chunked uploads
written in place into one file under its lock (filesystem), the segment scheme of drivers
that cannot write in place (S3; here a filesystem driver without the capability), the
upload lookups on the fast read path, and ``BlobService.commit`` with a claim already
made. Run on SQLite and PostgreSQL (see ``conftest.py``)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy import delete, insert, select

from dtr.app import build_registry, close_registry
from dtr.config import Settings
from dtr.core import uploads as uploads_module
from dtr.core.blobs import blob_key
from dtr.core.reference import digest_of
from dtr.core.registry import Registry
from dtr.core.uploads import UploadService
from dtr.db.base import utcnow
from dtr.db.models import Blob, RepositoryBlob, Upload, UploadPart
from dtr.errors import (
    BlobTooLarge,
    DigestInvalid,
    RangeInvalid,
    SizeInvalid,
    Unavailable,
    UploadInvalid,
    UploadUnknown,
)
from dtr.storage import paths
from dtr.storage.base import AppendableDriver, ChunkObserver, ObjectInfo, StorageDriver
from dtr.storage.filesystem import FilesystemDriver

pytestmark = pytest.mark.anyio


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _rows(reg: Registry) -> dict[str, list[tuple[object, ...]]]:
    queries = {"blob": select(Blob.digest, Blob.state, Blob.size),
               "link": select(RepositoryBlob.digest),
               "upload": select(Upload.id, Upload.size, Upload.segments),
               "part": select(UploadPart.upload_id, UploadPart.size)}
    async with reg.store.read() as s:
        return {k: sorted(tuple(r) for r in (await s.execute(q)).all())
                for k, q in queries.items()}


async def _upload_keys(reg: Registry, upload_id: str) -> list[str]:
    return [i.path async for i in reg.store.storage.list(paths.upload_prefix(upload_id))]


async def _stored_bytes(reg: Registry, upload_id: str) -> int:
    """Bytes stored under the upload's folder (an open in-place upload may keep an empty
    data file)."""
    return sum([i.size async for i in reg.store.storage.list(paths.upload_prefix(upload_id))])


class SegmentsOnly:
    """A filesystem driver without the in-place capability: what S3 offers (a real
    driver, not a stand-in for a peer), so the segment scheme runs here too."""

    name = "segments-only"

    def __init__(self, inner: FilesystemDriver) -> None:
        self.inner = inner

    async def stat(self, path: str) -> ObjectInfo:
        return await self.inner.stat(path)

    async def reader(self, path: str, offset: int = 0,
                     length: int | None = None) -> AsyncIterator[bytes]:
        return await self.inner.reader(path, offset, length)

    async def write(self, path: str, chunks: AsyncIterable[bytes],
                    observer: ChunkObserver | None = None, *, durable: bool = True) -> int:
        return await self.inner.write(path, chunks, observer, durable=durable)

    async def put_bytes(self, path: str, data: bytes) -> None:
        await self.inner.put_bytes(path, data)

    async def get_bytes(self, path: str) -> bytes:
        return await self.inner.get_bytes(path)

    async def compose(self, sources: list[str], dest: str) -> int:
        return await self.inner.compose(sources, dest)

    async def move(self, src: str, dest: str) -> None:
        await self.inner.move(src, dest)

    async def delete(self, path: str) -> None:
        await self.inner.delete(path)

    async def delete_prefix(self, prefix: str) -> int:
        return await self.inner.delete_prefix(prefix)

    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        return self.inner.list(prefix)

    async def presign_get(self, path: str, expires_seconds: int) -> str | None:
        return await self.inner.presign_get(path, expires_seconds)

    def local_file(self, path: str) -> str | None:
        return self.inner.local_file(path)

    async def close(self) -> None:
        await self.inner.close()


def _segments_registry(settings: Settings) -> Registry:
    storage = SegmentsOnly(FilesystemDriver(settings.filesystem_root, fsync=False))
    assert isinstance(storage, StorageDriver)
    assert not isinstance(storage, AppendableDriver)
    return build_registry(settings, storage)


@pytest.fixture
async def segments(settings: Settings) -> AsyncIterator[Registry]:
    """A registry (a replica) on the same database and folder as ``registry`` whose
    driver cannot write in place: it stores one segment per body."""
    reg = _segments_registry(settings)
    try:
        yield reg
    finally:
        await close_registry(reg)


@pytest.fixture(params=["in-place", "segments"])
async def any_scheme(request: pytest.FixtureRequest,
                     settings: Settings) -> AsyncIterator[Registry]:
    """A registry in each storage scheme."""
    reg = build_registry(settings) if request.param == "in-place" else _segments_registry(
        settings)
    try:
        yield reg
    finally:
        await close_registry(reg)


def _data_file(reg: Registry, upload_id: str) -> Path:
    path = reg.store.storage.local_file(paths.upload_data_key(upload_id))
    assert path is not None
    return Path(path)


async def _read(reg: Registry, repo: str, digest: str) -> bytes:
    content = await reg.blobs.open(repo, digest)
    assert content.chunks is not None
    return b"".join([c async for c in content.chunks])


async def test_monolithic_put_commits_and_cleans_up(registry: Registry) -> None:
    data = b"monolithic " * 1000
    digest = str(digest_of(data))
    up = await registry.uploads.start("mono/a")
    assert (await registry.uploads.status("mono/a", up.id)).size == 0
    done = await registry.uploads.finish("mono/a", up.id, digest,
                                         _chunks(data[:100], data[100:]),
                                         content_length=len(data))
    assert done == digest
    assert await _read(registry, "mono/a", digest) == data
    rows = await _rows(registry)
    assert rows["blob"] == [(digest, "present", len(data))]
    assert rows["link"] == [(digest,)]
    assert rows["upload"] == []
    assert rows["part"] == []
    assert await _upload_keys(registry, up.id) == []
    with pytest.raises(UploadUnknown):
        await registry.uploads.status("mono/a", up.id)


async def test_monolithic_put_with_sha512(registry: Registry) -> None:
    data = b"sha512 body"
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    up = await registry.uploads.start("mono/sha512")
    assert await registry.uploads.finish("mono/sha512", up.id, digest, _chunks(data)) == digest
    assert await _read(registry, "mono/sha512", digest) == data


async def test_monolithic_put_digest_mismatch_discards_everything(registry: Registry) -> None:
    up = await registry.uploads.start("mono/bad")
    wrong = str(digest_of(b"something else"))
    with pytest.raises(DigestInvalid):
        await registry.uploads.finish("mono/bad", up.id, wrong, _chunks(b"actual bytes"))
    rows = await _rows(registry)
    assert rows["blob"] == []
    assert rows["upload"] == []
    assert rows["part"] == []
    assert await _upload_keys(registry, up.id) == []


async def test_monolithic_put_short_body_keeps_upload(any_scheme: Registry) -> None:
    registry = any_scheme
    data = b"short"
    up = await registry.uploads.start("mono/short")
    with pytest.raises(SizeInvalid):
        await registry.uploads.finish("mono/short", up.id, str(digest_of(data)),
                                      _chunks(data), content_length=len(data) + 1)
    assert (await registry.uploads.status("mono/short", up.id)).size == 0
    assert await _stored_bytes(registry, up.id) == 0
    # the session is still usable
    assert await registry.uploads.finish("mono/short", up.id, str(digest_of(data)),
                                         _chunks(data), content_length=len(data))
    assert await _read(registry, "mono/short", str(digest_of(data))) == data
    assert await _upload_keys(registry, up.id) == []


async def test_empty_put_on_empty_upload_is_the_empty_blob(registry: Registry) -> None:
    empty = str(digest_of(b""))
    for body in (None, _chunks(), _chunks(b"")):
        up = await registry.uploads.start("mono/empty")
        assert await registry.uploads.finish("mono/empty", up.id, empty, body) == empty
    assert await _read(registry, "mono/empty", empty) == b""


async def test_put_body_after_patch_takes_the_ordinary_path(registry: Registry) -> None:
    data = b"0123456789" * 300
    digest = str(digest_of(data))
    up = await registry.uploads.start("mono/two")
    state = await registry.uploads.append("mono/two", up.id, _chunks(data[:1000]),
                                          (0, 999), 1000)
    assert state.size == 1000
    assert await registry.uploads.finish("mono/two", up.id, digest, _chunks(data[1000:]),
                                         (1000, len(data) - 1)) == digest
    assert await _read(registry, "mono/two", digest) == data
    assert (await _rows(registry))["upload"] == []


async def test_monolithic_put_range_must_start_at_zero(any_scheme: Registry) -> None:
    registry = any_scheme
    up = await registry.uploads.start("mono/range")
    with pytest.raises(RangeInvalid):
        await registry.uploads.finish("mono/range", up.id, str(digest_of(b"abc")),
                                      _chunks(b"abc"), (5, 7))
    assert await _upload_keys(registry, up.id) == []


async def test_monolithic_put_loses_to_a_concurrent_append(segments: Registry) -> None:
    """Segments: a PATCH that lands while the PUT body streams wins the compare-and-set."""
    registry = segments
    up = await registry.uploads.start("mono/race")
    racer = b"patched meanwhile"

    async def body() -> AsyncIterator[bytes]:
        yield b"put body, "
        await registry.uploads.append("mono/race", up.id, _chunks(racer))
        yield b"second half"

    data = b"put body, second half"
    with pytest.raises(RangeInvalid):
        await registry.uploads.finish("mono/race", up.id, str(digest_of(data)), body())
    rows = await _rows(registry)
    assert rows["blob"] == []
    assert rows["upload"] == [(up.id, len(racer), 1)]
    assert len(await _upload_keys(registry, up.id)) == 1  # the PATCH's segment only
    assert await registry.uploads.finish("mono/race", up.id, str(digest_of(racer))) \
        == str(digest_of(racer))


async def test_append_during_a_monolithic_put_is_refused(registry: Registry) -> None:
    """In place: the PUT holds the upload's lock, so a PATCH that arrives while its body
    streams is refused at once (416) and the PUT completes."""
    up = await registry.uploads.start("mono/race")
    refused: list[RangeInvalid] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"put body, "
        try:
            await registry.uploads.append("mono/race", up.id, _chunks(b"patched meanwhile"))
        except RangeInvalid as exc:
            refused.append(exc)
        yield b"second half"

    data = b"put body, second half"
    assert await registry.uploads.finish("mono/race", up.id, str(digest_of(data)),
                                         body()) == str(digest_of(data))
    assert len(refused) == 1
    assert await _read(registry, "mono/race", str(digest_of(data))) == data
    assert (await _rows(registry))["upload"] == []
    assert await _upload_keys(registry, up.id) == []


async def test_monolithic_put_of_a_known_blob_links_it(registry: Registry) -> None:
    data = b"shared layer"
    digest = str(digest_of(data))
    for repo in ("mono/x", "mono/y"):
        up = await registry.uploads.start(repo)
        await registry.uploads.finish(repo, up.id, digest, _chunks(data))
        assert await _read(registry, repo, digest) == data
    rows = await _rows(registry)
    assert rows["blob"] == [(digest, "present", len(data))]
    assert rows["link"] == [(digest,), (digest,)]
    assert rows["upload"] == []


async def test_monolithic_put_replaces_orphan_bytes(registry: Registry) -> None:
    """Bytes at the key without a row (a crash's leftover) are the same content."""
    data = b"orphaned content"
    digest = str(digest_of(data))
    await registry.store.storage.put_bytes(blob_key(digest), data)
    up = await registry.uploads.start("mono/orphan")
    await registry.uploads.finish("mono/orphan", up.id, digest, _chunks(data))
    assert await _read(registry, "mono/orphan", digest) == data
    assert await _upload_keys(registry, up.id) == []


async def test_monolithic_put_waits_for_gc_to_finish_a_blob(registry: Registry) -> None:
    """A row GC holds in state ``deleting`` is waited out, then the push claims anew."""
    data = b"being collected"
    digest = str(digest_of(data))
    now = utcnow()
    async with registry.store.tx() as s:
        await s.execute(insert(Blob).values(digest=digest, size=len(data), state="deleting",
                                            created_at=now, last_linked_at=now))
    up = await registry.uploads.start("mono/gc")
    finished: list[str] = []

    async def push() -> None:
        finished.append(await registry.uploads.finish("mono/gc", up.id, digest,
                                                      _chunks(data)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(push)
        await anyio.sleep(0.3)
        assert not finished
        async with registry.store.tx() as s:  # GC's _finish: row and bytes go together
            await s.execute(delete(Blob).where(Blob.digest == digest))
    assert finished == [digest]
    assert await _read(registry, "mono/gc", digest) == data
    assert (await _rows(registry))["blob"] == [(digest, "present", len(data))]


async def test_upload_lookups_check_the_repository(registry: Registry) -> None:
    up = await registry.uploads.start("mono/owner")
    with pytest.raises(UploadUnknown):
        await registry.uploads.status("mono/other", up.id)
    with pytest.raises(UploadUnknown):
        await registry.uploads.finish("mono/other", up.id, str(digest_of(b"x")),
                                      _chunks(b"x"))
    with pytest.raises(UploadUnknown):
        await registry.uploads.status("mono/owner", "0" * 32)
    assert await _upload_keys(registry, up.id) == []
    assert (await registry.uploads.status("mono/owner", up.id)).size == 0


async def test_chunked_finish_on_another_replica_reads_segments_in_order(
        any_scheme: Registry) -> None:
    """Parts come back from the fast read in offset order; a service without the
    running hash (another replica) re-reads the data to verify."""
    registry = any_scheme
    data = bytes(range(256)) * 40
    digest = str(digest_of(data))
    up = await registry.uploads.start("chunked/a")
    cuts = [0, 1000, 1001, 7000, len(data)]
    for start, end in itertools.pairwise(cuts):
        await registry.uploads.append("chunked/a", up.id, _chunks(data[start:end]),
                                      (start, end - 1), end - start)
    other = UploadService(registry.store, registry.blobs)
    assert (await other.status("chunked/a", up.id)).size == len(data)
    with pytest.raises(UploadUnknown):
        await other.finish("chunked/b", up.id, digest)
    assert await other.finish("chunked/a", up.id, digest) == digest
    assert await _read(registry, "chunked/a", digest) == data
    assert (await _rows(registry))["part"] == []
    assert await _upload_keys(registry, up.id) == []


# -- chunked uploads written in place ------------------------------------------------------
MIB = 1024 * 1024


def _body(n: int, seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"x" * (n % 32)


async def _parts(reg: Registry, upload_id: str) -> list[tuple[int, str, int]]:
    async with reg.store.read() as s:
        return [tuple(r) for r in (await s.execute(  # type: ignore[misc]
            select(UploadPart.offset, UploadPart.key, UploadPart.size)
            .where(UploadPart.upload_id == upload_id).order_by(UploadPart.offset))).all()]


async def _disconnects(data: bytes) -> AsyncIterator[bytes]:
    """A body whose client goes away after sending ``data``."""
    for i in range(0, len(data), 64 * 1024):
        yield data[i:i + 64 * 1024]
    raise ConnectionResetError("client went away")


async def test_chunked_patches_are_written_in_place(registry: Registry) -> None:
    data = _body(3 * MIB + 100, 1)
    digest = str(digest_of(data))
    up = await registry.uploads.start("inplace/a")
    cuts = [0, MIB + 7, MIB + 8, 3 * MIB, len(data)]
    for start, end in itertools.pairwise(cuts):
        state = await registry.uploads.append("inplace/a", up.id, _chunks(data[start:end]),
                                              (start, end - 1), end - start)
        assert state.size == end
        # one file, exactly the committed bytes
        assert await _upload_keys(registry, up.id) == [paths.upload_data_key(up.id)]
        assert _data_file(registry, up.id).read_bytes() == data[:end]
    key = paths.upload_data_key(up.id)
    assert await _parts(registry, up.id) == [(a, key, b - a) for a, b in itertools.pairwise(cuts)]
    inode = _data_file(registry, up.id).stat().st_ino
    assert await registry.uploads.finish("inplace/a", up.id, digest) == digest
    assert await _read(registry, "inplace/a", digest) == data
    # the upload's file became the blob: moved, not copied
    blob_file = registry.store.storage.local_file(blob_key(digest))
    assert blob_file is not None
    assert os.stat(blob_file).st_ino == inode
    assert await _upload_keys(registry, up.id) == []
    rows = await _rows(registry)
    assert (rows["upload"], rows["part"]) == ([], [])


async def test_streamed_patches_without_range_append_in_place(registry: Registry) -> None:
    """docker's PATCH: no Content-Range, appended at the current size."""
    data = b"streamed " * 5000
    up = await registry.uploads.start("inplace/stream")
    for piece in (data[:10000], data[10000:]):
        await registry.uploads.append("inplace/stream", up.id, _chunks(piece))
    digest = str(digest_of(data))
    assert await registry.uploads.finish("inplace/stream", up.id, digest) == digest
    assert await _read(registry, "inplace/stream", digest) == data


@pytest.mark.parametrize("sent", [0, 100, 2 * MIB - 5])
async def test_failed_body_keeps_the_upload_and_the_offset(any_scheme: Registry,
                                                           sent: int) -> None:
    """No partial body ever becomes part of the upload, nothing stored is lost, and the
    next PATCH at the old offset works."""
    registry = any_scheme
    first, second = _body(MIB + 3, 2), _body(2 * MIB + 1, 3)
    up = await registry.uploads.start("inplace/fail")
    await registry.uploads.append("inplace/fail", up.id, _chunks(first), (0, len(first) - 1))
    end = len(first) + len(second) - 1
    with pytest.raises(Unavailable):  # what a body stream failing midway becomes
        await registry.uploads.append("inplace/fail", up.id, _disconnects(second[:sent]),
                                      (len(first), end), len(second))
    with pytest.raises(SizeInvalid):  # a short body
        await registry.uploads.append("inplace/fail", up.id, _chunks(second[:sent]),
                                      (len(first), end), len(second))
    with pytest.raises(SizeInvalid):  # a long one
        await registry.uploads.append("inplace/fail", up.id, _chunks(second + b"!"),
                                      (len(first), end), len(second))
    assert (await registry.uploads.status("inplace/fail", up.id)).size == len(first)
    assert await _stored_bytes(registry, up.id) == len(first)
    await registry.uploads.append("inplace/fail", up.id, _chunks(second), (len(first), end))
    digest = str(digest_of(first + second))
    assert await registry.uploads.finish("inplace/fail", up.id, digest) == digest
    assert await _read(registry, "inplace/fail", digest) == first + second


async def test_too_large_body_is_cut_off(any_scheme: Registry) -> None:
    registry = any_scheme
    registry.store.limits = dataclasses.replace(registry.store.limits, max_blob_bytes=3000)
    up = await registry.uploads.start("inplace/big")
    await registry.uploads.append("inplace/big", up.id, _chunks(b"a" * 2000))
    with pytest.raises(BlobTooLarge):
        await registry.uploads.append("inplace/big", up.id, _chunks(b"b" * 1001))
    assert (await registry.uploads.status("inplace/big", up.id)).size == 2000
    assert await _stored_bytes(registry, up.id) == 2000
    await registry.uploads.append("inplace/big", up.id, _chunks(b"c" * 1000))
    data = b"a" * 2000 + b"c" * 1000
    assert await registry.uploads.finish("inplace/big", up.id, str(digest_of(data))) \
        == str(digest_of(data))


async def test_append_waits_for_a_lock_released_shortly(registry: Registry) -> None:
    """A request whose client went away may hold the upload file a moment longer while it
    cuts its bytes back: the next PATCH waits for it instead of failing."""
    up = await registry.uploads.start("inplace/wait")
    storage = registry.uploads.store.storage
    assert isinstance(storage, AppendableDriver)
    held, done = anyio.Event(), anyio.Event()

    async def holder() -> None:
        async with storage.open_append(paths.upload_data_key(up.id)):
            held.set()
            await anyio.sleep(0.2)
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await held.wait()
        state = await registry.uploads.append("inplace/wait", up.id, _chunks(b"after"), (0, 4))
        assert done.is_set()
    assert state.size == 5


async def test_concurrent_append_is_refused(registry: Registry,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """While one PATCH streams, another one on the same upload gets 416 (after the short
    wait for the lock) and writes nothing; the first one completes."""
    monkeypatch.setattr(uploads_module, "LOCK_WAIT_SECONDS", 0.05)
    up = await registry.uploads.start("inplace/race")
    first = _body(2 * MIB, 4)
    streaming, release = anyio.Event(), anyio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield first[:MIB]
        streaming.set()
        await release.wait()
        yield first[MIB:]

    sizes: list[int] = []

    async def patch() -> None:
        sizes.append((await registry.uploads.append("inplace/race", up.id, slow())).size)

    async with anyio.create_task_group() as tg:
        tg.start_soon(patch)
        await streaming.wait()
        for body in (_chunks(b"intruder"), _chunks()):
            with pytest.raises(RangeInvalid):
                await registry.uploads.append("inplace/race", up.id, body, (0, 7))
        with pytest.raises(RangeInvalid):
            await registry.uploads.finish("inplace/race", up.id, str(digest_of(first)))
        release.set()
    assert sizes == [len(first)]
    assert (await registry.uploads.status("inplace/race", up.id)).size == len(first)
    assert await registry.uploads.finish("inplace/race", up.id, str(digest_of(first))) \
        == str(digest_of(first))
    assert await _read(registry, "inplace/race", str(digest_of(first))) == first


async def test_stale_offset_is_refused_without_writing(registry: Registry) -> None:
    up = await registry.uploads.start("inplace/stale")
    await registry.uploads.append("inplace/stale", up.id, _chunks(b"0123456789"))
    for rng in ((0, 9), (5, 14), (11, 20)):
        with pytest.raises(RangeInvalid):
            await registry.uploads.append("inplace/stale", up.id, _chunks(b"x" * 10), rng)
    assert _data_file(registry, up.id).read_bytes() == b"0123456789"


async def test_crash_leftover_past_the_size_is_cut(registry: Registry) -> None:
    """A writer that died after writing but before advancing the size left bytes past
    the committed size: the next PATCH, and finish, cut them off."""
    first, second = b"committed bytes|", b"next chunk|"
    up = await registry.uploads.start("inplace/crash")
    await registry.uploads.append("inplace/crash", up.id, _chunks(first))
    path = _data_file(registry, up.id)
    with open(path, "ab") as fh:
        fh.write(b"garbage of a crashed writer, longer than the next chunk")
    await registry.uploads.append("inplace/crash", up.id, _chunks(second),
                                  (len(first), len(first) + len(second) - 1))
    assert path.read_bytes() == first + second
    with open(path, "ab") as fh:
        fh.write(b"more garbage")
    data = first + second
    assert await registry.uploads.finish("inplace/crash", up.id, str(digest_of(data))) \
        == str(digest_of(data))
    assert await _read(registry, "inplace/crash", str(digest_of(data))) == data


async def test_finish_verifies_the_digest_and_makes_the_blob_durably(
        settings: Settings) -> None:
    """On a driver that fsyncs: a wrong digest discards the upload; the right one turns
    the upload's file into the blob (fsync and rename, same inode)."""
    reg = build_registry(settings, FilesystemDriver(settings.filesystem_root, fsync=True))
    try:
        data = _body(2 * MIB + 17, 5)
        digest = str(digest_of(data))
        bad = await reg.uploads.start("inplace/durable")
        await reg.uploads.append("inplace/durable", bad.id, _chunks(data[:MIB]))
        await reg.uploads.append("inplace/durable", bad.id, _chunks(data[MIB:]))
        with pytest.raises(DigestInvalid):
            await reg.uploads.finish("inplace/durable", bad.id, str(digest_of(b"other")))
        assert await _upload_keys(reg, bad.id) == []
        with pytest.raises(UploadUnknown):
            await reg.uploads.status("inplace/durable", bad.id)
        assert (await _rows(reg))["blob"] == []

        up = await reg.uploads.start("inplace/durable")
        await reg.uploads.append("inplace/durable", up.id, _chunks(data[:MIB]))
        inode = _data_file(reg, up.id).stat().st_ino
        assert await reg.uploads.finish("inplace/durable", up.id, digest,
                                        _chunks(data[MIB:]), (MIB, len(data) - 1)) == digest
        blob_file = reg.store.storage.local_file(blob_key(digest))
        assert blob_file is not None
        assert os.stat(blob_file).st_ino == inode
        assert Path(blob_file).read_bytes() == data
        assert (await _rows(reg))["blob"] == [(digest, "present", len(data))]
    finally:
        await close_registry(reg)


async def test_final_body_with_a_wrong_digest_discards_the_upload(registry: Registry) -> None:
    up = await registry.uploads.start("inplace/badput")
    await registry.uploads.append("inplace/badput", up.id, _chunks(b"first"))
    with pytest.raises(DigestInvalid):
        await registry.uploads.finish("inplace/badput", up.id, str(digest_of(b"x")),
                                      _chunks(b" second"))
    rows = await _rows(registry)
    assert (rows["blob"], rows["upload"], rows["part"]) == ([], [], [])
    assert await _upload_keys(registry, up.id) == []


async def test_rehash_reads_the_one_file_up_to_the_upload_size(registry: Registry) -> None:
    """A replica without the running hash re-reads the file, only up to the committed
    size (a crashed writer's leftover past it is not part of the blob)."""
    data = _body(MIB + 999, 6)
    up = await registry.uploads.start("inplace/rehash")
    await registry.uploads.append("inplace/rehash", up.id, _chunks(data[:1000]))
    await registry.uploads.append("inplace/rehash", up.id, _chunks(data[1000:]))
    with open(_data_file(registry, up.id), "ab") as fh:
        fh.write(b"leftover")
    other = UploadService(registry.store, registry.blobs)  # no hash cache
    digest = str(digest_of(data))
    assert await other.finish("inplace/rehash", up.id, digest) == digest
    assert await _read(registry, "inplace/rehash", digest) == data
    # and with a final body: hashed while written, after re-reading what came before
    up = await registry.uploads.start("inplace/rehash")
    await registry.uploads.append("inplace/rehash", up.id, _chunks(data[:1000]))
    registry.uploads._hashes.drop(up.id)
    other = UploadService(registry.store, registry.blobs)
    assert await other.finish("inplace/rehash", up.id, digest, _chunks(data[1000:])) == digest


async def test_lost_data_file_fails_cleanly(registry: Registry) -> None:
    up = await registry.uploads.start("inplace/lost")
    await registry.uploads.append("inplace/lost", up.id, _chunks(b"some bytes"))
    _data_file(registry, up.id).unlink()
    with pytest.raises(UploadInvalid):
        await registry.uploads.finish("inplace/lost", up.id, str(digest_of(b"some bytes")))
    assert (await _rows(registry))["blob"] == []


async def test_append_to_an_ended_upload_leaves_nothing(registry: Registry) -> None:
    up = await registry.uploads.start("inplace/ended")
    await registry.uploads.append("inplace/ended", up.id, _chunks(b"abc"))
    assert await registry.uploads.finish("inplace/ended", up.id, str(digest_of(b"abc")))
    with pytest.raises(UploadUnknown):
        await registry.uploads.append("inplace/ended", up.id, _chunks(b"def"))
    with pytest.raises(UploadUnknown):  # the upload ends between the lookup and the lock
        async with registry.uploads._hold(registry.store.storage,  # type: ignore[arg-type]
                                          up.id) as handle:
            await registry.uploads._append_in_place(handle, "inplace/ended", up.id, 3,
                                                    _chunks(b"def"), None, None)
    assert await _upload_keys(registry, up.id) == []
    assert not _data_file(registry, up.id).parent.exists()
    assert await _read(registry, "inplace/ended", str(digest_of(b"abc"))) == b"abc"


async def test_cancel_removes_the_data_file(registry: Registry) -> None:
    up = await registry.uploads.start("inplace/cancel")
    await registry.uploads.append("inplace/cancel", up.id, _chunks(b"abc"))
    await registry.uploads.cancel("inplace/cancel", up.id)
    assert await _upload_keys(registry, up.id) == []
    with pytest.raises(UploadUnknown):
        await registry.uploads.append("inplace/cancel", up.id, _chunks(b"def"))


async def test_segment_upload_continues_on_an_appendable_driver(
        registry: Registry, segments: Registry) -> None:
    """An upload whose bytes are segments (an older dtr wrote them) keeps to segments."""
    data = b"first by an old replica|then by a new one|and the end"
    up = await segments.uploads.start("inplace/legacy")
    await segments.uploads.append("inplace/legacy", up.id, _chunks(data[:24]))
    await registry.uploads.append("inplace/legacy", up.id, _chunks(data[24:40]))
    assert await _stored_bytes(registry, up.id) == 40
    assert all(k != paths.upload_data_key(up.id) for _o, k, _s in await _parts(registry, up.id))
    digest = str(digest_of(data))
    assert await registry.uploads.finish("inplace/legacy", up.id, digest,
                                         _chunks(data[40:])) == digest
    assert await _read(registry, "inplace/legacy", digest) == data


async def test_mixed_upload_is_refused(registry: Registry, segments: Registry) -> None:
    up = await registry.uploads.start("inplace/mixed")
    await registry.uploads.append("inplace/mixed", up.id, _chunks(b"in place|"))
    await segments.uploads.append("inplace/mixed", up.id, _chunks(b"segment"))
    with pytest.raises(UploadInvalid):
        await registry.uploads.finish("inplace/mixed", up.id,
                                      str(digest_of(b"in place|segment")))
    assert (await _rows(registry))["blob"] == []
