"""Stateless replicas: two ``dtr serve`` processes on one PostgreSQL and one MinIO behave as
one registry — an upload can move between them chunk by chunk, and what one writes the other
serves at once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import peers
from tests.support.oci import OciClient, sha256


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    with peers.postgres() as pg, peers.minio() as s3:
        url = pg.create_db("replicas")
        root = tmp_path_factory.mktemp("replicas")
        (root / "a").mkdir()
        (root / "b").mkdir()
        with peers.dtr_server(root / "a", workers=1, database_url=url, s3=s3) as a, \
                peers.dtr_server(root / "b", workers=1, database_url=url, s3=s3) as b:
            yield a, b


def test_chunked_upload_alternating_between_replicas(pair: tuple[Any, Any]) -> None:
    a, b = pair
    data = os.urandom(9 * 1024 * 1024 + 123)
    chunk = 1024 * 1024
    with httpx.Client(base_url=a.url, timeout=60) as ca, \
            httpx.Client(base_url=b.url, timeout=60) as cb:
        clients = [ca, cb]
        loc = ca.post("/v2/rep/app/blobs/uploads/").headers["location"]
        for i, start in enumerate(range(0, len(data), chunk)):
            part = data[start:start + chunk]
            r = clients[i % 2].patch(loc, content=part, headers={
                "Content-Range": f"{start}-{start + len(part) - 1}"})
            assert r.status_code == 202, r.text
            assert r.headers["range"] == f"0-{start + len(part) - 1}"
            loc = r.headers["location"]
            # the other replica sees the same progress
            status = clients[(i + 1) % 2].get(loc)
            assert status.status_code == 204
            assert status.headers["range"] == r.headers["range"]
        # finish on the replica that did not write the last chunk: it must re-verify
        r = clients[(i + 1) % 2].put(f"{loc}?digest={sha256(data)}")
        assert r.status_code == 201, r.text
        for c in clients:
            got = c.get(f"/v2/rep/app/blobs/{sha256(data)}")
            assert got.status_code == 200
            assert sha256(got.content) == sha256(data)
        # a wrong digest is caught by the other replica too
        loc = ca.post("/v2/rep/app/blobs/uploads/").headers["location"]
        r = ca.patch(loc, content=b"abc", headers={"Content-Range": "0-2"})
        r = cb.put(f"{r.headers['location']}?digest={sha256(b'abd')}")
        assert r.status_code == 400


def test_tag_written_on_one_is_served_by_the_other(pair: tuple[Any, Any]) -> None:
    a, b = pair
    with httpx.Client(base_url=a.url, timeout=60) as ca, \
            httpx.Client(base_url=b.url, timeout=60) as cb:
        for version in range(3):
            digest, body = OciClient(ca).push_image("rep/tagged", "latest",
                                                    layers=[os.urandom(2048)])
            r = cb.get("/v2/rep/tagged/manifests/latest")
            assert r.status_code == 200, version
            assert r.headers["docker-content-digest"] == digest
            assert r.content == body
        assert cb.delete("/v2/rep/tagged/manifests/latest").status_code == 202
        assert ca.get("/v2/rep/tagged/manifests/latest").status_code == 404
        assert "rep/tagged" in ca.get("/v2/_catalog").json()["repositories"]


def test_minio_holds_the_bytes(pair: tuple[Any, Any], tmp_path: Path) -> None:
    a, _ = pair
    # nothing was written to the local data folder: blobs live in MinIO
    assert not (a.data_dir / "storage" / "blobs").exists()


def test_both_replicas_are_ready_on_postgresql_and_minio(pair: tuple[Any, Any]) -> None:
    """What a load balancer in front of them checks: the real database and object store
    answer (MinIO's answer for the probe key is "no such key")."""
    for server in pair:
        r = httpx.get(f"{server.url}/health/ready", timeout=30)
        assert r.status_code == 200, r.text
        assert {k: v["status"] for k, v in r.json()["checks"].items()} == {
            "database": "ok", "storage": "ok"}
