"""The ``/v2`` dispatcher: one catch-all Litestar route and an ordered table of anchored
regexes matched against the whole path, so repository names may contain ``/`` and words
such as ``manifests`` or ``blobs`` (the API suffix is matched from the right).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response, get, route
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

from dtr.api.oci import handlers as h
from dtr.api.oci.errors import envelope
from dtr.api.oci.handlers import Handler, OciContext
from dtr.core.reference import check_name


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One OCI endpoint: a path pattern and its handlers by method."""

    name: str
    pattern: re.Pattern[str]
    methods: dict[str, Handler]


_NAME = r"(?P<name>.+)"
ROUTES: list[RouteSpec] = [
    RouteSpec("upload", re.compile(rf"/{_NAME}/blobs/uploads/(?P<upload>[A-Za-z0-9_-]+)"),
              {"GET": h.upload_status, "PATCH": h.upload_patch, "PUT": h.upload_put,
               "DELETE": h.upload_cancel}),
    RouteSpec("uploads", re.compile(rf"/{_NAME}/blobs/uploads/?"),
              {"POST": h.upload_start}),
    RouteSpec("blob", re.compile(rf"/{_NAME}/blobs/(?P<digest>[^/]+)"),
              {"GET": h.blob_get, "HEAD": h.blob_get, "DELETE": h.blob_delete}),
    RouteSpec("manifest", re.compile(rf"/{_NAME}/manifests/(?P<reference>[^/]+)"),
              {"GET": h.manifest_get, "HEAD": h.manifest_get, "PUT": h.manifest_put,
               "DELETE": h.manifest_delete}),
    RouteSpec("tags", re.compile(rf"/{_NAME}/tags/list"), {"GET": h.tags_list}),
    RouteSpec("referrers", re.compile(rf"/{_NAME}/referrers/(?P<digest>[^/]+)"),
              {"GET": h.referrers}),
]
CATALOG = re.compile(r"/_catalog")


def match(path: str) -> tuple[RouteSpec | None, dict[str, str]]:
    """The first route whose pattern matches the whole path, with its groups."""
    if CATALOG.fullmatch(path):
        return RouteSpec("catalog", CATALOG, {"GET": h.catalog}), {}
    for spec in ROUTES:
        m = spec.pattern.fullmatch(path)
        if m:
            return spec, m.groupdict()
    return None, {}


async def dispatch(ctx: OciContext, request: Request[Any, Any, Any], rest: str) -> Response[Any]:
    """Serve one ``/v2`` request: ``rest`` is its normalized path after ``/v2`` (empty or
    ``/…``). Used by the Litestar routes below and by the lane (``api/oci/lane.py``).
    """
    if rest in ("", "/"):
        return await h.with_errors(ctx, request, h.ping, {})
    spec, params = match(rest)
    if spec is None:
        return Response(envelope("NAME_UNKNOWN", "no such API endpoint"), status_code=404,
                        media_type="application/json")
    handler = spec.methods.get(request.method)
    if handler is None:
        return Response(envelope("UNSUPPORTED", f"{request.method} is not supported "
                                 f"on this endpoint"), status_code=405,
                        media_type="application/json",
                        headers={"Allow": ", ".join(spec.methods)})
    if "name" in params:
        try:
            check_name(params["name"])
        except Exception as exc:
            return await h.with_errors(ctx, request, h.raise_(exc), params)
    return await h.with_errors(ctx, request, handler, params)


#: Name of the Litestar route handler of ``/v2/{rest:path}`` (the lane applies its limits).
V2_HANDLER = "oci.v2"


def build_routes(ctx: OciContext, max_body: int) -> list[HTTPRouteHandler]:
    """The Litestar route handlers of ``/v2`` bound to ``ctx``."""

    @get("/v2", include_in_schema=False)
    async def v2_root(request: Request[Any, Any, Any]) -> Response[Any]:
        return await dispatch(ctx, request, "")

    @route("/v2/{rest:path}", http_method=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
           request_max_body_size=max_body, include_in_schema=False, name=V2_HANDLER)
    async def v2(request: Request[Any, Any, Any], rest: FromPath[str]) -> Response[Any]:
        return await dispatch(ctx, request, rest)

    return [v2_root, v2]
