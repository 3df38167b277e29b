"""The persona world, built once per session: one in-process dtr (SQLite, authentication on)
with orgs ``acme``, ``other`` and the public ``pub``, one account per persona, seeded
content, and the persona x route expectation table (``expectations.csv``) read as data.

World (grants as ``subject, org, glob, role``):

* ``owner`` / ``maintainer`` / ``developer`` / ``reader``: that role on ``acme, **``
* ``auditor``: ``auditor`` on ``*, **``;  ``admin``: the bootstrap administrator
* ``robot`` = ``robot$acme+ci``: ``developer`` on ``acme, acme/**`` (signs in with its secret)
* ``helpless``: a user without grants;  ``anonymous``: no credentials
* ``anonymous, pub, **, reader`` (pub is public); ``bystander`` (no grants) is the user the
  admin routes act on; team ``acme/devs`` (member: developer); custom role ``janitor``;
  system robot ``robot$mirror``
* content: ``acme/app`` (image ``latest`` + a referrer), ``acme/base``, ``other/lib``,
  ``pub/site`` (image ``latest`` each)
"""

from __future__ import annotations

import contextlib
import csv
import functools
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from litestar.testing import TestClient
from sqlalchemy import Connection

from dtr.api.oci.router import match
from dtr.app import create_app
from dtr.auth import accounts
from dtr.auth.accounts import HashedPassword
from dtr.auth.passwords import hash_password
from dtr.policy import admin as policy
from tests.conftest import make_settings
from tests.support.http import basic, bearer
from tests.support.oci import OCI_MANIFEST, OciClient

T = TypeVar("T")

PERSONAS = ("admin", "owner", "maintainer", "developer", "reader", "auditor", "robot",
            "helpless", "anonymous")
NO_TOKEN = "no-token"
"""The /v2 client before its token request (no Authorization header)."""
ROBOT = "robot$acme+ci"
ORG_ROLES = ("owner", "maintainer", "developer", "reader")
USERS = ("admin", *ORG_ROLES, "auditor", "helpless")
SERVICE = "testserver.local"
TABLE = Path(__file__).with_name("expectations.csv")
TOKEN_REUSE_SECONDS = 120
"""Registry tokens live 300 s; mint a new one well before that."""


def password_of(name: str) -> str:
    """Every user's password (the bootstrap admin's too)."""
    return f"{name}-password-1"


# -- the expectation table -----------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One route + method (+ variant) and what each persona must get."""

    surface: str
    method: str
    path: str
    case: str
    needs: str
    expect: dict[str, str]

    @property
    def key(self) -> tuple[str, str, str]:
        """What a builder is registered under."""
        return self.method, self.path, self.case

    def test_id(self, persona: str) -> str:
        """``persona-METHOD-path`` (``@case`` for a variant)."""
        return f"{persona}-{self.method}-{self.path}" + (f"@{self.case}" if self.case else "")


