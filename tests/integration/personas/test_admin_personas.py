"""Every admin API route (``/api/v1``) and token-server route (``/auth/*``) as every persona:
users sign in with Basic passwords, the robot with its secret, anonymous with nothing. The
expected outcome of each (route, persona) is a cell of ``expectations.csv``; routes that
change or delete something act on a fresh target made for the case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.integration.personas.conftest import (
    SERVICE,
    Row,
    World,
    bearer,
    load_table,
    persona_cases,
)

V1 = "/api/v1"


@dataclass
class Call:
    """A concrete request for one case."""

    url: str
    json: Any = None
    params: dict[str, str] | None = None
    data: dict[str, str] | None = None
    signed: bool = True
    """Send the persona's Basic credentials (the OAuth2 form carries its own)."""
    password: bool = False
    """Sign in with the password rather than the persona's personal access token."""


Builder = Callable[[World, str], Call]
BUILDERS: dict[tuple[str, str, str], Builder] = {}


def case(method: str, path: str, variant: str = "") -> Callable[[Builder], Builder]:
    """Register the builder of the table row (method, path, variant)."""

    def register(fn: Builder) -> Builder:
        BUILDERS[method, path, variant] = fn
        return fn

    return register


def fixed(url: str, **kw: Any) -> Builder:
    """A builder for a request that is the same for every persona."""
    return lambda _w, _p: Call(url, **kw)


def register_fixed(method: str, path: str, variant: str = "", url: str | None = None,
                   **kw: Any) -> None:
    case(method, path, variant)(fixed(url or path, **kw))


# -- token server, public documents and health probes ----------------------------------

register_fixed("GET", "/auth/token", password=True,
               params={"service": SERVICE, "scope": "repository:acme/app:pull"})
register_fixed("GET", "/auth/jwks.json")
register_fixed("GET", "/.well-known/jwks.json")
register_fixed("GET", "/health/live")
register_fixed("GET", "/health/ready")
register_fixed("GET", f"{V1}/openapi.json")


@case("POST", "/auth/token")
def _oauth_password(w: World, persona: str) -> Call:
    form = {"grant_type": "password", "service": SERVICE, "client_id": "personas",
            "scope": "repository:acme/app:pull"}
    if persona != "anonymous":
        form |= {"username": w.account(persona), "password": w.secrets[persona]}
    return Call("/auth/token", data=form, signed=False)


# -- me, users -----------------------------------------------------------------------------

register_fixed("GET", f"{V1}/me")
register_fixed("GET", f"{V1}/users")
register_fixed("GET", f"{V1}/users/{{name:str}}", "other", url=f"{V1}/users/bystander")
register_fixed("PATCH", f"{V1}/users/{{name:str}}", "other", url=f"{V1}/users/bystander",
               json={"email": "bystander@example.com"})


@case("POST", f"{V1}/users")
def _create_user(w: World, persona: str) -> Call:
    return Call(f"{V1}/users", json={"name": w.unique("user"), "password": "fresh-password-1"})


@case("GET", f"{V1}/users/{{name:str}}", "self")
def _show_self(w: World, persona: str) -> Call:
    return Call(f"{V1}/users/{quote(w.account(persona), safe='')}")


@case("PATCH", f"{V1}/users/{{name:str}}", "self")
def _change_own_password(w: World, persona: str) -> Call:
    """The same password again, so the persona keeps signing in."""
    return Call(f"{V1}/users/{quote(w.account(persona), safe='')}",
                json={"password": w.secrets.get(persona, "whatever-password-1")})


@case("DELETE", f"{V1}/users/{{name:str}}", "other")
def _delete_user(w: World, persona: str) -> Call:
    return Call(f"{V1}/users/{w.new_user()}")


# -- organizations and teams ---------------------------------------------------------------

ORG = f"{V1}/orgs/{{org:str}}"
TEAM = f"{ORG}/teams/{{team:str}}"
register_fixed("GET", f"{V1}/orgs")
for _variant, _org in (("", "acme"), ("other-org", "other"), ("public", "pub")):
    register_fixed("GET", ORG, _variant, url=f"{V1}/orgs/{_org}")
for _variant, _org in (("", "acme"), ("other-org", "other")):
    register_fixed("GET", f"{ORG}/teams", _variant, url=f"{V1}/orgs/{_org}/teams")
