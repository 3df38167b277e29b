"""Real clients against a live dtr (embedded default: SQLite + filesystem, 2 workers):
skopeo, crane, oras, regctl and helm push, pull, copy, tag, list, discover and delete, and
every round trip is checked byte for byte — the manifest bytes the registry serves, the
digests the clients report, and every blob that comes back out.

Source images are OCI layouts written here with Python (deterministic tar + gzip), so the
expected digests are known before any client touches them. Repository names include many
path components and the words ``manifests``, ``blobs``, ``uploads``, ``tags`` and
``referrers``, which the ``/v2`` router must match from the right.

Also here: the skopeo round trip and a race of plain HTTP clients on PostgreSQL + MinIO
too, and a second embedded server with 4-entry pages, so every client's pagination of tag
lists and the catalog is exercised.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Client
from tests.support.peers import DtrServer, dtr_server, peer

pytestmark = pytest.mark.e2e

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REF_NAME = "org.opencontainers.image.ref.name"
ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- OCI image layouts written by hand ----------------------------------------------------
@dataclass
class Image:
    """A manifest written into a layout, with what it references."""

    manifest: bytes
    digest: str
    config: bytes
    layers: list[bytes]
    platform: dict[str, str] = field(default_factory=dict)

    @property
    def blob_digests(self) -> set[str]:
        return {sha256(self.config), *(sha256(layer) for layer in self.layers)}


def tar_of(files: dict[str, bytes]) -> bytes:
    """A deterministic tar archive of ``files``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(content), 0, 0o644
            tar.addfile(info, io.BytesIO(content))
    return raw.getvalue()


class Layout:
    """A minimal OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.refs: list[dict[str, Any]] = []
        self._write_index()

    def blob(self, data: bytes) -> str:
        digest = sha256(data)
        (self.root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return digest

    def image(self, files: dict[str, bytes], arch: str = "amd64",
              extra_layers: tuple[dict[str, bytes], ...] = ()) -> Image:
        """An image: one layer with ``files``, one more per ``extra_layers`` entry."""
        tars = [tar_of(files), *(tar_of(extra) for extra in extra_layers)]
        layers = [gzip.compress(t, compresslevel=1, mtime=0) for t in tars]
        config = json.dumps({
            "architecture": arch, "os": "linux", "config": {"Env": ["E2E=1"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in tars]},
        }, separators=(",", ":")).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": self.blob(config),
                       "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": self.blob(layer), "size": len(layer)}
                       for layer in layers],
            "annotations": {"org.example.e2e": arch},
        }, indent=2).encode()  # indented: any re-serialisation would change the digest
        return Image(manifest, self.blob(manifest), config, layers,
                     {"architecture": arch, "os": "linux"})

    def index(self, images: list[Image]) -> tuple[bytes, str]:
        body = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": i.digest,
                           "size": len(i.manifest), "platform": i.platform} for i in images],
        }, indent=1).encode()
        return body, self.blob(body)

    def tag(self, name: str, body: bytes, digest: str, media_type: str) -> None:
        self.refs.append({"mediaType": media_type, "digest": digest, "size": len(body),
                          "annotations": {REF_NAME: name}})
        self._write_index()

    def _write_index(self) -> None:
        (self.root / "index.json").write_text(json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs}))


def read_layout(root: Path) -> dict[str, bytes]:
    """Every blob of a layout by digest, each checked against its file name."""
    out: dict[str, bytes] = {}
    for path in (root / "blobs" / "sha256").iterdir():
        data = path.read_bytes()
        assert sha256(data) == f"sha256:{path.name}", f"corrupt blob {path} in {root}"
        out[f"sha256:{path.name}"] = data
    return out


def layout_ref(root: Path, name: str | None = None) -> dict[str, Any]:
    """The ``index.json`` entry for ``name`` (or the only entry)."""
    entries = json.loads((root / "index.json").read_text())["manifests"]
    if name is None:
        assert len(entries) == 1, entries
        return dict(entries[0])
    found = [e for e in entries if e.get("annotations", {}).get(REF_NAME) == name]
    assert len(found) == 1, entries
    return dict(found[0])


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


# -- reading what the registry stored ------------------------------------------------------
def get_manifest(http: httpx.Client, repo: str, ref: str) -> httpx.Response:
    r = http.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT})
    assert r.status_code == 200, (repo, ref, r.status_code, r.text)
    assert r.headers["docker-content-digest"] == sha256(r.content)
    head = http.head(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT})
    assert head.status_code == 200
    for h in ("docker-content-digest", "content-type", "content-length"):
        assert head.headers[h] == r.headers[h], h
    return r


def get_blob(http: httpx.Client, repo: str, digest: str) -> bytes:
    r = http.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200, (repo, digest, r.status_code, r.text)
    assert sha256(r.content) == digest
    return r.content


def tags(http: httpx.Client, repo: str) -> list[str]:
    r = http.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200, r.text
    return list(r.json()["tags"] or [])


def assert_image_stored(http: httpx.Client, repo: str, ref: str, image: Image) -> None:
    """The registry serves exactly the layout's manifest and blobs."""
    r = get_manifest(http, repo, ref)
    assert r.content == image.manifest
    assert r.headers["content-type"] == OCI_MANIFEST
    assert r.headers["docker-content-digest"] == image.digest
    assert get_blob(http, repo, sha256(image.config)) == image.config
    for layer in image.layers:
        assert get_blob(http, repo, sha256(layer)) == layer


