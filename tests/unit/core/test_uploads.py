"""UploadService fast paths: the monolithic PUT (one body into an empty upload), the
upload lookups on the fast read path, and ``BlobService.commit`` with a claim already made.
Run on SQLite and PostgreSQL (see ``conftest.py``)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator

import anyio
import pytest
from sqlalchemy import delete, insert, select

from dtr.core.blobs import blob_key
from dtr.core.reference import digest_of
from dtr.core.registry import Registry
from dtr.core.uploads import UploadService
from dtr.db.base import utcnow
from dtr.db.models import Blob, RepositoryBlob, Upload, UploadPart
from dtr.errors import DigestInvalid, RangeInvalid, SizeInvalid, UploadUnknown
from dtr.storage import paths

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


async def test_monolithic_put_short_body_keeps_upload(registry: Registry) -> None:
    data = b"short"
    up = await registry.uploads.start("mono/short")
    with pytest.raises(SizeInvalid):
        await registry.uploads.finish("mono/short", up.id, str(digest_of(data)),
                                      _chunks(data), content_length=len(data) + 1)
    assert (await registry.uploads.status("mono/short", up.id)).size == 0
    assert await _upload_keys(registry, up.id) == []
    # the session is still usable
    assert await registry.uploads.finish("mono/short", up.id, str(digest_of(data)),
                                         _chunks(data), content_length=len(data))


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


async def test_monolithic_put_range_must_start_at_zero(registry: Registry) -> None:
    up = await registry.uploads.start("mono/range")
    with pytest.raises(RangeInvalid):
        await registry.uploads.finish("mono/range", up.id, str(digest_of(b"abc")),
                                      _chunks(b"abc"), (5, 7))
    assert await _upload_keys(registry, up.id) == []


async def test_monolithic_put_loses_to_a_concurrent_append(registry: Registry) -> None:
    """A PATCH that lands while the PUT body streams wins the compare-and-set."""
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
        registry: Registry) -> None:
    """Segments come back from the fast read in offset order; a service without the
    running hash (another replica) re-reads them to verify."""
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