for _variant, _org in (("", "acme"), ("other-org", "other")):
    register_fixed("PATCH", ORG, _variant, url=f"{V1}/orgs/{_org}",
                   json={"description": f"{_org} corp"})
register_fixed("GET", TEAM, url=f"{V1}/orgs/acme/teams/devs")
register_fixed("GET", f"{TEAM}/members", url=f"{V1}/orgs/acme/teams/devs/members")
register_fixed("PUT", f"{TEAM}/members/{{user:str}}",
               url=f"{V1}/orgs/acme/teams/devs/members/bystander")


@case("POST", f"{V1}/orgs")
def _create_org(w: World, persona: str) -> Call:
    return Call(f"{V1}/orgs", json={"name": w.unique("neworg")})


@case("DELETE", ORG)
def _delete_org(w: World, persona: str) -> Call:
    return Call(f"{V1}/orgs/{w.new_org(like_acme=True)}")


@case("DELETE", ORG, "other-org")
def _delete_foreign_org(w: World, persona: str) -> Call:
    return Call(f"{V1}/orgs/{w.new_org(like_acme=False)}")


for _variant, _org in (("", "acme"), ("other-org", "other")):
    def _create_team(w: World, persona: str, org: str = _org) -> Call:
        return Call(f"{V1}/orgs/{org}/teams", json={"name": w.unique("team")})

    case("POST", f"{ORG}/teams", _variant)(_create_team)


@case("PATCH", TEAM)
def _update_team(w: World, persona: str) -> Call:
    return Call(f"{V1}/orgs/acme/teams/{w.new_team()}", json={"description": "renamed"})


@case("DELETE", TEAM)
def _delete_team(w: World, persona: str) -> Call:
    return Call(f"{V1}/orgs/acme/teams/{w.new_team()}")


@case("DELETE", f"{TEAM}/members/{{user:str}}")
def _remove_member(w: World, persona: str) -> Call:
    return Call(f"{V1}/orgs/acme/teams/{w.new_team('user:bystander')}/members/bystander")


# -- robots --------------------------------------------------------------------------------

ORG_ROBOTS = f"{ORG}/robots"
SYS_ROBOTS = f"{V1}/robots"
register_fixed("GET", ORG_ROBOTS, url=f"{V1}/orgs/acme/robots")
register_fixed("GET", ORG_ROBOTS, "other-org", url=f"{V1}/orgs/other/robots")
register_fixed("GET", f"{ORG_ROBOTS}/{{name:str}}", url=f"{V1}/orgs/acme/robots/ci")
register_fixed("GET", SYS_ROBOTS)
register_fixed("GET", f"{SYS_ROBOTS}/{{name:str}}", url=f"{SYS_ROBOTS}/mirror")


@case("POST", ORG_ROBOTS)
def _create_org_robot(w: World, persona: str) -> Call:
    return Call(f"{V1}/orgs/acme/robots", json={"name": w.unique("bot")})


@case("PATCH", f"{ORG_ROBOTS}/{{name:str}}")
def _update_org_robot(w: World, persona: str) -> Call:
    return Call(f"{V1}/orgs/acme/robots/{w.new_robot('acme')}", json={"description": "ci"})


@case("DELETE", f"{ORG_ROBOTS}/{{name:str}}")
def _delete_org_robot(w: World, persona: str) -> Call:
    return Call(f"{V1}/orgs/acme/robots/{w.new_robot('acme')}")


@case("POST", f"{ORG_ROBOTS}/{{name:str}}/secret")
def _regenerate_org_robot(w: World, persona: str) -> Call:
    return Call(f"{V1}/orgs/acme/robots/{w.new_robot('acme')}/secret")


@case("POST", SYS_ROBOTS)
def _create_system_robot(w: World, persona: str) -> Call:
    return Call(SYS_ROBOTS, json={"name": w.unique("sysbot")})


@case("PATCH", f"{SYS_ROBOTS}/{{name:str}}")
def _update_system_robot(w: World, persona: str) -> Call:
    return Call(f"{SYS_ROBOTS}/{w.new_robot(None)}", json={"description": "mirror"})


@case("DELETE", f"{SYS_ROBOTS}/{{name:str}}")
def _delete_system_robot(w: World, persona: str) -> Call:
    return Call(f"{SYS_ROBOTS}/{w.new_robot(None)}")