# -- skopeo ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["embedded", "pg_minio"])
def test_skopeo_oci_layout_round_trip(backend: str, request: pytest.FixtureRequest,
                                      client: Client, tmp_path: Path) -> None:
    """One image with a 12 MiB layer (above Litestar's default 10 MB body limit) in and out;
    also on PostgreSQL + MinIO, where the streamed upload becomes an S3 object."""
    server: DtrServer = request.getfixturevalue(backend)
    http = httpx.Client(base_url=server.url, timeout=60)
    request.addfinalizer(http.close)
    src = Layout(tmp_path / "src")
    image = src.image({"etc/motd": b"hello from skopeo\n"},
                      extra_layers=({"big.bin": os.urandom(12 * 1024 * 1024)},))
    src.tag("v1", image.manifest, image.digest, OCI_MANIFEST)
    repo = f"e2e/skopeo/{unique('single')}"
    dest = f"docker://{server.addr}/{repo}:v1"

    client.skopeo("copy", "--preserve-digests", "--dest-tls-verify=false",
                  f"oci:{src.root}:v1", dest)
    assert_image_stored(http, repo, "v1", image)

    raw = client.skopeo_bytes("inspect", "--raw", "--tls-verify=false", dest)
    assert raw == image.manifest
    assert client.skopeo("inspect", "--format", "{{.Digest}}", "--tls-verify=false",
                         dest).stdout.strip() == image.digest
    assert json.loads(client.skopeo("list-tags", "--tls-verify=false",
                                    f"docker://{server.addr}/{repo}").stdout)["Tags"] == ["v1"]

    out = tmp_path / "out"
    client.skopeo("copy", "--preserve-digests", "--src-tls-verify=false", dest, f"oci:{out}:v1")
    assert layout_ref(out, "v1")["digest"] == image.digest
    blobs = read_layout(out)
    assert blobs[image.digest] == image.manifest
    assert set(blobs) == {image.digest, *image.blob_digests}


def _two_platform_layout(tmp_path: Path, label: str) -> tuple[Any, Any, Any, Any, str]:
    """An OCI layout tagged ``multi``: an index of an amd64 and an arm64 image."""
    src = Layout(tmp_path / "src")
    amd = src.image({"arch": f"amd64{label}\n".encode()}, "amd64")
    arm = src.image({"arch": f"arm64{label}\n".encode()}, "arm64")
    index, index_digest = src.index([amd, arm])
    src.tag("multi", index, index_digest, OCI_INDEX)
    return src, amd, arm, index, index_digest


def test_skopeo_multi_platform_index_all(embedded: DtrServer, client: Client,
                                         http: httpx.Client, tmp_path: Path) -> None:
    src, amd, arm, index, index_digest = _two_platform_layout(tmp_path, "")
    repo = f"e2e/skopeo/{unique('multi')}"
    dest = f"docker://{embedded.addr}/{repo}:multi"

    client.skopeo("copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
                  f"oci:{src.root}:multi", dest)
    r = get_manifest(http, repo, "multi")
    assert r.content == index
    assert r.headers["content-type"] == OCI_INDEX
    assert r.headers["docker-content-digest"] == index_digest
    for image in (amd, arm):
        assert_image_stored(http, repo, image.digest, image)

    out = tmp_path / "out"
    client.skopeo("copy", "--all", "--preserve-digests", "--src-tls-verify=false", dest,
                  f"oci:{out}:multi")
    assert layout_ref(out, "multi")["digest"] == index_digest
    blobs = read_layout(out)
    assert blobs[index_digest] == index
    assert set(blobs) == {index_digest, amd.digest, arm.digest, *amd.blob_digests,
                          *arm.blob_digests}

    # one platform only, by the index: skopeo resolves the child the registry serves
    one = tmp_path / "one"
    client.skopeo("copy", "--override-arch", "arm64", "--override-os", "linux",
                  "--src-tls-verify=false", dest, f"oci:{one}:arm")
    assert layout_ref(one, "arm")["digest"] == arm.digest


