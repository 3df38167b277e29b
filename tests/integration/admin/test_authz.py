"""``/api/v1/authz``: explain one decision (repository, org and system forms) and check a
decision table; who may ask about whom."""

from __future__ import annotations

from tests.integration.admin.conftest import Api, problem


def test_explain_yourself(api: Api) -> None:
    d = api.get("/authz/explain", repository="acme/app", action="push", as_="alice").json()
    assert d["allowed"] is True
    assert d["subject"] == "user:alice"
    assert d["domain"] == "acme"
    assert d["object"] == "acme/app"
    assert d["rule"] == ["user:alice", "acme", "**", "role:owner", "allow"]
    assert d["chain"] == ["user:alice", "role:owner", "role:maintainer", "role:developer",
                          "push"]
    no = api.get("/authz/explain", repository="acme/app", action="pull", as_="bob").json()
    assert no["allowed"] is False
    assert no["rule"] is None
    assert "no grant" in no["reason"]


def test_explain_org_and_system_forms(api: Api) -> None:
    org = api.get("/authz/explain", org="acme", action="org:admin", as_="alice").json()
    assert org["allowed"] is True
    assert org["object"] == "acme"
    assert org["domain"] == "acme"
    system = api.get("/authz/explain", action="system:admin").json()
    assert system["allowed"] is True
    assert system["domain"] == "*"
    assert system["object"] == "*"
    assert api.get("/authz/explain", action="system:admin",
                   as_="alice").json()["allowed"] is False
    obj = api.get("/authz/explain", object="acme", action="org:read", as_="alice").json()
    assert obj["allowed"] is True
    assert obj["domain"] == "acme"


def test_who_may_explain_whom(api: Api) -> None:
    params = {"subject": "user:bob", "repository": "acme/app", "action": "pull"}
    problem(api.get("/authz/explain", as_="bob", **{**params, "subject": "user:alice"}), 403)
    assert api.get("/authz/explain", as_="alice", **params).status_code == 200
    assert api.get("/authz/explain", as_="carol", **params).status_code == 200
    assert api.get("/authz/explain", **params).status_code == 200
    assert api.post("/orgs", {"name": "beta"}, as_="bob").status_code == 201
    problem(api.get("/authz/explain", as_="alice", **{**params, "repository": "beta/x"}), 403)
    problem(api.get("/authz/explain", as_="alice", subject="user:bob",
                    action="system:admin"), 403)
    problem(api.get("/authz/explain", as_="anonymous", **params), 401)


def test_explain_errors(api: Api) -> None:
    problem(api.get("/authz/explain", repository="acme/app", action="fly"), 422)
    problem(api.get("/authz/explain", repository="acme/app", action="pull",
                    subject="alice"), 422)
    problem(api.get("/authz/explain", action="pull"), 422)
    problem(api.get("/authz/explain", repository="acme/app"), 400)


def test_check_reports_mismatches(api: Api) -> None:
    rows = [
        {"subject": "user:alice", "repository": "acme/app", "action": "delete",
         "expected": "allow"},
        {"subject": "user:bob", "repository": "acme/app", "action": "pull",
         "expected": "allow"},
        {"subject": "anonymous", "repository": "acme/app", "action": "pull",
         "expected": "deny"},
        {"subject": "user:admin", "repository": "*", "action": "system:admin",
         "expected": "allow"},
    ]
    report = api.post("/authz/check", {"rows": rows}).json()
    assert report["ok"] is False
    assert len(report["rows"]) == 4
    assert [(m["subject"], m["actual"]) for m in report["mismatches"]] == [("user:bob", "deny")]
    assert "no grant" in report["mismatches"][0]["reason"]
    fixed = [*rows[:1], {**rows[1], "expected": "deny"}, *rows[2:]]
    assert api.post("/authz/check", {"rows": fixed}).json()["ok"] is True


def test_check_is_authorized_per_row(api: Api) -> None:
    own = {"subject": "user:bob", "repository": "acme/app", "action": "pull",
           "expected": "deny"}
    assert api.post("/authz/check", {"rows": [own]}, as_="bob").json()["ok"] is True
    other = {**own, "subject": "user:alice"}
    problem(api.post("/authz/check", {"rows": [own, other]}, as_="bob"), 403)
    assert api.post("/authz/check", {"rows": [own, other]}, as_="alice").status_code == 200
    problem(api.post("/authz/check", {"rows": [{**own, "action": "fly"}]}), 422)
    problem(api.post("/authz/check", {"rows": [{**own, "expected": "maybe"}]}), 400)
