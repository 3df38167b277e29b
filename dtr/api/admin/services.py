"""The admin API's account operations (the caller, users, orgs, teams, robots, tokens):
each composes the auth and policy layers' sync functions into ONE transaction, then
refreshes this worker's policy so the caller reads their own writes. Checks that depend on
the body or the caller (self-service limits, who may mint tokens) are made here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Connection

from dtr.api.admin import schemas as s
from dtr.api.admin.guards import Caller
from dtr.api.context import Security
from dtr.auth import accounts as acc
from dtr.auth.accounts import AccountInfo, NewSecret, OrgInfo, TeamInfo, TokenInfo
from dtr.config import AuthSettings
from dtr.db.base import utcnow
from dtr.errors import Conflict, Denied, Invalid, NotFound
from dtr.policy import admin as pol
from dtr.policy.actions import ANONYMOUS, SYSTEM
from dtr.policy.admin import Grant

T = TypeVar("T")
PUBLIC_ROLE = "pull"  # the action, not the reader role: never org:read
OWNER_ROLE = "owner"
DEFAULT_TOKEN_DAYS = 90
MINTING_METHODS = frozenset({"password", "pat", "oidc"})


@dataclass(frozen=True, slots=True)
class OrgView:
    """An organization and whether anonymous callers may read it."""

    org: OrgInfo
    public: bool


@dataclass(frozen=True, slots=True)
class TeamView:
    """A team and its member account names."""

    team: TeamInfo
    members: list[str]


def _member_name(subject: str) -> str:
    return subject.partition(":")[2]


def _member_subject(name: str) -> str:
    return f"robot:{name}" if name.startswith("robot$") else f"user:{name}"


def _is_public(conn: Connection, org: str) -> bool:
    return any(g.repository == "**" and g.role == PUBLIC_ROLE and g.effect == "allow"
               for g in pol.list_grants(conn, org=org, subject=ANONYMOUS))


def _set_public(conn: Connection, org: str, public: bool) -> None:
    current = [g for g in pol.list_grants(conn, org=org, subject=ANONYMOUS)
               if g.repository == "**" and g.role == PUBLIC_ROLE and g.effect == "allow"]
    if public and not current:
        pol.create_grant(conn, ANONYMOUS, org, "**", PUBLIC_ROLE)
    for grant in [] if public else current:
        pol.delete_grant(conn, grant.id)


def _days_from_now(days: int) -> dt.datetime:
    return utcnow() + dt.timedelta(days=days)


class ServiceBase:
    """One transaction per operation, then this worker's policy is refreshed.

    Args:
        security: the worker's auth services (database, policy engine).
        settings: the ``auth`` settings (org creation, token and robot lifetimes).
    """

    def __init__(self, security: Security, settings: AuthSettings) -> None:
        self.security = security
        self.settings = settings
        self.db = security.db

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        return await self.db.run(fn, write=False)

    async def _write(self, fn: Callable[[Connection], T]) -> T:
        result = await self.db.run(fn, write=True)
        await self.security.policy.refresh()
        return result


class AdminService(ServiceBase):
    """Accounts and what hangs off them: the caller, users, organizations, teams, robots and
    personal access tokens.
    """

    # -- me ----------------------------------------------------------------------------------

    async def me(self, caller: Caller) -> s.Me:
        """The caller, their teams and their system-wide roles."""
        def tx(conn: Connection) -> tuple[list[str], list[Grant]]:
            return (pol.teams_of(conn, caller.subject),
                    pol.list_grants(conn, org=SYSTEM, subject=caller.subject))

        teams, grants = await self._read(tx)
        p = caller.principal
        return s.Me(name=p.name, kind=p.kind, subject=p.subject, method=p.method,
                    teams=[t.removeprefix("team:") for t in teams],
                    system_roles=sorted({g.role for g in grants if g.effect == "allow"}),
                    token_id=p.token_id, scopes=None if p.scopes is None else list(p.scopes))

    # -- users -------------------------------------------------------------------------------

    async def list_users(self) -> list[AccountInfo]:
        """Every user account."""
        return await self._read(lambda c: acc.list_accounts(c, kind="user"))

    async def get_user(self, name: str) -> AccountInfo:
        """One user (robots are not users).

        Raises:
            NotFound: no such user.
        """
        return await self._read(lambda c: _user(c, name))

    async def create_user(self, caller: Caller, data: s.UserCreate) -> AccountInfo:
        """Create a user (the password is hashed before the transaction); ``oidc`` = a
        single sign-on user without a password.

        Raises:
            Invalid: neither or both of ``password`` and ``oidc``.
        """
        if data.oidc == (data.password is not None):
            raise Invalid("give a password, or oidc: true for a user who signs in with "
                          "single sign-on (not both)")
        hashed = None if data.password is None else await acc.prepare_password(data.password)
        return await self._write(lambda c: acc.create_user(
            c, data.name, hashed, email=data.email, created_by=caller.name))

    async def update_user(self, caller: Caller, name: str, data: s.UserUpdate) -> AccountInfo:
        """Change a user; users who are not administrators may only change their own
        password.

        Raises:
            Denied: a non-administrator changes their e-mail or lock state.
        """
        if not caller.may("system:admin") and (data.email is not None
                                                or data.disabled is not None):
            raise Denied("you may change your own password only; e-mail and lock state "
                         "need system:admin")
        hashed = None if data.password is None else await acc.prepare_password(data.password)
        return await self._write(lambda c: acc.update_user(
            c, name, email=data.email, password=hashed, disabled=data.disabled))

    async def delete_user(self, caller: Caller, name: str) -> None:
        """Delete a user with their tokens, grants and team memberships (one transaction).

        Raises:
            Conflict: the caller deletes their own account.
        """
        if name == caller.name and caller.principal.kind == "user":
            raise Conflict("you cannot delete your own account")

        def tx(conn: Connection) -> None:
            _user(conn, name)
            acc.delete_account(conn, name)
            pol.remove_subject(conn, f"user:{name}")

        await self._write(tx)

    # -- organizations -----------------------------------------------------------------------

    async def list_orgs(self, caller: Caller) -> list[OrgView]:
        """The organizations the caller may read (``org:read``), and every public one."""
        def tx(conn: Connection) -> tuple[list[OrgInfo], set[str]]:
            public = {g.org for g in pol.list_grants(conn, subject=ANONYMOUS)
                      if g.repository == "**" and g.role == PUBLIC_ROLE and g.effect == "allow"}
            return acc.list_orgs(conn), public

        orgs, public = await self._read(tx)
        return [OrgView(o, o.name in public) for o in orgs
                if o.name in public or caller.may("org:read", o.name)]

    async def get_org(self, name: str) -> OrgView:
        """One organization.

        Raises:
            NotFound: no such organization.
        """
        return await self._read(lambda c: OrgView(acc.get_org(c, name), _is_public(c, name)))

    async def create_org(self, caller: Caller, data: s.OrgCreate) -> OrgView:
        """Create an organization; its creator gets ``owner`` on ``**`` (same transaction).

        Raises:
            Denied: organization creation is limited to administrators (or robots).
        """
        everyone = self.settings.org_creation == "everyone" and caller.principal.kind == "user"
        if not everyone:
            caller.require("system:admin")

        def tx(conn: Connection) -> OrgView:
            org = acc.create_org(conn, data.name, description=data.description,
                                 created_by=caller.name)
            pol.create_grant(conn, caller.subject, data.name, "**", OWNER_ROLE)
            if data.public:
                _set_public(conn, data.name, True)
            return OrgView(org, data.public)

        return await self._write(tx)

    async def update_org(self, name: str, data: s.OrgUpdate) -> OrgView:
        """Change the description or visibility (the anonymous ``reader`` grant)."""
        def tx(conn: Connection) -> OrgView:
            org = acc.update_org(conn, name, description=data.description)
            if data.public is not None:
                _set_public(conn, name, data.public)
            return OrgView(org, _is_public(conn, name))

        return await self._write(tx)

    async def delete_org(self, name: str) -> None:
        """Delete an organization with its teams, robots and every policy row of it."""
        def tx(conn: Connection) -> None:
            acc.delete_org(conn, name)
            pol.remove_org(conn, name)

        await self._write(tx)

    # -- teams -------------------------------------------------------------------------------

    async def list_teams(self, org: str) -> list[TeamView]:
        """The teams of an organization with their members."""
        def tx(conn: Connection) -> list[TeamView]:
            return [TeamView(t, [_member_name(m) for m in pol.list_members(conn, org, t.name)])
                    for t in acc.list_teams(conn, org)]

        return await self._read(tx)

    async def get_team(self, org: str, team: str) -> TeamView:
        """One team with its members.

        Raises:
            NotFound: no such organization or team.
        """
        return await self._read(lambda c: _team_view(c, org, team))

    async def create_team(self, org: str, data: s.TeamCreate) -> TeamView:
        """Create a team.

        Raises:
            NotFound: no such organization.
        """
        def tx(conn: Connection) -> TeamView:
            acc.get_org(conn, org)
            return TeamView(acc.create_team(conn, org, data.name, data.description,
                                            data.idp_group), [])

        return await self._write(tx)

    async def update_team(self, org: str, team: str, data: s.TeamUpdate) -> TeamView:
        """Change a team's description or provider group."""
        def tx(conn: Connection) -> TeamView:
            acc.update_team(conn, org, team, description=data.description,
                            idp_group=data.idp_group)
            return _team_view(conn, org, team)

        return await self._write(tx)

    async def delete_team(self, org: str, team: str) -> None:
        """Delete a team with its memberships and grants (one transaction)."""
        def tx(conn: Connection) -> None:
            acc.delete_team(conn, org, team)
            pol.remove_team(conn, org, team)

        await self._write(tx)

    async def add_member(self, org: str, team: str, member: str) -> TeamView:
        """Put a user (or a robot of this org) in a team; idempotent.

        Raises:
            NotFound: no such team or account.
        """
        def tx(conn: Connection) -> TeamView:
            _manual_team(conn, org, team)
            pol.add_member(conn, org, team, _member_subject(member))
            return _team_view(conn, org, team)

        return await self._write(tx)

    async def remove_member(self, org: str, team: str, member: str) -> None:
        """Take a member out of a team.

        Raises:
            NotFound: no such team, or not a member.
        """
        def tx(conn: Connection) -> None:
            _manual_team(conn, org, team)
            pol.remove_member(conn, org, team, _member_subject(member))

        await self._write(tx)

    # -- robots ------------------------------------------------------------------------------

    async def list_robots(self, org: str | None) -> list[AccountInfo]:
        """An organization's robots, or the system robots (``org`` None)."""
        def tx(conn: Connection) -> list[AccountInfo]:
            if org is not None:
                acc.get_org(conn, org)
            return [r for r in acc.list_accounts(conn, kind="robot", org=org) if r.org == org]

        return await self._read(tx)

    async def get_robot(self, org: str | None, name: str) -> AccountInfo:
        """One robot by short name.

        Raises:
            NotFound: no such robot in this organization (or system-wide).
        """
        return await self._read(lambda c: _robot(c, org, name))

    async def create_robot(self, caller: Caller, org: str | None,
                           data: s.RobotCreate) -> tuple[NewSecret[AccountInfo], list[Grant]]:
        """Create a robot and its initial grants (same transaction); the secret is in the
        result, once. ``expires_in_days`` None = the configured default, 0 = never.
        """
        days = (self.settings.robot_default_expiry_days if data.expires_in_days is None
                else data.expires_in_days)
        expires = _days_from_now(days) if days else None

        def tx(conn: Connection) -> tuple[NewSecret[AccountInfo], list[Grant]]:
            if org is not None:
                acc.get_org(conn, org)
            made = acc.create_robot(conn, data.name, org, description=data.description,
                                    expires_at=expires, created_by=caller.name)
            grants = [pol.create_grant(conn, made.info.subject, org or SYSTEM, g.repository,
                                       g.role) for g in data.grants]
            return made, grants

        return await self._write(tx)

    async def delete_robot(self, org: str | None, name: str) -> None:
        """Delete a robot with its grants and memberships (one transaction)."""
        def tx(conn: Connection) -> None:
            robot = _robot(conn, org, name)
            acc.delete_account(conn, robot.name)
            pol.remove_subject(conn, robot.subject)

        await self._write(tx)

    async def update_robot(self, org: str | None, name: str,
                           data: s.RobotUpdate) -> AccountInfo:
        """Change a robot's description, disabled flag or expiry (disabling or expiring
        it stops its logins at once).
        """
        expiry: dict[str, dt.datetime | None] = {}
        if data.expires_in_days is not None:
            expiry["expires_at"] = (
                None if data.expires_in_days == 0 else
                dt.datetime.now(dt.UTC) + dt.timedelta(days=data.expires_in_days))

        def tx(conn: Connection) -> AccountInfo:
            robot = _robot(conn, org, name)
            return acc.update_robot(conn, robot.name, description=data.description,
                                    disabled=data.disabled, **expiry)

        return await self._write(tx)

    async def regenerate_robot(self, org: str | None, name: str) -> NewSecret[AccountInfo]:
        """A new secret for a robot (the old one stops working at once)."""
        def tx(conn: Connection) -> NewSecret[AccountInfo]:
            return acc.regenerate_robot_secret(conn, _robot(conn, org, name).name)

        return await self._write(tx)

    # -- personal access tokens --------------------------------------------------------------

    async def list_tokens(self, caller: Caller) -> list[TokenInfo]:
        """The caller's own tokens (revoked and expired included)."""
        return await self._read(lambda c: acc.list_tokens(c, caller.name))

    async def create_token(self, caller: Caller, data: s.TokenCreate) -> NewSecret[TokenInfo]:
        """Mint a personal access token for the caller; the secret is in the result, once.

        Raises:
            Denied: the caller used a scope-restricted token or a registry token.
            Invalid: the lifetime exceeds ``auth.token_max_days``, or bad scopes.
        """
        p = caller.principal
        if p.scopes is not None or p.method not in MINTING_METHODS:
            raise Denied("tokens can only be created with a password or an unrestricted "
                         "personal access token")
        longest = self.settings.token_max_days
        days = data.expires_in_days or min(DEFAULT_TOKEN_DAYS, longest)
        if days > longest:
            raise Invalid(f"expires_in_days: at most {longest} (auth.token_max_days)")
        return await self._write(lambda c: acc.create_token(
            c, caller.name, data.name, scopes=data.scopes, expires_at=_days_from_now(days),
            max_days=longest))

    async def revoke_token(self, caller: Caller, token_id: str) -> None:
        """Revoke one of the caller's tokens; it stops working at once."""
        await self._write(lambda c: acc.revoke_token(c, caller.name, token_id))