@case("POST", f"{SYS_ROBOTS}/{{name:str}}/secret")
def _regenerate_system_robot(w: World, persona: str) -> Call:
    return Call(f"{SYS_ROBOTS}/{w.new_robot(None)}/secret")


# -- roles and grants ----------------------------------------------------------------------

ROLE = f"{V1}/roles/{{name:str}}"
register_fixed("GET", f"{V1}/roles")
register_fixed("GET", ROLE, url=f"{V1}/roles/developer")
register_fixed("PATCH", ROLE, url=f"{V1}/roles/janitor", json={"description": "tidies up"})
register_fixed("GET", f"{V1}/grants")


@case("POST", f"{V1}/roles")
def _create_role(w: World, persona: str) -> Call:
    return Call(f"{V1}/roles", json={"name": w.unique("role"), "actions": ["pull"]})


@case("DELETE", ROLE)
def _delete_role(w: World, persona: str) -> Call:
    return Call(f"{V1}/roles/{w.new_role()}")


for _variant, _org in (("", "acme"), ("other-org", "other")):
    def _create_org_grant(w: World, persona: str, org: str = _org) -> Call:
        return Call(f"{V1}/grants", json={"subject": "user:bystander", "org": org,
                                          "repository": f"{org}/{w.unique('g')}/**",
                                          "role": "reader"})

    def _delete_org_grant(w: World, persona: str, org: str = _org) -> Call:
        return Call(f"{V1}/grants/{w.new_grant(org)}")

    case("POST", f"{V1}/grants", _variant)(_create_org_grant)
    case("DELETE", f"{V1}/grants/{{grant_id:int}}", _variant)(_delete_org_grant)


@case("POST", f"{V1}/grants", "system")
def _create_system_grant(w: World, persona: str) -> Call:
    return Call(f"{V1}/grants", json={"subject": "user:bystander", "org": "*",
                                      "repository": f"{w.unique('g')}/**", "role": "reader"})


@case("DELETE", f"{V1}/grants/{{grant_id:int}}", "system")
def _delete_system_grant(w: World, persona: str) -> Call:
    return Call(f"{V1}/grants/{w.new_grant('*')}")


# -- personal access tokens ----------------------------------------------------------------

register_fixed("GET", f"{V1}/tokens")
register_fixed("POST", f"{V1}/tokens", json={"name": "persona test"}, password=True)


@case("DELETE", f"{V1}/tokens/{{token_id:str}}")
def _revoke_own_token(w: World, persona: str) -> Call:
    """The persona's own fresh token (robots and anonymous have none: any id)."""
    token_id = w.new_token(persona) if persona in w.secrets and persona != "robot" else "x"
    return Call(f"{V1}/tokens/{token_id}")


@case("DELETE", f"{V1}/tokens/{{token_id:str}}", "other")
def _revoke_someone_elses_token(w: World, persona: str) -> Call:
    return Call(f"{V1}/tokens/{w.new_token('bystander')}")


# -- explained decisions -------------------------------------------------------------------

EXPLAIN = {"repository": "acme/app", "action": "pull"}


@case("GET", f"{V1}/authz/explain", "self")
def _explain_self(w: World, persona: str) -> Call:
    return Call(f"{V1}/authz/explain", params=EXPLAIN)


register_fixed("GET", f"{V1}/authz/explain", "other",
               params={**EXPLAIN, "subject": "user:bystander"})


def _check(subject: str) -> Call:
    return Call(f"{V1}/authz/check", json={"rows": [
        {"subject": subject, "repository": "acme/app", "action": "pull", "expected": "allow"}]})


case("POST", f"{V1}/authz/check", "self")(lambda w, persona: _check(w.subject(persona)))
case("POST", f"{V1}/authz/check", "other")(lambda w, persona: _check("user:bystander"))

# -- federation trusts (keyless CI) --------------------------------------------------------

TRUSTS = f"{V1}/federation/trusts"
TRUST_ISSUER = "https://token.actions.githubusercontent.com"


def _trust_body(w: World, **binding: Any) -> dict[str, Any]:
    return {"name": w.unique("trust"), "issuer": TRUST_ISSUER, "audience": SERVICE,
            "conditions": [{"claim": "repository", "pattern": "acme/app"}], **binding}