def test_skopeo_push_as_docker_schema2(embedded: DtrServer, client: Client,
                                       http: httpx.Client, tmp_path: Path) -> None:
    src = Layout(tmp_path / "src")
    image = src.image({"v2s2": b"docker media types\n"})
    src.tag("v1", image.manifest, image.digest, OCI_MANIFEST)
    repo = f"e2e/skopeo/{unique('v2s2')}"
    dest = f"docker://{embedded.addr}/{repo}:v1"

    client.skopeo("copy", "--format", "v2s2", "--dest-tls-verify=false",
                  f"oci:{src.root}:v1", dest)
    r = get_manifest(http, repo, "v1")
    assert r.headers["content-type"] == DOCKER_MANIFEST
    body = json.loads(r.content)
    assert body["mediaType"] == DOCKER_MANIFEST
    assert body["config"]["mediaType"] == DOCKER_CONFIG
    assert body["config"]["digest"] == sha256(image.config)
    assert [(x["mediaType"], x["digest"]) for x in body["layers"]] == \
        [(DOCKER_LAYER, sha256(layer)) for layer in image.layers]
    assert get_blob(http, repo, sha256(image.config)) == image.config
    raw = client.skopeo_bytes("inspect", "--raw", "--tls-verify=false", dest)
    assert raw == r.content

    # the schema2 manifest comes back out unchanged (a docker-archive-free copy: dir:)
    out = tmp_path / "dir"
    client.skopeo("copy", "--preserve-digests", "--src-tls-verify=false", dest, f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == r.content

    # a tag may move between media types: the same tag now gets the OCI manifest
    client.skopeo("copy", "--preserve-digests", "--dest-tls-verify=false",
                  f"oci:{src.root}:v1", dest)
    assert get_manifest(http, repo, "v1").content == image.manifest

    client.skopeo("delete", "--tls-verify=false", dest)
    assert http.get(f"/v2/{repo}/manifests/{image.digest}").status_code == 404
    assert tags(http, repo) == []


def test_skopeo_push_as_docker_manifest_list(embedded: DtrServer, client: Client,
                                             http: httpx.Client, tmp_path: Path) -> None:
    src, *_ = _two_platform_layout(tmp_path, " list")
    repo = f"e2e/skopeo/{unique('list')}"
    dest = f"docker://{embedded.addr}/{repo}:multi"

    client.skopeo("copy", "--all", "--format", "v2s2", "--dest-tls-verify=false",
                  f"oci:{src.root}:multi", dest)
    r = get_manifest(http, repo, "multi")
    assert r.headers["content-type"] == DOCKER_LIST
    children = json.loads(r.content)["manifests"]
    assert sorted(c["platform"]["architecture"] for c in children) == ["amd64", "arm64"]
    for child in children:
        assert child["mediaType"] == DOCKER_MANIFEST
        m = get_manifest(http, repo, child["digest"])
        assert m.headers["content-type"] == DOCKER_MANIFEST
        assert len(m.content) == child["size"]
    raw = client.skopeo_bytes("inspect", "--raw", "--tls-verify=false", dest)
    assert raw == r.content

    # crane copies the list to another repository (blobs mounted), digest unchanged
    reg = embedded.addr
    client.run("crane", "copy", f"{reg}/{repo}:multi", f"{reg}/{repo}/copy:multi")
    assert get_manifest(http, f"{repo}/copy", "multi").content == r.content
    out = tmp_path / "out"
    client.skopeo("copy", "--all", "--preserve-digests", "--src-tls-verify=false",
                  f"docker://{reg}/{repo}/copy:multi", f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == r.content


# -- crane -------------------------------------------------------------------------------
def test_crane_image_lifecycle(embedded: DtrServer, client: Client, http: httpx.Client,
                               tmp_path: Path) -> None:
    reg = embedded.addr
    repo = f"e2e/crane/{unique('app')}"
    (tmp_path / "hello.txt").write_text("hello from crane\n")
    client.run_any(["tar", "-cf", str(tmp_path / "layer.tar"), "-C", str(tmp_path),
                    "hello.txt"], check=True)

    # append: a new image from a tarball; mutate: a derived image with a label
    client.run("crane", "append", "--oci-empty-base", "-f", str(tmp_path / "layer.tar"),
               "-t", f"{reg}/{repo}:v1")
    client.run("crane", "mutate", f"{reg}/{repo}:v1", "--label", "e2e=yes",
               "-a", "org.example.note=mutated", "-t", f"{reg}/{repo}:v2")
    d1 = client.run("crane", "digest", f"{reg}/{repo}:v1").stdout.strip()
    d2 = client.run("crane", "digest", f"{reg}/{repo}:v2").stdout.strip()
    assert d1 != d2
    m2 = client.output_bytes("crane", "manifest", f"{reg}/{repo}:v2")
    served = get_manifest(http, repo, "v2")
    assert served.content == m2
    assert served.headers["docker-content-digest"] == d2 == sha256(m2)
    manifest = json.loads(m2)
    assert manifest["annotations"]["org.example.note"] == "mutated"
    config = client.output_bytes("crane", "config", f"{reg}/{repo}:v2")
    assert sha256(config) == manifest["config"]["digest"]
    assert json.loads(config)["config"]["Labels"] == {"e2e": "yes"}
    layer = manifest["layers"][0]["digest"]
    blob = client.output_bytes("crane", "blob", f"{reg}/{repo}@{layer}")
    assert sha256(blob) == layer
    assert blob == get_blob(http, repo, layer)
    assert sorted(client.run("crane", "ls", f"{reg}/{repo}").stdout.split()) == ["v1", "v2"]

    # pull to an OCI layout and push it back under another name: identical digest
    pulled = tmp_path / "pulled"
    client.run("crane", "pull", "--format", "oci", f"{reg}/{repo}:v2", str(pulled))
    assert read_layout(pulled)[d2] == m2
    client.run("crane", "push", str(pulled), f"{reg}/{repo}/pushed:v2")
    assert get_manifest(http, f"{repo}/pushed", "v2").content == m2

    # copy to another repository: blobs are mounted (POST ?mount=&from= answered 201)
    copied = f"{repo}/copy/a/b/c"
    cp = client.run("crane", "-v", "copy", f"{reg}/{repo}:v2", f"{reg}/{copied}:v2")
    mount_re = r"<-- (\d+) \S+/v2/" + re.escape(copied) + r"/blobs/uploads/\?\S*mount="
    mounts = re.findall(mount_re, cp.stderr)
    assert mounts, cp.stderr[-3000:]
    assert set(mounts) == {"201"}, cp.stderr[-3000:]
    assert get_manifest(http, copied, "v2").content == m2
    client.run("crane", "tag", f"{reg}/{copied}:v2", "latest")
    assert sorted(client.run("crane", "ls", f"{reg}/{copied}").stdout.split()) == \
        ["latest", "v2"]

    catalog = client.run("crane", "catalog", reg).stdout.split()
    assert {repo, f"{repo}/pushed", copied} <= set(catalog)

    # delete by digest removes the manifest and every tag pointing at it
    client.run("crane", "delete", f"{reg}/{copied}@{d2}")
    assert http.get(f"/v2/{copied}/manifests/{d2}").status_code == 404
    assert tags(http, copied) == []
    gone = client.run_any([peer("crane"), "manifest", f"{reg}/{copied}:latest"])
    assert gone.returncode != 0
    assert "MANIFEST_UNKNOWN" in gone.stderr
    # the source is untouched
    assert get_manifest(http, repo, "v2").content == m2


# -- oras --------------------------------------------------------------------------------
def test_oras_artifact_attach_discover_pull(embedded: DtrServer, client: Client,
                                            http: httpx.Client, tmp_path: Path) -> None:
    reg = embedded.addr
    repo = f"e2e/oras/{unique('artifact')}"
    work = tmp_path / "work"
    work.mkdir()
    payload = os.urandom(300_000)
    (work / "payload.bin").write_bytes(payload)
    (work / "notes.txt").write_text("an artifact pushed by oras\n")
    (work / "sig.json").write_text('{"signed":"not really"}\n')
    art_type = "application/vnd.dtr.e2e.artifact.v1"
    sig_type = "application/vnd.dtr.e2e.signature.v1"

    pushed = json.loads(client.run(
        "oras", "push", "--plain-http", "--format", "json", "--artifact-type", art_type,
        f"{reg}/{repo}:v1", "payload.bin:application/octet-stream", "notes.txt:text/plain",
        cwd=work).stdout)
    subject = pushed["digest"]
    served = get_manifest(http, repo, "v1")
    assert served.headers["docker-content-digest"] == subject
    manifest = json.loads(served.content)
    assert manifest["artifactType"] == art_type
    assert {x["digest"] for x in manifest["layers"]} == \
        {sha256(payload), sha256((work / "notes.txt").read_bytes())}

    attached = json.loads(client.run(
        "oras", "attach", "--plain-http", "--format", "json", "--artifact-type", sig_type,
        "--annotation", "org.example.signer=e2e", f"{reg}/{repo}:v1",
        "sig.json:application/json", cwd=work).stdout)
    referrer = attached["digest"]
    # dtr has the referrers API: oras must not have fallen back to the tag schema
    assert tags(http, repo) == ["v1"]
    api = http.get(f"/v2/{repo}/referrers/{subject}")
    assert api.status_code == 200
    assert api.headers["content-type"] == OCI_INDEX
    [desc] = api.json()["manifests"]
    assert desc["digest"] == referrer
    assert desc["artifactType"] == sig_type
    assert desc["annotations"]["org.example.signer"] == "e2e"
    assert json.loads(get_manifest(http, repo, referrer).content)["subject"]["digest"] == \
        subject

    found = json.loads(client.run("oras", "discover", "--plain-http", "--format", "json",
                                  f"{reg}/{repo}:v1").stdout)
    assert found["digest"] == subject
    assert [(x["digest"], x["artifactType"]) for x in found["referrers"]] == \
        [(referrer, sig_type)]
    filtered = json.loads(client.run("oras", "discover", "--plain-http", "--format", "json",
                                     "--artifact-type", "application/vnd.other",
                                     f"{reg}/{repo}:v1").stdout)
    assert not filtered.get("referrers")

    out = tmp_path / "out"
    client.run("oras", "pull", "--plain-http", "-o", str(out), f"{reg}/{repo}:v1")
    assert (out / "payload.bin").read_bytes() == payload
    assert (out / "notes.txt").read_bytes() == (work / "notes.txt").read_bytes()
    sig_out = tmp_path / "sig-out"
    client.run("oras", "pull", "--plain-http", "-o", str(sig_out), f"{reg}/{repo}@{referrer}")
    assert (sig_out / "sig.json").read_bytes() == (work / "sig.json").read_bytes()
    fetched = client.output_bytes("oras", "manifest", "fetch", "--plain-http",
                                  f"{reg}/{repo}@{referrer}")
    assert sha256(fetched) == referrer

    # manifest and blob deletes through oras
    client.run("oras", "manifest", "delete", "--plain-http", "--force",
               f"{reg}/{repo}@{referrer}")
    assert http.get(f"/v2/{repo}/referrers/{subject}").json()["manifests"] == []
    found = json.loads(client.run("oras", "discover", "--plain-http", "--format", "json",
                                  f"{reg}/{repo}:v1").stdout)
    assert not found.get("referrers")
    sig_blob = sha256((work / "sig.json").read_bytes())
    client.run("oras", "blob", "delete", "--plain-http", "--force", f"{reg}/{repo}@{sig_blob}")
    assert http.head(f"/v2/{repo}/blobs/{sig_blob}").status_code == 404

    # copy with referrers to a name full of API words
    referrer = json.loads(client.run(
        "oras", "attach", "--plain-http", "--format", "json", "--artifact-type", sig_type,
        f"{reg}/{repo}:v1", "sig.json:application/json", cwd=work).stdout)["digest"]
    other = f"e2e/oras/manifests/{unique('blobs')}/referrers"
    client.run("oras", "cp", "-r", "--from-plain-http", "--to-plain-http",
               f"{reg}/{repo}:v1", f"{reg}/{other}:v1")
    assert get_manifest(http, other, "v1").content == served.content
    assert [d["digest"] for d in
            http.get(f"/v2/{other}/referrers/{subject}").json()["manifests"]] == [referrer]


def test_oras_referrers_api_and_tag_schema(embedded: DtrServer, client: Client,
                                           http: httpx.Client, tmp_path: Path) -> None:
    """A referrer attached through the tag schema (``sha256-<hex>`` index tag) and one
    attached through the API are both listed by the API and by ``oras discover``."""
    reg = embedded.addr
    repo = f"e2e/oras/{unique('fallback')}"
    (tmp_path / "a.txt").write_text("subject\n")
    (tmp_path / "b.txt").write_text("referrer\n")
    subject = json.loads(client.run("oras", "push", "--plain-http", "--format", "json",
                                    f"{reg}/{repo}:v1", "a.txt", cwd=tmp_path).stdout)["digest"]
    via_api = json.loads(client.run(
        "oras", "attach", "--plain-http", "--format", "json", "--distribution-spec",
        "v1.1-referrers-api", "--artifact-type", "application/vnd.e2e.api",
        f"{reg}/{repo}:v1", "b.txt", cwd=tmp_path).stdout)["digest"]
    via_tag = json.loads(client.run(
        "oras", "attach", "--plain-http", "--format", "json", "--distribution-spec",
        "v1.1-referrers-tag", "--artifact-type", "application/vnd.e2e.tag",
        f"{reg}/{repo}:v1", "b.txt", cwd=tmp_path).stdout)["digest"]
    fallback_tag = subject.replace(":", "-")
    assert fallback_tag in tags(http, repo)
    index = json.loads(get_manifest(http, repo, fallback_tag).content)
    assert via_tag in {d["digest"] for d in index["manifests"]}

    api = http.get(f"/v2/{repo}/referrers/{subject}").json()["manifests"]
    assert {(d["digest"], d["artifactType"]) for d in api} == \
        {(via_api, "application/vnd.e2e.api"), (via_tag, "application/vnd.e2e.tag")}
    filtered = http.get(f"/v2/{repo}/referrers/{subject}",
                        params={"artifactType": "application/vnd.e2e.tag"})
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    assert [d["digest"] for d in filtered.json()["manifests"]] == [via_tag]
    for mode in ("v1.1-referrers-api", "v1.1-referrers-tag"):
        found = json.loads(client.run("oras", "discover", "--plain-http", "--format", "json",
                                      "--distribution-spec", mode, f"{reg}/{repo}:v1").stdout)
        listed = {x["digest"] for x in found["referrers"]}
        assert via_tag in listed, (mode, found)
        if mode == "v1.1-referrers-api":
            assert via_api in listed


# -- regctl ------------------------------------------------------------------------------
def test_regctl_copy_get_list(embedded: DtrServer, client: Client, http: httpx.Client,
                              tmp_path: Path) -> None:
    reg = embedded.addr
    client.run("regctl", "registry", "set", "--tls", "disabled", reg)
    src = Layout(tmp_path / "src")
    amd = src.image({"r": b"regctl amd64\n"}, "amd64")
    arm = src.image({"r": b"regctl arm64\n"}, "arm64",
                    extra_layers=({"r.bin": os.urandom(3_000_000)},))
    index, index_digest = src.index([amd, arm])
    src.tag("multi", index, index_digest, OCI_INDEX)
    repo = f"e2e/regctl/{unique('src')}"

    # from the layout (every blob uploaded), then registry to registry (mounts)
    client.run("regctl", "image", "copy", f"ocidir://{src.root}:multi", f"{reg}/{repo}:multi")
    assert get_manifest(http, repo, "multi").content == index
    dst = f"e2e/regctl/{unique('dst')}/blobs/uploads"
    client.run("regctl", "image", "copy", "--digest-tags", f"{reg}/{repo}:multi",
               f"{reg}/{dst}:copied")
    raw = client.output_bytes("regctl", "manifest", "get", "--format", "raw-body",
                              f"{reg}/{dst}:copied")
    assert raw == index
    assert client.run("regctl", "image", "digest",
                      f"{reg}/{dst}:copied").stdout.strip() == index_digest
    for image in (amd, arm):
        assert_image_stored(http, dst, image.digest, image)
        child = client.output_bytes("regctl", "manifest", "get", "--format", "raw-body",
                                    f"{reg}/{dst}@{image.digest}")
        assert child == image.manifest
    layer = arm.layers[-1]
    assert client.output_bytes("regctl", "blob", "get", f"{reg}/{dst}", sha256(layer)) == layer
    # blob put from a pipe (unknown length): chunked PATCHes with Content-Range
    piped = os.urandom(3 * 1024 * 1024 + 12345)
    put = client.output_bytes("regctl", "blob", "put", f"{reg}/{dst}", stdin=piped)
    assert put.decode().strip() == sha256(piped)
    assert client.output_bytes("regctl", "blob", "get", f"{reg}/{dst}", sha256(piped)) == piped
    listed = client.run("regctl", "tag", "ls", f"{reg}/{dst}").stdout.split()
    assert "copied" in listed
    client.run("regctl", "tag", "delete", f"{reg}/{dst}:copied")
    assert "copied" not in tags(http, dst)
    assert get_manifest(http, dst, index_digest).content == index

    # an artifact referring to the index, listed and copied along by regclient
    (tmp_path / "sbom.json").write_text('{"sbom": "e2e"}\n')
    client.run("regctl", "artifact", "put", "--artifact-type", "application/vnd.e2e.sbom",
               "--file", str(tmp_path / "sbom.json"), "--file-media-type", "application/json",
               "--subject", f"{reg}/{repo}:multi")
    listed_refs = json.loads(client.run("regctl", "artifact", "list", "--format",
                                        "{{json .Descriptors}}", f"{reg}/{repo}:multi").stdout)
    assert [d["artifactType"] for d in listed_refs] == ["application/vnd.e2e.sbom"]
    with_refs = f"e2e/regctl/{unique('refs')}"
    client.run("regctl", "image", "copy", "--referrers", f"{reg}/{repo}:multi",
               f"{reg}/{with_refs}:multi")
    api = http.get(f"/v2/{with_refs}/referrers/{index_digest}").json()["manifests"]
    assert [d["digest"] for d in api] == [listed_refs[0]["digest"]]
    sbom = client.output_bytes("regctl", "artifact", "get", "--subject",
                               f"{reg}/{with_refs}:multi", "--filter-artifact-type",
                               "application/vnd.e2e.sbom")
    assert sbom == (tmp_path / "sbom.json").read_bytes()


# -- helm --------------------------------------------------------------------------------
def test_helm_chart_push_pull(embedded: DtrServer, client: Client, http: httpx.Client,
                              tmp_path: Path) -> None:
    reg = embedded.addr
    name = unique("tiny")
    chart = tmp_path / name
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        f"apiVersion: v2\nname: {name}\nversion: 0.1.0\ndescription: dtr e2e chart\n")
    (chart / "values.yaml").write_text("message: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n"
        "data:\n  message: {{ .Values.message | quote }}\n")
    pkg = tmp_path / "pkg"
    client.run("helm", "package", str(chart), "-d", str(pkg))
    tgz = pkg / f"{name}-0.1.0.tgz"
    data = tgz.read_bytes()

    pushed = client.run("helm", "push", str(tgz), f"oci://{reg}/e2e/charts", "--plain-http")
    text = pushed.stdout + pushed.stderr
    digest = re.search(r"Digest: (sha256:[0-9a-f]{64})", text)
    assert digest, text
    served = get_manifest(http, f"e2e/charts/{name}", "0.1.0")
    assert served.headers["docker-content-digest"] == digest.group(1)
    manifest = json.loads(served.content)
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.helm.config.v1+json"
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
    assert layer["digest"] == sha256(data)
    assert get_blob(http, f"e2e/charts/{name}", sha256(data)) == data

    out = tmp_path / "pulled"
    out.mkdir()
    pulled = client.run("helm", "pull", f"oci://{reg}/e2e/charts/{name}", "--version",
                        "0.1.0", "--plain-http", "-d", str(out))
    assert digest.group(1) in pulled.stdout + pulled.stderr
    assert (out / tgz.name).read_bytes() == data
    shown = client.run("helm", "show", "chart", f"oci://{reg}/e2e/charts/{name}",
                       "--version", "0.1.0", "--plain-http").stdout
    assert f"name: {name}" in shown


# -- names with many components and API words ----------------------------------------------
@pytest.mark.parametrize("name", [
    "e2e/names/a/b/c/d/e/f/g/h",
    "e2e/names/manifests/blobs",
    "e2e/names/blobs/uploads/x/manifests/latest",
    "e2e/names/tags/list/referrers/sha256",
    "e2e/names/v2/x_catalog/uploads",
])
def test_names_with_api_words(embedded: DtrServer, client: Client, http: httpx.Client,
                              tmp_path: Path, name: str) -> None:
    reg = embedded.addr
    src = Layout(tmp_path / "src")
    image = src.image({"name": name.encode()})
    src.tag("v1", image.manifest, image.digest, OCI_MANIFEST)

    client.run("crane", "push", str(src.root), f"{reg}/{name}:v1")
    assert_image_stored(http, name, "v1", image)
    assert client.run("crane", "digest", f"{reg}/{name}:v1").stdout.strip() == image.digest
    out = tmp_path / "out"
    client.skopeo("copy", "--preserve-digests", "--src-tls-verify=false",
                  f"docker://{reg}/{name}:v1", f"oci:{out}:v1")
    assert set(read_layout(out)) == {image.digest, *image.blob_digests}
    client.run("regctl", "registry", "set", "--tls", "disabled", reg)
    assert client.run("regctl", "tag", "ls", f"{reg}/{name}").stdout.split() == ["v1"]
    (tmp_path / "note.txt").write_text(name)
    client.run("oras", "attach", "--plain-http", "--artifact-type", "application/vnd.e2e.note",
               f"{reg}/{name}:v1", "note.txt:text/plain", cwd=tmp_path)
    found = json.loads(client.run("oras", "discover", "--plain-http", "--format", "json",
                                  f"{reg}/{name}:v1").stdout)
    assert [x["artifactType"] for x in found["referrers"]] == ["application/vnd.e2e.note"]
    assert name in client.run("crane", "catalog", reg).stdout.split()
    client.run("crane", "delete", f"{reg}/{name}:v1")
    assert tags(http, name) == []


# -- concurrency -------------------------------------------------------------------------
def test_concurrent_skopeo_pushes_share_layers(embedded: DtrServer, client: Client,
                                               http: httpx.Client, tmp_path: Path) -> None:
    """Eight skopeo processes push images sharing a fresh 2 MiB layer at once, four into
    separate repositories and four as different tags of one repository; skopeo does not
    retry, so any 5xx fails its push. (Process start-up spreads the commits; the tight
    races are in ``test_racing_commits_tags_and_deletes``.)"""
    src = Layout(tmp_path / "src")
    shared = {"shared.bin": os.urandom(2 * 1024 * 1024)}
    images = []
    for n in range(8):
        image = src.image({"n": str(n).encode()}, extra_layers=(shared,))
        src.tag(f"i{n}", image.manifest, image.digest, OCI_MANIFEST)
        images.append(image)
    base = f"e2e/concurrent/{unique('push')}"
    targets = [(f"{base}/r{n}" if n < 4 else base, f"i{n}") for n in range(8)]

    def push(n: int) -> subprocess.CompletedProcess[str]:
        repo, tag = targets[n]
        return client.run_any([*client.skopeo_argv(), "copy",
                               "--preserve-digests", "--dest-tls-verify=false",
                               f"oci:{src.root}:{tag}",
                               f"docker://{embedded.addr}/{repo}:{tag}"])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(push, range(8)))
    failed = [f"{targets[n]}: {r.stderr[-800:]}" for n, r in enumerate(results)
              if r.returncode != 0]
    assert not failed, "\n".join(failed)
    for (repo, tag), image in zip(targets, images, strict=True):
        assert_image_stored(http, repo, tag, image)
    assert sorted(tags(http, base)) == ["i4", "i5", "i6", "i7"]


