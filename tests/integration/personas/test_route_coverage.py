"""The meta-test of habit 8: every registered route + method of the real app has a row in
``expectations.csv`` (so a new route cannot ship without persona cases), and every row
names a registered route (so the table cannot rot). Litestar's automatic ``OPTIONS``
handlers are covered here once for all routes; only the Swagger UI routes are excluded.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler

from dtr.api.oci.router import ROUTES, match
from tests.integration.personas.conftest import NO_TOKEN, PERSONAS, World, load_table

OCI_DISPATCH = {"/v2", "/v2/{rest:path}"}
"""The Litestar routes of ``/v2``: one dispatcher whose endpoints are ``router.ROUTES``."""
EXCLUDED = {
    # Litestar's OpenAPI plugin: the Swagger UI page, its assets and its copy of the schema
    # (the admin API's own /api/v1/openapi.json is in the table). Documentation, no data.
    "/api/v1/docs",
    "/api/v1/docs/{path:str}",
    "/api/v1/docs/openapi.json",
    "/api/v1/docs/oauth2-redirect.html",
}
PUBLIC_PREFIX = "/api/v1/auth/"
"""OIDC login and logout: open to anonymous callers (logout checks its session itself)."""
MUST_HAVE = ("owner", "reader", "helpless", "anonymous")
"""Style guide §3 habit 8: every route is exercised at least as these."""
CELL = re.compile(r"^(ok|scope|-|[1-5][0-9][0-9])$")
EXAMPLE = {"name": "acme/app", "reference": "latest", "digest": "sha256:" + "0" * 64,
           "upload": "u1"}


def _is_auto_options(handler: HTTPRouteHandler) -> bool:
    """Litestar adds an ``OPTIONS`` handler to every path that has none (CORS preflight)."""
    return handler.handler_name == "options_handler" and handler.http_methods == {"OPTIONS"}


def litestar_routes(app: Litestar) -> tuple[dict[str, set[str]], set[str]]:
    """Every route path's methods (automatic OPTIONS left out), and the paths that have
    an automatic OPTIONS handler.
    """
    methods: dict[str, set[str]] = {}
    preflight: set[str] = set()
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if _is_auto_options(handler):
                preflight.add(route.path)
            else:
                methods.setdefault(route.path, set()).update(handler.http_methods)
    return methods, preflight


def oci_endpoints() -> set[tuple[str, str]]:
    """(method, endpoint name) of the OCI API: ``/v2/``, the catalog and ``ROUTES``."""
    found = {("GET", "ping"), ("GET", "catalog")}
    for spec in ROUTES:
        found.update((method, spec.name) for method in spec.methods)
    return found


def oci_endpoint_of(path: str) -> str | None:
    """The OCI endpoint a table path names, through the real router; None if none."""
    if path == "/v2/":
        return "ping"
    concrete = re.sub(r"\{(\w+)\}", lambda m: EXAMPLE.get(m.group(1), "x"), path)
    spec, _params = match(concrete.removeprefix("/v2"))
    return None if spec is None else spec.name


def registered(app: Litestar) -> set[tuple[str, str]]:
    """Every (method, route) of the app: Litestar paths, and ``/v2`` endpoints by name."""
    methods, _ = litestar_routes(app)
    found = set(oci_endpoints())
    for path, verbs in methods.items():
        if path in OCI_DISPATCH or path in EXCLUDED:
            continue
        found.update((verb, path) for verb in verbs)
    return found


def tabled() -> set[tuple[str, str]]:
    """Every (method, route) the table has a row for (``/v2`` rows by endpoint name)."""
    found = set()
    for row in load_table():
        if row.surface == "oci":
            name = oci_endpoint_of(row.path)
            spec_methods = {s.name: set(s.methods) for s in ROUTES}
            if name is not None and (name in ("ping", "catalog")
                                     or row.method in spec_methods[name]):
                found.add((row.method, name))
            else:
                found.add((row.method, f"no OCI endpoint: {row.path}"))
        else:
            found.add((row.method, row.path))
    return found


def test_every_registered_route_has_a_persona_case(world: World) -> None:
    missing = registered(world.client.app) - tabled()
    assert not missing, f"routes without a row in expectations.csv: {sorted(missing)}"


def test_every_table_row_names_a_registered_route(world: World) -> None:
    stale = tabled() - registered(world.client.app)
    assert not stale, f"rows naming no registered route: {sorted(stale)}"


def test_the_v2_dispatcher_serves_exactly_the_oci_route_table(world: World) -> None:
    """A route added to /v2 outside ``ROUTES`` would escape the endpoint accounting."""
    methods, _ = litestar_routes(world.client.app)
    v2 = {path: verbs for path, verbs in methods.items() if path.startswith("/v2")}
    assert set(v2) == OCI_DISPATCH
    assert v2["/v2"] == {"GET"}
    assert v2["/v2/{rest:path}"] == {m for m, _ in oci_endpoints()}


def test_the_table_is_well_formed() -> None:
    rows = load_table()
    duplicates = [k for k, n in Counter(r.key for r in rows).items() if n > 1]
    assert not duplicates, duplicates
    for row in rows:
        assert row.surface in ("oci", "admin", "auth"), row
        assert row.needs, row
        for persona, cell in row.expect.items():
            assert CELL.match(cell), (row.key, persona, cell)
        for persona in MUST_HAVE:
            assert row.expect[persona] != "-", (row.key, persona)
        if row.surface == "oci":
            assert all(row.expect[p] != "-" for p in (*PERSONAS, NO_TOKEN)), row.key
            assert row.expect[NO_TOKEN] == "401", row.key
        else:
            assert row.expect[NO_TOKEN] == "-", row.key
            assert "scope" not in row.expect.values(), row.key


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+):(\w+)\}",
                  lambda m: {"int": "1", "path": "a/b"}.get(m.group(2), m.group(1)), path)


@pytest.mark.parametrize("persona", ["admin", "helpless", "anonymous"])
def test_preflight_options_reveal_nothing(world: World, persona: str) -> None:
    """Litestar's automatic OPTIONS answers 204 with ``Allow`` and no body. On the admin API
    it sits behind the same guards as the route's controller: anonymous callers get 401,
    and a signed-in caller 403 where the controller needs a permission they lack.
    """
    _, preflight = litestar_routes(world.client.app)
    wrong: list[Any] = []
    for path in sorted(preflight - EXCLUDED):
        admin = (path.startswith("/api/v1/") and path != "/api/v1/openapi.json"
                 and not path.startswith(PUBLIC_PREFIX))
        allowed = {204}
        if admin and persona == "anonymous":
            allowed = {401}
        elif admin and persona == "helpless":
            allowed = {204, 403}
        r = world.client.options(_concrete(path), headers=world.credentials(persona))
        empty = r.status_code != 204 or (not r.content and "allow" in r.headers)
        if r.status_code not in allowed or not empty:
            wrong.append((path, r.status_code, r.text[:100]))
    assert not wrong, wrong