def _new_trust(w: World) -> str:
    """A trust bound to robot$acme+ci (org acme); its name."""
    from dtr.auth import federation as fed  # noqa: PLC0415 - only these cases need it

    name = w.unique("trust")
    spec = fed.TrustSpec(name=name, issuer=TRUST_ISSUER, audience=SERVICE,
                         conditions=(fed.Condition("repository", "acme/app"),),
                         robot="robot$acme+ci")
    w.write(lambda c: fed.create_trust(c, spec, fed.Limits()))
    return name


register_fixed("GET", TRUSTS)
for _variant, _org in (("", "acme"), ("other-org", "other")):
    def _create_trust(w: World, persona: str, org: str = _org) -> Call:
        return Call(TRUSTS, json=_trust_body(w, role_binding={
            "org": org, "repository": f"{org}/app", "role": "reader"}))

    case("POST", TRUSTS, _variant)(_create_trust)
case("POST", TRUSTS, "system")(
    lambda w, persona: Call(TRUSTS, json=_trust_body(w, robot="robot$mirror")))
case("GET", f"{TRUSTS}/{{name:str}}")(lambda w, persona: Call(f"{TRUSTS}/{_new_trust(w)}"))
case("PATCH", f"{TRUSTS}/{{name:str}}")(
    lambda w, persona: Call(f"{TRUSTS}/{_new_trust(w)}", json={"enabled": False}))
case("DELETE", f"{TRUSTS}/{{name:str}}")(
    lambda w, persona: Call(f"{TRUSTS}/{_new_trust(w)}"))


# -- signing policies and promotion --------------------------------------------------------

POLICIES = f"{V1}/signing/policies"


def _signing_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _root_pem() -> str:
    from tests.unit.signing.material import pki  # noqa: PLC0415 - only these cases need it

    return pki().pem().decode()


def _new_policy(w: World, *, key: bool = False, store: bool = False) -> tuple[str, str]:
    """An API policy over ``acme/<unique>/**`` (with a key / a trust store); its name and
    the key's id.
    """
    from dtr.signing import policy as sp  # noqa: PLC0415 - only these cases need it
    from dtr.signing.keys import TrustedKey  # noqa: PLC0415

    name = w.unique("policy")
    pem = _signing_key_pem()
    spec = sp.PolicySpec(name=name, pattern=f"acme/{name}/**",
                         keys=(sp.KeySpec(pem),) if key else (),
                         trust_stores=(sp.TrustStoreSpec("roots", _root_pem()),) if store
                         else ())
    w.write(lambda c: sp.upsert_policy(c, spec, lambda _c, _e: None))
    return name, TrustedKey.from_pem(pem).id


register_fixed("GET", POLICIES)
case("POST", POLICIES)(lambda w, persona: Call(POLICIES, json={
    "name": w.unique("policy"), "pattern": f"acme/{w.unique('p')}/**"}))
case("GET", f"{POLICIES}/{{name:str}}")(
    lambda w, persona: Call(f"{POLICIES}/{_new_policy(w)[0]}"))
case("PATCH", f"{POLICIES}/{{name:str}}")(
    lambda w, persona: Call(f"{POLICIES}/{_new_policy(w)[0]}", json={"mode": "audit"}))
case("DELETE", f"{POLICIES}/{{name:str}}")(
    lambda w, persona: Call(f"{POLICIES}/{_new_policy(w)[0]}"))
case("POST", f"{POLICIES}/{{name:str}}/keys")(
    lambda w, persona: Call(f"{POLICIES}/{_new_policy(w)[0]}/keys",
                            json={"pem": _signing_key_pem(), "name": "release"}))


@case("PATCH", f"{POLICIES}/{{name:str}}/keys/{{key_id:str}}")
def _revoke_key(w: World, persona: str) -> Call:
    name, kid = _new_policy(w, key=True)
    return Call(f"{POLICIES}/{name}/keys/{kid}", json={"status": "revoked"})


@case("DELETE", f"{POLICIES}/{{name:str}}/keys/{{key_id:str}}")
def _delete_key(w: World, persona: str) -> Call:
    name, kid = _new_policy(w, key=True)
    return Call(f"{POLICIES}/{name}/keys/{kid}")


case("PUT", f"{POLICIES}/{{name:str}}/trust-stores/{{store:str}}")(
    lambda w, persona: Call(f"{POLICIES}/{_new_policy(w)[0]}/trust-stores/roots",
                            json={"roots_pem": _root_pem(), "identities": [
                                "x509.subject: C=US, ST=WA, O=Notary, CN=signer"]}))