@pytest.mark.parametrize("backend", ["embedded", "pg_minio"])
def test_racing_commits_tags_and_deletes(backend: str, request: pytest.FixtureRequest) -> None:
    """Plain HTTP clients race where real clients collide in production: one blob committed
    into ten repositories at once, one manifest tagged from twelve requests, and deletes
    of a manifest by digest racing pushes of it. Every answer is a 2xx (or a 404 for a
    delete that lost), never a 5xx, and what is left is consistent."""
    server: DtrServer = request.getfixturevalue(backend)
    base = f"e2e/race/{unique(backend)}"
    layer = os.urandom(1_500_000)
    config = json.dumps({"race": base}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}],
    }).encode()
    digest = sha256(manifest)

    def upload(repo: str, data: bytes) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            loc = c.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
            return c.put(loc, params={"digest": sha256(data)}, content=data).status_code

    def put(ref: str) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return c.put(f"/v2/{base}/manifests/{ref}", content=manifest,
                         headers={"Content-Type": OCI_MANIFEST}).status_code

    def delete(ref: str) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return c.delete(f"/v2/{base}/manifests/{ref}").status_code

    with ThreadPoolExecutor(12) as pool:
        for _round in range(3):
            data = os.urandom(1_000_000)
            codes = list(pool.map(lambda n, d=data: upload(f"{base}/r{n}", d), range(10)))
            assert codes == [201] * 10
        assert upload(base, layer) == 201
        assert upload(base, config) == 201
        codes = list(pool.map(lambda n: put("same" if n % 2 else f"t{n}"), range(12)))
        assert codes == [201] * 12
        for _round in range(3):
            futures = [pool.submit(delete, digest) for _ in range(3)]
            futures += [pool.submit(put, f"again{n}") for n in range(6)]
            codes = [f.result() for f in futures]
            assert set(codes[:3]) <= {202, 404}, codes
            assert codes[3:] == [201] * 6, codes
    with httpx.Client(base_url=server.url, timeout=60) as c:
        listed = tags(c, base)
        present = c.get(f"/v2/{base}/manifests/{digest}").status_code
        assert present in (200, 404)
        if present == 404:
            assert listed == []
        for tag in listed:
            assert get_manifest(c, base, tag).content == manifest


