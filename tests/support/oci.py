"""A tiny OCI client for protocol tests: push blobs (monolithic, chunked, streamed),
push/pull manifests. Works over any httpx-style client (in-process TestClient or a live
server's ``httpx.Client``)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
EMPTY_CONFIG = b"{}"
LAYER = "application/vnd.oci.image.layer.v1.tar"


def with_query(location: str, query: str) -> str:
    """Append ``query`` to an upload location that may already carry parameters."""
    return f"{location}{'&' if '?' in location else '?'}{query}"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class OciClient:
    """Protocol-level helper over an httpx-compatible client."""

    def __init__(self, http: Any) -> None:
        self.http = http

    def push_blob(self, repo: str, data: bytes, *, chunk: int | None = None) -> str:
        digest = sha256(data)
        r = self.http.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        loc = r.headers["location"]
        if chunk:
            for start in range(0, len(data), chunk):
                part = data[start:start + chunk]
                r = self.http.patch(loc, content=part, headers={
                    "Content-Range": f"{start}-{start + len(part) - 1}",
                    "Content-Type": "application/octet-stream"})
                assert r.status_code == 202, r.text
                loc = r.headers["location"]
            r = self.http.put(with_query(loc, f"digest={digest}"))
        else:
            r = self.http.put(with_query(loc, f"digest={digest}"), content=data,
                              headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        assert r.headers["docker-content-digest"] == digest
        return digest

    def image(self, repo: str, layers: list[bytes] | None = None,
              media_type: str = OCI_MANIFEST, **extra: Any) -> bytes:
        """Push config + layers; return the manifest bytes (not pushed)."""
        cfg = self.push_blob(repo, EMPTY_CONFIG)
        layer_type = (LAYER if media_type == OCI_MANIFEST else
                      "application/vnd.docker.image.rootfs.diff.tar.gzip")
        descs = [{"mediaType": layer_type, "digest": self.push_blob(repo, layer),
                  "size": len(layer)}
                 for layer in (layers if layers is not None else [os.urandom(512)])]
        body: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": media_type,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json"
                       if media_type == OCI_MANIFEST else
                       "application/vnd.docker.container.image.v1+json",
                       "digest": cfg, "size": len(EMPTY_CONFIG)},
            "layers": descs, **extra}
        return json.dumps(body, indent=2).encode()

    def put_manifest(self, repo: str, ref: str, body: bytes,
                     media_type: str = OCI_MANIFEST) -> Any:
        return self.http.put(f"/v2/{repo}/manifests/{ref}", content=body,
                             headers={"Content-Type": media_type})

    def push_image(self, repo: str, tag: str, **kw: Any) -> tuple[str, bytes]:
        body = self.image(repo, **kw)
        r = self.put_manifest(repo, tag, body)
        assert r.status_code == 201, r.text
        return r.headers["docker-content-digest"], body
