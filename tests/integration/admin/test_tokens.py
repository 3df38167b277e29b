"""``/api/v1/tokens``: personal access tokens are shown once, revoked at once, bounded in
lifetime, and a scope-restricted token can neither mint tokens nor change anything."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from tests.integration.admin.conftest import Api, basic, bearer, make_client, password_of, problem


def mint(api: Api, who: str, **body: Any) -> dict[str, Any]:
    r = api.client.post("/api/v1/tokens", json={"name": "laptop", **body},
                        headers=basic(who, password_of(who)))
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_secret_is_shown_once(api: Api) -> None:
    made = mint(api, "bob")
    assert made["secret"].startswith(f"dtr_pat_{made['id']}_")
    assert made["kind"] == "pat"
    expires = dt.datetime.fromisoformat(made["expires_at"])
    assert 89 <= (expires - dt.datetime.now(dt.UTC)).days <= 90
    listed = api.get("/tokens", as_="bob")
    assert made["id"] in [t["id"] for t in listed.json()]
    assert made["secret"] not in listed.text
    assert "secret" not in listed.text
    me = api.client.get("/api/v1/me", headers=bearer(made["secret"])).json()
    assert me["name"] == "bob"
    assert me["token_id"] == made["id"]


def test_revoke_takes_effect_at_once(api: Api) -> None:
    made = mint(api, "bob")
    assert api.client.get("/api/v1/me", headers=bearer(made["secret"])).status_code == 200
    problem(api.delete(f"/tokens/{made['id']}", as_="alice"), 404)
    assert api.delete(f"/tokens/{made['id']}", as_="bob").status_code == 204
    problem(api.client.get("/api/v1/me", headers=bearer(made["secret"])), 401)
    revoked = [t for t in api.get("/tokens", as_="bob").json() if t["id"] == made["id"]]
    assert revoked[0]["revoked_at"] is not None
    problem(api.delete("/tokens/no-such-token", as_="bob"), 404)


def test_lifetime_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c: TestClient[Any]
    with make_client(tmp_path, monkeypatch, token_max_days=30) as c:
        a = Api(c)
        a.login("admin", "admin-password-1")
        problem(a.post("/tokens", {"name": "long", "expires_in_days": 31}), 422)
        problem(a.post("/tokens", {"name": "zero", "expires_in_days": 0}), 400)
        short = a.post("/tokens", {"name": "ok"}).json()
        days = (dt.datetime.fromisoformat(short["expires_at"]) - dt.datetime.now(dt.UTC)).days
        assert days in (29, 30)


def test_scoped_token_can_read_but_not_mint_or_change(api: Api) -> None:
    made = mint(api, "alice", scopes=["repository:acme/app:pull,push"], expires_in_days=7)
    assert made["scopes"] == ["repository:acme/app:pull,push"]
    scoped = bearer(made["secret"])
    me = api.client.get("/api/v1/me", headers=scoped).json()
    assert me["scopes"] == ["repository:acme/app:pull,push"]
    assert api.client.get("/api/v1/orgs/acme", headers=scoped).status_code == 200
    problem(api.client.post("/api/v1/tokens", json={"name": "x"}, headers=scoped), 403)
    problem(api.client.post("/api/v1/orgs", json={"name": "x"}, headers=scoped), 403)
    problem(api.client.delete("/api/v1/orgs/acme", headers=scoped), 403)
    check = {"rows": [{"subject": "user:alice", "repository": "acme/app", "action": "pull",
                       "expected": "allow"}]}
    assert api.client.post("/api/v1/authz/check", json=check, headers=scoped).is_success


def test_token_errors(api: Api) -> None:
    problem(api.post("/tokens", {"name": "x", "scopes": ["repository:acme:fly"]}, as_="bob"),
            422)
    problem(api.post("/tokens", {"name": "x", "scopes": []}, as_="bob"), 422)
    problem(api.post("/tokens", {"scopes": None}, as_="bob"), 400)
    problem(api.post("/tokens", {"name": "x"}, as_="anonymous"), 401)
    problem(api.get("/tokens", as_="anonymous"), 401)


def test_a_pat_can_mint_another_pat(api: Api) -> None:
    r = api.post("/tokens", {"name": "second"}, as_="bob")
    assert r.status_code == 201
    assert api.client.get("/api/v1/me", headers=bearer(r.json()["secret"])).is_success
