"""GarbageCollector: uploads, links, blobs and orphan objects; dry run; safety against
concurrent pushes; and the ``dtr gc`` command."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import subprocess
import sys
import traceback
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from sqlalchemy import select, update

from dtr.app import build_registry
from dtr.config import Settings
from dtr.core import mediatypes as mt
from dtr.core.blobs import blob_key
from dtr.core.gc import GarbageCollector, GcReport, human_bytes
from dtr.core.reference import digest_of
from dtr.core.registry import Registry
from dtr.db.base import utcnow
from dtr.db.models import Blob, Manifest, ManifestReference, RepositoryBlob, Upload, UploadPart
from dtr.errors import BlobUnknown, ManifestBlobUnknown, UploadInvalid, UploadUnknown
from dtr.storage import paths
from dtr.storage.base import PathNotFound

pytestmark = pytest.mark.anyio

HOUR = 3600
GC_RUNS = 25
PUSHERS, PUSHES = 5, 3
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


# -- helpers ---------------------------------------------------------------------------
async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def push_blob(reg: Registry, repo: str, data: bytes, *, split: bool = False) -> str:
    """Upload ``data`` through the upload service (two segments when ``split``)."""
    digest = str(digest_of(data))
    up = await reg.uploads.start(repo)
    if split and len(data) > 1:
        half = len(data) // 2
        await reg.uploads.append(repo, up.id, _chunks(data[:half]))
        await reg.uploads.finish(repo, up.id, digest, _chunks(data[half:]),
                                 content_length=len(data) - half)
    else:
        await reg.uploads.finish(repo, up.id, digest, _chunks(data), content_length=len(data))
    return digest


def image_manifest(config: bytes, layers: list[bytes]) -> bytes:
    def desc(media_type: str, data: bytes) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": str(digest_of(data)), "size": len(data)}

    return json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": desc(CONFIG_TYPE, config),
        "layers": [desc(LAYER_TYPE, layer) for layer in layers],
    }).encode()


async def push_image(reg: Registry, repo: str, tag: str, config: bytes,
                     layers: list[bytes]) -> str:
    """Upload the blobs, then the manifest; returns the manifest digest."""
    for i, data in enumerate([config, *layers]):
        await push_blob(reg, repo, data, split=i % 2 == 1)
    result = await reg.manifests.put(repo, tag, mt.OCI_MANIFEST, image_manifest(config, layers))
    return result.digest


async def read_blob(reg: Registry, repo: str, digest: str) -> bytes:
    content = await reg.blobs.open(repo, digest)
    assert content.chunks is not None
    return b"".join([chunk async for chunk in content.chunks])


async def age(reg: Registry, seconds: float = 2 * HOUR, *,
              digests: list[str] | None = None) -> None:
    """Move blob, link and upload timestamps ``seconds`` into the past."""
    past = utcnow() - dt.timedelta(seconds=seconds)
    blob_q = update(Blob).values(last_linked_at=past, created_at=past)
    link_q = update(RepositoryBlob).values(created_at=past)
    if digests is not None:
        blob_q = blob_q.where(Blob.digest.in_(digests))
        link_q = link_q.where(RepositoryBlob.digest.in_(digests))
    async with reg.store.tx() as s:
        await s.execute(blob_q)
        await s.execute(link_q)
        if digests is None:
            await s.execute(update(Upload).values(updated_at=past))


def age_file(settings: Settings, key: str, seconds: float = 2 * HOUR) -> None:
    when = utcnow().timestamp() - seconds
    os.utime(settings.filesystem_root / key, (when, when))


async def gc(reg: Registry, *, grace: float = 0, upload_age: float = HOUR,
             dry_run: bool = False) -> GcReport:
    lines: list[str] = []
    report = await GarbageCollector(reg.store, upload_max_age=upload_age,
                                    blob_grace=grace).run(dry_run=dry_run,
                                                          progress=lines.append)
    assert lines
    assert all(line.startswith("gc: ") for line in lines)
    return report


async def storage_keys(reg: Registry) -> set[str]:
    keys: set[str] = set()
    for prefix in (paths.BLOBS, paths.UPLOADS):
        keys |= {info.path async for info in reg.store.storage.list(prefix)}
    return keys


async def snapshot(reg: Registry) -> tuple[object, ...]:
    """Every GC-relevant row and storage key, for before/after comparisons."""
    queries: list[Any] = [select(Blob.digest, Blob.state, Blob.size),
                          select(RepositoryBlob.repository_id, RepositoryBlob.digest),
                          select(Upload.id, Upload.size),
                          select(UploadPart.upload_id, UploadPart.key)]
    async with reg.store.read() as s:
        rows = [sorted(tuple(r) for r in (await s.execute(q)).all()) for q in queries]
    return (*rows, sorted(await storage_keys(reg)))


async def blob_rows(reg: Registry) -> dict[str, str]:
    async with reg.store.read() as s:
        return {str(d): str(st) for d, st in
                (await s.execute(select(Blob.digest, Blob.state))).all()}


async def exists(reg: Registry, digest: str) -> bool:
    try:
        await reg.store.storage.stat(blob_key(digest))
    except PathNotFound:
        return False
    return True


# -- report ----------------------------------------------------------------------------
def test_summary_line() -> None:
    report = GcReport(uploads_removed=3, links_removed=5, blobs_removed=4,
                      bytes_reclaimed=int(12.3 * 1024 * 1024), orphans_removed=0, duration=0.42)
    assert report.summary() == ("gc: removed 3 uploads, 5 links, 4 blobs (12.3 MiB reclaimed), "
                                "0 orphan objects in 0.4s")
    one = GcReport(dry_run=True, uploads_removed=1, links_removed=1, blobs_removed=1,
                   bytes_reclaimed=512, orphans_removed=1)
    assert one.summary() == ("gc (dry run): would remove 1 upload, 1 link, 1 blob "
                             "(512 B reclaimed), 1 orphan object in 0.0s")
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 1024**4) == "3.0 TiB"


# -- uploads ---------------------------------------------------------------------------
async def test_abandoned_uploads_removed_only_past_the_age(registry: Registry,
                                                           settings: Settings) -> None:
    old = await registry.uploads.start("team/app")
    await registry.uploads.append("team/app", old.id, _chunks(b"stale bytes"))
    await age(registry)
    fresh = await registry.uploads.start("team/app")
    await registry.uploads.append("team/app", fresh.id, _chunks(b"fresh "))

    report = await gc(registry, upload_age=HOUR)

    assert report.uploads_removed == 1
    assert report.bytes_reclaimed == len(b"stale bytes")
    with pytest.raises(UploadUnknown):
        await registry.uploads.status("team/app", old.id)
    async with registry.store.read() as s:
        parts = (await s.execute(select(UploadPart.upload_id))).scalars().all()
    assert set(parts) == {fresh.id}
    keys = await storage_keys(registry)
    assert not any(k.startswith(paths.upload_prefix(old.id) + "/") for k in keys)
    # The fresh upload is intact and still completes.
    digest = await registry.uploads.finish("team/app", fresh.id, str(digest_of(b"fresh data")),
                                           _chunks(b"data"), content_length=4)
    assert await read_blob(registry, "team/app", digest) == b"fresh data"


async def test_orphan_upload_folders_removed_only_past_the_age(registry: Registry,
                                                               settings: Settings) -> None:
    stale = paths.upload_segment_key("deadbeef" * 4, 0, "a1")
    recent = paths.upload_segment_key("cafef00d" * 4, 0, "b2")
    await registry.store.storage.put_bytes(stale, b"crashed upload")
    await registry.store.storage.put_bytes(recent, b"racing upload")
    age_file(settings, stale)

    report = await gc(registry, upload_age=HOUR)

    assert report.orphans_removed == 1
    assert report.uploads_removed == 0
    assert await storage_keys(registry) == {recent}


# -- links and blobs -------------------------------------------------------------------
async def test_referenced_blobs_are_kept(registry: Registry) -> None:
    config, layers = b'{"config": 1}', [b"layer one", b"layer two"]
    await push_image(registry, "team/app", "v1", config, layers)
    await age(registry)

    report = await gc(registry, grace=0)

    assert (report.links_removed, report.blobs_removed, report.orphans_removed) == (0, 0, 0)
    for data in [config, *layers]:
        assert await read_blob(registry, "team/app", str(digest_of(data))) == data


async def test_unreferenced_blob_kept_within_grace_removed_after(registry: Registry) -> None:
    kept = await push_image(registry, "team/app", "v1", b"{}", [b"kept layer"])
    digest = await push_blob(registry, "team/app", b"never referenced")

    report = await gc(registry, grace=HOUR)
    assert (report.links_removed, report.blobs_removed) == (0, 0)
    assert await read_blob(registry, "team/app", digest) == b"never referenced"

    await age(registry, digests=[digest])
    report = await gc(registry, grace=0)

    assert (report.links_removed, report.blobs_removed) == (1, 1)
    assert report.bytes_reclaimed == len(b"never referenced")
    with pytest.raises(BlobUnknown):
        await registry.blobs.stat("team/app", digest)
    assert digest not in await blob_rows(registry)
    assert not await exists(registry, digest)
    assert (await registry.manifests.get("team/app", kept)).digest == kept
    assert await read_blob(registry, "team/app", str(digest_of(b"kept layer"))) == b"kept layer"


async def test_unlinked_blob_waits_for_its_own_grace(registry: Registry) -> None:
    """A link past the grace goes, but a blob linked recently elsewhere stays."""
    digest = await push_blob(registry, "team/old", b"shared bytes")
    await age(registry, digests=[digest])
    await registry.blobs.link("team/new", digest)  # re-linked: last_linked_at is now

    report = await gc(registry, grace=HOUR)

    assert (report.links_removed, report.blobs_removed) == (1, 0)
    assert await read_blob(registry, "team/new", digest) == b"shared bytes"
    with pytest.raises(BlobUnknown):
        await registry.blobs.stat("team/old", digest)


async def test_blob_shared_by_two_repositories_survives_deletion_from_one(
        registry: Registry) -> None:
    config, layer = b'{"os": "linux"}', b"shared layer"
    in_a = await push_image(registry, "org/a", "v1", config, [layer])
    in_b = await push_image(registry, "org/b", "v1", config, [layer])
    assert in_a == in_b
    await registry.manifests.delete("org/a", in_a)
    await age(registry)

    report = await gc(registry, grace=0)

    assert (report.links_removed, report.blobs_removed) == (2, 0)
    for data in (config, layer):
        digest = str(digest_of(data))
        assert await read_blob(registry, "org/b", digest) == data
        with pytest.raises(BlobUnknown):
            await registry.blobs.stat("org/a", digest)

    await registry.manifests.delete("org/b", in_b)
    report = await gc(registry, grace=0)
    assert (report.links_removed, report.blobs_removed) == (2, 2)
    assert await blob_rows(registry) == {}
    assert not any(k.startswith(paths.BLOBS + "/") for k in await storage_keys(registry))


async def test_orphan_blob_objects_removed(registry: Registry, settings: Settings) -> None:
    kept = await push_blob(registry, "team/app", b"linked, with a row")
    stale = str(digest_of(b"bytes without a row"))
    recent = str(digest_of(b"bytes a commit is about to claim"))
    for digest, data in ((stale, b"bytes without a row"),
                         (recent, b"bytes a commit is about to claim")):
        await registry.store.storage.put_bytes(blob_key(digest), data)
    foreign = f"{paths.BLOBS}/sha256/zz/not-a-digest"
    await registry.store.storage.put_bytes(foreign, b"not ours to judge")
    for key in (blob_key(stale), blob_key(kept), foreign):
        age_file(settings, key)

    report = await gc(registry, grace=HOUR)

    assert report.orphans_removed == 1
    assert report.bytes_reclaimed == len(b"bytes without a row")
    assert not await exists(registry, stale)
    assert await exists(registry, recent)
    assert await read_blob(registry, "team/app", kept) == b"linked, with a row"
    assert foreign in await storage_keys(registry)
    assert await blob_rows(registry) == {kept: "present"}


async def test_interrupted_deletion_is_finished_and_waited_out(registry: Registry) -> None:
    digest = await push_blob(registry, "team/app", b"half deleted")
    async with registry.store.tx() as s:
        await s.execute(update(Blob).values(state="deleting"))
    with pytest.raises(BlobUnknown):
        await registry.blobs.stat("team/app", digest)

    report = await gc(registry, grace=HOUR)

    assert report.blobs_removed == 1
    assert await blob_rows(registry) == {}
    assert not await exists(registry, digest)
    assert await push_blob(registry, "team/app", b"half deleted") == digest
    assert await read_blob(registry, "team/app", digest) == b"half deleted"


async def test_dry_run_changes_nothing(registry: Registry, settings: Settings) -> None:
    await push_image(registry, "team/app", "v1", b"{}", [b"kept"])
    await push_blob(registry, "team/app", b"garbage one")
    await push_blob(registry, "team/other", b"garbage two", split=True)
    abandoned = await registry.uploads.start("team/app")
    await registry.uploads.append("team/app", abandoned.id, _chunks(b"partial"))
    await age(registry)
    orphan = str(digest_of(b"orphan"))
    await registry.store.storage.put_bytes(blob_key(orphan), b"orphan")
    age_file(settings, blob_key(orphan))
    before = await snapshot(registry)

    dry = await gc(registry, grace=0, dry_run=True)

    assert await snapshot(registry) == before
    assert dry.summary().startswith("gc (dry run): would remove 1 upload, 2 links, 2 blobs")
    real = await gc(registry, grace=0)
    assert (real.uploads_removed, real.links_removed, real.blobs_removed,
            real.orphans_removed, real.bytes_reclaimed) == (
        dry.uploads_removed, dry.links_removed, dry.blobs_removed, dry.orphans_removed,
        dry.bytes_reclaimed)
    assert await snapshot(registry) != before


# -- concurrency -----------------------------------------------------------------------
async def test_concurrent_pushes_survive_repeated_collection(registry: Registry) -> None:
    """Pushes race ``gc`` with no grace at all; what was pushed stays whole."""
    rng = random.Random(7)
    seeds = [rng.randbytes(rng.randint(1, 4096)) for _ in range(8)]
    for data in seeds:
        await push_blob(registry, "seed/garbage", data)
    await age(registry)  # every seed blob is collectable from the first run on

    collector = GarbageCollector(registry.store, upload_max_age=HOUR, blob_grace=0)
    pushed: list[tuple[str, str, list[bytes]]] = []
    errors: list[str] = []
    runs = 0
    done = anyio.Event()

    async def collect() -> None:
        # A fixed number of runs: pushes that lose a race retry, and once the collectors
        # stop, every retry succeeds, so the test always ends.
        nonlocal runs
        while runs < GC_RUNS and not done.is_set():
            runs += 1
            await collector.run()
            await anyio.sleep(0)

    async def push_until_it_sticks(repo: str, tag: str, config: bytes,
                                   layers: list[bytes]) -> None:
        for _attempt in range(1000):  # after the last gc run, the next attempt succeeds
            try:
                digest = await push_image(registry, repo, tag, config, layers)
            except (ManifestBlobUnknown, UploadInvalid):
                continue  # gc took a link or blob before the manifest pinned it
            pushed.append((repo, digest, [config, *layers]))
            return
        errors.append(f"{repo}:{tag} kept failing after the collectors stopped")

    async def pusher(n: int) -> None:
        # Errors are collected, not raised: cancelling the collector mid-transaction
        # would only hide the failure behind a hung teardown.
        try:
            for i in range(PUSHES):
                layers = [seeds[(n + i) % len(seeds)], rng.randbytes(1000 + n * 10 + i),
                          seeds[(n * 3 + i + 1) % len(seeds)]]
                await push_until_it_sticks(f"team/app{n}", f"v{i}",
                                           f'{{"pusher": {n}, "push": {i}}}'.encode(), layers)
        except Exception:
            errors.append(traceback.format_exc())

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        tg.start_soon(collect)  # two overlapping `dtr gc` runs, as from two cron hosts
        async with anyio.create_task_group() as pushers:
            for n in range(PUSHERS):
                pushers.start_soon(pusher, n)
        done.set()

    assert not errors, "\n".join(errors)
    assert len(pushed) == PUSHERS * PUSHES
    assert runs >= 1
    await collector.run()  # a quiet run must not take anything pushed either

    for repo, digest, blobs in pushed:
        record = await registry.manifests.get(repo, digest)
        assert record.digest == digest
        for data in blobs:
            assert await read_blob(registry, repo, str(digest_of(data))) == data
    rows = await blob_rows(registry)
    assert set(rows.values()) == {"present"}
    for blob_digest in rows:
        assert await exists(registry, blob_digest), f"{blob_digest} has no bytes"
    async with registry.store.read() as s:
        referenced = set((await s.execute(
            select(ManifestReference.digest).join(Manifest)
            .where(ManifestReference.kind == "blob"))).scalars())
    assert set(rows) == referenced


# -- command line ----------------------------------------------------------------------
def test_cli_gc_prints_the_summary(sqlite_settings: Settings) -> None:
    settings = sqlite_settings

    async def seed() -> str:
        reg = build_registry(settings)
        try:
            digest = await push_blob(reg, "team/app", b"garbage for the cli")
            await age(reg)
        finally:
            await reg.store.sessions.kw["bind"].dispose()
            await reg.store.storage.close()
        return digest

    digest = anyio.run(seed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTR_")}
    env["DTR_SERVER_DATA_DIR"] = str(settings.data_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dtr", "gc", *args], env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    dry = run("--dry-run", "--blob-grace", "0")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip().splitlines()[-1].startswith(
        "gc (dry run): would remove 0 uploads, 1 link, 1 blob (19 B reclaimed)")
    done = run("--blob-grace", "0")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"gc: removed 0 uploads, 1 link, 1 blob \(19 B reclaimed\), 0 orphan objects in "
        r"\d+\.\ds", done.stdout.strip().splitlines()[-1])
    assert "gc: blobs:" in done.stderr
    assert not (settings.filesystem_root / blob_key(digest)).exists()