def _user(conn: Connection, name: str) -> AccountInfo:
    info = acc.get_account(conn, name)
    if info.kind != "user":
        raise NotFound(f"user {name} not found")
    return info


def _robot(conn: Connection, org: str | None, name: str) -> AccountInfo:
    full = acc.robot_name(name, org)
    try:
        info = acc.get_account(conn, full)
    except NotFound:
        if org is not None:
            acc.get_org(conn, org)
        raise NotFound(f"robot {full} not found") from None
    if info.kind != "robot":
        raise NotFound(f"robot {full} not found")
    return info


def _manual_team(conn: Connection, org: str, team: str) -> TeamInfo:
    """The team, if its membership is managed in dtr.

    Raises:
        NotFound: no such team.
        Conflict: the team mirrors a provider group (team sync sets its members).
    """
    info = acc.get_team(conn, org, team)
    if info.idp_group:
        raise Conflict(f"the members of {org}/{team} come from the identity provider group "
                       f"{info.idp_group!r} (set at each OIDC login); change the group at "
                       "the provider, or clear the team's idp_group",
                       {"team": f"{org}/{team}", "idp_group": info.idp_group})
    return info


def _team_view(conn: Connection, org: str, team: str) -> TeamView:
    info = acc.get_team(conn, org, team)
    return TeamView(info, [_member_name(m) for m in pol.list_members(conn, org, team)])
