"""``/api/v1/me`` and ``/api/v1/users``: who may list, show, create, change and delete
users; deleting a user takes their grants and memberships with them."""

from __future__ import annotations

from tests.integration.admin.conftest import Api, basic, password_of, problem


def test_anonymous_gets_401_with_a_basic_challenge(api: Api) -> None:
    r = api.get("/me", as_="anonymous")
    body = problem(r, 401)
    assert r.headers["www-authenticate"] == 'Basic realm="dtr"'
    assert body["type"] == "urn:dtr:problem:unauthorized"


def test_wrong_password_is_401_and_says_nothing_more(api: Api) -> None:
    r = api.client.get("/api/v1/me", headers=basic("alice", "not-her-password"))
    body = problem(r, 401)
    assert "not-her-password" not in r.text
    assert "alice" not in body["detail"]


def test_me_shows_kind_teams_and_system_roles(api: Api) -> None:
    assert api.put("/orgs/acme/teams/devs/members/bob", as_="alice").status_code == 404
    assert api.post("/orgs/acme/teams", {"name": "devs"}, as_="alice").status_code == 201
    assert api.put("/orgs/acme/teams/devs/members/bob", as_="alice").status_code == 200
    me = api.get("/me", as_="bob").json()
    assert me["name"] == "bob"
    assert me["kind"] == "user"
    assert me["subject"] == "user:bob"
    assert me["teams"] == ["acme/devs"]
    assert me["system_roles"] == []
    assert me["method"] == "pat"
    assert me["scopes"] is None
    admin = api.get("/me").json()
    assert admin["system_roles"] == ["admin"]
    assert api.get("/me", as_="carol").json()["system_roles"] == ["auditor"]


def test_list_users_needs_admin_or_auditor(api: Api) -> None:
    names = [u["name"] for u in api.get("/users").json()]
    assert names == ["admin", "alice", "bob", "carol"]
    assert api.get("/users", as_="carol").status_code == 200
    problem(api.get("/users", as_="bob"), 403)
    problem(api.get("/users", as_="anonymous"), 401)


def test_show_user_self_admin_or_auditor(api: Api) -> None:
    alice = api.get("/users/alice", as_="alice").json()
    assert alice["name"] == "alice"
    assert "password" not in alice
    assert "secret_hash" not in alice
    assert api.get("/users/alice", as_="carol").status_code == 200
    problem(api.get("/users/alice", as_="bob"), 403)
    problem(api.get("/users/nobody"), 404)


def test_create_user_as_admin(api: Api) -> None:
    r = api.post("/users", {"name": "dave", "password": "dave-password-1",
                            "email": "dave@example.com"})
    assert r.status_code == 201
    assert r.json()["email"] == "dave@example.com"
    assert r.json()["created_by"] == "admin"
    assert api.client.get("/api/v1/me", headers=basic("dave", "dave-password-1")).is_success


def test_create_user_errors(api: Api) -> None:
    body = {"name": "erin", "password": "erin-password-1"}
    problem(api.post("/users", body, as_="bob"), 403)
    problem(api.post("/users", body, as_="carol"), 403)
    problem(api.post("/users", {**body, "name": "alice"}), 409)
    problem(api.post("/users", {**body, "password": "short"}), 422)
    problem(api.post("/users", {**body, "name": "Bad Name"}), 422)
    missing = problem(api.post("/users", {"password": "erin-password-1"}), 400)
    assert missing["errors"]
    assert "oidc: true" in problem(api.post("/users", {"name": "erin"}), 422)["detail"]
    problem(api.post("/users", {**body, "oidc": True}), 422)  # a password or SSO, not both
    problem(api.post("/users", {**body, "colour": "blue"}), 400)


def test_user_changes_own_password_only(api: Api) -> None:
    r = api.patch("/users/bob", {"password": "bob-new-password"}, as_="bob")
    assert r.status_code == 200
    assert api.client.get("/api/v1/me", headers=basic("bob", "bob-new-password")).is_success
    problem(api.client.get("/api/v1/me", headers=basic("bob", password_of("bob"))), 401)
    problem(api.patch("/users/bob", {"email": "b@example.com"}, as_="bob"), 403)
    problem(api.patch("/users/bob", {"disabled": True}, as_="bob"), 403)
    problem(api.patch("/users/alice", {"password": "bob-owns-alice"}, as_="bob"), 403)
    problem(api.patch("/users/bob", {"password": "x"}, as_="bob"), 422)


def test_admin_disables_a_user_and_their_tokens_stop(api: Api) -> None:
    r = api.patch("/users/bob", {"disabled": True, "email": "bob@example.com"})
    assert r.status_code == 200
    assert r.json()["disabled"] is True
    problem(api.get("/me", as_="bob"), 401)
    assert api.patch("/users/bob", {"disabled": False}).json()["disabled"] is False
    problem(api.get("/me", as_="bob"), 401)  # disabling revoked the token for good
    assert api.client.get("/api/v1/me", headers=basic("bob", password_of("bob"))).is_success
    problem(api.patch("/users/nobody", {"disabled": True}), 404)


def test_delete_user_removes_grants_and_memberships(api: Api) -> None:
    assert api.post("/orgs/acme/teams", {"name": "devs"}, as_="alice").status_code == 201
    assert api.put("/orgs/acme/teams/devs/members/bob", as_="alice").status_code == 200
    r = api.post("/grants", {"subject": "user:bob", "org": "acme", "role": "reader"},
                 as_="alice")
    assert r.status_code == 201
    problem(api.delete("/users/bob", as_="alice"), 403)
    assert api.delete("/users/bob").status_code == 204
    assert api.get("/grants", subject="user:bob").json() == []
    assert api.get("/orgs/acme/teams/devs/members", as_="alice").json() == []
    problem(api.get("/me", as_="bob"), 401)
    problem(api.delete("/users/bob"), 404)


def test_admin_cannot_delete_themselves(api: Api) -> None:
    problem(api.delete("/users/admin"), 409)
