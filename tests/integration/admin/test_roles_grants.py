"""``/api/v1/roles`` and ``/api/v1/grants``: custom roles, built-in roles frozen, who may
read and change grants in an org and system-wide, deny overriding allow."""

from __future__ import annotations

from tests.integration.admin.conftest import Api, problem

BUILTIN = ["admin", "auditor", "developer", "maintainer", "owner", "reader"]


def test_roles_are_readable_by_anyone_signed_in(api: Api) -> None:
    roles = api.get("/roles", as_="bob").json()
    assert sorted(r["name"] for r in roles) == BUILTIN
    assert all(r["builtin"] for r in roles)
    dev = api.get("/roles/developer", as_="bob").json()
    assert dev["actions"] == ["push"]
    assert dev["includes"] == ["reader"]
    problem(api.get("/roles", as_="anonymous"), 401)
    problem(api.get("/roles/superhero", as_="bob"), 404)


def test_custom_role_lifecycle(api: Api) -> None:
    body = {"name": "pusher", "actions": ["push"], "includes": ["reader"],
            "description": "Push without delete"}
    problem(api.post("/roles", body, as_="alice"), 403)
    r = api.post("/roles", body)
    assert r.status_code == 201
    assert r.json() == {**body, "builtin": False}
    problem(api.post("/roles", body), 409)
    r = api.patch("/roles/pusher", {"actions": ["push", "delete"]})
    assert r.status_code == 200
    assert r.json()["actions"] == ["push", "delete"]
    assert r.json()["includes"] == ["reader"]
    problem(api.patch("/roles/pusher", {"actions": ["fly"]}), 422)
    problem(api.patch("/roles/pusher", {"description": "x"}, as_="alice"), 403)
    assert api.post("/grants", {"subject": "user:bob", "org": "acme", "role": "pusher"},
                    as_="alice").status_code == 201
    assert api.get("/authz/explain", repository="acme/app", action="delete",
                   as_="bob").json()["allowed"] is True
    problem(api.delete("/roles/pusher"), 409)
    grant = api.get("/grants", subject="user:bob").json()[0]
    assert api.delete(f"/grants/{grant['id']}", as_="alice").status_code == 204
    problem(api.delete("/roles/pusher", as_="alice"), 403)
    assert api.delete("/roles/pusher").status_code == 204
    problem(api.get("/roles/pusher"), 404)
    problem(api.delete("/roles/pusher"), 404)


def test_custom_role_validation(api: Api) -> None:
    problem(api.post("/roles", {"name": "empty"}), 422)
    problem(api.post("/roles", {"name": "x", "actions": ["fly"]}), 422)
    problem(api.post("/roles", {"name": "x", "includes": ["nobody"]}), 422)
    problem(api.post("/roles", {"name": "push", "actions": ["push"]}), 422)
    problem(api.post("/roles", {"name": "Bad Role", "actions": ["push"]}), 422)
    problem(api.post("/roles", {"actions": ["push"]}), 400)


def test_builtin_roles_cannot_change(api: Api) -> None:
    problem(api.patch("/roles/reader", {"actions": ["pull", "push"]}), 403)
    problem(api.delete("/roles/admin"), 403)
    assert sorted(api.get("/roles/reader").json()["actions"]) == ["org:read", "pull"]


def test_grant_visibility(api: Api) -> None:
    assert api.post("/orgs", {"name": "beta"}, as_="bob").status_code == 201
    assert api.post("/grants", {"subject": "user:alice", "org": "beta", "role": "reader",
                                "repository": "beta/docs/**"}, as_="bob").status_code == 201

    def seen(who: str, **params: str) -> list[tuple[str, str]]:
        return [(g["subject"], g["org"]) for g in api.get("/grants", as_=who, **params).json()]

    assert ("user:admin", "*") in seen("admin")
    assert ("user:carol", "*") in seen("carol")
    assert sorted(seen("alice")) == [("user:alice", "acme"), ("user:alice", "beta")]
    assert sorted(seen("bob")) == [("user:alice", "beta"), ("user:bob", "beta")]
    assert seen("alice", org="beta", subject="user:alice") == [("user:alice", "beta")]
    problem(api.get("/grants", org="beta", as_="alice"), 403)
    assert seen("alice", subject="user:bob") == []
    problem(api.get("/grants", org="*", as_="alice"), 403)
    problem(api.get("/grants", org="acme", as_="bob"), 403)
    assert {s for s, _ in seen("carol", org="*")} == {"user:admin", "user:carol"}


def test_create_grant_permissions_and_errors(api: Api) -> None:
    body = {"subject": "user:bob", "org": "acme", "role": "developer",
            "repository": "acme/app/**"}
    problem(api.post("/grants", body, as_="bob"), 403)
    problem(api.post("/grants", body, as_="carol"), 403)
    r = api.post("/grants", body, as_="alice")
    assert r.status_code == 201
    assert r.json() == {**body, "id": r.json()["id"], "effect": "allow"}
    problem(api.post("/grants", body, as_="alice"), 409)
    problem(api.post("/grants", {**body, "org": "*", "repository": "**"}, as_="alice"), 403)
    problem(api.post("/grants", {**body, "repository": "other/**"}, as_="alice"), 422)
    problem(api.post("/grants", {**body, "role": "superhero"}, as_="alice"), 404)
    problem(api.post("/grants", {**body, "subject": "user:nobody"}, as_="alice"), 404)
    problem(api.post("/grants", {**body, "subject": "someone"}, as_="alice"), 422)
    problem(api.post("/grants", {**body, "effect": "maybe"}, as_="alice"), 400)
    problem(api.post("/grants", {**body, "org": "nowhere", "repository": "**"}), 404)
    system = {"subject": "user:bob", "org": "*", "role": "auditor"}
    assert api.post("/grants", system).status_code == 201
    assert api.get("/me", as_="bob").json()["system_roles"] == ["auditor"]


def test_deny_grant_overrides_allow(api: Api) -> None:
    for body in ({"subject": "user:bob", "org": "acme", "role": "developer"},
                 {"subject": "user:bob", "org": "acme", "role": "push",
                  "repository": "acme/prod/**", "effect": "deny"}):
        assert api.post("/grants", body, as_="alice").status_code == 201
    prod = api.get("/authz/explain", repository="acme/prod/api", action="push",
                   as_="bob").json()
    assert prod["allowed"] is False
    assert "deny" in prod["reason"]
    assert prod["rule"] == ["user:bob", "acme", "acme/prod/**", "push", "deny"]
    assert api.get("/authz/explain", repository="acme/dev/api", action="push",
                   as_="bob").json()["allowed"] is True


def test_delete_grant(api: Api) -> None:
    grant = api.post("/grants", {"subject": "user:carol", "org": "acme", "role": "reader"},
                     as_="alice").json()
    problem(api.delete(f"/grants/{grant['id']}", as_="bob"), 404)
    problem(api.delete(f"/grants/{grant['id']}", as_="carol"), 403)
    assert api.delete(f"/grants/{grant['id']}", as_="alice").status_code == 204
    problem(api.delete(f"/grants/{grant['id']}", as_="alice"), 404)
    system = api.get("/grants", org="*", subject="user:carol").json()[0]
    problem(api.delete(f"/grants/{system['id']}", as_="alice"), 404)
    problem(api.delete(f"/grants/{system['id']}", as_="carol"), 403)
    assert api.delete(f"/grants/{system['id']}").status_code == 204
    assert api.delete("/grants/not-a-number").status_code == 404
