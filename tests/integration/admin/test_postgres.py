"""The admin API's composed transactions on PostgreSQL (asyncpg): creation with grants,
conflicts inside a transaction, cascading deletes, the public toggle, token revocation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from dtr.app import create_app
from tests.conftest import make_settings
from tests.integration.admin.conftest import ADMIN_PW, Api, basic, bearer, problem
from tests.support import peers


@pytest.fixture(scope="module")
def pg() -> Iterator[peers.Postgres]:
    with peers.postgres() as server:
        yield server


@pytest.fixture
def pg_api(pg: peers.Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setenv("DTR_ADMIN_PASSWORD", ADMIN_PW)
    url = pg.create_db(f"admin_{tmp_path.name.replace('-', '_').lower()}"[:60])
    settings = make_settings(tmp_path, database={"url": url}, auth={"enabled": True})
    c: TestClient[Any]
    with TestClient(create_app(settings)) as c:
        api = Api(c)
        api.login("admin", ADMIN_PW)
        api.add_user("alice")
        yield api


def test_admin_flow_on_postgresql(pg_api: Api) -> None:
    api = pg_api
    assert api.post("/orgs", {"name": "acme", "public": True}, as_="alice").status_code == 201
    problem(api.post("/orgs", {"name": "acme"}, as_="alice"), 409)
    assert api.post("/orgs/acme/teams", {"name": "devs"}, as_="alice").status_code == 201
    assert api.put("/orgs/acme/teams/devs/members/alice", as_="alice").status_code == 200
    made = api.post("/orgs/acme/robots", {"name": "ci", "grants": [
        {"role": "developer", "repository": "acme/app/**"}]}, as_="alice").json()
    problem(api.post("/orgs/acme/robots", {"name": "ci2", "grants": [
        {"role": "developer", "repository": "elsewhere/**"}]}, as_="alice"), 422)
    assert [r["name"] for r in api.get("/orgs/acme/robots", as_="alice").json()] == [
        "robot$acme+ci"]
    robot = api.client.get("/api/v1/me", headers=basic("robot$acme+ci", made["secret"]))
    assert robot.json()["kind"] == "robot"
    grant = {"subject": "team:acme/devs", "org": "acme", "role": "maintainer"}
    assert api.post("/grants", grant, as_="alice").status_code == 201
    problem(api.post("/grants", grant, as_="alice"), 409)
    assert api.get("/authz/explain", repository="acme/app", action="delete",
                   as_="alice").json()["allowed"] is True
    token = api.post("/tokens", {"name": "pg"}, as_="alice").json()
    assert api.delete(f"/tokens/{token['id']}", as_="alice").status_code == 204
    problem(api.client.get("/api/v1/me", headers=bearer(token["secret"])), 401)
    assert api.patch("/orgs/acme", {"public": False}, as_="alice").json()["public"] is False
    assert api.delete("/users/alice").status_code == 204
    assert api.get("/grants", subject="user:alice").json() == []
    assert api.get("/orgs/acme/teams/devs/members").json() == []
    assert api.delete("/orgs/acme").status_code == 204
    assert api.get("/grants", org="acme").json() == []
    assert api.get("/robots").json() == []
