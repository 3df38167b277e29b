"""The policy vocabulary: actions, subjects, name grammar, namespaces, and the built-in roles
file (``policies/roles.yaml``). Pure values and parsing; imports only ``dtr.errors``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dtr.errors import Invalid

REPO_ACTIONS = ("pull", "push", "delete")
"""Actions on one repository (object = the repository path, domain = its org)."""
ORG_ACTIONS = ("repo:manage", "org:read", "org:admin")
"""Actions on an organization (object = the org name, domain = the org)."""
SYSTEM_ACTIONS = ("audit:read", "system:admin")
"""Registry-wide actions (object ``*``, domain ``*``); only system grants (org ``*``) match."""
ALL_ACTIONS = REPO_ACTIONS + ORG_ACTIONS + SYSTEM_ACTIONS

SYSTEM = "*"
"""The domain (and object) of system-wide grants and system actions."""
ANONYMOUS = "anonymous"
"""The subject of callers without credentials; its allow grants apply to everyone."""
ROLE_PREFIX = "role:"
TEAM_PREFIX = "team:"

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
"""User, organization, team and role names."""
ROBOT = re.compile(r"robot\$(?:(?P<org>[a-z0-9][a-z0-9._-]{0,63})\+)?"
                   r"(?P<name>[a-z0-9][a-z0-9._-]{0,63})")
"""Robot account names: ``robot$<org>+<name>`` (org robot) or ``robot$<name>`` (system)."""


def namespace(repository: str) -> str:
    """The domain (organization) of a repository path or org name.

    ``acme/app/x`` → ``acme``; a one-component name ``alpine`` → ``alpine``; ``*`` → ``*``.
    """
    return repository.split("/", 1)[0]


def policy_dir() -> Path:
    """The folder holding ``model.conf`` and ``roles.yaml``.

    The checkout's ``policies/`` (editable install) or the packaged ``dtr/_policies``.

    Raises:
        FileNotFoundError: neither exists.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here.parent.parent / "policies", here.parent / "_policies"):
        if (candidate / "model.conf").is_file():
            return candidate
    raise FileNotFoundError("dtr policies folder (model.conf) not found")


def role_subject(name: str) -> str:
    """The Casbin spelling of a role: ``developer`` → ``role:developer``."""
    return ROLE_PREFIX + name


def team_subject(org: str, team: str) -> str:
    """The Casbin subject of a team: ``team:<org>/<team>``."""
    return f"{TEAM_PREFIX}{org}/{team}"


def is_name(value: str) -> bool:
    """True if ``value`` follows the user/org/team/role name grammar."""
    return NAME.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Subject:
    """A parsed policy subject.

    Attributes:
        kind: ``user``, ``robot``, ``team`` or ``anonymous``.
        name: the account name, the team name, or ``""`` for anonymous.
        org: the team's org, or an org robot's org; None otherwise.
    """

    kind: str
    name: str
    org: str | None = None


def parse_subject(subject: str) -> Subject:
    """Parse ``user:<name>``, ``robot:<robot name>``, ``team:<org>/<team>`` or ``anonymous``.

    Raises:
        Invalid: the subject breaks the grammar.
    """
    if subject == ANONYMOUS:
        return Subject(ANONYMOUS, "")
    kind, sep, rest = subject.partition(":")
    if sep and kind == "user" and is_name(rest):
        return Subject("user", rest)
    if sep and kind == "robot":
        robot = ROBOT.fullmatch(rest)
        if robot is not None:
            return Subject("robot", rest, robot.group("org"))
    if sep and kind == "team":
        org, slash, team = rest.partition("/")
        if slash and is_name(org) and is_name(team):
            return Subject("team", team, org)
    raise Invalid(f"subject {subject!r} is not user:<name>, robot:robot$[<org>+]<name>, "
                  "team:<org>/<team> or anonymous", {"subject": subject})


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """A role as ``roles.yaml`` defines it.

    Attributes:
        name: the role name (no ``role:`` prefix).
        description: one line for humans.
        actions: actions the role holds directly.
        includes: roles whose actions it also holds.
    """

    name: str
    description: str
    actions: tuple[str, ...]
    includes: tuple[str, ...]


def load_roles(path: Path | None = None) -> dict[str, RoleSpec]:
    """Read and check the built-in roles file (default: ``policy_dir() / "roles.yaml"``).

    Raises:
        Invalid: a name, action or include is wrong, or includes form a cycle.
    """
    path = path or policy_dir() / "roles.yaml"
    tree: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(tree, dict):
        raise Invalid(f"{path}: expected a mapping of role name to definition")
    roles: dict[str, RoleSpec] = {}
    for name, body in tree.items():
        if not isinstance(body, dict):
            raise Invalid(f"{path}: role {name!r} must be a mapping")
        actions = body.get("actions") or []
        includes = body.get("includes") or []
        if not isinstance(actions, list) or not isinstance(includes, list):
            raise Invalid(f"{path}: role {name!r}: actions and includes must be lists")
        roles[str(name)] = RoleSpec(str(name), str(body.get("description") or ""),
                                    tuple(str(a) for a in actions),
                                    tuple(str(i) for i in includes))
    check_roles(roles, where=str(path))
    return roles


def check_roles(roles: Mapping[str, RoleSpec], *, where: str = "roles") -> None:
    """Check role names, actions and includes, and that includes form no cycle.

    Raises:
        Invalid: naming the first problem found.
    """
    for role in roles.values():
        if not is_name(role.name) or role.name in ALL_ACTIONS:
            raise Invalid(f"{where}: {role.name!r} is not a valid role name")
        for action in role.actions:
            if action not in ALL_ACTIONS:
                raise Invalid(f"{where}: role {role.name!r}: unknown action {action!r} "
                              f"(known: {', '.join(ALL_ACTIONS)})")
        for included in role.includes:
            if included not in roles:
                raise Invalid(f"{where}: role {role.name!r} includes unknown role {included!r}")
    cycle = find_cycle({r.name: r.includes for r in roles.values()})
    if cycle:
        raise Invalid(f"{where}: roles include each other in a cycle: {' → '.join(cycle)}")


def find_cycle(includes: Mapping[str, Iterable[str]]) -> list[str]:
    """A cycle in the role-include graph (``[a, b, a]``), or ``[]`` when there is none."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in includes.get(node, ()):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for start in includes:
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def role_links(role: RoleSpec) -> list[tuple[str, str]]:
    """The ``g2`` pairs defining ``role``: ``(action, role:name)`` and ``(role:inc, role:name)``."""
    target = role_subject(role.name)
    return ([(action, target) for action in role.actions]
            + [(role_subject(inc), target) for inc in role.includes])
