"""The admin API's OpenAPI document: served publicly, current in ``docs/openapi.json``,
every operation documented with its security and problem responses, and every route
guarded beyond sign-in (default deny)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from litestar.routes import HTTPRoute
from litestar.testing import TestClient

from dtr import docgen

DOC = Path(__file__).resolve().parents[3] / "docs/openapi.json"
PUBLIC = ("/api/v1/openapi.json", "/api/v1/docs", "/api/v1/auth/")
ANONYMOUS_OK = "/api/v1/auth/oidc"
"""The OIDC login routes: no credentials (logout, beside them, checks its own session)."""


def test_document_is_public_and_lists_only_the_admin_api(client: TestClient[Any]) -> None:
    r = client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    assert "openapi" in r.headers["content-type"]
    doc = r.json()
    assert doc["info"]["title"] == "dtr admin API"
    assert doc["paths"]
    assert all(p.startswith("/api/v1/") for p in doc["paths"])
    for path, item in doc["paths"].items():
        for method, op in item.items():
            wanted = [{}] if path.startswith(ANONYMOUS_OK) else [{"bearer": []}, {"basic": []}]
            assert op["security"] == wanted, (method, path)
            for status in ("401", "403"):
                content = op["responses"][status]["content"]
                assert "application/problem+json" in content, (method, path, status)
    assert client.get("/api/v1/docs").headers["content-type"].startswith("text/html")


def test_checked_in_document_is_current() -> None:
    assert DOC.read_text() == docgen.openapi_json(), (
        "docs/openapi.json is stale: run "
        "uv run python -c 'from dtr.docgen import openapi_json; print(openapi_json(), end=\"\")'"
        " > docs/openapi.json")


def _admin_routes(client: TestClient[Any]) -> list[HTTPRoute]:
    return [r for r in client.app.routes if isinstance(r, HTTPRoute)
            and r.path.startswith("/api/v1") and not r.path.startswith(PUBLIC)]


def test_every_admin_route_refuses_anonymous_callers(client: TestClient[Any]) -> None:
    for route in _admin_routes(client):
        path = re.sub(r"\{\w+:int\}", "1", re.sub(r"\{\w+:(str|path)\}", "x", route.path))
        for method in sorted(route.methods - {"OPTIONS"}):
            r = client.request(method, path, json={} if method in ("POST", "PUT", "PATCH")
                               else None)
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["www-authenticate"] == 'Basic realm="dtr"'


def test_every_admin_route_has_a_guard_beyond_sign_in(client: TestClient[Any]) -> None:
    routes = _admin_routes(client)
    assert len(routes) > 20
    for route in routes:
        for handler in route.route_handlers:
            if handler.http_methods == {"OPTIONS"}:  # Litestar's automatic CORS preflight
                continue
            names = [getattr(g, "__qualname__", repr(g)) for g in handler.resolve_guards()]
            assert names[0].startswith("authenticate"), (route.path, names)
            assert len(names) >= 2, (route.path, names)
