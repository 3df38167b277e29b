"""Admin, identity and configuration events in the audit log, produced by real calls to the
admin API (in-process, authentication on, personal access tokens) and read back from the
``audit_event`` table: who (actor, method, token id), from where (client address, user
agent), which request (``X-Request-Id``), what (org, resource, detail without secrets) and
why it was allowed (the caller's rule) — on SQLite and PostgreSQL.

Also: a change and its event commit together (a change refused after its event was recorded
leaves neither; a commit that fails after the events were chained leaves neither and the
chain intact), refused calls are ``admin.denied`` with the policy's rule, an OIDC login
with the real OpenID Provider is recorded with what it synced, configuration changes
between starts are named (never a secret's value), and the chain verifies afterwards.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from litestar.testing import TestClient
from sqlalchemy import Connection, insert, select

from dtr.api.oidc import STATE_COOKIE
from dtr.app import checkpoint_keys, create_app
from dtr.audit.verify import verify_chain
from dtr.auth.accounts import parse_token
from dtr.db.base import utcnow
from dtr.db.models import Account, AuditEvent, Organization
from dtr.events import SecurityEvent
from dtr.signing.keys import TrustedKey
from tests.conftest import make_settings
from tests.integration.admin.conftest import ADMIN_PW, Api, password_of, problem
from tests.integration.admin.test_signing_policies import _AsAdmin
from tests.integration.test_signing_gate import by_digest
from tests.support.http import basic, bearer
from tests.support.oci import OciClient
from tests.support.oidc import OpenIDProvider
from tests.unit.signing import material as m

UA = "dtr-audit-tests/1.0"
CLIENT_IP = "testclient"
"""The socket peer Litestar's TestClient reports (no trusted proxy is configured)."""
ADMIN_RULE = "p, user:admin, *, **, role:admin, allow"
ALICE_OWNER = "p, user:alice, acme, **, role:owner, allow"


