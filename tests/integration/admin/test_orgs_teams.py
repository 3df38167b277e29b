"""``/api/v1/orgs`` and ``/api/v1/orgs/{org}/teams``: creation rules, the creator's owner
grant, visibility (the public toggle), teams and membership."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from tests.integration.admin.conftest import Api, make_client, problem


def test_creator_owns_the_org(api: Api) -> None:
    org = api.get("/orgs/acme", as_="alice").json()
    assert org == {**org, "name": "acme", "public": False, "created_by": "alice",
                   "description": "Acme Corp"}
    grants = api.get("/grants", org="acme", as_="alice").json()
    assert [(g["subject"], g["repository"], g["role"]) for g in grants] == [
        ("user:alice", "**", "owner")]


def test_create_org_errors(api: Api) -> None:
    problem(api.post("/orgs", {"name": "acme"}, as_="bob"), 409)
    problem(api.post("/orgs", {"name": "Not Valid"}, as_="bob"), 422)
    problem(api.post("/orgs", {"description": "no name"}, as_="bob"), 400)
    problem(api.post("/orgs", {"name": "x"}, as_="anonymous"), 401)


def test_org_creation_limited_to_admins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c: TestClient[Any]
    with make_client(tmp_path, monkeypatch, org_creation="admin") as c:
        a = Api(c)
        a.login("admin", "admin-password-1")
        a.add_user("bob")
        problem(a.post("/orgs", {"name": "bobs"}, as_="bob"), 403)
        assert a.post("/orgs", {"name": "corp"}).status_code == 201


def test_list_shows_only_readable_orgs(api: Api) -> None:
    assert api.post("/orgs", {"name": "beta"}, as_="bob").status_code == 201
    assert [o["name"] for o in api.get("/orgs", as_="alice").json()] == ["acme"]
    assert [o["name"] for o in api.get("/orgs", as_="bob").json()] == ["beta"]
    assert [o["name"] for o in api.get("/orgs").json()] == ["acme", "beta"]
    assert [o["name"] for o in api.get("/orgs", as_="carol").json()] == ["acme", "beta"]


def test_show_update_delete_need_read_and_admin(api: Api) -> None:
    problem(api.get("/orgs/acme", as_="bob"), 403)
    problem(api.patch("/orgs/acme", {"description": "mine"}, as_="bob"), 403)
    problem(api.delete("/orgs/acme", as_="bob"), 403)
    assert api.get("/orgs/acme", as_="carol").status_code == 200
    problem(api.patch("/orgs/acme", {"description": "audited"}, as_="carol"), 403)
    r = api.patch("/orgs/acme", {"description": "Acme Inc"}, as_="alice")
    assert r.status_code == 200
    assert r.json()["description"] == "Acme Inc"
    problem(api.get("/orgs/nowhere"), 404)
    problem(api.patch("/orgs/nowhere", {"description": "x"}), 404)
    problem(api.delete("/orgs/nowhere"), 404)


def test_public_toggle_is_an_anonymous_pull_grant(api: Api) -> None:
    problem(api.get("/authz/explain", subject="anonymous", repository="acme/app",
                    action="pull", as_="bob"), 403)
    r = api.patch("/orgs/acme", {"public": True}, as_="alice")
    assert r.json()["public"] is True
    assert api.get("/orgs/acme").json()["public"] is True
    grants = api.get("/grants", org="acme", subject="anonymous").json()
    assert [(g["repository"], g["role"], g["effect"]) for g in grants] == [
        ("**", "pull", "allow")]
    teams = api.get("/authz/explain", subject="user:bob", org="acme", object="acme",
                    action="org:read").json()
    assert teams["allowed"] is False, "public means pull, not the org's teams and grants"
    assert api.patch("/orgs/acme", {"public": True}, as_="alice").status_code == 200
    assert len(api.get("/grants", org="acme", subject="anonymous").json()) == 1
    assert "acme" in [o["name"] for o in api.get("/orgs", as_="bob").json()]
    pull = api.get("/authz/explain", subject="anonymous", repository="acme/app",
                   action="pull").json()
    assert pull["allowed"] is True
    assert api.patch("/orgs/acme", {"public": False}, as_="alice").json()["public"] is False
    assert api.get("/grants", org="acme", subject="anonymous").json() == []
    assert api.get("/orgs", as_="bob").json() == []


def test_create_public_org(api: Api) -> None:
    r = api.post("/orgs", {"name": "pub", "public": True}, as_="bob")
    assert r.status_code == 201
    assert r.json()["public"] is True
    listed = {o["name"]: o["public"] for o in api.get("/orgs", as_="alice").json()}
    assert listed["pub"] is True
    assert api.get("/orgs/pub", as_="alice").status_code == 403  # pull only, not org:read


def test_delete_org_removes_teams_robots_and_grants(api: Api) -> None:
    assert api.post("/orgs/acme/teams", {"name": "devs"}, as_="alice").status_code == 201
    assert api.post("/orgs/acme/robots", {"name": "ci"}, as_="alice").status_code == 201
    assert api.delete("/orgs/acme", as_="alice").status_code == 204
    problem(api.get("/orgs/acme"), 404)
    assert api.get("/grants", org="acme").json() == []
    assert api.get("/grants", subject="robot:robot$acme+ci").json() == []
    assert api.post("/orgs", {"name": "acme"}, as_="bob").status_code == 201
    assert api.get("/orgs/acme/teams", as_="bob").json() == []
    assert api.get("/orgs/acme/robots", as_="bob").json() == []


def test_teams_read_and_write_permissions(api: Api) -> None:
    problem(api.post("/orgs/acme/teams", {"name": "devs"}, as_="bob"), 403)
    problem(api.post("/orgs/acme/teams", {"name": "devs"}, as_="carol"), 403)
    r = api.post("/orgs/acme/teams", {"name": "devs", "description": "Developers"},
                 as_="alice")
    assert r.status_code == 201
    assert r.json() == {**r.json(), "org": "acme", "name": "devs", "members": []}
    problem(api.post("/orgs/acme/teams", {"name": "devs"}, as_="alice"), 409)
    problem(api.post("/orgs/acme/teams", {"name": "Dev Team"}, as_="alice"), 422)
    problem(api.get("/orgs/acme/teams", as_="bob"), 403)
    assert [t["name"] for t in api.get("/orgs/acme/teams", as_="carol").json()] == ["devs"]
    assert api.get("/orgs/acme/teams/devs", as_="carol").json()["description"] == "Developers"
    problem(api.get("/orgs/acme/teams/ops", as_="alice"), 404)
    problem(api.post("/orgs/nowhere/teams", {"name": "devs"}), 404)
    problem(api.get("/orgs/nowhere/teams"), 404)


def test_team_members(api: Api) -> None:
    assert api.post("/orgs/acme/teams", {"name": "devs"}, as_="alice").status_code == 201
    problem(api.put("/orgs/acme/teams/devs/members/bob", as_="bob"), 403)
    r = api.put("/orgs/acme/teams/devs/members/bob", as_="alice")
    assert r.status_code == 200
    assert r.json()["members"] == ["bob"]
    assert api.put("/orgs/acme/teams/devs/members/bob", as_="alice").json()["members"] == [
        "bob"]
    assert api.get("/orgs/acme/teams/devs/members", as_="alice").json() == ["bob"]
    assert api.get("/orgs/acme/teams", as_="alice").json()[0]["members"] == ["bob"]
    problem(api.put("/orgs/acme/teams/devs/members/nobody", as_="alice"), 404)
    problem(api.put("/orgs/acme/teams/ops/members/bob", as_="alice"), 404)
    problem(api.delete("/orgs/acme/teams/devs/members/carol", as_="alice"), 404)
    problem(api.delete("/orgs/acme/teams/devs/members/bob", as_="carol"), 403)
    assert api.delete("/orgs/acme/teams/devs/members/bob", as_="alice").status_code == 204
    assert api.get("/orgs/acme/teams/devs/members", as_="alice").json() == []


def test_team_grant_reaches_members_and_goes_with_the_team(api: Api) -> None:
    assert api.post("/orgs/acme/teams", {"name": "devs"}, as_="alice").status_code == 201
    assert api.put("/orgs/acme/teams/devs/members/bob", as_="alice").status_code == 200
    r = api.post("/grants", {"subject": "team:acme/devs", "org": "acme",
                             "role": "developer"}, as_="alice")
    assert r.status_code == 201
    push = api.get("/authz/explain", repository="acme/app", action="push", as_="bob").json()
    assert push["allowed"] is True
    assert push["chain"] == ["user:bob", "team:acme/devs", "role:developer", "push"]
    assert api.get("/orgs/acme", as_="bob").status_code == 200
    problem(api.delete("/orgs/acme/teams/devs", as_="bob"), 403)
    assert api.delete("/orgs/acme/teams/devs", as_="alice").status_code == 204
    assert api.get("/grants", subject="team:acme/devs").json() == []
    assert api.get("/authz/explain", repository="acme/app", action="push",
                   as_="bob").json()["allowed"] is False
    problem(api.delete("/orgs/acme/teams/devs", as_="alice"), 404)
