"""The ``/v2`` lane (``dtr/api/oci/lane.py``) answers exactly as Litestar's router does.

The same script of requests — every OCI endpoint, successes and errors, odd paths, the
body-size limit, an unexpected exception, requests the lane leaves to Litestar — runs
against an app with the lane and one without (``app.lane = None``), each on its own data
folder; status, headers and body must match request by request (random upload ids, the
request id and the date are masked).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from dtr.api.oci import router
from dtr.app import create_app
from tests.conftest import make_settings

MT = "application/vnd.oci.image.manifest.v1+json"
ADMIN_PASSWORD = "admin-password-1"
Exchange = tuple[str, int, list[tuple[str, str]], bytes]
VOLATILE = {"x-request-id", "date"}
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Recorder:
    """Sends requests and keeps what came back, masked."""

    def __init__(self, client: TestClient[Any]) -> None:
        self.client = client
        self.seen: list[Exchange] = []
        self.token = ""

    def __call__(self, method: str, path: str, body: bytes = b"",
                 headers: dict[str, str] | None = None) -> Any:
        hdrs = dict(headers or {})
        if self.token:
            hdrs.setdefault("Authorization", f"Bearer {self.token}")
        r = self.client.request(method, path, content=body or None, headers=hdrs)
        kept = [(k.lower(), UPLOAD_ID.sub("<id>", v)) for k, v in r.headers.multi_items()
                if k.lower() not in VOLATILE]
        masked = UPLOAD_ID.sub("<id>", r.content.decode("latin-1")).encode("latin-1")
        self.seen.append((f"{method} {UPLOAD_ID.sub('<id>', path)}", r.status_code, kept,
                          masked))
        return r


def script(send: Recorder) -> None:
    """Every endpoint, good and bad (auth off)."""
    config = b'{"architecture":"amd64","os":"linux"}'
    layer = b"layer-bytes" * 1000
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MT,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest(layer), "size": len(layer)}]}).encode()
    for method, path in [("GET", "/v2"), ("GET", "/v2/"), ("HEAD", "/v2"), ("PUT", "/v2/"),
                         ("OPTIONS", "/v2/a/manifests/x"), ("GET", "/v2/a/tags/list"),
                         ("GET", "/v2/a/tags/list/"), ("GET", "/v2//a//tags/list"),
                         ("GET", "/v2/nope"), ("DELETE", "/v2/a/tags/list"),
                         ("GET", "/v2/Bad_Name/manifests/x"), ("GET", "/v2/a/blobs/sha256:00"),
                         ("GET", "/v2/a/manifests/latest"), ("HEAD", "/v2/a/manifests/latest"),
                         ("GET", "/v2/_catalog"), ("GET", "/v2x")]:
        send(method, path)
    send("GET", "/v2/", headers={"Host": "bad host"})
    # monolithic: POST + PUT, a wrong digest first
    loc = send("POST", "/v2/a/blobs/uploads/").headers["location"]
    send("PUT", f"{loc}?digest={digest(b'other')}", config)
    loc = send("POST", "/v2/a/blobs/uploads/").headers["location"]
    send("PUT", f"{loc}?digest={digest(config)}", config)
    # chunked: POST, two PATCHes (one out of order), status, PUT
    loc = send("POST", "/v2/a/blobs/uploads/").headers["location"]
    loc = send("PATCH", loc, layer[:5000], {"Content-Range": "0-4999"}).headers["location"]
    send("PATCH", loc, layer[5000:], {"Content-Range": "9-20"})
    loc = send("PATCH", loc, layer[5000:],
               {"Content-Range": f"5000-{len(layer) - 1}"}).headers["location"]
    send("GET", loc)
    send("PUT", f"{loc}?digest={digest(layer)}")
    send("DELETE", loc)
    # blobs: HEAD, GET, ranges, mount
    for headers in ({}, {"Range": "bytes=0-9"}, {"Range": "bytes=-5"},
                    {"Range": "bytes=99999-"}, {"Range": "pages=1"}):
        send("GET", f"/v2/a/blobs/{digest(layer)}", headers=headers)
    send("HEAD", f"/v2/a/blobs/{digest(layer)}")
    send("POST", f"/v2/b/blobs/uploads/?mount={digest(layer)}&from=a")
    # manifests: bad, good, by tag and digest, conditional, tags, referrers, delete
    send("PUT", "/v2/a/manifests/v1", b"{not json", {"Content-Type": MT})
    send("PUT", "/v2/a/manifests/v1", manifest, {"Content-Type": MT})
    send("PUT", "/v2/a/manifests/v2", manifest, {"Content-Type": MT})
    for method in ("GET", "HEAD"):
        send(method, "/v2/a/manifests/v1", headers={"Accept": MT})
        send(method, f"/v2/a/manifests/{digest(manifest)}")
    send("GET", "/v2/a/manifests/v1", headers={"If-None-Match": f'"{digest(manifest)}"'})
    send("GET", "/v2/a/tags/list?n=1")
    send("GET", "/v2/a/tags/list?n=x")
    send("GET", f"/v2/a/referrers/{digest(manifest)}")
    send("GET", "/v2/_catalog?n=5")
    send("DELETE", "/v2/a/manifests/v2")
    send("DELETE", f"/v2/a/blobs/{digest(config)}")
    # over the body-size limit (Litestar's 413, raised while reading the body)
    send("PUT", "/v2/a/manifests/big", b"x" * 70_000, {"Content-Type": MT})


def auth_script(send: Recorder) -> None:
    """Challenges, a token, then requests with it (auth on)."""
    send("GET", "/v2/")
    send("GET", "/v2/a/manifests/latest")
    send("POST", "/v2/a/blobs/uploads/")
    send("GET", "/v2/a/tags/list", headers={"Authorization": "Bearer not-a-token"})
    r = send.client.get("/auth/token", params={"service": "testserver", "scope":
                        "repository:a:pull,push"}, auth=("admin", ADMIN_PASSWORD))
    assert r.status_code == 200, r.text
    send.token = r.json()["token"]
    send("GET", "/v2/")
    send("GET", "/v2/a/manifests/latest")
    send("GET", "/v2/other/manifests/latest")
    loc = send("POST", "/v2/a/blobs/uploads/").headers["location"]
    send("PUT", f"{loc}?digest={digest(b'x')}", b"x")
    send("GET", f"/v2/a/blobs/{digest(b'x')}")


def run(tmp: Path, lane: bool, steps: Callable[[Recorder], None],
        **overrides: Any) -> list[Exchange]:
    tmp.mkdir()
    app = create_app(make_settings(tmp, **overrides))
    if not lane:
        app.lane = None
    with TestClient(app) as client:
        rec = Recorder(client)
        steps(rec)
    return rec.seen


@pytest.fixture
def compare(tmp_path: Path) -> Callable[..., None]:
    def check(steps: Callable[[Recorder], None], **overrides: Any) -> None:
        with_lane = run(tmp_path / "lane", True, steps, **overrides)
        without = run(tmp_path / "litestar", False, steps, **overrides)
        assert len(with_lane) == len(without)
        for got, want in zip(with_lane, without, strict=True):
            assert got == want, f"{got[0]}: the lane answered differently"

    return check


def test_every_endpoint_answers_as_through_litestar(compare: Callable[..., None]) -> None:
    compare(script, registry={"max_blob_bytes": 65_536})


def test_authentication_answers_as_through_litestar(compare: Callable[..., None],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DTR_ADMIN_PASSWORD", ADMIN_PASSWORD)
    compare(auth_script, auth={"enabled": True})


def test_unexpected_errors_answer_500_as_through_litestar(
        compare: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    async def boom(*_args: Any) -> Any:
        raise RuntimeError("a bug")

    tags = next(spec for spec in router.ROUTES if spec.name == "tags")
    monkeypatch.setitem(tags.methods, "GET", boom)
    compare(lambda send: (send("GET", "/v2/a/tags/list"), None)[1])


def test_the_lane_serves_v2_and_litestar_the_rest(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Proof the comparison above compares two paths: the lane really takes ``/v2``."""
    app = create_app(make_settings(tmp_path))
    served: list[str] = []
    lane = app.lane
    assert lane is not None

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        served.append(scope["path"])
        await lane(scope, receive, send)

    app.lane = spy
    with TestClient(app) as client:
        assert client.get("/v2/").status_code == 200
        assert client.get("/v2//a//tags/list/").status_code == 404
        assert client.options("/v2/a/tags/list").status_code == 204  # Litestar's OPTIONS
        assert client.get("/v2x").status_code == 404
    assert served == ["/v2", "/v2/a/tags/list"]
