"""``/api/v1/orgs/{org}/robots`` and ``/api/v1/robots``: the secret is shown once, robots
sign in with it, initial grants, expiry, regeneration and deletion."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import Connection, update

from dtr.db.models import Account
from tests.integration.admin.conftest import Api, basic, make_client, problem

ROBOT = "robot$acme+ci"


def robot_login(api: Api, secret: str, name: str = ROBOT) -> int:
    return api.client.get("/api/v1/me", headers=basic(name, secret)).status_code


def test_secret_is_shown_once_and_signs_the_robot_in(api: Api) -> None:
    r = api.post("/orgs/acme/robots", {"name": "ci", "description": "CI pushes"}, as_="alice")
    assert r.status_code == 201
    made = r.json()
    assert made["name"] == ROBOT
    assert made["org"] == "acme"
    assert len(made["secret"]) >= 32
    assert made["expires_at"] is None
    assert made["created_by"] == "alice"
    shown = api.get("/orgs/acme/robots/ci", as_="alice")
    listed = api.get("/orgs/acme/robots", as_="alice")
    for text in (shown.text, listed.text):
        assert made["secret"] not in text
        assert "secret" not in text
    assert [x["name"] for x in listed.json()] == [ROBOT]
    me = api.client.get("/api/v1/me", headers=basic(ROBOT, made["secret"])).json()
    assert me["kind"] == "robot"
    assert me["name"] == ROBOT
    assert me["method"] == "robot_secret"


def test_initial_grants_are_created_with_the_robot(api: Api) -> None:
    body = {"name": "ci", "grants": [{"role": "developer", "repository": "acme/app/**"},
                                     {"role": "reader"}]}
    made = api.post("/orgs/acme/robots", body, as_="alice").json()
    assert [(g["role"], g["repository"], g["org"]) for g in made["grants"]] == [
        ("developer", "acme/app/**", "acme"), ("reader", "**", "acme")]
    check = api.post("/authz/check", {"rows": [
        {"subject": f"robot:{ROBOT}", "repository": "acme/app/web", "action": "push",
         "expected": "allow"},
        {"subject": f"robot:{ROBOT}", "repository": "acme/other", "action": "push",
         "expected": "deny"},
        {"subject": f"robot:{ROBOT}", "repository": "acme/other", "action": "pull",
         "expected": "allow"}]}, as_="alice").json()
    assert check["ok"] is True


def test_bad_initial_grant_creates_nothing(api: Api) -> None:
    bad_glob = {"name": "ci", "grants": [{"role": "developer", "repository": "other/**"}]}
    problem(api.post("/orgs/acme/robots", bad_glob, as_="alice"), 422)
    bad_role = {"name": "ci", "grants": [{"role": "superhero"}]}
    problem(api.post("/orgs/acme/robots", bad_role, as_="alice"), 404)
    assert api.get("/orgs/acme/robots", as_="alice").json() == []


def test_robot_permissions_and_errors(api: Api) -> None:
    problem(api.post("/orgs/acme/robots", {"name": "ci"}, as_="bob"), 403)
    problem(api.get("/orgs/acme/robots", as_="carol"), 403)
    problem(api.post("/orgs/acme/robots", {"name": "ci"}, as_="anonymous"), 401)
    assert api.post("/orgs/acme/robots", {"name": "ci"}, as_="alice").status_code == 201
    problem(api.post("/orgs/acme/robots", {"name": "ci"}, as_="alice"), 409)
    problem(api.post("/orgs/acme/robots", {"name": "C I"}, as_="alice"), 422)
    problem(api.post("/orgs/acme/robots", {"name": "x", "expires_in_days": -1},
                     as_="alice"), 400)
    problem(api.get("/orgs/acme/robots/cd", as_="alice"), 404)
    problem(api.delete("/orgs/acme/robots/cd", as_="alice"), 404)
    problem(api.post("/orgs/acme/robots/cd/secret", as_="alice"), 404)
    problem(api.post("/orgs/nowhere/robots", {"name": "ci"}), 404)
    problem(api.get("/orgs/nowhere/robots"), 404)


def test_expiry_and_an_expired_robot_cannot_sign_in(api: Api) -> None:
    made = api.post("/orgs/acme/robots", {"name": "ci", "expires_in_days": 7},
                    as_="alice").json()
    expires = dt.datetime.fromisoformat(made["expires_at"])
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=7)
    assert abs((expires - soon).total_seconds()) < 60
    assert robot_login(api, made["secret"]) == 200

    def expire(conn: Connection) -> None:
        conn.execute(update(Account).where(Account.name == ROBOT).values(
            expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))

    api.run_db(expire)
    assert robot_login(api, made["secret"]) == 401


def test_default_expiry_comes_from_settings(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    c: TestClient[Any]
    with make_client(tmp_path, monkeypatch, robot_default_expiry_days=30) as c:
        a = Api(c)
        a.login("admin", "admin-password-1")
        assert a.post("/orgs", {"name": "acme"}).status_code == 201
        made = a.post("/orgs/acme/robots", {"name": "ci"}).json()
        days = (dt.datetime.fromisoformat(made["expires_at"]) - dt.datetime.now(dt.UTC)).days
        assert days in (29, 30)
        never = a.post("/orgs/acme/robots", {"name": "forever", "expires_in_days": 0}).json()
        assert never["expires_at"] is None


def test_regenerate_replaces_the_secret(api: Api) -> None:
    old = api.post("/orgs/acme/robots", {"name": "ci"}, as_="alice").json()["secret"]
    problem(api.post("/orgs/acme/robots/ci/secret", as_="bob"), 403)
    r = api.post("/orgs/acme/robots/ci/secret", as_="alice")
    assert r.status_code == 200
    assert r.json()["name"] == ROBOT
    new = r.json()["secret"]
    assert new != old
    assert robot_login(api, old) == 401
    assert robot_login(api, new) == 200


def test_delete_robot_removes_its_grants(api: Api) -> None:
    made = api.post("/orgs/acme/robots", {"name": "ci", "grants": [{"role": "reader"}]},
                    as_="alice").json()
    problem(api.delete("/orgs/acme/robots/ci", as_="bob"), 403)
    assert api.delete("/orgs/acme/robots/ci", as_="alice").status_code == 204
    assert api.get("/grants", subject=f"robot:{ROBOT}").json() == []
    assert robot_login(api, made["secret"]) == 401


def test_robots_cannot_mint_tokens(api: Api) -> None:
    secret = api.post("/orgs/acme/robots", {"name": "ci"}, as_="alice").json()["secret"]
    r = api.client.post("/api/v1/tokens", json={"name": "x"}, headers=basic(ROBOT, secret))
    problem(r, 403)


def test_system_robots_are_for_administrators(api: Api) -> None:
    body = {"name": "mirror", "grants": [{"role": "reader", "repository": "acme/**"}]}
    problem(api.post("/robots", body, as_="alice"), 403)
    problem(api.get("/robots", as_="carol"), 403)
    r = api.post("/robots", body)
    assert r.status_code == 201
    made = r.json()
    assert made["name"] == "robot$mirror"
    assert made["org"] is None
    assert [(g["org"], g["repository"]) for g in made["grants"]] == [("*", "acme/**")]
    assert [x["name"] for x in api.get("/robots").json()] == ["robot$mirror"]
    assert api.get("/robots/mirror").json()["name"] == "robot$mirror"
    assert robot_login(api, made["secret"], "robot$mirror") == 200
    pull = api.get("/authz/explain", subject="robot:robot$mirror", repository="acme/app",
                   action="pull").json()
    assert pull["allowed"] is True
    new = api.post("/robots/mirror/secret").json()["secret"]
    assert robot_login(api, new, "robot$mirror") == 200
    problem(api.post("/robots", body), 409)
    assert api.delete("/robots/mirror").status_code == 204
    problem(api.get("/robots/mirror"), 404)
    assert api.get("/grants", subject="robot:robot$mirror").json() == []


def test_org_and_system_robots_do_not_mix(api: Api) -> None:
    assert api.post("/orgs/acme/robots", {"name": "ci"}, as_="alice").status_code == 201
    assert api.get("/robots").json() == []
    problem(api.get("/robots/ci"), 404)
    assert api.post("/robots", {"name": "ci"}).status_code == 201
    assert [x["name"] for x in api.get("/orgs/acme/robots").json()] == [ROBOT]