class Audited:
    """An in-process dtr, its personas (signed in with personal access tokens) and its
    audit rows.
    """

    def __init__(self, client: TestClient[Any]) -> None:
        self.client = client
        self.api = Api(client)
        self.pat: dict[str, str] = {}
        self.sign_in("admin", ADMIN_PW)

    def sign_in(self, name: str, password: str, **body: Any) -> str:
        """Mint a PAT with the password; calls ``as_=name`` use it. Returns its id."""
        r = self.client.post("/api/v1/tokens", json={"name": "tests", **body},
                             headers={**basic(name, password), "User-Agent": UA})
        assert r.status_code == 201, r.text
        self.api.headers[name] = {**bearer(r.json()["secret"]), "User-Agent": UA}
        self.pat[name] = r.json()["id"]
        return str(r.json()["id"])

    def add_user(self, name: str) -> None:
        r = self.api.post("/users", {"name": name, "password": password_of(name)})
        assert r.status_code == 201, r.text
        self.sign_in(name, password_of(name))

    def portal(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.client.blocking_portal.call(functools.partial(fn, *args, **kwargs))

    def rows(self) -> list[dict[str, Any]]:
        """Every audit row, in chain order (events emitted on their own written first)."""
        self.portal(self.client.app.state.audit.flush)

        def read(conn: Connection) -> list[dict[str, Any]]:
            found = conn.execute(select(AuditEvent.__table__).order_by(AuditEvent.seq))
            return [{**r._mapping, "detail": json.loads(r.detail), "text": str(r._mapping)}
                    for r in found]

        return list(self.portal(self.client.app.state.security.db.run, read, write=False))

    def of(self, r: httpx.Response, action: str) -> list[dict[str, Any]]:
        """The ``action`` rows the request answered by ``r`` caused."""
        rid = r.headers["x-request-id"]
        return [row for row in self.rows() if row["request_id"] == rid
                and row["action"] == action]

    def event(self, r: httpx.Response, action: str, as_: str, **expected: Any) -> dict[str, Any]:
        """The one ``action`` row of the request, checked: caller ``as_`` with their PAT,
        from the test client, allowed, and every ``expected`` column (``detail`` keys are
        compared one by one).
        """
        assert r.is_success, r.text
        [row] = self.of(r, action)
        kind = "robot" if as_.startswith("robot$") else "user"
        assert (row["outcome"], row["actor"], row["actor_kind"], row["actor_id"],
                row["method"], row["token_id"], row["client_ip"], row["user_agent"]) == (
            "allow", as_, kind, f"{kind}:{as_}", "pat", self.pat[as_], CLIENT_IP, UA), row
        detail = expected.pop("detail", {})
        for name, value in expected.items():
            assert row[name] == value, (name, row)
        for name, value in detail.items():
            assert row["detail"][name] == value, (name, row["detail"])
        return row

    def verify(self) -> None:
        keys = checkpoint_keys(self.client.app.state.security.keys)
        self.portal(self.client.app.state.audit.flush)  # events queued for the writer
        report = self.portal(verify_chain, self.client.app.state.security.db, keys)
        assert report.ok, report.problem
        assert report.checked == len(self.rows())


@pytest.fixture
def audited(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Audited]:
    monkeypatch.setenv("DTR_ADMIN_PASSWORD", ADMIN_PW)
    settings = make_settings(tmp_path, auth={"enabled": True}, database={"url": db_url})
    with TestClient(create_app(settings)) as c:
        a = Audited(c)
        a.add_user("alice")
        yield a
        a.verify()


# -- the changes ------------------------------------------------------------------------------


def test_user_and_token_changes_name_the_caller_and_never_a_secret(audited: Audited) -> None:
    a, api = audited, audited.api
    r = api.post("/users", {"name": "bob", "password": "bob-password-1"})
    a.event(r, "user.created", "admin", resource="bob", rule=ADMIN_RULE, org="",
            detail={"sign_in": "password", "email": False})
    r = api.patch("/users/bob", {"email": "bob@example.test"})
    a.event(r, "user.updated", "admin", resource="bob", rule=ADMIN_RULE,
            detail={"changed": ["email"], "disabled": False})
    r = api.patch("/users/bob", {"password": "bob-password-2"})
    row = a.event(r, "user.updated", "admin", detail={"changed": ["password"]})
    assert "bob-password-2" not in row["text"]
    r = api.patch("/users/bob", {"disabled": True})
    a.event(r, "user.disabled", "admin", detail={"changed": ["disabled"], "disabled": True})
    r = api.patch("/users/bob", {"disabled": False})
    a.event(r, "user.updated", "admin", detail={"changed": ["disabled"], "disabled": False})
    r = api.patch("/users/bob", {"email": "bob@example.test"})
    assert r.status_code == 200
    assert a.of(r, "user.updated") == []  # nothing changed, nothing recorded

    # self-service: no rule allowed it, the account's own right did
    r = api.patch("/users/alice", {"password": "alice-password-2"}, as_="alice")
    a.event(r, "user.updated", "alice", resource="alice", rule="",
            detail={"changed": ["password"]})

    r = api.post("/tokens", {"name": "laptop", "scopes": ["repository:acme/**:pull"],
                             "expires_in_days": 7}, as_="alice")
    made = r.json()
    row = a.event(r, "token.created", "alice", resource=f"token:{made['id']}",
                  detail={"account": "alice", "name": "laptop", "kind": "pat",
                          "scopes": ["repository:acme/**:pull"]})
    assert made["secret"] not in row["text"]
    parsed = parse_token(made["secret"])  # its random part may hold "_" itself
    assert parsed is not None
    assert parsed[2] not in row["text"]
    r = api.delete(f"/tokens/{made['id']}", as_="alice")
    a.event(r, "token.revoked", "alice", resource=f"token:{made['id']}",
            detail={"account": "alice", "name": "laptop", "kind": "pat"})
    r = api.delete(f"/tokens/{made['id']}", as_="alice")
    assert r.status_code == 204
    assert a.of(r, "token.revoked") == []  # already revoked

    r = api.delete("/users/bob")
    a.event(r, "user.deleted", "admin", resource="bob", rule=ADMIN_RULE)

    # the token minted with a password names the password, not a token, as the method
    [minted] = [row for row in a.rows() if row["action"] == "token.created"
                and row["resource"] == f"token:{a.pat['alice']}"]
    assert (minted["actor"], minted["method"], minted["token_id"]) == ("alice", "password", "")


def test_org_team_robot_and_grant_changes(audited: Audited) -> None:
    a, api = audited, audited.api
    a.add_user("bob")
    r = api.post("/orgs", {"name": "acme", "public": True}, as_="alice")
    a.event(r, "org.created", "alice", org="acme", resource="acme", rule="",
            detail={"public": True, "owner_grant": ALICE_OWNER})
    r = api.patch("/orgs/acme", {"description": "Acme Corp", "public": False}, as_="alice")
    a.event(r, "org.updated", "alice", org="acme", rule=ALICE_OWNER,
            detail={"changed": ["description", "public"], "public": False})

    r = api.post("/orgs/acme/teams", {"name": "devs"}, as_="alice")
    a.event(r, "team.created", "alice", org="acme", resource="acme/devs", rule=ALICE_OWNER,
            detail={"idp_group": None})
    r = api.patch("/orgs/acme/teams/devs", {"idp_group": "developers"}, as_="alice")
    a.event(r, "team.updated", "alice", resource="acme/devs",
            detail={"changed": ["idp_group"], "idp_group": "developers"})
    r = api.patch("/orgs/acme/teams/devs", {"idp_group": ""}, as_="alice")
    a.event(r, "team.updated", "alice", detail={"changed": ["idp_group"], "idp_group": None})
    r = api.put("/orgs/acme/teams/devs/members/bob", as_="alice")
    a.event(r, "team.member.added", "alice", org="acme", resource="acme/devs",
            detail={"member": "bob"})
    r = api.put("/orgs/acme/teams/devs/members/bob", as_="alice")
    assert r.status_code == 200
    assert a.of(r, "team.member.added") == []  # already a member
    r = api.delete("/orgs/acme/teams/devs/members/bob", as_="alice")
    a.event(r, "team.member.removed", "alice", resource="acme/devs", detail={"member": "bob"})

    r = api.post("/orgs/acme/robots", {"name": "ci", "grants": [
        {"role": "developer", "repository": "acme/app/**"}]}, as_="alice")
    secret = r.json()["secret"]
    row = a.event(r, "robot.created", "alice", org="acme", resource="robot$acme+ci",
                  rule=ALICE_OWNER,
                  detail={"grants": [{"repository": "acme/app/**", "role": "developer"}]})
    assert secret not in row["text"]
    r = api.patch("/orgs/acme/robots/ci", {"disabled": True, "description": "CI"}, as_="alice")
    a.event(r, "robot.updated", "alice", resource="robot$acme+ci",
            detail={"changed": ["description", "disabled"], "disabled": True})
    r = api.post("/orgs/acme/robots/ci/secret", as_="alice")
    row = a.event(r, "robot.secret.regenerated", "alice", resource="robot$acme+ci")
    assert r.json()["secret"] not in row["text"]
    r = api.post("/robots", {"name": "sys", "grants": [{"role": "reader",
                                                        "repository": "acme/**"}]})
    a.event(r, "robot.created", "admin", org="", resource="robot$sys", rule=ADMIN_RULE)

    r = api.post("/grants", {"subject": "team:acme/devs", "org": "acme",
                             "repository": "acme/app/**", "role": "developer"}, as_="alice")
    gid = r.json()["id"]
    line = "p, team:acme/devs, acme, acme/app/**, role:developer, allow"
    a.event(r, "grant.created", "alice", org="acme", resource=f"grant:{gid}",
            rule=ALICE_OWNER, detail={"line": line, "subject": "team:acme/devs",
                                      "effect": "allow"})
    r = api.delete(f"/grants/{gid}", as_="alice")
    a.event(r, "grant.deleted", "alice", org="acme", resource=f"grant:{gid}",
            detail={"line": line})
    r = api.post("/grants", {"subject": "user:bob", "org": "*", "role": "auditor"})
    a.event(r, "grant.created", "admin", org="", rule=ADMIN_RULE,
            detail={"line": "p, user:bob, *, **, role:auditor, allow"})

    r = api.delete("/orgs/acme/robots/ci", as_="alice")
    a.event(r, "robot.deleted", "alice", resource="robot$acme+ci",
            detail={"policy_rows_removed": 1})
    r = api.delete("/orgs/acme/teams/devs", as_="alice")
    a.event(r, "team.deleted", "alice", resource="acme/devs")
    r = api.delete("/orgs/acme", as_="alice")
    a.event(r, "org.deleted", "alice", org="acme", resource="acme", rule=ALICE_OWNER,
            detail={"robots_deleted": []})


def test_role_trust_signing_and_promotion_changes(audited: Audited) -> None:
    a, api = audited, audited.api
    assert api.post("/orgs", {"name": "acme"}, as_="alice").status_code == 201
    r = api.post("/roles", {"name": "scanner", "actions": ["pull"]})
    a.event(r, "role.created", "admin", resource="scanner", rule=ADMIN_RULE,
            detail={"actions": ["pull"], "includes": []})
    r = api.patch("/roles/scanner", {"actions": ["pull", "push"]})
    a.event(r, "role.updated", "admin", detail={"changed": ["actions"],
                                                "actions": ["pull", "push"]})
    r = api.delete("/roles/scanner")
    a.event(r, "role.deleted", "admin", resource="scanner")

    trust = {"name": "app-main", "issuer": "https://ci.example.test", "audience": "dtr",
             "conditions": [{"claim": "repository", "pattern": "acme/app"}],
             "role_binding": {"org": "acme", "repository": "acme/app", "role": "developer"}}
    r = api.post("/federation/trusts", trust, as_="alice")
    a.event(r, "federation.trust.created", "alice", org="acme", resource="app-main",
            rule=ALICE_OWNER,
            detail={"robot": "robot$acme+app-main", "owns_robot": True, "enabled": True,
                    "role_binding": {"org": "acme", "repository": "acme/app",
                                     "role": "developer"}})
    r = api.patch("/federation/trusts/app-main", {"enabled": False}, as_="alice")
    a.event(r, "federation.trust.updated", "alice", detail={"changed": ["enabled"],
                                                            "enabled": False})
    r = api.delete("/federation/trusts/app-main", as_="alice")
    a.event(r, "federation.trust.deleted", "alice", resource="app-main")

    key = m.new_key("p256")
    pem = m.public_pem(key).decode()
    kid = TrustedKey.from_pem(pem).id
    r = api.post("/signing/policies", {"name": "prod", "pattern": "acme/prod/**"})
    a.event(r, "policy.created", "admin", resource="acme/prod/**",
            detail={"policy": "prod", "actor": "admin", "keys": []})
    r = api.post("/signing/policies/prod/keys", {"pem": pem, "name": "ci"})
    a.event(r, "policy.updated", "admin", detail={
        "keysAdded": [kid], "keysRemoved": [], "changed": [], "trustStoresSet": []})
    r = api.patch("/signing/policies/prod", {"mode": "audit"})
    a.event(r, "policy.updated", "admin", detail={"changed": ["mode"], "keysAdded": []})
    r = api.patch(f"/signing/policies/prod/keys/{kid}", {"status": "revoked"})
    a.event(r, "key.revoked", "admin", resource="acme/prod/**",
            detail={"keyId": kid, "policy": "prod"})
    r = api.delete("/signing/policies/prod")
    a.event(r, "policy.deleted", "admin", resource="acme/prod/**")
    assert not [row for row in a.rows() if row["action"].startswith("signing.")]

    oci = OciClient(_AsAdmin(a.client))
    digest, _ = by_digest(oci, "acme/staging/app")
    r = api.post("/repositories/acme/prod/app/promotions",
                 {"source": f"acme/staging/app@{digest}", "tags": ["1.0"]}, as_="alice")
    assert r.status_code == 201, r.text
    a.event(r, "registry.promotion", "alice", org="acme", repository="acme/prod/app",
            digest=digest, rule=ALICE_OWNER,
            detail={"source": f"acme/staging/app@{digest}", "tags": ["1.0"]})
    # the copy itself was recorded by core, in its transactions, as the same caller
    [tagged] = a.of(r, "tag.written")
    assert (tagged["actor"], tagged["tag"], tagged["repository"]) == (
        "alice", "1.0", "acme/prod/app")


# -- change and event commit together ---------------------------------------------------------


class Spy:
    """The app's security events, seeing what is recorded in transactions."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.recorded: list[str] = []

    async def emit(self, event: SecurityEvent) -> None:
        await self.inner.emit(event)

    def deferred(self, event: SecurityEvent) -> Any:
        return self.inner.deferred(event)

    def record(self, conn: Connection, event: SecurityEvent) -> None:
        self.recorded.append(event.action)
        self.inner.record(conn, event)


def test_a_change_refused_after_its_event_leaves_neither(audited: Audited) -> None:
    a, api = audited, audited.api
    assert api.post("/orgs", {"name": "acme"}, as_="alice").status_code == 201
    security = a.client.app.state.security
    spy = Spy(security.events)
    security.events = spy
    grant = {"role": "developer", "repository": "acme/app/**"}
    r = api.post("/orgs/acme/robots", {"name": "ci", "grants": [grant, grant]}, as_="alice")
    problem(r, 409)  # the second grant is the same as the first
    assert spy.recorded == ["robot.created"]  # recorded, then the transaction rolled back
    assert a.of(r, "robot.created") == []
    problem(api.get("/orgs/acme/robots/ci", as_="alice"), 404)
    r = api.post("/orgs/acme/robots", {"name": "ci", "grants": [grant]}, as_="alice")
    a.event(r, "robot.created", "alice", resource="robot$acme+ci")


def test_a_commit_failing_after_the_events_were_chained_leaves_neither(
        audited: Audited) -> None:
    a, api = audited, audited.api
    db = a.client.app.state.security.db

    def clash(conn: Connection) -> None:
        # runs after the audit recorder chained this transaction's events: a unique
        # constraint violated at commit time (another replica took the name meanwhile)
        if conn.execute(select(Organization.id).where(Organization.name == "doomed")).first():
            conn.execute(insert(Account).values(name="alice", kind="user", disabled=False,
                                                created_at=utcnow()))

    db.before_commit.append(clash)
    try:
        r = api.post("/orgs", {"name": "doomed", "public": True}, as_="alice")
    finally:
        db.before_commit.remove(clash)
    assert r.status_code == 500, r.text
    assert not [row for row in a.rows() if row["action"] == "org.created"]
    problem(api.get("/orgs/doomed"), 404)
    a.verify()  # the chain head rolled back with the rows it would have linked
    r = api.post("/orgs", {"name": "doomed"}, as_="alice")
    a.event(r, "org.created", "alice", resource="doomed")


# -- refusals ---------------------------------------------------------------------------------


def denial(a: Audited, r: httpx.Response, as_: str, **expected: Any) -> dict[str, Any]:
    [row] = a.of(r, "admin.denied")
    assert (row["outcome"], row["actor"], row["method"], row["token_id"], row["client_ip"],
            row["user_agent"]) == ("deny", as_, "pat", a.pat[as_], CLIENT_IP, UA), row
    detail = expected.pop("detail", {})
    for name, value in expected.items():
        assert row[name] == value, (name, row)
    for name, value in detail.items():
        assert row["detail"][name] == value, (name, row["detail"])
    return row


def test_refused_calls_are_recorded_with_the_rule(audited: Audited) -> None:
    a, api = audited, audited.api
    a.add_user("bob")
    assert api.post("/orgs", {"name": "acme"}, as_="alice").status_code == 201
    r = api.post("/orgs/acme/teams", {"name": "devs"}, as_="bob")
    problem(r, 403)
    # the teams controller asks org:read first
    denial(a, r, "bob", org="acme", rule="", resource="/api/v1/orgs/acme/teams",
           reason="no grant gives org:read on acme to user:bob",
           detail={"asked": "org:read", "request": "POST /api/v1/orgs/acme/teams"})
    assert a.of(r, "team.created") == []

    # a deny rule overrides bob's ownership: the event names it
    for body in ({"subject": "user:bob", "org": "acme", "role": "owner"},
                 {"subject": "user:bob", "org": "acme", "role": "org:admin",
                  "effect": "deny"}):
        assert api.post("/grants", body, as_="alice").status_code == 201
    r = api.patch("/orgs/acme", {"description": "mine"}, as_="bob")
    problem(r, 403)
    row = denial(a, r, "bob", org="acme", rule="p, user:bob, acme, **, org:admin, deny")
    assert "deny overrides allow" in row["reason"]

    # system actions: bob may not create users
    r = api.post("/users", {"name": "eve", "password": "eve-password-1"}, as_="bob")
    problem(r, 403)
    denial(a, r, "bob", org="", detail={"asked": "system:admin"})

    # hidden objects answer 404 like missing ones, and are still recorded
    auditor = api.post("/grants", {"subject": "user:alice", "org": "*", "role": "auditor"})
    gid = auditor.json()["id"]
    hidden = api.delete(f"/grants/{gid}", as_="bob")
    missing = api.delete("/grants/999999", as_="bob")
    assert problem(hidden, 404) == {**problem(missing, 404),
                                    "detail": f"grant {gid} does not exist",
                                    "context": {"grant": gid}}
    denial(a, hidden, "bob", detail={"answered": 404})
    assert a.of(missing, "admin.denied") == []

    # a token restricted to repository scopes only reads
    a.sign_in("alice", password_of("alice"), scopes=["repository:acme/**:pull"])
    r = api.post("/orgs/acme/teams", {"name": "ops"}, as_="alice")
    problem(r, 403)
    denial(a, r, "alice", rule="", detail={"request": "POST /api/v1/orgs/acme/teams"})

    # validation errors are not refusals
    for r in (api.post("/orgs", {"name": "acme"}), api.post("/orgs", {"name": "Not Ok"})):
        assert r.status_code in (409, 422), r.text
        assert a.of(r, "admin.denied") == []


# -- OIDC login and logout --------------------------------------------------------------------

CLIENT_ID, CLIENT_SECRET = "dtr", "dtr-client-secret-1"
REDIRECT = "http://testserver.local/api/v1/auth/oidc/callback"
JSON = {"Accept": "application/json", "User-Agent": UA}


@pytest.fixture(scope="module")
def op(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenIDProvider]:
    provider = OpenIDProvider(tmp_path_factory.mktemp("op"))
    provider.add_client(CLIENT_ID, [REDIRECT], secret=CLIENT_SECRET)
    provider.set_account("sub-dave", preferred_username="dave", email="dave@example.test",
                         groups=["developers", "dtr-admins"])
    with provider:
        yield provider


@pytest.fixture
def sso(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        op: OpenIDProvider) -> Iterator[Audited]:
    monkeypatch.setenv("DTR_ADMIN_PASSWORD", ADMIN_PW)
    settings = make_settings(tmp_path, auth={"enabled": True, "oidc": {
        "enabled": True, "issuer": op.issuer, "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET, "allow_http": True, "admin_group": "dtr-admins",
        "scopes": ["openid", "profile", "email", "groups"]}})
    with TestClient(create_app(settings)) as c:
        a = Audited(c)
        yield a
        a.verify()


def oidc_callback(a: Audited, op: OpenIDProvider, sub: str,
                  tamper_state: bool = False) -> httpx.Response:
    r = a.client.get("/api/v1/auth/oidc/login", follow_redirects=False)
    assert r.status_code == 302, r.text
    cookie = r.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1].strip('"')
    a.client.cookies.clear()
    redirected = op.complete_login(r.headers["location"], sub)
    params = {k: v[0] for k, v in parse_qs(urlsplit(redirected).query).items()}
    if tamper_state:
        params["state"] = "x" + params["state"]
    r = a.client.get("/api/v1/auth/oidc/callback", params=params,
                     headers={**JSON, "Cookie": f"{STATE_COOKIE}={cookie}"})
    a.client.cookies.clear()
    return r


def test_oidc_login_records_what_it_synced_and_logout_the_session(
        sso: Audited, op: OpenIDProvider) -> None:
    a, api = sso, sso.api
    assert api.post("/orgs", {"name": "acme"}).status_code == 201
    assert api.post("/orgs/acme/teams", {"name": "devs", "idp_group": "developers"}
                    ).status_code == 201
    r = oidc_callback(a, op, "sub-dave")
    assert r.status_code == 200, r.text
    body = r.json()
    [login] = a.of(r, "auth.oidc.login")
    assert (login["outcome"], login["actor"], login["actor_kind"], login["actor_id"],
            login["method"], login["token_id"], login["client_ip"], login["user_agent"],
            login["resource"]) == ("allow", "dave", "user", "user:dave", "oidc",
                                   body["token_id"], CLIENT_IP, UA, op.issuer)
    detail = login["detail"]
    assert (detail["created"], detail["teams_added"], detail["admin_role"],
            detail["subject"]) == (True, ["acme/devs"], "granted", "sub-dave")
    assert body["session_token"] not in login["text"]

    r = oidc_callback(a, op, "sub-dave", tamper_state=True)
    assert r.status_code == 401
    [refused] = a.of(r, "auth.oidc.login")
    assert (refused["outcome"], refused["reason"], refused["actor_kind"]) == (
        "deny", "state_mismatch", "anonymous")

    r = a.client.post("/api/v1/auth/logout",
                      headers={**bearer(body["session_token"]), "User-Agent": UA})
    assert r.status_code == 200, r.text
    [logout] = a.of(r, "auth.oidc.logout")
    assert (logout["outcome"], logout["actor"], logout["method"], logout["token_id"],
            logout["client_ip"]) == ("allow", "dave", "oidc", body["token_id"], CLIENT_IP)


# -- configuration ------------------------------------------------------------------------------


def start(tmp_path: Path, **auth: Any) -> list[dict[str, Any]]:
    """Start dtr on ``tmp_path`` with ``auth`` settings, stop it; the audit rows."""
    settings = make_settings(tmp_path, auth={"enabled": True, **auth})
    with TestClient(create_app(settings)) as c:
        a = Audited(c)
        a.verify()
        return a.rows()


def test_configuration_changes_between_starts_are_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DTR_ADMIN_PASSWORD", ADMIN_PW)
    first = start(tmp_path)
    [loaded] = [r for r in first if r["action"] == "config.loaded"]
    assert not [r for r in first if r["action"] == "config.changed"]
    assert (loaded["actor_kind"], loaded["actor"], loaded["resource"]) == (
        "system", "dtr", "settings")
    assert loaded["detail"]["settings"]["auth.token_max_days"] == 365
    [bootstrap] = [r for r in first if r["action"] == "user.created"]
    assert (bootstrap["resource"], bootstrap["actor"], bootstrap["detail"]["bootstrap"],
            bootstrap["detail"]["grant"]) == ("admin", "dtr", True, ADMIN_RULE)
    assert ADMIN_PW not in bootstrap["text"]

    second = start(tmp_path, token_max_days=30, oidc={"client_secret": "s3cret-value"})
    [changed] = [r for r in second if r["action"] == "config.changed"]
    assert changed["detail"]["changed"] == ["auth.oidc.client_secret", "auth.token_max_days"]
    assert changed["detail"]["previous_fingerprint"] == loaded["detail"]["fingerprint"]
    assert not any("s3cret-value" in r["text"] for r in second)
    [_, reloaded] = [r for r in second if r["action"] == "config.loaded"]
    assert reloaded["detail"]["settings"]["auth.oidc.client_secret"] == "<redacted>"
    assert reloaded["detail"]["fingerprint"] == changed["detail"]["fingerprint"]
    assert len([r for r in second if r["action"] == "user.created"]) == 1  # once, at first

    third = start(tmp_path, token_max_days=30, oidc={"client_secret": "s3cret-value"})
    assert len([r for r in third if r["action"] == "config.changed"]) == 1
    assert len([r for r in third if r["action"] == "config.loaded"]) == 3
