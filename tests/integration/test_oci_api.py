"""OCI Distribution API behaviour, in process (filesystem storage, SQLite): every endpoint,
the headers clients depend on, and the exact error codes of oci-distribution.md §9."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest
from litestar.testing import TestClient

from dtr.app import create_app
from tests.conftest import make_settings
from tests.support.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    OciClient,
    sha256,
)

EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def code(r: Any) -> str:
    return str(r.json()["errors"][0]["code"])


@pytest.fixture
def oci(client: TestClient[Any]) -> OciClient:
    return OciClient(client)


# -- base -------------------------------------------------------------------------------
def test_ping_and_api_header(client: TestClient[Any]) -> None:
    for path in ("/v2/", "/v2"):
        r = client.get(path)
        assert r.status_code == 200
        assert r.headers["docker-distribution-api-version"] == "registry/2.0"


def test_unknown_endpoint_and_method(client: TestClient[Any]) -> None:
    assert client.get("/v2/a/nothing-here").status_code == 404
    r = client.post("/v2/a/tags/list")
    assert r.status_code == 405
    assert code(r) == "UNSUPPORTED"


@pytest.mark.parametrize("name", ["Upper/case", "a//b", "-a", "a/", "a" * 256, "a/b_-c"])
def test_invalid_names(client: TestClient[Any], name: str) -> None:
    r = client.get(f"/v2/{name}/tags/list")
    assert r.status_code in (400, 404)
    if r.status_code == 400:
        assert code(r) == "NAME_INVALID"


@pytest.mark.parametrize("repo", ["a/b/c/d", "a/manifests/b/manifests", "blobs/uploads/x",
                                  "tags/list", "referrers/blobs"])
def test_names_with_api_words_route(oci: OciClient, client: TestClient[Any], repo: str) -> None:
    digest, body = oci.push_image(repo, "latest")
    r = client.get(f"/v2/{repo}/manifests/latest")
    assert r.status_code == 200
    assert r.content == body
    assert client.get(f"/v2/{repo}/tags/list").json() == {"name": repo, "tags": ["latest"]}
    assert client.get(f"/v2/{repo}/manifests/{digest}").status_code == 200


# -- blob uploads -----------------------------------------------------------------------
def test_monolithic_upload_and_pull(oci: OciClient, client: TestClient[Any]) -> None:
    data = os.urandom(300_000)
    digest = oci.push_blob("r", data)
    r = client.get(f"/v2/r/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["docker-content-digest"] == digest
    h = client.head(f"/v2/r/blobs/{digest}")
    assert h.status_code == 200
    assert h.headers["content-length"] == str(len(data))
    assert h.headers["docker-content-digest"] == digest
    assert h.content == b""


def test_single_post_upload(client: TestClient[Any]) -> None:
    data = b"single post"
    r = client.post(f"/v2/r/blobs/uploads/?digest={sha256(data)}", content=data)
    assert r.status_code == 201
    assert r.headers["location"] == f"/v2/r/blobs/{sha256(data)}"
    assert client.get(f"/v2/r/blobs/{sha256(data)}").content == data


def test_chunked_upload_with_status_and_out_of_order(client: TestClient[Any]) -> None:
    data = os.urandom(10_000)
    r = client.post("/v2/r/blobs/uploads/")
    loc = r.headers["location"]
    assert r.headers["range"] == "0-0"
    assert r.headers["docker-upload-uuid"]
    r = client.patch(loc, content=data[:4000], headers={"Content-Range": "0-3999"})
    assert r.status_code == 202
    assert r.headers["range"] == "0-3999"
    loc = r.headers["location"]
    # a retry of the same chunk and a gap are both out of order → 416
    r = client.patch(loc, content=data[:4000], headers={"Content-Range": "0-3999"})
    assert r.status_code == 416
    assert code(r) == "BLOB_UPLOAD_INVALID"
    r = client.patch(loc, content=data[5000:], headers={"Content-Range": "5000-9999"})
    assert r.status_code == 416
    r = client.get(loc)
    assert r.status_code == 204
    assert r.headers["range"] == "0-3999"
    r = client.patch(loc, content=data[4000:8000], headers={"Content-Range": "4000-7999"})
    assert r.headers["range"] == "0-7999"
    # last chunk travels with the closing PUT
    r = client.put(f"{loc}?digest={sha256(data)}", content=data[8000:],
                   headers={"Content-Range": "8000-9999"})
    assert r.status_code == 201, r.text
    assert client.get(f"/v2/r/blobs/{sha256(data)}").content == data


def test_streamed_patch_without_content_range(client: TestClient[Any]) -> None:
    data = os.urandom(50_000)

    def gen() -> Any:
        for i in range(0, len(data), 7000):
            yield data[i:i + 7000]

    loc = client.post("/v2/r/blobs/uploads/").headers["location"]
    r = client.patch(loc, content=gen())
    assert r.status_code == 202
    assert r.headers["range"] == f"0-{len(data) - 1}"
    r = client.put(f"{r.headers['location']}?digest={sha256(data)}")
    assert r.status_code == 201
    assert client.get(f"/v2/r/blobs/{sha256(data)}").content == data


def test_content_range_and_length_disagree(client: TestClient[Any]) -> None:
    loc = client.post("/v2/r/blobs/uploads/").headers["location"]
    r = client.patch(loc, content=b"abcd", headers={"Content-Range": "0-9"})
    assert r.status_code == 416
    assert client.get(loc).headers["range"] == "0-0"


def test_empty_and_sha512_blobs(client: TestClient[Any]) -> None:
    loc = client.post("/v2/r/blobs/uploads/").headers["location"]
    r = client.put(f"{loc}?digest={EMPTY_DIGEST}")
    assert r.status_code == 201
    r = client.get(f"/v2/r/blobs/{EMPTY_DIGEST}")
    assert r.status_code == 200
    assert r.content == b""
    data = b"sha512 content"
    d512 = "sha512:" + hashlib.sha512(data).hexdigest()
    loc = client.post("/v2/r/blobs/uploads/?digest-algorithm=sha512").headers["location"]
    assert client.put(f"{loc}?digest={d512}", content=data).status_code == 201
    assert client.get(f"/v2/r/blobs/{d512}").content == data


def test_wrong_digest_is_refused_and_nothing_visible(client: TestClient[Any]) -> None:
    data = b"real content"
    wrong = sha256(b"other content")
    loc = client.post("/v2/r/blobs/uploads/").headers["location"]
    r = client.put(f"{loc}?digest={wrong}", content=data)
    assert r.status_code == 400
    assert code(r) == "DIGEST_INVALID"
    assert client.head(f"/v2/r/blobs/{wrong}").status_code == 404
    assert client.head(f"/v2/r/blobs/{sha256(data)}").status_code == 404
    # the failed upload is gone
    assert client.get(loc).status_code == 404


@pytest.mark.parametrize("digest", ["sha256:xyz", "md5:abcd", "sha256:" + "A" * 64, "nodigest"])
def test_malformed_digests(client: TestClient[Any], digest: str) -> None:
    loc = client.post("/v2/r/blobs/uploads/").headers["location"]
    r = client.put(f"{loc}?digest={digest}", content=b"x")
    assert r.status_code == 400
    assert code(r) == "DIGEST_INVALID"
    r = client.get(f"/v2/r/blobs/{digest}")
    assert r.status_code in (400, 404)


def test_put_without_digest(client: TestClient[Any]) -> None:
    loc = client.post("/v2/r/blobs/uploads/").headers["location"]
    r = client.put(loc, content=b"x")
    assert r.status_code == 400
    assert code(r) == "DIGEST_INVALID"


def test_upload_cancel_and_unknown(client: TestClient[Any]) -> None:
    loc = client.post("/v2/r/blobs/uploads/").headers["location"]
    client.patch(loc, content=b"abc")
    assert client.delete(loc).status_code == 204
    r = client.get(loc)
    assert r.status_code == 404
    assert code(r) == "BLOB_UPLOAD_UNKNOWN"
    assert code(client.patch(loc, content=b"x")) == "BLOB_UPLOAD_UNKNOWN"
    # an upload is bound to its repository
    loc = client.post("/v2/r/blobs/uploads/").headers["location"]
    assert client.get(loc.replace("/v2/r/", "/v2/other/")).status_code == 404


def test_blob_range_requests(oci: OciClient, client: TestClient[Any]) -> None:
    data = bytes(range(256)) * 10
    digest = oci.push_blob("r", data)
    r = client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206
    assert r.content == data[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{len(data)}"
    r = client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=2550-"})
    assert r.content == data[2550:]
    r = client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=-5"})
    assert r.content == data[-5:]
    r = client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=99999-"})
    assert r.status_code == 416


def test_blob_unknown(client: TestClient[Any]) -> None:
    r = client.get(f"/v2/r/blobs/{sha256(b'missing')}")
    assert r.status_code == 404
    assert code(r) == "BLOB_UNKNOWN"
    assert client.head(f"/v2/r/blobs/{sha256(b'missing')}").content == b""


# -- mount ------------------------------------------------------------------------------
def test_cross_repository_mount(oci: OciClient, client: TestClient[Any]) -> None:
    digest = oci.push_blob("src", b"shared layer")
    r = client.post(f"/v2/dst/blobs/uploads/?mount={digest}&from=src")
    assert r.status_code == 201
    assert r.headers["location"] == f"/v2/dst/blobs/{digest}"
    assert r.headers["docker-content-digest"] == digest
    assert client.get(f"/v2/dst/blobs/{digest}").content == b"shared layer"
    # unknown blob or wrong source → ordinary upload (202), never 4xx
    missing = sha256(b"nope")
    r = client.post(f"/v2/dst/blobs/uploads/?mount={missing}&from=src")
    assert r.status_code == 202
    assert r.headers["location"].startswith("/v2/dst/blobs/uploads/")
    r = client.post(f"/v2/dst2/blobs/uploads/?mount={digest}&from=nowhere")
    assert r.status_code == 202
    # automatic mount without from
    r = client.post(f"/v2/dst3/blobs/uploads/?mount={digest}")
    assert r.status_code == 201
    r = client.post("/v2/dst3/blobs/uploads/?mount=sha256:bad&from=src")
    assert r.status_code == 202


# -- manifests --------------------------------------------------------------------------
def test_manifest_exact_bytes_and_headers(oci: OciClient, client: TestClient[Any]) -> None:
    body = oci.image("m")
    body = body.replace(b"\n", b"\n   ")  # odd whitespace must survive byte for byte
    r = oci.put_manifest("m", "v1", body)
    assert r.status_code == 201
    digest = sha256(body)
    assert r.headers["docker-content-digest"] == digest
    assert r.headers["location"] == f"/v2/m/manifests/{digest}"
    for ref in ("v1", digest):
        g = client.get(f"/v2/m/manifests/{ref}", headers={"Accept": "application/json"})
        assert g.status_code == 200
        assert g.content == body
        assert g.headers["content-type"] == OCI_MANIFEST
        assert g.headers["docker-content-digest"] == digest
        h = client.head(f"/v2/m/manifests/{ref}")
        assert h.headers["content-length"] == str(len(body))
        assert h.headers["content-type"] == OCI_MANIFEST
        assert h.headers["docker-content-digest"] == digest
    r = client.get("/v2/m/manifests/v1", headers={"If-None-Match": f'"{digest}"'})
    assert r.status_code == 304


def test_manifest_by_digest_mismatch(oci: OciClient) -> None:
    body = oci.image("m")
    r = oci.put_manifest("m", sha256(b"something else"), body)
    assert r.status_code == 400
    assert code(r) == "DIGEST_INVALID"
    r = oci.put_manifest("m", "sha256:baddigeststring", body)
    assert r.status_code == 400


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"schemaVersion": 2}',
                                  b'{"schemaVersion": 1, "name": "x"}',
                                  b'{"schemaVersion":2,"config":{"digest":"sha256:x"},"layers":[]}'])
def test_malformed_manifests(oci: OciClient, body: bytes) -> None:
    r = oci.put_manifest("m", "bad", body)
    assert r.status_code == 400
    assert code(r) == "MANIFEST_INVALID"


def test_schema1_refused(oci: OciClient) -> None:
    r = oci.put_manifest("m", "s1", b'{"schemaVersion":1}',
                         "application/vnd.docker.distribution.manifest.v1+prettyjws")
    assert r.status_code == 400
    assert "schema1" in r.json()["errors"][0]["message"]


def test_manifest_blob_unknown(oci: OciClient) -> None:
    body = oci.image("m")
    missing = json.loads(body)
    missing["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                              "digest": sha256(b"never pushed"), "size": 12})
    r = oci.put_manifest("m", "t", json.dumps(missing).encode())
    assert r.status_code == 400
    assert code(r) == "MANIFEST_BLOB_UNKNOWN"
    # a blob of another repository is not visible here
    other = oci.image("elsewhere")
    r = oci.put_manifest("m2", "t", other)
    assert code(r) == "MANIFEST_BLOB_UNKNOWN"


def test_nondistributable_and_urls_layers_not_checked(oci: OciClient) -> None:
    body = json.loads(oci.image("m", layers=[]))
    body["layers"] = [
        {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
         "digest": sha256(b"foreign"), "size": 7},
        {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
         "digest": sha256(b"foreign2"), "size": 8, "urls": ["https://example.invalid/x"]}]
    r = oci.put_manifest("m", "nd", json.dumps(body).encode())
    assert r.status_code == 201, r.text


def test_manifest_too_large(oci: OciClient) -> None:
    body = json.loads(oci.image("m"))
    body["annotations"] = {"pad": "x" * (4 * 1024 * 1024)}
    r = oci.put_manifest("m", "big", json.dumps(body).encode())
    assert r.status_code == 413


def test_docker_types_index_and_media_type_moves(oci: OciClient, client: TestClient[Any]) -> None:
    d1, _ = oci.push_image("x", "amd64")
    docker = oci.image("x", media_type=DOCKER_MANIFEST)
    r = oci.put_manifest("x", "docker", docker, DOCKER_MANIFEST)
    assert r.status_code == 201
    d2 = r.headers["docker-content-digest"]
    for media, name in ((OCI_INDEX, "index"), (DOCKER_LIST, "list")):
        idx = json.dumps({"schemaVersion": 2, "mediaType": media, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": d1, "size": 1,
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": DOCKER_MANIFEST, "digest": d2, "size": 1,
             "platform": {"os": "linux", "architecture": "arm64"}}]}).encode()
        r = oci.put_manifest("x", name, idx, media)
        assert r.status_code == 201, r.text
        assert client.get(f"/v2/x/manifests/{name}").headers["content-type"] == media
    # a tag may move from an image to an index and back
    idx_digest = client.get("/v2/x/manifests/index").headers["docker-content-digest"]
    idx_body = client.get("/v2/x/manifests/index").content
    assert oci.put_manifest("x", "amd64", idx_body, OCI_INDEX).status_code == 201
    assert client.get("/v2/x/manifests/amd64").headers["docker-content-digest"] == idx_digest
    # an index naming an unknown child manifest is refused
    bad = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha256(b"nope"), "size": 1}]}).encode()
    assert code(oci.put_manifest("x", "bad", bad, OCI_INDEX)) == "MANIFEST_BLOB_UNKNOWN"


def test_tag_query_parameters(oci: OciClient, client: TestClient[Any]) -> None:
    body = oci.image("q")
    digest = sha256(body)
    r = client.put(f"/v2/q/manifests/{digest}?tag=a&tag=b&tag=c", content=body,
                   headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201
    assert {t.strip() for t in r.headers["oci-tag"].split(",")} == {"a", "b", "c"}
    assert client.get("/v2/q/tags/list").json()["tags"] == ["a", "b", "c"]
    many = "&".join(f"tag=t{i}" for i in range(40))
    r = client.put(f"/v2/q/manifests/{digest}?{many}", content=body,
                   headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 414


def test_invalid_tag(oci: OciClient) -> None:
    body = oci.image("m")
    r = oci.put_manifest("m", "-bad", body)
    assert r.status_code == 400


# -- referrers --------------------------------------------------------------------------
def test_referrers_api_and_fallback_merge(oci: OciClient, client: TestClient[Any]) -> None:
    subject, sbody = oci.push_image("s", "v1")
    cfg = oci.push_blob("s", b"{}")
    art = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "artifactType": "application/vnd.example.sbom",
           "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cfg,
                      "size": 2},
           "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": subject,
                                     "size": len(sbody)},
           "annotations": {"org.example": "yes"}}
    r = oci.put_manifest("s", sha256(json.dumps(art).encode()), json.dumps(art).encode())
    assert r.status_code == 201
    assert r.headers["oci-subject"] == subject
    sig = dict(art, artifactType=None, annotations=None)
    del sig["artifactType"], sig["annotations"]
    sig["config"] = {"mediaType": "application/vnd.example.sig.config", "digest": cfg, "size": 2}
    r = oci.put_manifest("s", sha256(json.dumps(sig).encode()), json.dumps(sig).encode())
    assert r.status_code == 201
    r = client.get(f"/v2/s/referrers/{subject}")
    assert r.status_code == 200
    assert r.headers["content-type"] == OCI_INDEX
    found = r.json()["manifests"]
    assert [m.get("artifactType") for m in found] == ["application/vnd.example.sbom",
                                                      "application/vnd.example.sig.config"]
    assert found[0]["annotations"] == {"org.example": "yes"}
    r = client.get(f"/v2/s/referrers/{subject}?artifactType=application/vnd.example.sbom")
    assert r.headers["oci-filters-applied"] == "artifactType"
    assert len(r.json()["manifests"]) == 1
    # a client-maintained tag-schema index is merged
    legacy_digest, legacy_body = oci.push_image("s", "legacy")
    extra = {"mediaType": OCI_MANIFEST, "digest": legacy_digest, "size": len(legacy_body),
             "artifactType": "application/vnd.legacy"}
    fallback = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                           "manifests": [extra]}).encode()
    tag = subject.replace(":", "-")
    assert oci.put_manifest("s", tag, fallback, OCI_INDEX).status_code == 201
    found = client.get(f"/v2/s/referrers/{subject}").json()["manifests"]
    assert extra in found
    assert len(found) == 3
    # unknown subject → empty index; malformed → 400
    r = client.get(f"/v2/s/referrers/{sha256(b'unknown')}")
    assert r.status_code == 200
    assert r.json()["manifests"] == []
    assert client.get("/v2/s/referrers/sha256:bad").status_code == 400


def test_subject_need_not_exist(oci: OciClient) -> None:
    cfg = oci.push_blob("s", b"{}")
    art = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                                 "digest": cfg, "size": 2}, "layers": [],
                      "subject": {"mediaType": OCI_MANIFEST, "digest": sha256(b"later"),
                                  "size": 5}}).encode()
    r = oci.put_manifest("s", sha256(art), art)
    assert r.status_code == 201
    assert r.headers["oci-subject"] == sha256(b"later")


# -- discovery --------------------------------------------------------------------------
def test_tag_list_pagination(oci: OciClient, client: TestClient[Any]) -> None:
    body = oci.image("p")
    tags = ["b", "A", "a", "c1", "c10", "c2", "Z"]
    for t in tags:
        assert oci.put_manifest("p", t, body).status_code == 201
    assert client.get("/v2/p/tags/list").json()["tags"] == sorted(tags)
    r = client.get("/v2/p/tags/list?n=2")
    assert r.json()["tags"] == ["A", "Z"]
    assert r.headers["link"] == '</v2/p/tags/list?n=2&last=Z>; rel="next"'
    r = client.get("/v2/p/tags/list?n=2&last=Z")
    assert r.json()["tags"] == ["a", "b"]
    r = client.get("/v2/p/tags/list?last=c10")
    assert r.json()["tags"] == ["c2"]
    assert "link" not in r.headers
    r = client.get("/v2/p/tags/list?n=0")
    assert r.json()["tags"] == []
    assert "link" not in r.headers
    assert client.get("/v2/p/tags/list?n=x").status_code == 400
    r = client.get("/v2/nothere/tags/list")
    assert r.status_code == 404
    assert code(r) == "NAME_UNKNOWN"


def test_catalog(oci: OciClient, client: TestClient[Any]) -> None:
    for repo in ("z/last", "a/first", "m/middle"):
        oci.push_blob(repo, b"x")
    assert client.get("/v2/_catalog").json() == {
        "repositories": ["a/first", "m/middle", "z/last"]}
    r = client.get("/v2/_catalog?n=1")
    assert r.json()["repositories"] == ["a/first"]
    assert r.headers["link"] == '</v2/_catalog?n=1&last=a%2Ffirst>; rel="next"'
    assert client.get("/v2/_catalog?n=5&last=a/first").json()["repositories"] == [
        "m/middle", "z/last"]


# -- deletes ----------------------------------------------------------------------------
def test_delete_manifest_by_digest_removes_tags(oci: OciClient, client: TestClient[Any]) -> None:
    digest, body = oci.push_image("d", "one")
    assert oci.put_manifest("d", "two", body).status_code == 201
    assert client.delete("/v2/d/manifests/one").status_code == 202
    assert client.get("/v2/d/tags/list").json()["tags"] == ["two"]
    assert client.get(f"/v2/d/manifests/{digest}").status_code == 200
    assert client.delete(f"/v2/d/manifests/{digest}").status_code == 202
    assert client.get(f"/v2/d/manifests/{digest}").status_code == 404
    assert client.get("/v2/d/manifests/two").status_code == 404
    assert client.get("/v2/d/tags/list").json()["tags"] == []
    assert code(client.delete(f"/v2/d/manifests/{digest}")) == "MANIFEST_UNKNOWN"
    assert code(client.delete("/v2/nope/manifests/x")) == "NAME_UNKNOWN"


def test_delete_blob(oci: OciClient, client: TestClient[Any]) -> None:
    digest = oci.push_blob("d", b"bye")
    assert client.delete(f"/v2/d/blobs/{digest}").status_code == 202
    assert client.get(f"/v2/d/blobs/{digest}").status_code == 404
    assert code(client.delete(f"/v2/d/blobs/{digest}")) == "BLOB_UNKNOWN"


def test_deletes_disabled(tmp_path: Any) -> None:
    settings = make_settings(tmp_path, registry={"delete_enabled": False})
    with TestClient(create_app(settings)) as c:
        oci = OciClient(c)
        digest, _ = oci.push_image("d", "t")
        r = c.delete(f"/v2/d/manifests/{digest}")
        assert r.status_code == 400
        assert code(r) == "UNSUPPORTED"
        assert c.get("/v2/d/manifests/t").status_code == 200
