"""Policy writes and reads on the ``casbin_rule``, ``role`` and ``policy_state`` tables:
grants, team membership, roles and the built-in role seeding, each validated here. Every
write is a function of a sync ``Connection`` that locks ``policy_state`` first and bumps its
version in the same transaction; ``PolicyAdmin`` runs them through ``Database.run``.
Never imports api or core; the enforcer only reads what these functions write.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from sqlalchemy import Connection, and_, delete, insert, or_, select, update

from dtr.db.base import utcnow
from dtr.db.database import Database
from dtr.db.models import Account, CasbinRule, Organization, PolicyState, Role, Team
from dtr.errors import Conflict, Denied, Invalid, NotFound
from dtr.policy.actions import (
    ALL_ACTIONS,
    ANONYMOUS,
    ROLE_PREFIX,
    SYSTEM,
    RoleSpec,
    Subject,
    find_cycle,
    is_name,
    parse_subject,
    role_links,
    role_subject,
    team_subject,
)

T = TypeVar("T")
Effect = Literal["allow", "deny"]
_GLOB_PART = re.compile(r"\*\*|(?:[a-z0-9._-]|\*(?!\*))+")
MAX_GLOB = 255


@dataclass(frozen=True)
class Grant:
    """A ``p`` row: ``subject`` may (allow) or may not (deny) use ``role`` on ``repository``.

    Attributes:
        id: the ``casbin_rule`` row id.
        subject: ``user:…``, ``robot:…``, ``team:<org>/<team>`` or ``anonymous``.
        org: the organization (domain), or ``*`` for a system-wide grant.
        repository: the repository path glob (``**`` = the whole org).
        role: a role name (no ``role:`` prefix) or a single action.
        effect: ``allow`` or ``deny`` (deny overrides allow).
    """

    id: int
    subject: str
    org: str
    repository: str
    role: str
    effect: Effect

    @property
    def line(self) -> str:
        """The grant as its policy line (``p, user:bob, acme, acme/**, role:developer,
        allow``), as the audit log records it.
        """
        return "p, " + ", ".join(grant_rows([self])[0][1:])


@dataclass(frozen=True)
class RoleInfo:
    """A role: its own actions and the roles it includes (built-in ones come from roles.yaml)."""

    name: str
    description: str | None
    builtin: bool
    actions: list[str]
    includes: list[str]


# --- validation (pure; also used by the offline engine) --------------------------------------


def check_glob(org: str, repository: str) -> None:
    """Check a grant's repository glob against its org.

    ``**`` everywhere; in an org, anything else starts with ``<org>/``; system grants (org
    ``*``) take any glob except one starting with ``*/`` (Casbin's globMatch drops that star).
    Parts are ``**`` or names with ``*`` wildcards (``*`` never crosses ``/``).

    Raises:
        Invalid: naming what is wrong.
    """
    detail = {"org": org, "repository": repository}
    if repository == "**":
        return
    parts = repository.split("/")
    if len(repository) > MAX_GLOB or not all(_GLOB_PART.fullmatch(p) for p in parts):
        raise Invalid(f"repository glob {repository!r} is not '**' or '/'-separated parts of "
                      "lowercase names with * (one part) or ** (any depth) wildcards", detail)
    if org == SYSTEM:
        if parts[0] == "*" and len(parts) > 1:
            raise Invalid(f"repository glob {repository!r} must not start with '*/'; "
                          "use '**/…' or name the org", detail)
        return
    if parts[0] != org or len(parts) < 2:
        raise Invalid(f"repository glob {repository!r} must be '**' or start with '{org}/' "
                      f"in org {org}", detail)


def check_grant(subject: str, org: str, repository: str, role: str, effect: str,
                role_exists: Callable[[str], bool]) -> tuple[Subject, str]:
    """Check a grant and return the parsed subject and its Casbin ``act`` value.

    Raises:
        Invalid: a malformed subject, org, glob, effect, or a team / org robot granted
            outside its own org.
        NotFound: ``role`` is neither a role nor an action.
    """
    subj = parse_subject(subject)
    if org != SYSTEM and not is_name(org):
        raise Invalid(f"org {org!r} is not '*' or an organization name", {"org": org})
    if subj.kind == "team" and subj.org != org:
        raise Invalid(f"team {subj.org}/{subj.name} only counts inside org {subj.org}; "
                      f"grant it there, not in {org!r}", {"subject": subject, "org": org})
    if subj.kind == "robot" and subj.org is not None and subj.org != org:
        raise Invalid(f"robot {subj.name} belongs to org {subj.org}; it can only be granted "
                      f"there, not in {org!r}", {"subject": subject, "org": org})
    check_glob(org, repository)
    if effect not in ("allow", "deny"):
        raise Invalid(f"effect {effect!r} is not allow or deny", {"effect": effect})
    name = role.removeprefix(ROLE_PREFIX)
    if name in ALL_ACTIONS:
        return subj, name
    if not is_name(name) or not role_exists(name):
        raise NotFound(f"role {name!r} does not exist (and is not an action: "
                       f"{', '.join(ALL_ACTIONS)})", {"role": name})
    return subj, role_subject(name)


# --- the version ------------------------------------------------------------------------------


def lock(conn: Connection) -> int:
    """Lock ``policy_state`` for this transaction (PostgreSQL ``FOR UPDATE``; SQLite write
    transactions are already exclusive) and return the current version.
    """
    query = select(PolicyState.version).where(PolicyState.id == 1).with_for_update()
    version = conn.execute(query).scalar()
    if version is None:  # the migration inserts it; be robust to a hand-made schema
        conn.execute(insert(PolicyState).values(id=1, version=0, updated_at=utcnow()))
        return 0
    return int(version)


def bump_version(conn: Connection) -> int:
    """Increase ``policy_state.version`` (every replica reloads on change); return it."""
    conn.execute(update(PolicyState).where(PolicyState.id == 1)
                 .values(version=PolicyState.version + 1, updated_at=utcnow()))
    return int(conn.execute(select(PolicyState.version).where(PolicyState.id == 1)).scalar_one())


def read_version(conn: Connection) -> int:
    """The current policy version (0 when the row is missing)."""
    return int(conn.execute(select(PolicyState.version).where(PolicyState.id == 1)).scalar() or 0)


def read_rules(conn: Connection) -> tuple[int, list[tuple[str, ...]]]:
    """The version and every Casbin line (``ptype, v0, …``), version read first so the rules
    are never older than it.
    """
    version = read_version(conn)
    cols = (CasbinRule.ptype, CasbinRule.v0, CasbinRule.v1, CasbinRule.v2, CasbinRule.v3,
            CasbinRule.v4, CasbinRule.v5)
    rows = conn.execute(select(*cols).order_by(CasbinRule.id)).all()
    return version, [tuple(v for v in row if v is not None) for row in rows]


def _add_rule(conn: Connection, ptype: str, *values: str) -> int:
    row = {"ptype": ptype, **{f"v{i}": v for i, v in enumerate(values)}}
    return int(conn.execute(insert(CasbinRule).values(**row).returning(CasbinRule.id)).scalar_one())


def _delete_ids(conn: Connection, ids: Sequence[int]) -> int:
    if ids:
        conn.execute(delete(CasbinRule).where(CasbinRule.id.in_(ids)))
    return len(ids)


# --- built-in roles ---------------------------------------------------------------------------


def sync_builtin_roles(conn: Connection, roles: Mapping[str, RoleSpec]) -> bool:
    """Make the ``role`` rows and ``g2`` rows of built-in roles equal ``roles`` (roles.yaml).

    Idempotent; bumps the version only when something changed. A built-in role that left the
    file becomes a custom role (its grants keep working). Safe when replicas start at once:
    the ``policy_state`` lock serialises them.

    Returns:
        True when something changed.
    """
    lock(conn)
    changed = False
    existing = {r.name: r for r in conn.execute(select(Role.name, Role.description,
                                                       Role.builtin)).all()}
    for spec in roles.values():
        row = existing.get(spec.name)
        if row is None:
            conn.execute(insert(Role).values(name=spec.name, builtin=True,
                                                       description=spec.description))
            changed = True
        elif row.description != spec.description or not row.builtin:
            conn.execute(update(Role).where(Role.name == spec.name)
                         .values(description=spec.description, builtin=True))
            changed = True
    for name, row in existing.items():
        if row.builtin and name not in roles:
            conn.execute(update(Role).where(Role.name == name).values(builtin=False))
            changed = True
    wanted = {pair for spec in roles.values() for pair in role_links(spec)}
    targets = [role_subject(name) for name in roles]
    have = conn.execute(select(CasbinRule.id, CasbinRule.v0, CasbinRule.v1).where(
        CasbinRule.ptype == "g2", CasbinRule.v1.in_(targets)).order_by(CasbinRule.id)).all()
    seen: set[tuple[str, str]] = set()
    stale: list[int] = []
    for rid, v0, v1 in have:
        pair = (str(v0), str(v1))
        if pair in wanted and pair not in seen:
            seen.add(pair)
        else:
            stale.append(int(rid))
    changed |= _delete_ids(conn, stale) > 0
    for child, parent in sorted(wanted - seen):
        _add_rule(conn, "g2", child, parent)
        changed = True
    if changed:
        bump_version(conn)
    return changed


# --- roles ------------------------------------------------------------------------------------


def _role_exists(conn: Connection) -> Callable[[str], bool]:
    def exists(name: str) -> bool:
        return conn.execute(select(Role.name).where(Role.name == name)).first() is not None
    return exists


def _includes_graph(conn: Connection) -> dict[str, list[str]]:
    graph: dict[str, list[str]] = {}
    for v0, v1 in conn.execute(select(CasbinRule.v0, CasbinRule.v1).where(
            CasbinRule.ptype == "g2", CasbinRule.v0.startswith(ROLE_PREFIX))).all():
        graph.setdefault(str(v1).removeprefix(ROLE_PREFIX), []).append(
            str(v0).removeprefix(ROLE_PREFIX))
    return graph


def list_roles(conn: Connection) -> list[RoleInfo]:
    """Every role, built-in first, then by name."""
    links: dict[str, list[str]] = {}
    for v0, v1 in conn.execute(select(CasbinRule.v0, CasbinRule.v1).where(
            CasbinRule.ptype == "g2").order_by(CasbinRule.id)).all():
        links.setdefault(str(v1), []).append(str(v0))
    out = []
    for row in conn.execute(select(Role.name, Role.description, Role.builtin)).all():
        own = links.get(role_subject(row.name), [])
        out.append(RoleInfo(row.name, row.description, bool(row.builtin),
                            [a for a in own if not a.startswith(ROLE_PREFIX)],
                            [a.removeprefix(ROLE_PREFIX) for a in own
                             if a.startswith(ROLE_PREFIX)]))
    return sorted(out, key=lambda r: (not r.builtin, r.name))


def get_role(conn: Connection, name: str) -> RoleInfo:
    """One role.

    Raises:
        NotFound: no such role.
    """
    for role in list_roles(conn):
        if role.name == name:
            return role
    raise NotFound(f"role {name!r} does not exist", {"role": name})


def _check_role_body(conn: Connection, name: str, actions: Sequence[str],
                     includes: Sequence[str]) -> None:
    for action in actions:
        if action not in ALL_ACTIONS:
            raise Invalid(f"unknown action {action!r} (known: {', '.join(ALL_ACTIONS)})",
                          {"action": action})
    exists = _role_exists(conn)
    for included in includes:
        if not exists(included):
            raise Invalid(f"role {name!r} includes {included!r}, which does not exist",
                          {"includes": included})
    if not actions and not includes:
        raise Invalid(f"role {name!r} needs at least one action or included role")
    graph = _includes_graph(conn)
    graph[name] = list(includes)
    cycle = find_cycle(graph)
    if cycle:
        raise Invalid(f"roles would include each other in a cycle: {' → '.join(cycle)}",
                      {"cycle": cycle})


def _set_role_links(conn: Connection, name: str, actions: Sequence[str],
                    includes: Sequence[str]) -> None:
    target = role_subject(name)
    conn.execute(delete(CasbinRule).where(CasbinRule.ptype == "g2", CasbinRule.v1 == target))
    for link in role_links(RoleSpec(name, "", tuple(dict.fromkeys(actions)),
                                    tuple(dict.fromkeys(includes)))):
        _add_rule(conn, "g2", *link)


def create_role(conn: Connection, name: str, actions: Sequence[str],
                includes: Sequence[str] = (), description: str | None = None) -> RoleInfo:
    """Create a custom role.

    Raises:
        Invalid: bad name (grammar, or an action's name), unknown action, missing include,
            a cycle, or neither actions nor includes.
        Conflict: the role exists.
    """
    lock(conn)
    if not is_name(name) or name in ALL_ACTIONS:
        raise Invalid(f"role name {name!r} must match [a-z0-9][a-z0-9._-]{{0,63}} and not "
                      "be an action", {"role": name})
    if _role_exists(conn)(name):
        raise Conflict(f"role {name!r} already exists", {"role": name})
    _check_role_body(conn, name, actions, includes)
    conn.execute(insert(Role).values(name=name, description=description,
                                               builtin=False))
    _set_role_links(conn, name, actions, includes)
    bump_version(conn)
    return get_role(conn, name)


def _custom_role(conn: Connection, name: str) -> RoleInfo:
    role = get_role(conn, name)
    if role.builtin:
        raise Denied(f"role {name!r} is built in and cannot be changed or deleted; edit "
                     "policies/roles.yaml and restart, or create a custom role", {"role": name})
    return role


def update_role(conn: Connection, name: str, *, actions: Sequence[str] | None = None,
                includes: Sequence[str] | None = None,
                description: str | None = None) -> RoleInfo:
    """Change a custom role; None leaves a field as it is.

    Raises:
        NotFound: no such role.
        Denied: the role is built in.
        Invalid: as for :func:`create_role`.
    """
    lock(conn)
    role = _custom_role(conn, name)
    new_actions = role.actions if actions is None else list(actions)
    new_includes = role.includes if includes is None else list(includes)
    _check_role_body(conn, name, new_actions, new_includes)
    if description is not None:
        conn.execute(update(Role).where(Role.name == name)
                     .values(description=description))
    if (new_actions, new_includes) != (role.actions, role.includes):
        _set_role_links(conn, name, new_actions, new_includes)
    bump_version(conn)
    return get_role(conn, name)


def delete_role(conn: Connection, name: str) -> None:
    """Delete a custom role.

    Raises:
        NotFound: no such role.
        Denied: the role is built in.
        Conflict: a grant uses it or another role includes it.
    """
    lock(conn)
    _custom_role(conn, name)
    target = role_subject(name)
    grants = len(conn.execute(select(CasbinRule.id).where(
        CasbinRule.ptype == "p", CasbinRule.v3 == target)).all())
    parents = [str(v).removeprefix(ROLE_PREFIX) for v in conn.execute(
        select(CasbinRule.v1).where(CasbinRule.ptype == "g2", CasbinRule.v0 == target)).scalars()]
    if grants or parents:
        raise Conflict(f"role {name!r} is in use by {grants} grant(s) and included by "
                       f"{parents or 'no role'}; remove those first",
                       {"role": name, "grants": grants, "included_by": parents})
    conn.execute(delete(CasbinRule).where(CasbinRule.ptype == "g2", CasbinRule.v1 == target))
    conn.execute(delete(Role).where(Role.name == name))
    bump_version(conn)


# --- grants -----------------------------------------------------------------------------------


def _grant(row: Any) -> Grant:
    return Grant(int(row.id), str(row.v0), str(row.v1), str(row.v2),
                 str(row.v3).removeprefix(ROLE_PREFIX), row.v4)


_GRANT_COLS = (CasbinRule.id, CasbinRule.v0, CasbinRule.v1, CasbinRule.v2, CasbinRule.v3,
               CasbinRule.v4)


def list_grants(conn: Connection, org: str | None = None,
                subject: str | None = None) -> list[Grant]:
    """Grants, oldest first; ``org`` / ``subject`` filter exactly (``org="*"`` = system)."""
    query = select(*_GRANT_COLS).where(CasbinRule.ptype == "p").order_by(CasbinRule.id)
    if org is not None:
        query = query.where(CasbinRule.v1 == org)
    if subject is not None:
        query = query.where(CasbinRule.v0 == subject)
    return [_grant(row) for row in conn.execute(query).all()]


def get_grant(conn: Connection, grant_id: int) -> Grant:
    """One grant.

    Raises:
        NotFound: no grant has this id.
    """
    row = conn.execute(select(*_GRANT_COLS).where(CasbinRule.ptype == "p",
                                                  CasbinRule.id == grant_id)).first()
    if row is None:
        raise NotFound(f"grant {grant_id} does not exist", {"grant": grant_id})
    return _grant(row)


def _require_subject(conn: Connection, subj: Subject, subject: str) -> None:
    if subj.kind == ANONYMOUS:
        return
    if subj.kind == "team":
        found = conn.execute(select(Team.id).join(Organization, Team.org_id == Organization.id)
                             .where(Organization.name == subj.org, Team.name == subj.name)).first()
    else:
        found = conn.execute(select(Account.id).where(Account.name == subj.name,
                                                      Account.kind == subj.kind)).first()
    if found is None:
        raise NotFound(f"{subject} does not exist", {"subject": subject})


def _require_org(conn: Connection, org: str) -> None:
    if org != SYSTEM and conn.execute(
            select(Organization.id).where(Organization.name == org)).first() is None:
        raise NotFound(f"organization {org!r} does not exist", {"org": org})


def create_grant(conn: Connection, subject: str, org: str, repository: str, role: str,
                 effect: Effect = "allow") -> Grant:
    """Grant (or deny) ``role`` — a role name or one action — on ``repository`` in ``org``.

    Raises:
        Invalid: see :func:`check_grant`.
        NotFound: the role, org, team or account does not exist.
        Conflict: the same grant exists.
    """
    lock(conn)
    subj, act = check_grant(subject, org, repository, role, effect, _role_exists(conn))
    _require_org(conn, org)
    _require_subject(conn, subj, subject)
    same = conn.execute(select(CasbinRule.id).where(
        CasbinRule.ptype == "p", CasbinRule.v0 == subject, CasbinRule.v1 == org,
        CasbinRule.v2 == repository, CasbinRule.v3 == act, CasbinRule.v4 == effect)).scalar()
    if same is not None:
        raise Conflict(f"this grant exists (id {same})", {"grant": int(same)})
    rid = _add_rule(conn, "p", subject, org, repository, act, effect)
    bump_version(conn)
    return Grant(rid, subject, org, repository, act.removeprefix(ROLE_PREFIX), effect)


def delete_grant(conn: Connection, grant_id: int) -> Grant:
    """Delete a grant and return it.

    Raises:
        NotFound: no grant has this id.
    """
    lock(conn)
    grant = get_grant(conn, grant_id)
    _delete_ids(conn, [grant_id])
    bump_version(conn)
    return grant


# --- team membership and clean-up -------------------------------------------------------------


def _member_row(conn: Connection, org: str, team: str, member: str) -> int | None:
    rid = conn.execute(select(CasbinRule.id).where(
        CasbinRule.ptype == "g", CasbinRule.v0 == member,
        CasbinRule.v1 == team_subject(org, team), CasbinRule.v2 == org)).scalar()
    return None if rid is None else int(rid)


def add_member(conn: Connection, org: str, team: str, member_subject: str) -> bool:
    """Put a user or robot in a team (``g, member, team:<org>/<team>, <org>``).

    Returns:
        True when added, False when it already was a member (nothing changes).

    Raises:
        Invalid: the member is not a user or robot, or is a robot of another org.
        NotFound: the team or account does not exist.
    """
    lock(conn)
    member = parse_subject(member_subject)
    if member.kind not in ("user", "robot"):
        raise Invalid(f"only users and robots can be team members, not {member_subject!r}",
                      {"member": member_subject})
    if member.org is not None and member.org != org:
        raise Invalid(f"robot {member.name} belongs to org {member.org} and cannot join a "
                      f"team of {org}", {"member": member_subject})
    _require_subject(conn, parse_subject(team_subject(org, team)), team_subject(org, team))
    _require_subject(conn, member, member_subject)
    if _member_row(conn, org, team, member_subject) is not None:
        return False
    _add_rule(conn, "g", member_subject, team_subject(org, team), org)
    bump_version(conn)
    return True


def remove_member(conn: Connection, org: str, team: str, member_subject: str) -> None:
    """Take a member out of a team.

    Raises:
        NotFound: it is not a member.
    """
    lock(conn)
    rid = _member_row(conn, org, team, member_subject)
    if rid is None:
        raise NotFound(f"{member_subject} is not a member of {org}/{team}",
                       {"member": member_subject})
    _delete_ids(conn, [rid])
    bump_version(conn)


def list_members(conn: Connection, org: str, team: str) -> list[str]:
    """Member subjects of a team, sorted."""
    return sorted(str(v) for v in conn.execute(select(CasbinRule.v0).where(
        CasbinRule.ptype == "g", CasbinRule.v1 == team_subject(org, team),
        CasbinRule.v2 == org)).scalars())


def teams_of(conn: Connection, member_subject: str) -> list[str]:
    """Team subjects (``team:<org>/<team>``) a user or robot belongs to, sorted."""
    return sorted(str(v) for v in conn.execute(select(CasbinRule.v1).where(
        CasbinRule.ptype == "g", CasbinRule.v0 == member_subject)).scalars())


def _remove_where(conn: Connection, *conditions: Any) -> int:
    lock(conn)
    ids = [int(i) for i in conn.execute(select(CasbinRule.id).where(
        CasbinRule.ptype.in_(("p", "g")), or_(*conditions))).scalars()]
    if _delete_ids(conn, ids):
        bump_version(conn)
    return len(ids)


def remove_subject(conn: Connection, subject: str) -> int:
    """Remove every grant to ``subject`` and its team memberships (account or team deleted).

    Returns:
        How many rows went (the version is bumped only when some did).
    """
    conditions = [CasbinRule.v0 == subject]
    if subject.startswith("team:"):
        conditions.append(CasbinRule.v1 == subject)
    return _remove_where(conn, *conditions)


def remove_team(conn: Connection, org: str, team: str) -> int:
    """Remove a team's grants and memberships; returns how many rows went."""
    return remove_subject(conn, team_subject(org, team))


def remove_org(conn: Connection, org: str) -> int:
    """Remove everything of an org: its grants, memberships, and its teams' and org robots'
    rows anywhere. Returns how many rows went.
    """
    return _remove_where(conn, and_(CasbinRule.ptype == "p", CasbinRule.v1 == org),
                         and_(CasbinRule.ptype == "g", CasbinRule.v2 == org),
                         CasbinRule.v0.startswith(f"team:{org}/", autoescape=True),
                         CasbinRule.v0.startswith(f"robot:robot${org}+", autoescape=True))


class PolicyAdmin:
    """The functions above as async methods, each one transaction on ``db``.

    Args:
        db: the metadata database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def _w(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.db.run(lambda conn: fn(conn, *args, **kwargs), write=True)

    async def _r(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.db.run(lambda conn: fn(conn, *args, **kwargs), write=False)

    async def version(self) -> int:
        """See :func:`read_version`."""
        return await self._r(read_version)

    async def list_roles(self) -> list[RoleInfo]:
        """See :func:`list_roles`."""
        return await self._r(list_roles)

    async def get_role(self, name: str) -> RoleInfo:
        """See :func:`get_role`."""
        return await self._r(get_role, name)

    async def create_role(self, name: str, actions: Sequence[str], includes: Sequence[str] = (),
                          description: str | None = None) -> RoleInfo:
        """See :func:`create_role`."""
        return await self._w(create_role, name, actions, includes, description)

    async def update_role(self, name: str, *, actions: Sequence[str] | None = None,
                          includes: Sequence[str] | None = None,
                          description: str | None = None) -> RoleInfo:
        """See :func:`update_role`."""
        return await self._w(update_role, name, actions=actions, includes=includes,
                             description=description)

    async def delete_role(self, name: str) -> None:
        """See :func:`delete_role`."""
        await self._w(delete_role, name)

    async def list_grants(self, org: str | None = None,
                          subject: str | None = None) -> list[Grant]:
        """See :func:`list_grants`."""
        return await self._r(list_grants, org, subject)

    async def get_grant(self, grant_id: int) -> Grant:
        """See :func:`get_grant`."""
        return await self._r(get_grant, grant_id)

    async def create_grant(self, subject: str, org: str, repository: str, role: str,
                           effect: Effect = "allow") -> Grant:
        """See :func:`create_grant`."""
        return await self._w(create_grant, subject, org, repository, role, effect)

    async def delete_grant(self, grant_id: int) -> Grant:
        """See :func:`delete_grant`."""
        return await self._w(delete_grant, grant_id)

    async def add_member(self, org: str, team: str, member_subject: str) -> bool:
        """See :func:`add_member`."""
        return await self._w(add_member, org, team, member_subject)

    async def remove_member(self, org: str, team: str, member_subject: str) -> None:
        """See :func:`remove_member`."""
        await self._w(remove_member, org, team, member_subject)

    async def list_members(self, org: str, team: str) -> list[str]:
        """See :func:`list_members`."""
        return await self._r(list_members, org, team)

    async def teams_of(self, member_subject: str) -> list[str]:
        """See :func:`teams_of`."""
        return await self._r(teams_of, member_subject)

    async def remove_subject(self, subject: str) -> int:
        """See :func:`remove_subject`."""
        return await self._w(remove_subject, subject)

    async def remove_team(self, org: str, team: str) -> int:
        """See :func:`remove_team`."""
        return await self._w(remove_team, org, team)

    async def remove_org(self, org: str) -> int:
        """See :func:`remove_org`."""
        return await self._w(remove_org, org)


def grant_rows(grants: Iterable[Grant]) -> list[tuple[str, ...]]:
    """Grants as Casbin ``p`` lines (for exports and the offline engine)."""
    return [("p", g.subject, g.org, g.repository,
             g.role if g.role in ALL_ACTIONS else role_subject(g.role), g.effect)
            for g in grants]
