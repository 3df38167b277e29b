"""ManifestService.put with its statements built once and bound per call: the manifest row
and its reference edges, a second PUT of the same bytes, a tag moved to another manifest,
child manifests of an index, and missing references. Run on SQLite and PostgreSQL (see
``conftest.py``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from dtr.core import mediatypes as mt
from dtr.core.reference import digest_of
from dtr.core.registry import Registry
from dtr.db.models import Manifest, ManifestReference, Repository, Tag
from dtr.errors import ManifestBlobUnknown

pytestmark = pytest.mark.anyio


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _push_blob(reg: Registry, repo: str, data: bytes) -> str:
    up = await reg.uploads.start(repo)
    return await reg.uploads.finish(repo, up.id, str(digest_of(data)), _one(data),
                                    content_length=len(data))


async def _image(reg: Registry, repo: str, key: str) -> bytes:
    """Push a config and two layers; return the manifest that lists them."""
    config = json.dumps({"key": key}).encode()
    layers = [f"{key}-layer-{i}".encode() * 50 for i in range(2)]
    cfg = await _push_blob(reg, repo, config)
    digests = [await _push_blob(reg, repo, layer) for layer in layers]
    return json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d,
                    "size": len(layer)} for d, layer in zip(digests, layers, strict=True)],
    }).encode()


async def _rows(reg: Registry, repo: str) -> dict[str, list[tuple[object, ...]]]:
    async with reg.store.read() as s:
        rid = (await s.execute(select(Repository.id).where(Repository.name == repo))).scalar()
        manifests = (await s.execute(
            select(Manifest.id, Manifest.digest, Manifest.media_type, Manifest.size)
            .where(Manifest.repository_id == rid).order_by(Manifest.id))).all()
        refs = (await s.execute(
            select(Manifest.digest, ManifestReference.digest, ManifestReference.kind)
            .join(Manifest, Manifest.id == ManifestReference.manifest_id)
            .where(Manifest.repository_id == rid)
            .order_by(Manifest.digest, ManifestReference.digest))).all()
        tags = (await s.execute(
            select(Tag.name, Manifest.digest).join(Manifest, Manifest.id == Tag.manifest_id)
            .where(Tag.repository_id == rid).order_by(Tag.name))).all()
    return {"manifest": [tuple(r) for r in manifests], "ref": [tuple(r) for r in refs],
            "tag": [tuple(r) for r in tags]}


async def test_put_stores_row_edges_and_tags(registry: Registry) -> None:
    body = await _image(registry, "m/a", "one")
    res = await registry.manifests.put("m/a", "v1", mt.OCI_MANIFEST, body, ["extra"])
    digest = str(digest_of(body))
    assert res.digest == digest
    assert res.tags == ["v1", "extra"]
    rows = await _rows(registry, "m/a")
    assert [r[1:] for r in rows["manifest"]] == [(digest, mt.OCI_MANIFEST, len(body))]
    parsed = json.loads(body)
    blobs = sorted([parsed["config"]["digest"], *(x["digest"] for x in parsed["layers"])])
    assert rows["ref"] == [(digest, d, "blob") for d in blobs]
    assert rows["tag"] == [("extra", digest), ("v1", digest)]
    got = await registry.manifests.get("m/a", "v1")
    assert (got.digest, got.content) == (digest, body)


async def test_second_put_of_same_bytes_reuses_the_row(registry: Registry) -> None:
    body = await _image(registry, "m/b", "two")
    await registry.manifests.put("m/b", "v1", mt.OCI_MANIFEST, body)
    before = await _rows(registry, "m/b")
    await registry.manifests.put("m/b", str(digest_of(body)), mt.OCI_MANIFEST, body)
    await registry.manifests.put("m/b", "v2", mt.OCI_MANIFEST, body)
    after = await _rows(registry, "m/b")
    assert after["manifest"] == before["manifest"]
    assert after["ref"] == before["ref"]
    assert [t for t, _ in after["tag"]] == ["v1", "v2"]


async def test_tag_moves_to_the_new_manifest(registry: Registry) -> None:
    first = await _image(registry, "m/c", "first")
    second = await _image(registry, "m/c", "second")
    await registry.manifests.put("m/c", "latest", mt.OCI_MANIFEST, first)
    await registry.manifests.put("m/c", "latest", mt.OCI_MANIFEST, second)
    rows = await _rows(registry, "m/c")
    assert len(rows["manifest"]) == 2
    assert rows["tag"] == [("latest", str(digest_of(second)))]
    assert (await registry.manifests.get("m/c", "latest")).content == second


async def test_index_needs_its_children_in_the_repository(registry: Registry) -> None:
    child = await _image(registry, "m/d", "child")
    child_digest = str(digest_of(child))
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": child_digest, "size": len(child)}]}).encode()
    with pytest.raises(ManifestBlobUnknown):
        await registry.manifests.put("m/d", "multi", mt.OCI_INDEX, index)
    await registry.manifests.put("m/d", child_digest, mt.OCI_MANIFEST, child)
    res = await registry.manifests.put("m/d", "multi", mt.OCI_INDEX, index)
    rows = await _rows(registry, "m/d")
    assert (res.digest, child_digest, "manifest") in rows["ref"]
    assert rows["tag"] == [("multi", res.digest)]


async def test_missing_blob_is_refused_and_nothing_is_written(registry: Registry) -> None:
    body = await _image(registry, "m/e", "present")
    await registry.manifests.put("m/e", "v1", mt.OCI_MANIFEST, body)
    with pytest.raises(ManifestBlobUnknown):  # the blobs are in m/e, not in m/f
        await registry.manifests.put("m/f", "v1", mt.OCI_MANIFEST, body)
    assert await _rows(registry, "m/f") == {"manifest": [], "ref": [], "tag": []}
