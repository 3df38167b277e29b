"""The admin API's one error table: every domain error renders as problem+json with the
right status and headers, unexpected errors leak nothing, and the real login limit
answers 429 with Retry-After."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, Router, get
from litestar.params import FromPath
from litestar.testing import TestClient

from dtr import errors as e
from dtr.api.problems import TABLE, app_exception_handlers, exception_handlers
from tests.integration.admin.conftest import Api, basic, make_client, problem

RAISED: dict[str, e.DtrError] = {
    "not-found": e.NotFound("user bob not found"),
    "invalid": e.Invalid("password: use at least 8 characters", {"field": "password"}),
    "conflict": e.Conflict("organization acme already exists"),
    "unauthorized": e.InvalidToken("token expired"),
    "denied": e.Denied("user:bob may not org:admin in organization acme"),
    "rate-limited": e.RateLimited("too many failed logins", retry_after=42),
    "unavailable": e.Unavailable("database unreachable"),
    "too-large": e.BlobTooLarge("too big"),
    "unsupported": e.Unsupported("not here"),
    "error": e.TooManyTags("too many tags"),
}
EXPECTED = {"not-found": 404, "invalid": 422, "conflict": 409, "unauthorized": 401,
            "denied": 403, "rate-limited": 429, "unavailable": 503, "too-large": 413,
            "unsupported": 400, "error": 400}


@get("/api/raise/{slug:str}", sync_to_thread=False)
def raise_it(slug: FromPath[str]) -> None:
    raise RAISED[slug]


@get("/api/crash", sync_to_thread=False)
def crash() -> None:
    raise RuntimeError("secret-value-that-must-not-leak")


@pytest.fixture
def tiny() -> Any:
    app = Litestar(route_handlers=[Router("/", route_handlers=[raise_it, crash],
                                          exception_handlers=exception_handlers())],
                   exception_handlers=app_exception_handlers(), openapi_config=None)
    with TestClient(app) as c:
        yield c


def test_every_table_row_is_covered() -> None:
    assert {p.slug for _, p in TABLE} == set(EXPECTED)


@pytest.mark.parametrize("slug", sorted(EXPECTED))
def test_domain_errors_render_as_problems(tiny: TestClient[Any], slug: str) -> None:
    r = tiny.get(f"/api/raise/{slug}")
    body = problem(r, EXPECTED[slug])
    assert body["type"] == f"urn:dtr:problem:{slug}"
    assert body["detail"] == RAISED[slug].message
    if slug == "unauthorized":
        assert r.headers["www-authenticate"] == 'Basic realm="dtr"'
    if slug == "rate-limited":
        assert r.headers["retry-after"] == "42"
    if slug == "unavailable":
        assert int(r.headers["retry-after"]) > 0
    if slug == "invalid":
        assert body["context"] == {"field": "password"}


def test_unexpected_errors_leak_nothing(tiny: TestClient[Any]) -> None:
    r = tiny.get("/api/crash")
    body = problem(r, 500)
    assert "secret-value" not in r.text
    assert body["type"] == "urn:dtr:problem:internal"


def test_unrouted_api_errors_are_problems_too(tiny: TestClient[Any]) -> None:
    problem(tiny.get("/api/nothing/here"), 404)
    problem(tiny.post("/api/crash"), 405)
    other = tiny.get("/elsewhere")
    assert other.status_code == 404
    assert not other.headers["content-type"].startswith("application/problem+json")


def test_unknown_admin_route(api: Api) -> None:
    body = problem(api.get("/no/such/thing"), 404)
    assert "/api/v1/no/such/thing" in body["detail"]
    problem(api.get("/no/such/thing", as_="anonymous"), 401)


def test_failed_logins_are_rate_limited(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    c: TestClient[Any]
    with make_client(tmp_path, monkeypatch, login_failures_per_account=2) as c:
        wrong = basic("admin", "wrong-password")
        statuses = [c.get("/api/v1/me", headers=wrong).status_code for _ in range(3)]
        assert statuses[:2] == [401, 401]
        r = c.get("/api/v1/me", headers=wrong)
        problem(r, 429)
        assert int(r.headers["retry-after"]) > 0
        assert "wrong-password" not in r.text
