"""Every ``/v2`` route as every persona, the Docker way: a token from ``/auth/token`` for the
scope the route needs (the server grants ``requested ∩ allowed``), then the request. The
expected outcome of each (route, persona) is a cell of ``expectations.csv``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy import Connection

from dtr.policy import admin as policy
from tests.integration.personas.conftest import (
    NO_TOKEN,
    PERSONAS,
    Row,
    World,
    bearer,
    load_table,
    persona_cases,
)
from tests.support.oci import OCI_MANIFEST, sha256


@dataclass
class Probe:
    """A concrete request for one case: the URL, the repository its scope names and
    any other scope a real client would ask for (the mount source).
    """

    url: str
    repo: str | None = None
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    extra_scopes: tuple[str, ...] = ()


Builder = Callable[[World], Probe]
BUILDERS: dict[tuple[str, str, str], Builder] = {}
APP, PUB, OTHER = "acme/app", "pub/site", "other/lib"
CASE_REPO = {"": APP, "public": PUB, "other-org": OTHER}
CHUNK = b"chunk"


def case(method: str, path: str, variant: str = "") -> Callable[[Builder], Builder]:
    """Register the builder of the table row (method, path, variant)."""

    def register(fn: Builder) -> Builder:
        BUILDERS[method, path, variant] = fn
        return fn

    return register


@case("GET", "/v2/")
def _ping(w: World) -> Probe:
    return Probe("/v2/")


@case("GET", "/v2/_catalog")
def _catalog(w: World) -> Probe:
    return Probe("/v2/_catalog")


for _variant, _repo in CASE_REPO.items():
    def _tags(w: World, repo: str = _repo) -> Probe:
        return Probe(f"/v2/{repo}/tags/list", repo)

    def _put_manifest(w: World, repo: str = _repo) -> Probe:
        return Probe(f"/v2/{repo}/manifests/{w.unique('put')}", repo, w.images[repo].manifest,
                     {"Content-Type": OCI_MANIFEST})

    case("GET", "/v2/{name}/tags/list", _variant)(_tags)
    case("PUT", "/v2/{name}/manifests/{reference}", _variant)(_put_manifest)

for _variant in ("", "public"):
    def _get_manifest(w: World, repo: str = CASE_REPO[_variant]) -> Probe:
        return Probe(f"/v2/{repo}/manifests/latest", repo)

    case("GET", "/v2/{name}/manifests/{reference}", _variant)(_get_manifest)


@case("HEAD", "/v2/{name}/manifests/{reference}")
def _head_manifest(w: World) -> Probe:
    return Probe(f"/v2/{APP}/manifests/latest", APP)


@case("DELETE", "/v2/{name}/manifests/{reference}")
def _delete_tag(w: World) -> Probe:
    return Probe(f"/v2/{APP}/manifests/{w.new_tag(APP)}", APP)


@case("GET", "/v2/{name}/blobs/{digest}")
@case("HEAD", "/v2/{name}/blobs/{digest}")
def _blob(w: World) -> Probe:
    return Probe(f"/v2/{APP}/blobs/{w.images[APP].layer}", APP)


@case("DELETE", "/v2/{name}/blobs/{digest}")
def _delete_blob(w: World) -> Probe:
    return Probe(f"/v2/{APP}/blobs/{w.new_blob(APP)}", APP)


@case("POST", "/v2/{name}/blobs/uploads/")
def _start_upload(w: World) -> Probe:
    return Probe(f"/v2/{APP}/blobs/uploads/", APP)


@case("POST", "/v2/{name}/blobs/uploads/", "mount")
def _mount_same_org(w: World) -> Probe:
    digest = w.new_blob("acme/base")
    return Probe(f"/v2/{APP}/blobs/uploads/?mount={digest}&from=acme/base", APP,
                 extra_scopes=("repository:acme/base:pull",))


@case("POST", "/v2/{name}/blobs/uploads/", "mount-other-org")
def _mount_other_org(w: World) -> Probe:
    digest = w.new_blob(OTHER)
    return Probe(f"/v2/{APP}/blobs/uploads/?mount={digest}&from={OTHER}", APP,
                 extra_scopes=(f"repository:{OTHER}:pull",))


@case("POST", "/v2/{name}/blobs/uploads/", "mount-auto")
def _mount_anywhere(w: World) -> Probe:
    """No ``from``: the registry looks for any repository the caller may read."""
    return Probe(f"/v2/{APP}/blobs/uploads/?mount={w.new_blob(OTHER)}", APP)


@case("GET", "/v2/{name}/blobs/uploads/{upload}")
@case("DELETE", "/v2/{name}/blobs/uploads/{upload}")
def _upload(w: World) -> Probe:
    return Probe(w.new_upload(APP), APP)


@case("PATCH", "/v2/{name}/blobs/uploads/{upload}")
def _upload_chunk(w: World) -> Probe:
    return Probe(w.new_upload(APP), APP, CHUNK, {
        "Content-Range": f"0-{len(CHUNK) - 1}", "Content-Type": "application/octet-stream"})


@case("PUT", "/v2/{name}/blobs/uploads/{upload}")
def _upload_finish(w: World) -> Probe:
    return Probe(f"{w.new_upload(APP)}?digest={sha256(CHUNK)}", APP, CHUNK,
                 {"Content-Type": "application/octet-stream"})


@case("GET", "/v2/{name}/referrers/{digest}")
def _referrers(w: World) -> Probe:
    return Probe(f"/v2/{APP}/referrers/{w.images[APP].digest}", APP)


# -- the table -----------------------------------------------------------------------------



def scopes_for(row: Row, probe: Probe) -> list[str]:
    """The scopes a client asks for: what the route needs (``needs``), plus extras."""
    if row.needs == "-":
        return []
    if row.needs == "catalog":
        return ["registry:catalog:*"]
    return [f"repository:{probe.repo}:{row.needs.replace('+', ',')}", *probe.extra_scopes]


def challenge(r: httpx.Response) -> dict[str, str]:
    """The parameters of a Bearer ``WWW-Authenticate`` challenge."""
    value = r.headers.get("www-authenticate", "")
    assert value.startswith("Bearer "), value
    return dict(re.findall(r'(\w+)="([^"]*)"', value))


def check(r: httpx.Response, expected: str, needed: str | None) -> None:
    """Assert the response is in the expected outcome class (see expectations.csv)."""
    what = f"{r.request.method} {r.request.url} -> {r.status_code} {r.text[:300]}"
    if expected == "ok":
        assert 200 <= r.status_code < 400, what
    elif expected == "scope":
        assert r.status_code == 401, what
        params = challenge(r)
        assert params.get("error") == "insufficient_scope", (params, what)
        assert params.get("scope") == needed, (params, what)
    elif expected == "401":
        assert r.status_code == 401, what
        params = challenge(r)
        assert "error" not in params, (params, what)
        assert params.get("scope") == needed, (params, what)
        assert params["realm"].endswith("/auth/token"), params
    elif expected == "403":
        assert r.status_code == 403, what
        assert r.json()["errors"][0]["code"] == "DENIED", what
    else:
        assert r.status_code == int(expected), what


@pytest.mark.parametrize(("row", "persona"), persona_cases("oci"))
def test_oci_route(world: World, row: Row, persona: str) -> None:
    probe = BUILDERS[row.key](world)
    scopes = scopes_for(row, probe)
    headers = dict(probe.headers)
    if persona != NO_TOKEN:
        headers.update(bearer(world.registry_token(persona, scopes)))
    r = world.client.request(row.method, probe.url, content=probe.content or None,
                             headers=headers)
    check(r, row.expect[persona], scopes[0] if scopes else None)


def test_every_oci_row_has_a_builder() -> None:
    rows = {row.key for row in load_table() if row.surface == "oci"}
    assert rows == set(BUILDERS)


# -- what the table cannot say -------------------------------------------------------------

EVERYTHING = frozenset({APP, "acme/base", OTHER, PUB})
ACME_AND_PUBLIC = frozenset({APP, "acme/base", PUB})
CATALOG = {"admin": EVERYTHING, "auditor": EVERYTHING, "owner": ACME_AND_PUBLIC,
           "maintainer": ACME_AND_PUBLIC, "developer": ACME_AND_PUBLIC,
           "reader": ACME_AND_PUBLIC, "robot": ACME_AND_PUBLIC, "helpless": frozenset({PUB}),
           "anonymous": frozenset({PUB})}


@pytest.mark.parametrize("persona", PERSONAS)
def test_catalog_lists_only_what_the_persona_may_pull(world: World, persona: str) -> None:
    token = world.registry_token(persona, ["registry:catalog:*"])
    r = world.client.get("/v2/_catalog", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert set(r.json()["repositories"]) == CATALOG[persona]


def test_revoked_grant_is_403_for_push_and_delete_before_the_token_expires(
        world: World) -> None:
    """Push and delete are re-checked against the live policy; pull rides the token."""
    name = world.new_user()
    grant = world.write(lambda c: _grant(c, name))
    world.secrets[name] = "victim-password-1"
    token = world.registry_token(name, [f"repository:{APP}:pull,push,delete"])
    tag = world.new_tag(APP)
    world.write(lambda c: _revoke(c, grant))
    auth = bearer(token)
    r = world.client.put(f"/v2/{APP}/manifests/{world.unique('put')}",
                         content=world.images[APP].manifest,
                         headers={**auth, "Content-Type": OCI_MANIFEST})
    check(r, "403", None)
    check(world.client.delete(f"/v2/{APP}/manifests/{tag}", headers=auth), "403", None)
    check(world.client.post(f"/v2/{APP}/blobs/uploads/", headers=auth), "403", None)
    check(world.client.get(f"/v2/{APP}/manifests/{tag}", headers=auth), "ok", None)


def _grant(conn: Connection, name: str) -> int:
    return policy.create_grant(conn, f"user:{name}", "acme", APP, "maintainer").id


def _revoke(conn: Connection, grant_id: int) -> None:
    policy.delete_grant(conn, grant_id)