case("DELETE", f"{POLICIES}/{{name:str}}/trust-stores/{{store:str}}")(
    lambda w, persona: Call(f"{POLICIES}/{_new_policy(w, store=True)[0]}/trust-stores/roots"))


@case("POST", f"{V1}/repositories/{{rest:path}}")
def _promote(w: World, persona: str) -> Call:
    app = w.images["acme/app"]
    return Call(f"{V1}/repositories/acme/base/promotions",
                json={"source": f"acme/app@{app.digest}", "tags": [w.unique("promoted")]})


# -- the audit log (read only: auditors and administrators) ------------------------------

register_fixed("GET", f"{V1}/audit", params={"repository": "acme/**", "limit": "5"})
register_fixed("GET", f"{V1}/audit/count", params={"outcome": "deny"})
register_fixed("GET", f"{V1}/audit/export", params={"format": "csv", "action": "tag.*"})
register_fixed("GET", f"{V1}/audit/verify")
register_fixed("GET", f"{V1}/audit/checkpoints")

# -- OIDC login (off in this world) and logout ---------------------------------------------

register_fixed("GET", f"{V1}/auth/oidc")
register_fixed("GET", f"{V1}/auth/oidc/login")
register_fixed("GET", f"{V1}/auth/oidc/callback", params={"code": "c", "state": "s"})
register_fixed("POST", f"{V1}/auth/logout")

# -- anything else under /api/v1 -----------------------------------------------------------

for _method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"):
    register_fixed(_method, f"{V1}/{{rest:path}}", url=f"{V1}/no/such/route")


# -- the table -----------------------------------------------------------------------------



def check(r: httpx.Response, expected: str, admin_api: bool) -> None:
    """Assert the response is in the expected outcome class (see expectations.csv); admin
    API refusals are problem details.
    """
    what = f"{r.request.method} {r.request.url} -> {r.status_code} {r.text[:300]}"
    status = r.status_code
    if expected == "ok":
        assert 200 <= status < 400, what
        return
    assert status == int(expected), what
    if status == 401:
        assert r.headers.get("www-authenticate", "").startswith("Basic "), what
    if admin_api and status in (401, 403, 404) and r.request.method != "HEAD":
        assert r.headers["content-type"].startswith("application/problem+json"), what
        kind = {401: "unauthorized", 403: "denied", 404: "not-found"}[status]
        assert r.json()["type"] == f"urn:dtr:problem:{kind}", what


@pytest.mark.parametrize(("row", "persona"), persona_cases("admin", "auth"))
def test_admin_route(world: World, row: Row, persona: str) -> None:
    call = BUILDERS[row.key](world, persona)
    headers = world.credentials(persona, password=call.password) if call.signed else {}
    r = world.client.request(row.method, call.url, json=call.json, params=call.params,
                             data=call.data, headers=headers)
    check(r, row.expect[persona], row.surface == "admin")


def test_every_admin_row_has_a_builder() -> None:
    rows = {row.key for row in load_table() if row.surface in ("admin", "auth")}
    assert rows == set(BUILDERS)


# -- product bugs the table cannot express -------------------------------------------------


def test_a_registry_token_is_not_an_admin_api_credential(world: World) -> None:
    """A 5-minute /v2 token (even docker login's empty one) never works on the admin API,
    so it can neither act with the user's full rights nor mint a 90-day token."""
    token = world.registry_token("owner", [])
    r = world.client.post(f"{V1}/tokens", json={"name": "from a registry token"},
                          headers=bearer(token))
    check(r, "401", admin_api=True)
    check(world.client.get(f"{V1}/me", headers=bearer(token)), "401", admin_api=True)


def test_an_org_owner_cannot_lock_the_administrator_out(world: World) -> None:
    org = world.new_org(like_acme=True)
    r = world.client.post(f"{V1}/grants", json={"subject": "user:admin", "org": org,
                                                "role": "owner", "effect": "deny"},
                          headers=world.credentials("owner"))
    assert r.status_code == 201, r.text
    r = world.client.delete(f"{V1}/grants/{r.json()['id']}", headers=world.credentials("admin"))
    check(r, "ok", admin_api=True)
