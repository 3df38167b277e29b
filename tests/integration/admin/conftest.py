"""The admin API in-process (``create_app`` with authentication on): an ``Api`` helper
that signs in personas with personal access tokens.

Personas made by the ``api`` fixture: ``admin`` (bootstrap system administrator),
``alice`` (owner of org ``acme``, which she created), ``bob`` (a user with no grants),
``carol`` (system-wide ``auditor``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient
from sqlalchemy import Connection

from dtr.app import create_app
from tests.conftest import make_settings
from tests.support.http import basic, bearer

ADMIN_PW = "admin-password-1"


def password_of(name: str) -> str:
    return f"{name}-password-1"


class Api:
    """Calls ``/api/v1`` as a persona: ``api.get("/orgs", as_="alice")``."""

    def __init__(self, client: TestClient[Any]) -> None:
        self.client = client
        self.headers: dict[str, dict[str, str]] = {"anonymous": {}}

    def login(self, name: str, password: str) -> dict[str, str]:
        """Mint a PAT with the password and remember it for ``as_=name``."""
        r = self.client.post("/api/v1/tokens", json={"name": "tests"},
                             headers=basic(name, password))
        assert r.status_code == 201, r.text
        self.headers[name] = bearer(r.json()["secret"])
        return self.headers[name]

    def add_user(self, name: str, **fields: Any) -> dict[str, Any]:
        """Create a user as admin and sign them in."""
        r = self.post("/users", {"name": name, "password": password_of(name), **fields})
        assert r.status_code == 201, r.text
        self.login(name, password_of(name))
        return dict(r.json())

    def run_db(self, fn: Callable[[Connection], Any]) -> Any:
        """Run ``fn`` as one write transaction on the app's database."""
        security = self.client.app.state.security
        return self.client.blocking_portal.call(functools.partial(security.db.run, fn, write=True))

    def call(self, method: str, path: str, body: Any = None, *, as_: str = "admin",
             params: dict[str, Any] | None = None) -> httpx.Response:
        return self.client.request(method, f"/api/v1{path}", json=body, params=params,
                                   headers=self.headers[as_])

    def get(self, path: str, *, as_: str = "admin", **params: Any) -> httpx.Response:
        return self.call("GET", path, as_=as_, params=params or None)

    def post(self, path: str, body: Any = None, *, as_: str = "admin") -> httpx.Response:
        return self.call("POST", path, body, as_=as_)

    def patch(self, path: str, body: Any, *, as_: str = "admin") -> httpx.Response:
        return self.call("PATCH", path, body, as_=as_)

    def put(self, path: str, *, as_: str = "admin") -> httpx.Response:
        return self.call("PUT", path, as_=as_)

    def delete(self, path: str, *, as_: str = "admin") -> httpx.Response:
        return self.call("DELETE", path, as_=as_)


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    """Assert ``r`` is a problem+json with ``status``; return its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:dtr:problem:")
    assert body["title"]
    assert isinstance(body["detail"], str)
    return dict(body)


def make_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                **auth: Any) -> TestClient[Any]:
    monkeypatch.setenv("DTR_ADMIN_PASSWORD", ADMIN_PW)
    return TestClient(create_app(make_settings(tmp_path, auth={"enabled": True, **auth})))


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient[Any]]:
    with make_client(tmp_path, monkeypatch) as c:
        yield c


@pytest.fixture
def api(client: TestClient[Any]) -> Api:
    a = Api(client)
    a.login("admin", ADMIN_PW)
    for name in ("alice", "bob", "carol"):
        a.add_user(name)
    assert a.post("/grants", {"subject": "user:carol", "org": "*", "role": "auditor"}).is_success
    r = a.post("/orgs", {"name": "acme", "description": "Acme Corp"}, as_="alice")
    assert r.status_code == 201, r.text
    return a
