"""``/api/v1/signing/policies`` and ``/api/v1/repositories/{name}/promotions`` in-process
(authentication on): policy lifecycle with versions, key ids and revocation counts, config
policies (409 except revocation), who reads what, and promotion (signed → 201 with
referrers copied; unsigned → 403 UNSIGNED_MANIFEST, nothing tagged) — each on SQLite and on
PostgreSQL (``db_url``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from litestar.testing import TestClient

from dtr.api.oci.router import match
from dtr.app import create_app
from dtr.signing.keys import TrustedKey
from tests.conftest import make_settings
from tests.integration.admin.conftest import ADMIN_PW, Api, password_of, problem
from tests.integration.test_signing_gate import by_digest, legacy_sig
from tests.support.http import basic, bearer
from tests.support.oci import OciClient
from tests.unit.signing import material as m

P = "/signing/policies"


class _AsAdmin:
    """httpx-like: each /v2 request carries an admin token for the path's repository."""

    def __init__(self, client: TestClient[Any]) -> None:
        self.client = client

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        repo = match(urlsplit(url).path.removeprefix("/v2"))[1]["name"]
        r = self.client.get("/auth/token", params={
            "service": "dtr", "scope": f"repository:{repo}:pull,push"},
            headers=basic("admin", ADMIN_PW))
        assert r.status_code == 200, r.text
        headers = {**(kw.pop("headers", None) or {}), **bearer(r.json()["token"])}
        return self.client.request(method, url, headers=headers, **kw)

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PUT", url, **kw)

    def patch(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PATCH", url, **kw)


@pytest.fixture
def client(tmp_path: Path, db_url: str,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient[Any]]:
    """The admin conftest's client, over each database (SQLite and PostgreSQL)."""
    monkeypatch.setenv("DTR_ADMIN_PASSWORD", ADMIN_PW)
    settings = make_settings(tmp_path, auth={"enabled": True}, database={"url": db_url})
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def oci(api: Api) -> OciClient:
    return OciClient(_AsAdmin(api.client))


def pem(key: m.PrivateKey) -> str:
    return m.public_pem(key).decode()


def test_policy_lifecycle_is_versioned(api: Api) -> None:
    key = m.new_key("p256")
    r = api.post(P, {"name": "prod", "pattern": "acme/prod/**", "formats": ["cosign"]})
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1
    assert r.json()["source"] == "api"
    problem(api.post(P, {"name": "prod", "pattern": "x/**"}), 409)
    problem(api.post(P, {"name": "bad", "pattern": "Not A Glob"}), 422)
    added = api.post(f"{P}/prod/keys", {"pem": pem(key), "name": "ci"})
    assert added.status_code == 201, added.text
    kid = added.json()["key_id"]
    assert kid == TrustedKey.from_pem(pem(key)).id
    assert added.json()["policy"]["version"] == 2
    problem(api.post(f"{P}/prod/keys", {"pem": pem(key)}), 409)
    problem(api.post(f"{P}/prod/keys", {"pem": "not a key"}), 422)
    changed = api.patch(f"{P}/prod", {"mode": "audit", "min_signatures": 2})
    assert changed.json()["mode"] == "audit"
    assert changed.json()["min_signatures"] == 2
    assert changed.json()["version"] == 3
    store = api.call("PUT", f"{P}/prod/trust-stores/roots",
                     {"roots_pem": m.pki().pem().decode(), "identities": ["*"]})
    assert store.json()["trust_stores"][0]["name"] == "roots"
    revoked = api.patch(f"{P}/prod/keys/{kid}", {"status": "revoked"})
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["digests_affected"] == 0
    assert revoked.json()["policy"]["keys"][0]["revoked_at"]
    assert api.call("DELETE", f"{P}/prod/trust-stores/roots").json()["trust_stores"] == []
    assert api.delete(f"{P}/prod/keys/{kid}").json()["keys"] == []
    problem(api.delete(f"{P}/prod/keys/{kid}"), 404)
    assert api.delete(f"{P}/prod").status_code == 204
    problem(api.get(f"{P}/prod"), 404)


def test_who_reads_and_writes(api: Api) -> None:
    assert api.post(P, {"name": "acme-prod", "pattern": "acme/**"}).status_code == 201
    assert api.post(P, {"name": "global", "pattern": "**/prod/**"}).status_code == 201
    assert {p["name"] for p in api.get(P, as_="alice").json()} == {"acme-prod"}
    assert {p["name"] for p in api.get(P, as_="carol").json()} == {"acme-prod", "global"}
    assert api.get(P, as_="bob").json() == []
    assert api.get(f"{P}/acme-prod", as_="alice").status_code == 200
    problem(api.patch(f"{P}/acme-prod", {"mode": "audit"}, as_="alice"), 403)
    problem(api.patch(f"{P}/global", {"mode": "audit"}, as_="alice"), 404)
    problem(api.post(P, {"name": "mine", "pattern": "acme/x/**"}, as_="alice"), 403)


@pytest.fixture
def config_client(tmp_path: Path, db_url: str,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    key = m.new_key("p256")
    monkeypatch.setenv("DTR_ADMIN_PASSWORD", ADMIN_PW)
    settings = make_settings(tmp_path, auth={"enabled": True}, database={"url": db_url},
                             signing={"policies": [
        {"name": "seeded", "repositories": "prod/**", "keys": [{"pem": pem(key)}]}]})
    with TestClient(create_app(settings)) as c:
        a = Api(c)
        a.login("admin", ADMIN_PW)
        yield a


def test_config_policies_refuse_edits_but_not_revocation(config_client: Api) -> None:
    api = config_client
    seeded = api.get(f"{P}/seeded").json()
    assert seeded["source"] == "config"
    body = problem(api.patch(f"{P}/seeded", {"mode": "audit"}), 409)
    assert "settings file" in body["detail"]
    problem(api.delete(f"{P}/seeded"), 409)
    kid = seeded["keys"][0]["key_id"]
    problem(api.patch(f"{P}/seeded/keys/{kid}", {"status": "retired"}), 409)
    r = api.patch(f"{P}/seeded/keys/{kid}", {"status": "revoked"})
    assert r.status_code == 200, r.text
    assert r.json()["policy"]["keys"][0]["status"] == "revoked"


def _protect(api: Api, key: m.PrivateKey) -> None:
    r = api.post(P, {"name": "prod", "pattern": "acme/prod/**", "keys": [{"pem": pem(key)}]})
    assert r.status_code == 201, r.text


def test_promote_signed_digest(api: Api, oci: OciClient) -> None:
    key = m.new_key("p256")
    _protect(api, key)
    digest, _ = by_digest(oci, "acme/staging/app")
    assert legacy_sig(oci, "acme/staging/app", key, digest).status_code == 201
    r = api.post("/repositories/acme/prod/app/promotions",
                 {"source": f"acme/staging/app@{digest}", "tags": ["1.0", "stable"]})
    assert r.status_code == 201, r.text
    assert r.json() == {"repository": "acme/prod/app", "digest": digest,
                        "tags": ["1.0", "stable"],
                        "copied": {"manifests": 1, "referrers": 1,
                                   "blobs_mounted": r.json()["copied"]["blobs_mounted"]}}
    assert r.json()["copied"]["blobs_mounted"] >= 2
    got = oci.http.get("/v2/acme/prod/app/manifests/1.0",
                  headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert got.status_code == 200
    assert got.headers["docker-content-digest"] == digest
    kid = TrustedKey.from_pem(pem(key)).id
    revoked = api.patch(f"{P}/prod/keys/{kid}", {"status": "revoked"})
    assert revoked.json()["digests_affected"] == 1
    assert revoked.json()["tags_affected"] == 2
    assert oci.http.get("/v2/acme/prod/app/manifests/1.0").status_code == 403


def test_promote_unsigned_digest_is_refused_and_tags_nothing(api: Api, oci: OciClient) -> None:
    _protect(api, m.new_key("p256"))
    digest, _ = by_digest(oci, "acme/staging/app")
    body = problem(api.post("/repositories/acme/prod/app/promotions",
                            {"source": f"acme/staging/app@{digest}", "tags": ["1.0"]}), 403)
    assert body["context"]["reason"] == "UNSIGNED_MANIFEST"
    assert oci.http.get("/v2/acme/prod/app/tags/list").json()["tags"] in (None, [])


def test_promotion_needs_pull_and_push(api: Api, oci: OciClient) -> None:
    digest, _ = by_digest(oci, "acme/staging/app")
    body = {"source": f"acme/staging/app@{digest}", "tags": ["1.0"]}
    problem(api.post("/repositories/acme/other/promotions", body, as_="bob"), 403)
    problem(api.post("/repositories/acme/other/nope", body), 404)
    problem(api.post("/repositories/acme/other/promotions",
                     {"source": "acme/staging/app", "tags": []}), 422)
    assert api.post("/repositories/acme/other/promotions", body,
                    as_="alice").status_code == 201
    assert password_of("bob")
