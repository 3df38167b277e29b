"""The admin API's account operations (the caller, users, orgs, teams, robots, tokens):
each composes the auth and policy layers' sync functions into ONE transaction, then
refreshes this worker's policy so the caller reads their own writes. Checks that depend on
the body or the caller (self-service limits, who may mint tokens) are made here.

Every change is recorded as a security event (``user.created``, ``grant.deleted``, …) in
the transaction that makes it (:class:`Record`), so the change and its record commit or
roll back together; the event names the rule that allowed the caller (``Caller.why``).
Details never hold a secret (passwords, robot secrets, token strings).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection

from dtr.api.admin import schemas as s
from dtr.api.admin.guards import Caller
from dtr.api.context import Security
from dtr.auth import accounts as acc
from dtr.auth.accounts import AccountInfo, NewSecret, OrgInfo, TeamInfo, TokenInfo
from dtr.config import AuthSettings
from dtr.db.base import utcnow
from dtr.errors import Conflict, Denied, Invalid, NotFound
from dtr.events import SecurityEvent, SecurityEvents
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


def changed(before: object, after: object, names: Iterable[str]) -> list[str]:
    """The attributes among ``names`` whose values differ between ``before`` and
    ``after`` (what an update changed, for its event).
    """
    return [n for n in names if getattr(before, n) != getattr(after, n)]


class Record:
    """Records the security events of one admin transaction, in it.

    Args:
        events: where events go (``SecurityEvents.record``).
        conn: the transaction.
        rule: the policy line that allowed the caller (each event's ``rule``).
    """

    __slots__ = ("conn", "events", "rule")

    def __init__(self, events: SecurityEvents, conn: Connection, rule: str) -> None:
        self.events = events
        self.conn = conn
        self.rule = rule

    def __call__(self, action: str, resource: str, *, org: str | None = None,
                 **detail: Any) -> None:
        """Record the allowed change ``action`` of ``resource`` (in ``org``; ``*`` and
        None mean none) with ``detail`` (never a secret).
        """
        self.events.record(self.conn, SecurityEvent(
            action=action, outcome="allow", resource=resource,
            org="" if org in (None, SYSTEM) else str(org), rule=self.rule, detail=detail))


class ServiceBase:
    """One transaction per operation, its events recorded in it, then this worker's policy
    is refreshed.

    Args:
        security: the worker's auth services (database, policy engine, events).
        settings: the ``auth`` settings (org creation, token and robot lifetimes).
    """

    def __init__(self, security: Security, settings: AuthSettings) -> None:
        self.security = security
        self.settings = settings
        self.db = security.db

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        return await self.db.run(fn, write=False)

    async def _write(self, caller: Caller, fn: Callable[[Connection, Record], T]) -> T:
        """Run ``fn(conn, record)`` as one write transaction; ``record`` adds its events
        to that transaction (stamped with the rule that allowed ``caller``).
        """
        rule = caller.why()
        events = self.security.events
        result = await self.db.run(lambda conn: fn(conn, Record(events, conn, rule)),
                                   write=True)
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

        def tx(conn: Connection, record: Record) -> AccountInfo:
            user = acc.create_user(conn, data.name, hashed, email=data.email,
                                   created_by=caller.name)
            record("user.created", user.name, sign_in="oidc" if data.oidc else "password",
                   email=user.email is not None)
            return user

        return await self._write(caller, tx)

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

        def tx(conn: Connection, record: Record) -> AccountInfo:
            before = _existing(conn, name)  # None: update_user raises, naming what is missing
            after = acc.update_user(conn, name, email=data.email, password=hashed,
                                    disabled=data.disabled)
            fields = [] if before is None else changed(before, after, ("email", "disabled"))
            if hashed is not None:
                fields.append("password")
            if fields:
                was_disabled = before is not None and before.disabled
                action = ("user.disabled" if after.disabled and not was_disabled
                          else "user.updated")
                record(action, name, changed=fields, disabled=after.disabled)
            return after

        return await self._write(caller, tx)

    async def delete_user(self, caller: Caller, name: str) -> None:
        """Delete a user with their tokens, grants and team memberships (one transaction).

        Raises:
            Conflict: the caller deletes their own account.
        """
        if name == caller.name and caller.principal.kind == "user":
            raise Conflict("you cannot delete your own account")

        def tx(conn: Connection, record: Record) -> None:
            _user(conn, name)
            acc.delete_account(conn, name)
            rules = pol.remove_subject(conn, f"user:{name}")
            record("user.deleted", name, policy_rows_removed=rules)

        await self._write(caller, tx)

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

        An auditor's account is read-only: it founds no organization unless it is also a
        system administrator.

        Raises:
            Denied: organization creation is limited to administrators (or robots).
        """
        everyone = self.settings.org_creation == "everyone" and caller.principal.kind == "user"
        if everyone and caller.may("audit:read") and not caller.may("system:admin"):
            everyone = False
        if not everyone:
            caller.require("system:admin")

        def tx(conn: Connection, record: Record) -> OrgView:
            org = acc.create_org(conn, data.name, description=data.description,
                                 created_by=caller.name)
            owner = pol.create_grant(conn, caller.subject, data.name, "**", OWNER_ROLE)
            if data.public:
                _set_public(conn, data.name, True)
            record("org.created", org.name, org=org.name, public=data.public,
                   owner_grant=owner.line)
            return OrgView(org, data.public)

        return await self._write(caller, tx)

    async def update_org(self, caller: Caller, name: str, data: s.OrgUpdate) -> OrgView:
        """Change the description or visibility (the anonymous ``reader`` grant)."""
        def tx(conn: Connection, record: Record) -> OrgView:
            before = OrgView(acc.get_org(conn, name), _is_public(conn, name))
            org = acc.update_org(conn, name, description=data.description)
            if data.public is not None:
                _set_public(conn, name, data.public)
            after = OrgView(org, _is_public(conn, name))
            fields = changed(before.org, after.org, ("description",))
            fields += changed(before, after, ("public",))
            if fields:
                record("org.updated", name, org=name, changed=fields, public=after.public)
            return after

        return await self._write(caller, tx)

    async def delete_org(self, caller: Caller, name: str) -> None:
        """Delete an organization with its teams, robots and every policy row of it."""
        def tx(conn: Connection, record: Record) -> None:
            robots = acc.delete_org(conn, name)
            rules = pol.remove_org(conn, name)
            record("org.deleted", name, org=name, robots_deleted=robots,
                   policy_rows_removed=rules)

        await self._write(caller, tx)

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

    async def create_team(self, caller: Caller, org: str, data: s.TeamCreate) -> TeamView:
        """Create a team.

        Raises:
            NotFound: no such organization.
        """
        def tx(conn: Connection, record: Record) -> TeamView:
            acc.get_org(conn, org)
            team = acc.create_team(conn, org, data.name, data.description, data.idp_group)
            record("team.created", f"{org}/{team.name}", org=org, idp_group=team.idp_group)
            return TeamView(team, [])

        return await self._write(caller, tx)

    async def update_team(self, caller: Caller, org: str, team: str,
                          data: s.TeamUpdate) -> TeamView:
        """Change a team's description or provider group."""
        def tx(conn: Connection, record: Record) -> TeamView:
            before = acc.get_team(conn, org, team)
            after = acc.update_team(conn, org, team, description=data.description,
                                    idp_group=data.idp_group)
            fields = changed(before, after, ("description", "idp_group"))
            if fields:
                record("team.updated", f"{org}/{team}", org=org, changed=fields,
                       idp_group=after.idp_group)
            return _team_view(conn, org, team)

        return await self._write(caller, tx)

    async def delete_team(self, caller: Caller, org: str, team: str) -> None:
        """Delete a team with its memberships and grants (one transaction)."""
        def tx(conn: Connection, record: Record) -> None:
            acc.delete_team(conn, org, team)
            rules = pol.remove_team(conn, org, team)
            record("team.deleted", f"{org}/{team}", org=org, policy_rows_removed=rules)

        await self._write(caller, tx)

    async def add_member(self, caller: Caller, org: str, team: str, member: str) -> TeamView:
        """Put a user (or a robot of this org) in a team; idempotent (no event when the
        account already was a member).

        Raises:
            NotFound: no such team or account.
        """
        def tx(conn: Connection, record: Record) -> TeamView:
            _manual_team(conn, org, team)
            if pol.add_member(conn, org, team, _member_subject(member)):
                record("team.member.added", f"{org}/{team}", org=org, member=member)
            return _team_view(conn, org, team)

        return await self._write(caller, tx)

    async def remove_member(self, caller: Caller, org: str, team: str, member: str) -> None:
        """Take a member out of a team.

        Raises:
            NotFound: no such team, or not a member.
        """
        def tx(conn: Connection, record: Record) -> None:
            _manual_team(conn, org, team)
            pol.remove_member(conn, org, team, _member_subject(member))
            record("team.member.removed", f"{org}/{team}", org=org, member=member)

        await self._write(caller, tx)

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

        def tx(conn: Connection, record: Record) -> tuple[NewSecret[AccountInfo], list[Grant]]:
            if org is not None:
                acc.get_org(conn, org)
            made = acc.create_robot(conn, data.name, org, description=data.description,
                                    expires_at=expires, created_by=caller.name)
            # recorded before the grants: a grant refused below takes the event back too
            record("robot.created", made.info.name, org=org, expires_at=expires,
                   grants=[{"repository": g.repository, "role": g.role}
                           for g in data.grants])
            grants = [pol.create_grant(conn, made.info.subject, org or SYSTEM, g.repository,
                                       g.role) for g in data.grants]
            return made, grants

        return await self._write(caller, tx)

    async def delete_robot(self, caller: Caller, org: str | None, name: str) -> None:
        """Delete a robot with its grants and memberships (one transaction)."""
        def tx(conn: Connection, record: Record) -> None:
            robot = _robot(conn, org, name)
            acc.delete_account(conn, robot.name)
            rules = pol.remove_subject(conn, robot.subject)
            record("robot.deleted", robot.name, org=org, policy_rows_removed=rules)

        await self._write(caller, tx)

    async def update_robot(self, caller: Caller, org: str | None, name: str,
                           data: s.RobotUpdate) -> AccountInfo:
        """Change a robot's description, disabled flag or expiry (disabling or expiring
        it stops its logins at once).
        """
        expiry: dict[str, dt.datetime | None] = {}
        if data.expires_in_days is not None:
            expiry["expires_at"] = (
                None if data.expires_in_days == 0 else
                dt.datetime.now(dt.UTC) + dt.timedelta(days=data.expires_in_days))

        def tx(conn: Connection, record: Record) -> AccountInfo:
            before = _robot(conn, org, name)
            after = acc.update_robot(conn, before.name, description=data.description,
                                     disabled=data.disabled, **expiry)
            fields = changed(before, after, ("description", "disabled", "expires_at"))
            if fields:
                record("robot.updated", after.name, org=org, changed=fields,
                       disabled=after.disabled, expires_at=after.expires_at)
            return after

        return await self._write(caller, tx)

    async def regenerate_robot(self, caller: Caller, org: str | None,
                               name: str) -> NewSecret[AccountInfo]:
        """A new secret for a robot (the old one stops working at once)."""
        def tx(conn: Connection, record: Record) -> NewSecret[AccountInfo]:
            made = acc.regenerate_robot_secret(conn, _robot(conn, org, name).name)
            record("robot.secret.regenerated", made.info.name, org=org)
            return made

        return await self._write(caller, tx)

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
        def tx(conn: Connection, record: Record) -> NewSecret[TokenInfo]:
            made = acc.create_token(conn, caller.name, data.name, scopes=data.scopes,
                                    expires_at=_days_from_now(days), max_days=longest)
            info = made.info
            record("token.created", f"token:{info.id}", kind=info.kind, name=info.name,
                   account=info.account,
                   scopes=None if info.scopes is None else list(info.scopes),
                   expires_at=info.expires_at)
            return made

        return await self._write(caller, tx)

    async def revoke_token(self, caller: Caller, token_id: str) -> None:
        """Revoke one of the caller's tokens; it stops working at once (idempotent: no
        event when it already was revoked).
        """
        def tx(conn: Connection, record: Record) -> None:
            before = acc.list_tokens(conn, caller.name)
            info = acc.revoke_token(conn, caller.name, token_id)
            if any(t.id == token_id and t.revoked_at is None for t in before):
                record("token.revoked", f"token:{info.id}", kind=info.kind,
                       name=info.name, account=info.account)

        await self._write(caller, tx)


def _user(conn: Connection, name: str) -> AccountInfo:
    info = acc.get_account(conn, name)
    if info.kind != "user":
        raise NotFound(f"user {name} not found")
    return info


def _existing(conn: Connection, name: str) -> AccountInfo | None:
    try:
        return acc.get_account(conn, name)
    except NotFound:
        return None


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
