"""The embedded default (SQLite + filesystem, two worker processes) under concurrent pushes
from several clients: no "database is locked", every image complete and readable."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import peers
from tests.support.oci import OciClient, sha256


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with peers.dtr_server(tmp_path_factory.mktemp("embedded"), workers=2) as server:
        yield server


def _push(url: str, worker: int) -> list[tuple[str, str, bytes, list[bytes]]]:
    shared = b"shared base layer" * 1000  # every client pushes this same blob concurrently
    out = []
    with httpx.Client(base_url=url, timeout=120) as c:
        oci = OciClient(c)
        for i in range(6):
            layers = [shared, os.urandom(64 * 1024 + worker), os.urandom(1000 + i)]
            repo = f"conc/app{worker % 3}"
            digest, body = oci.push_image(repo, f"w{worker}-{i}", layers=layers)
            out.append((repo, digest, body, layers))
    return out


def test_concurrent_pushes_on_embedded_default(embedded: Any) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = [r for batch in pool.map(lambda w: _push(embedded.url, w), range(8))
                   for r in batch]
    assert len(results) == 48
    with httpx.Client(base_url=embedded.url, timeout=60) as c:
        for repo, digest, body, layers in results:
            r = c.get(f"/v2/{repo}/manifests/{digest}")
            assert r.status_code == 200
            assert r.content == body
            for layer in layers:
                got = c.get(f"/v2/{repo}/blobs/{sha256(layer)}")
                assert got.status_code == 200
                assert got.content == layer
        tags = c.get("/v2/conc/app0/tags/list").json()["tags"]
        assert len(tags) == 18
    log = next(Path(embedded.data_dir).glob("dtr-*.log")).read_text()
    assert "database is locked" not in log
