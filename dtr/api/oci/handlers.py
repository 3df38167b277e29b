"""Thin ``/v2`` handlers: parse the request, authorise through ``AccessControl``, make one
registry call, render. Domain errors are rendered by :func:`with_errors` from the table
in ``api/oci/errors.py``; bodies stream, never read whole (manifests excepted, ≤ 4 MiB).

A served manifest ``GET`` is reported as ``manifest.pulled`` when ``OciContext.record_pulls``
is on (``HEAD`` and blob reads are not: clients send them by the dozen per pull, and the
manifest ``GET`` is the one request every pull makes). The event is accepted before the
response and recorded after it is sent (``SecurityEvents.deferred``: the client's next
request does not wait for it), or, failing closed, recorded before anything is served.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.background_tasks import BackgroundTask
from litestar.response import Redirect, Stream

from dtr.api.context import scope_header
from dtr.api.oci.audit import manifest_pulled
from dtr.api.oci.errors import classify, envelope
from dtr.api.oci.params import (
    content_range,
    int_header,
    next_link,
    page_params,
    parse_range,
)
from dtr.api.oci.responses import BlobSender, PathSendResponse
from dtr.api.oci.security import AccessControl, Challenge
from dtr.core import mediatypes as mt
from dtr.core.reference import is_digest_reference
from dtr.core.referrers import referrers_index
from dtr.core.registry import Registry
from dtr.errors import (
    DigestInvalid,
    DtrError,
    ManifestTooLarge,
    RangeInvalid,
    RateLimited,
)
from dtr.events import SecurityEvents

log = logging.getLogger("dtr.api.oci")
API_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}
JSON = "application/json"

Req = Request[Any, Any, Any]


@dataclass(frozen=True, slots=True)
class OciContext:
    """What every handler needs, built once by the composition root.

    ``events`` receives ``manifest.pulled`` when ``record_pulls`` is on
    (``audit.record_pulls``).
    """

    registry: Registry
    access: AccessControl
    public_url: str = ""
    chunk_min: int = 0
    events: SecurityEvents | None = None
    record_pulls: bool = False
    sender: BlobSender = field(default_factory=BlobSender)

    def url(self, path: str) -> str:
        """A ``Location`` value: relative unless a public URL is configured."""
        return f"{self.public_url.rstrip('/')}{path}" if self.public_url else path


Handler = Callable[[OciContext, Req, dict[str, str]], Awaitable[Response[Any]]]


def reply(status: int, body: bytes = b"", media_type: str = JSON,
          headers: dict[str, str] | None = None) -> Response[bytes]:
    """A response with the registry API header."""
    return Response(body, status_code=status, media_type=media_type,
                    headers={**API_HEADER, **(headers or {})})


def error_response(exc: DtrError, head: bool = False) -> Response[bytes]:
    """Render a domain error as the OCI envelope (503 for unavailable backends)."""
    status, code = classify(exc)
    extra: dict[str, str] = {}
    if isinstance(exc, Challenge):
        extra["WWW-Authenticate"] = exc.header
    if isinstance(exc, RateLimited):
        extra["Retry-After"] = str(exc.retry_after)
    if code is None:
        if status == 503:
            return reply(503, f"{exc.message}; retry later\n".encode(), "text/plain",
                         {"Retry-After": "5"})
        log.error("unclassified error: %s", exc)
        return reply(500, b"internal error\n", "text/plain")
    return reply(status, b"" if head else envelope(code, exc.message, exc.detail), JSON, extra)


async def with_errors(ctx: OciContext, request: Req, handler: Handler,
                      params: dict[str, str]) -> Response[bytes]:
    """Run a handler; render domain errors."""
    try:
        return await handler(ctx, request, params)
    except DtrError as exc:
        return error_response(exc, head=request.method == "HEAD")


def raise_(exc: Exception) -> Handler:
    """A handler that raises ``exc`` (used to render routing-time errors uniformly)."""

    async def _h(_ctx: OciContext, _r: Req, _p: dict[str, str]) -> Response[bytes]:
        raise exc

    return _h


def _upload_headers(ctx: OciContext, name: str, upload_id: str, size: int) -> dict[str, str]:
    return {"Location": ctx.url(f"/v2/{name}/blobs/uploads/{upload_id}"),
            "Range": f"0-{max(size - 1, 0)}", "Docker-Upload-UUID": upload_id,
            "Content-Length": "0"}


def _blob_created(ctx: OciContext, name: str, digest: str) -> Response[bytes]:
    return reply(201, headers={"Location": ctx.url(f"/v2/{name}/blobs/{digest}"),
                               "Docker-Content-Digest": digest, "Content-Length": "0"})


def _body(request: Req) -> AsyncIterator[bytes]:
    return request.stream()


# -- /v2/ -------------------------------------------------------------------------------
async def ping(ctx: OciContext, request: Req, _p: dict[str, str]) -> Response[bytes]:
    """``GET /v2/``: the registry implements the API."""
    await ctx.access.require(request, None, ())
    return reply(200, b"{}")


# -- uploads ----------------------------------------------------------------------------
async def upload_start(ctx: OciContext, request: Req, p: dict[str, str]) -> Response[bytes]:
    """``POST /v2/<name>/blobs/uploads/``: mount, single POST, or open an upload."""
    name = p["name"]
    await ctx.access.require(request, name, ("pull", "push"))
    q = request.query_params
    up = ctx.registry.uploads
    mount = q.get("mount")
    if mount:
        sources = [q["from"]] if q.get("from") else None
        try:
            if await ctx.registry.blobs.mount(name, mount, sources,
                                              lambda repo: ctx.access.may_pull(request, repo)):
                return _blob_created(ctx, name, mount)
        except DigestInvalid:
            pass  # an impossible mount falls back to an ordinary upload
    algorithm = q.get("digest-algorithm")
    if algorithm is not None and algorithm not in ("sha256", "sha512"):
        raise DigestInvalid(f"unsupported digest algorithm {algorithm!r}")
    state = await up.start(name)
    digest = q.get("digest")
    if digest:
        length = int_header(request, "content-length")
        done = await up.finish(name, state.id, digest, _body(request), None, length)
        return _blob_created(ctx, name, done)
    headers = _upload_headers(ctx, name, state.id, 0)
    if ctx.chunk_min:
        headers["OCI-Chunk-Min-Length"] = str(ctx.chunk_min)
    return reply(202, headers=headers)


async def upload_patch(ctx: OciContext, request: Req, p: dict[str, str]) -> Response[bytes]:
    """``PATCH <location>``: append a chunk (``Content-Range``) or stream the body."""
    name, upload_id = p["name"], p["upload"]
    await ctx.access.require(request, name, ("pull", "push"))
    state = await ctx.registry.uploads.append(
        name, upload_id, _body(request), content_range(request),
        int_header(request, "content-length"))
    return reply(202, headers=_upload_headers(ctx, name, upload_id, state.size))


async def upload_put(ctx: OciContext, request: Req, p: dict[str, str]) -> Response[bytes]:
    """``PUT <location>?digest=``: optional last chunk, verify, commit."""
    name, upload_id = p["name"], p["upload"]
    await ctx.access.require(request, name, ("pull", "push"))
    digest = request.query_params.get("digest")
    if not digest:
        raise DigestInvalid("the digest query parameter is required")
    done = await ctx.registry.uploads.finish(
        name, upload_id, digest, _body(request), content_range(request),
        int_header(request, "content-length"))
    return _blob_created(ctx, name, done)


async def upload_status(ctx: OciContext, request: Req, p: dict[str, str]) -> Response[bytes]:
    """``GET <location>``: 204 with the current ``Range``."""
    name, upload_id = p["name"], p["upload"]
    await ctx.access.require(request, name, ("pull", "push"))
    state = await ctx.registry.uploads.status(name, upload_id)
    return reply(204, headers=_upload_headers(ctx, name, upload_id, state.size))


async def upload_cancel(ctx: OciContext, request: Req, p: dict[str, str]) -> Response[bytes]:
    """``DELETE <location>``: cancel the upload."""
    name, upload_id = p["name"], p["upload"]
    await ctx.access.require(request, name, ("pull", "push"))
    await ctx.registry.uploads.cancel(name, upload_id)
    return reply(204, headers={"Content-Length": "0"})


# -- blobs ------------------------------------------------------------------------------
async def blob_get(ctx: OciContext, request: Req, p: dict[str, str]) -> Response[Any]:
    """``GET``/``HEAD /v2/<name>/blobs/<digest>`` with ``Range`` (206) support."""
    name, digest = p["name"], p["digest"]
    await ctx.access.require(request, name, ("pull",))
    blobs = ctx.registry.blobs
    info = await blobs.stat(name, digest)
    headers = {"Docker-Content-Digest": digest, "Accept-Ranges": "bytes",
               "ETag": f'"{digest}"'}
    try:
        wanted = parse_range(scope_header(request.scope, b"range"), info.size)
    except RangeInvalid:
        return reply(416, envelope("BLOB_UPLOAD_INVALID", "range not satisfiable"),
                     headers={"Content-Range": f"bytes */{info.size}"})
    status = 200 if wanted is None else 206
    if wanted is not None:
        headers["Content-Range"] = f"bytes {wanted[0]}-{wanted[1]}/{info.size}"
    length = info.size if wanted is None else wanted[1] - wanted[0] + 1
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        return reply(status, media_type="application/octet-stream", headers=headers)
    # only a whole blob can go out as a file: a range never counts as handed to the server
    local = wanted is None and ctx.sender.pathsend(request, length)
    content = await blobs.open(name, digest, wanted, local=local)
    if content.local_path is not None:
        return PathSendResponse(content.local_path, content.size, status_code=status,
                                media_type="application/octet-stream",
                                headers={**API_HEADER, **headers})
    if content.redirect_url:
        return Redirect(content.redirect_url, status_code=307,
                        headers={**API_HEADER, "Docker-Content-Digest": digest})
    assert content.chunks is not None
    return Stream(ctx.sender.track(content.chunks), status_code=status,
                  media_type="application/octet-stream", headers={**API_HEADER, **headers})


async def blob_delete(ctx: OciContext, request: Req, p: dict[str, str]) -> Response[bytes]:
    """``DELETE /v2/<name>/blobs/<digest>``."""
    name, digest = p["name"], p["digest"]
    await ctx.access.require(request, name, ("delete",))
    await ctx.registry.blobs.unlink(name, digest)
    return reply(202, headers={"Content-Length": "0"})


# -- manifests --------------------------------------------------------------------------
async def manifest_get(ctx: OciContext, request: Req, p: dict[str, str]) -> Response[bytes]:
    """``GET``/``HEAD /v2/<name>/manifests/<reference>``: the exact stored bytes."""
    name, reference = p["name"], p["reference"]
    await ctx.access.require(request, name, ("pull",))

    async def may_push() -> bool:
        return await ctx.access.may_push(request, name)

    m = await ctx.registry.manifests.get(name, reference, may_push)
    headers = {"Docker-Content-Digest": m.digest, "ETag": f'"{m.digest}"',
               "Content-Length": str(len(m.content))}
    inm = scope_header(request.scope, b"if-none-match")  # no Headers object to build
    not_modified = bool(inm and m.digest in inm)
    later = None
    if ctx.record_pulls and ctx.events is not None and request.method == "GET":
        event = manifest_pulled(name, "" if is_digest_reference(reference) else reference,
                                m.digest, m.media_type, not_modified)
        later = ctx.events.deferred(event)
        if later is None:  # failing closed: recorded before anything is served
            await ctx.events.emit(event)
    if not_modified:
        response = reply(304, media_type=m.media_type, headers=headers)
    else:
        response = reply(200, b"" if request.method == "HEAD" else m.content, m.media_type,
                         headers)
    if later is not None:  # recorded once the response is sent
        response.background = BackgroundTask(later)
    return response


async def _read_manifest(ctx: OciContext, request: Req) -> bytes:
    limit = ctx.registry.store.limits.max_manifest_bytes
    length = int_header(request, "content-length")
    if length is not None and length > limit:
        raise ManifestTooLarge(f"manifest exceeds {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ManifestTooLarge(f"manifest exceeds {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def manifest_put(ctx: OciContext, request: Req, p: dict[str, str]) -> Response[bytes]:
    """``PUT /v2/<name>/manifests/<reference>[?tag=…]``."""
    name, reference = p["name"], p["reference"]
    await ctx.access.require(request, name, ("pull", "push"))
    body = await _read_manifest(ctx, request)
    extra = request.query_params.getall("tag", [])
    res = await ctx.registry.manifests.put(name, reference, request.headers.get("content-type"),
                                           body, extra)
    headers = {"Location": ctx.url(f"/v2/{name}/manifests/{res.digest}"),
               "Docker-Content-Digest": res.digest, "Content-Length": "0"}
    if res.subject:
        headers["OCI-Subject"] = res.subject
    if extra:
        headers["OCI-Tag"] = ", ".join(res.tags)
    return reply(201, headers=headers)


async def manifest_delete(ctx: OciContext, request: Req, p: dict[str, str]) -> Response[bytes]:
    """``DELETE /v2/<name>/manifests/<reference>``: a tag, or a digest and its tags."""
    name, reference = p["name"], p["reference"]
    await ctx.access.require(request, name, ("delete",))
    await ctx.registry.manifests.delete(name, reference)
    return reply(202, headers={"Content-Length": "0"})


# -- discovery --------------------------------------------------------------------------
async def tags_list(ctx: OciContext, request: Req, p: dict[str, str]) -> Response[bytes]:
    """``GET /v2/<name>/tags/list?n=&last=``."""
    name = p["name"]
    await ctx.access.require(request, name, ("pull",))
    n, last = page_params(request)
    page = await ctx.registry.tags.list_tags(name, n, last)
    headers = {}
    if page.more and page.items:
        headers["Link"] = next_link(f"/v2/{name}/tags/list", n, page.items[-1])
    return reply(200, msgspec.json.encode({"name": name, "tags": page.items}), JSON, headers)


async def catalog(ctx: OciContext, request: Req, _p: dict[str, str]) -> Response[bytes]:
    """``GET /v2/_catalog?n=&last=``: repositories the caller can pull."""
    await ctx.access.require(request, None, ("catalog",))
    n, last = page_params(request)
    page = await ctx.registry.tags.catalog(
        n, last, lambda repo: ctx.access.may_pull(request, repo))
    headers = {}
    if page.more and page.items:
        headers["Link"] = next_link("/v2/_catalog", n, page.items[-1])
    return reply(200, msgspec.json.encode({"repositories": page.items}), JSON, headers)


async def referrers(ctx: OciContext, request: Req, p: dict[str, str]) -> Response[bytes]:
    """``GET /v2/<name>/referrers/<digest>[?artifactType=]``: always 200 with an index."""
    name, digest = p["name"], p["digest"]
    await ctx.access.require(request, name, ("pull",))
    artifact_type = request.query_params.get("artifactType")
    found = await ctx.registry.referrers.referrers(name, digest, artifact_type)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
    return reply(200, referrers_index(found), mt.OCI_INDEX, headers)