# -- pagination ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DtrServer]:
    """A second embedded dtr that answers at most 4 tags or repositories per page."""
    with dtr_server(tmp_path_factory.mktemp("small-pages"), workers=1,
                    extra={"DTR_REGISTRY_PAGE_SIZE": "4"}) as server:
        yield server


def test_clients_follow_pagination(small_pages: DtrServer, client: Client,
                                   tmp_path: Path) -> None:
    """Tag lists and the catalog span several pages; every client follows ``Link``."""
    reg = small_pages.addr
    src = Layout(tmp_path / "src")
    image = src.image({"paged": b"x"})
    src.tag("v1", image.manifest, image.digest, OCI_MANIFEST)
    repo = "e2e/paged/app"
    client.run("crane", "push", str(src.root), f"{reg}/{repo}:v1")
    wanted = sorted(["v1", "A", "Z9", "_under", "a", "b-2", "b.1", "latest", "x" * 128,
                     "0", "9.9", "Mixed_Case"])
    for tag in wanted:
        if tag != "v1":
            client.run("crane", "tag", f"{reg}/{repo}:v1", tag)
    for n in range(5):
        client.run("crane", "copy", f"{reg}/{repo}:v1", f"{reg}/e2e/paged/copy{n}:v1")

    assert client.run("crane", "ls", f"{reg}/{repo}").stdout.split() == wanted
    assert json.loads(client.skopeo("list-tags", "--tls-verify=false",
                                    f"docker://{reg}/{repo}").stdout)["Tags"] == wanted
    client.run("regctl", "registry", "set", "--tls", "disabled", reg)
    assert client.run("regctl", "tag", "ls", f"{reg}/{repo}").stdout.split() == wanted
    assert client.run("oras", "repo", "tags", "--plain-http",
                      f"{reg}/{repo}").stdout.split() == wanted

    repos = sorted([repo, *(f"e2e/paged/copy{n}" for n in range(5))])
    assert client.run("crane", "catalog", reg).stdout.split() == repos
    # regctl's repo ls reads one page (no Link following): page with --last by hand
    pages: list[list[str]] = []
    last: list[str] = []
    while True:
        page = client.run("regctl", "repo", "ls", reg, *last).stdout.split()
        if not page:
            break
        pages.append(page)
        last = ["--last", page[-1]]
    assert [len(p) for p in pages] == [4, 2]
    assert [r for p in pages for r in p] == repos
    assert client.run("oras", "repo", "ls", "--plain-http", reg).stdout.split() == repos

    # the raw pages: exactly n per page, Link to the next, byte order across pages
    with httpx.Client(base_url=small_pages.url, timeout=30) as http:
        seen: list[str] = []
        url: str | None = f"/v2/{repo}/tags/list?n=3"
        while url:
            r = http.get(url)
            assert r.status_code == 200
            page = r.json()["tags"]
            assert len(page) == 3 or "link" not in r.headers
            seen += page
            link = r.headers.get("link")
            url = re.match(r'<([^>]+)>; rel="next"', link).group(1) if link else None
        assert seen == wanted