@functools.cache
def load_table() -> tuple[Row, ...]:
    """The rows of ``expectations.csv`` (``#`` lines are comments)."""
    lines = [line for line in TABLE.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    rows = []
    for raw in csv.DictReader(lines):
        expect = {p: raw[p].strip() for p in (*PERSONAS, NO_TOKEN)}
        rows.append(Row(raw["surface"], raw["method"], raw["path"], raw["case"], raw["needs"],
                        expect))
    return tuple(rows)


def persona_cases(*surfaces: str) -> list[Any]:
    """``pytest.param(row, persona)`` for every applicable cell of ``surfaces``."""
    params = []
    for row in load_table():
        if row.surface not in surfaces:
            continue
        for persona in (*PERSONAS, NO_TOKEN):
            if row.expect[persona] == "-":
                continue
            params.append(pytest.param(row, persona, id=row.test_id(persona)))
    return params


# -- the world -----------------------------------------------------------------------------


class _AsAdmin:
    """An httpx-like client for ``OciClient`` that signs each /v2 request as the
    administrator with a token for the repository in the path.
    """

    def __init__(self, world: World) -> None:
        self.world = world

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        path = urlsplit(url).path.removeprefix("/v2")
        _spec, params = match(path)
        repo = params["name"]
        headers = {**(kw.pop("headers", None) or {}), **bearer(self.world.admin_token(repo))}
        return self.world.client.request(method, url, headers=headers, **kw)

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PUT", url, **kw)

    def patch(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PATCH", url, **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", url, **kw)


@dataclass
class Image:
    """A seeded image: its manifest bytes and digest, and one layer digest."""

    repo: str
    manifest: bytes
    digest: str
    layer: str


class World:
    """The running app, the personas' credentials and helpers to seed per-case targets."""

    def __init__(self, client: TestClient[Any]) -> None:
        self.client = client
        self.secrets: dict[str, str] = {u: password_of(u) for u in USERS}
        """What each persona types at ``docker login``: password, or the robot's secret."""
        self.pats: dict[str, str] = {}
        """Each user's unrestricted personal access token (for the admin API)."""
        self.images: dict[str, Image] = {}
        self._counter = itertools.count(1)
        self._tokens: dict[tuple[str, ...], tuple[float, str]] = {}
        self.oci = OciClient(_AsAdmin(self))
        self.hashed = HashedPassword(hash_password("victim-password-1"))

    # -- identities -------------------------------------------------------------------------

    @staticmethod
    def account(persona: str) -> str:
        """The account name a persona signs in as."""
        return ROBOT if persona == "robot" else persona

    @staticmethod
    def subject(persona: str) -> str:
        """The persona's policy subject."""
        if persona in ("anonymous", NO_TOKEN):
            return "anonymous"
        return f"robot:{ROBOT}" if persona == "robot" else f"user:{persona}"

    def credentials(self, persona: str, *, password: bool = False) -> dict[str, str]:
        """Basic credentials for the admin API: a user's personal access token (or the
        password when asked: argon2 spends ~45 ms on each check, too slow for hundreds of
        cases), the robot's secret; none for anonymous.
        """
        if persona in ("anonymous", NO_TOKEN):
            return {}
        secret = self.secrets[persona] if password else self.pats.get(persona)
        return basic(self.account(persona), secret or self.secrets[persona])

    def unique(self, prefix: str) -> str:
        """A fresh name (``prefix-N``) for a per-case target."""
        return f"{prefix}-{next(self._counter)}"

    # -- tokens -----------------------------------------------------------------------------

    def registry_token(self, persona: str, scopes: list[str]) -> str:
        """A /v2 token from ``GET /auth/token`` as ``persona`` (password or robot secret,
        like ``docker login``) for ``scopes``; reused for a while, like a client would.
        """
        key = (persona, *scopes)
        cached = self._tokens.get(key)
        if cached and time.monotonic() - cached[0] < TOKEN_REUSE_SECONDS:
            return cached[1]
        query = httpx.QueryParams([("service", SERVICE), *[("scope", s) for s in scopes]])
        r = self.client.get("/auth/token", params=query,
                            headers=self.credentials(persona, password=True))
        assert r.status_code == 200, r.text
        token = str(r.json()["token"])
        self._tokens[key] = (time.monotonic(), token)
        return token

    def admin_token(self, repo: str) -> str:
        """The administrator's pull/push/delete token for ``repo``."""
        return self.registry_token("admin", [f"repository:{repo}:pull,push,delete"])

    # -- database ---------------------------------------------------------------------------

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` as one write transaction, then refresh the policy (like the API)."""
        security = self.client.app.state.security
        result: T = self.client.blocking_portal.call(
            functools.partial(security.db.run, fn, write=True))
        self.client.blocking_portal.call(security.policy.refresh)
        return result

    # -- per-case targets -------------------------------------------------------------------

    def new_blob(self, repo: str) -> str:
        """Push a blob no other repository holds; its digest."""
        return self.oci.push_blob(repo, f"unique blob {self.unique('b')}".encode())

    def new_tag(self, repo: str) -> str:
        """Tag the repository's seeded manifest with a fresh tag; the tag."""
        tag = self.unique("tag")
        r = self.oci.put_manifest(repo, tag, self.images[repo].manifest)
        assert r.status_code == 201, r.text
        return tag

    def new_upload(self, repo: str) -> str:
        """Open an upload session as the administrator; its Location."""
        r = self.oci.http.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        return str(r.headers["location"])

    def new_user(self) -> str:
        """A user without grants (pre-hashed password: no argon2 in the test)."""
        name = self.unique("victim")
        self.write(lambda c: accounts.create_user(c, name, self.hashed))
        return name

    def new_team(self, *members: str) -> str:
        """A team in acme with ``members`` (subjects)."""
        name = self.unique("team")

        def tx(conn: Connection) -> None:
            accounts.create_team(conn, "acme", name)
            for member in members:
                policy.add_member(conn, "acme", name, member)

        self.write(tx)
        return name

    def new_robot(self, org: str | None) -> str:
        """A robot of ``org`` (or a system robot); its short name."""
        name = self.unique("bot")
        self.write(lambda c: accounts.create_robot(c, name, org, created_by="admin"))
        return name

    def new_org(self, *, like_acme: bool) -> str:
        """A fresh org; ``like_acme``: owner, maintainer, developer and reader hold their
        acme roles in it too (else no persona has a grant there).
        """
        name = self.unique("org")

        def tx(conn: Connection) -> None:
            accounts.create_org(conn, name, created_by="admin")
            for role in ORG_ROLES if like_acme else ():
                policy.create_grant(conn, f"user:{role}", name, "**", role)

        self.write(tx)
        return name

    def new_role(self) -> str:
        """A custom role nothing uses."""
        name = self.unique("role")
        self.write(lambda c: policy.create_role(c, name, ["pull"], [], "disposable"))
        return name

    def new_grant(self, org: str) -> int:
        """A grant of reader to bystander in ``org`` (``*`` = system); its id."""
        glob = f"{org}/{self.unique('g')}/**" if org != "*" else f"{self.unique('g')}/**"
        return self.write(lambda c: policy.create_grant(c, "user:bystander", org, glob,
                                                        "reader")).id

    def new_token(self, account: str) -> str:
        """A personal access token of ``account``; its id."""
        return self.write(lambda c: accounts.create_token(c, account, self.unique("pat")).info.id)

    # -- building ---------------------------------------------------------------------------

    def build(self) -> None:
        """Accounts, grants, teams, roles, robots and content."""

        def tx(conn: Connection) -> tuple[str, dict[str, str]]:
            for org in ("acme", "other", "pub"):
                accounts.create_org(conn, org, created_by="admin")
            for name in (*ORG_ROLES, "auditor", "helpless", "bystander"):
                accounts.create_user(conn, name, password_of(name))
            for role in ORG_ROLES:
                policy.create_grant(conn, f"user:{role}", "acme", "**", role)
            policy.create_grant(conn, "user:auditor", "*", "**", "auditor")
            robot = accounts.create_robot(conn, "ci", "acme", created_by="admin")
            policy.create_grant(conn, f"robot:{ROBOT}", "acme", "acme/**", "developer")
            accounts.create_robot(conn, "mirror", None, created_by="admin")
            policy.create_grant(conn, "anonymous", "pub", "**", "reader")
            accounts.create_team(conn, "acme", "devs")
            policy.add_member(conn, "acme", "devs", "user:developer")
            policy.create_role(conn, "janitor", ["pull", "delete"], [], "cleans up")
            pats = {u: accounts.create_token(conn, u, "personas").secret for u in USERS}
            return robot.secret, pats

        self.secrets["robot"], self.pats = self.write(tx)
        for repo in ("acme/app", "acme/base", "other/lib", "pub/site"):
            body = self.oci.image(repo)
            r = self.oci.put_manifest(repo, "latest", body)
            assert r.status_code == 201, r.text
            layer = json.loads(body)["layers"][0]["digest"]
            self.images[repo] = Image(repo, body, r.headers["docker-content-digest"], layer)
        app = self.images["acme/app"]
        sbom = self.oci.image("acme/app", artifactType="application/vnd.example.sbom+json",
                              subject={"mediaType": OCI_MANIFEST, "digest": app.digest,
                                       "size": len(app.manifest)})
        r = self.oci.put_manifest("acme/app", "sbom", sbom)
        assert r.status_code == 201, r.text


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The persona world, built once."""
    settings = make_settings(tmp_path_factory.mktemp("personas"), auth={"enabled": True})
    with contextlib.ExitStack() as stack:
        # The password is read at startup only: keep it out of the rest of the session.
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DTR_ADMIN_PASSWORD", password_of("admin"))
            client = stack.enter_context(TestClient(create_app(settings)))
        w = World(client)
        w.build()
        yield w
