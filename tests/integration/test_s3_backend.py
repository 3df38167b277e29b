"""The S3 backend through a live server on a real MinIO: blobs land in the bucket, and with
``redirect`` blob GETs answer 307 to a presigned URL that serves the exact bytes."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
from minio import Minio

from tests.support import peers
from tests.support.oci import OciClient, sha256


def test_presigned_redirects(tmp_path: Path) -> None:
    with peers.minio() as s3, peers.dtr_server(
            tmp_path, workers=1, s3=s3, bucket="redirects",
            extra={"DTR_STORAGE_S3_REDIRECT": "true"}) as server, \
            httpx.Client(base_url=server.url, timeout=60) as c:
        data = os.urandom(3 * 1024 * 1024 + 7)
        digest = OciClient(c).push_blob("s3/redir", data)
        r = c.get(f"/v2/s3/redir/blobs/{digest}")
        assert r.status_code == 307
        assert r.headers["docker-content-digest"] == digest
        target = r.headers["location"]
        assert target.startswith(f"http://{s3.endpoint}/redirects/")
        got = httpx.get(target, timeout=60)
        assert got.status_code == 200
        assert sha256(got.content) == digest
        # HEAD and ranged GETs are answered by dtr itself
        h = c.head(f"/v2/s3/redir/blobs/{digest}")
        assert h.status_code == 200
        assert h.headers["content-length"] == str(len(data))
        part = c.get(f"/v2/s3/redir/blobs/{digest}", headers={"Range": "bytes=5-9"})
        assert part.status_code == 206
        assert part.content == data[5:10]
        # the bytes are in the bucket under the documented key layout
        client = Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=False)
        keys = [o.object_name for o in client.list_objects("redirects", prefix="blobs/",
                                                           recursive=True)]
        assert f"blobs/sha256/{digest[7:9]}/{digest[7:]}" in keys
        assert not list(client.list_objects("redirects", prefix="uploads/", recursive=True))
