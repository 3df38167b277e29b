"""Docker scope strings: parsing and formatting (token-auth.md §7), and the scope
restrictions a personal access token carries. Pure functions; imports only ``dtr.errors``.

Grammar::

    scope     := resourcetype [ "(" resourceclass ")" ] ":" resourcename ":" action ( "," action )*
    scopes    := scope ( " " scope )*

The name may contain ``host:port/…``, so the type is split at the first ``:`` and the
actions at the last. ``repository(plugin)`` is treated as ``repository``. Unknown actions
are dropped, not an error. The catalog is ``registry:catalog:*``.

Restrictions (stored with a personal access token) are ``repository:<glob>:<actions>``
where the glob's ``*`` stays inside one path component and ``**`` crosses ``/`` (the same
rule as the policy's ``globMatch``), plus optionally ``registry:catalog:*``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from dtr.errors import Invalid
from dtr.globs import glob_match

REPOSITORY_ACTIONS = ("pull", "push", "delete", "*")
"""Actions a ``repository`` scope may carry (``*`` = every action)."""
KNOWN_ACTIONS: dict[str, tuple[str, ...]] = {
    "repository": REPOSITORY_ACTIONS,
    "registry": ("*",),
}
"""Resource types dtr grants and the actions each may carry; other types are dropped."""

_TYPE = re.compile(r"([a-z0-9]+)(?:\([a-zA-Z0-9]+\))?")
_GLOB = re.compile(r"[a-z0-9*][a-z0-9._/*-]*")
MAX_SCOPE_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class Scope:
    """One resource scope.

    Attributes:
        type: ``repository`` or ``registry`` (resource class removed).
        name: the repository name (may contain ``host:port/``), or ``catalog``.
        actions: known actions in request order, without duplicates; may be empty when
            none of the requested actions was known.
    """

    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        """The scope string (``repository:team/app:pull,push``)."""
        return format_scope(self)

    def to_dict(self) -> dict[str, object]:
        """The JWT ``access`` entry: ``{"type", "name", "actions"}``."""
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def parse_scope(value: str) -> Scope | None:
    """Parse one scope string; None when it is malformed or of an unknown type.

    >>> parse_scope("repository(plugin):reg:5000/team/app:pull,bogus,push")
    Scope(type='repository', name='reg:5000/team/app', actions=('pull', 'push'))
    """
    if len(value) > MAX_SCOPE_LENGTH:
        return None
    rtype, sep, rest = value.partition(":")
    name, sep2, actions = rest.rpartition(":")
    match = _TYPE.fullmatch(rtype)
    if not (sep and sep2 and name and match):
        return None
    kind = match.group(1)
    known = KNOWN_ACTIONS.get(kind)
    if known is None:
        return None
    kept: list[str] = []
    for raw in actions.split(","):
        action = raw.strip()
        if action in known and action not in kept:
            kept.append(action)
    return Scope(kind, name, tuple(kept))


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Parse repeated ``scope`` parameters, each possibly a space-joined list.

    Malformed entries and unknown types are dropped; scopes naming the same resource are
    merged (actions united in first-seen order), keeping the order of first appearance
    (go-containerregistry puts the push scope first).
    """
    merged: dict[tuple[str, str], list[str]] = {}
    for value in values:
        for part in value.split():
            scope = parse_scope(part)
            if scope is None:
                continue
            actions = merged.setdefault((scope.type, scope.name), [])
            actions.extend(a for a in scope.actions if a not in actions)
    return [Scope(t, n, tuple(a)) for (t, n), a in merged.items()]


def format_scope(scope: Scope) -> str:
    """The scope string of ``scope``: ``type:name:a,b``."""
    return f"{scope.type}:{scope.name}:{','.join(scope.actions)}"


def format_scopes(scopes: Iterable[Scope]) -> str:
    """Space-joined scope strings.

    For the OAuth2 response's ``scope`` field and a challenge's ``scope`` parameter.
    """
    return " ".join(format_scope(s) for s in scopes)


# -- personal access token restrictions --------------------------------------------------

def normalize_restrictions(values: Iterable[str]) -> tuple[str, ...]:
    """Validate and normalise the scope restrictions of a new personal access token.

    Each value is ``repository:<glob>:<actions>`` (actions from pull, push, delete, ``*``)
    or ``registry:catalog:*``. Unlike :func:`parse_scope`, anything unknown is an error:
    a restriction that silently matched nothing would surprise its author.

    Returns:
        The restrictions, normalised (resource class removed, actions de-duplicated),
        duplicates removed, in the given order.

    Raises:
        Invalid: a value is malformed, names an unknown type or action, or the list is empty.
    """
    out: list[str] = []
    for value in values:
        rtype, _, rest = value.partition(":")
        name, _, actions = rest.rpartition(":")
        match = _TYPE.fullmatch(rtype)
        kind = match.group(1) if match else ""
        requested = [a.strip() for a in actions.split(",")]
        known = KNOWN_ACTIONS.get(kind, ())
        if not name or not known or not all(a in known for a in requested):
            raise Invalid(f"scope {value!r}: use repository:<glob>:<pull,push,delete,*> "
                          "or registry:catalog:*")
        if kind == "registry" and name != "catalog":
            raise Invalid(f"scope {value!r}: the only registry scope is registry:catalog:*")
        if kind == "repository" and ("***" in name or not _GLOB.fullmatch(name)):
            raise Invalid(f"scope {value!r}: the repository glob may use lowercase letters, "
                          "digits, . _ - /, * (one path component) and ** (any depth)")
        text = format_scope(Scope(kind, name, tuple(dict.fromkeys(requested))))
        if text not in out:
            out.append(text)
    if not out:
        raise Invalid("scopes: give at least one scope, or none for the account's full rights")
    return tuple(out)


def scope_allows(restrictions: Iterable[str] | None, name: str, action: str, *,
                       type: str = "repository") -> bool:
    """True if a token restricted to ``restrictions`` may do ``action`` on ``name``.

    ``None`` means unrestricted (the account's full rights). A restriction's ``*`` action
    covers every action. Matching is on the repository path glob (``*`` one component,
    ``**`` any depth); the registry catalog is ``type="registry"``, ``name="catalog"``.
    """
    if restrictions is None:
        return True
    for value in restrictions:
        scope = parse_scope(value)
        if scope is None or scope.type != type:
            continue
        if (action in scope.actions or "*" in scope.actions) and glob_match(scope.name, name):
            return True
    return False


def restrict_actions(restrictions: Iterable[str] | None, name: str,
                     actions: Iterable[str]) -> tuple[str, ...]:
    """The subset of ``actions`` on repository ``name`` the restrictions allow."""
    if restrictions is None:
        return tuple(actions)
    kept = tuple(restrictions)
    return tuple(a for a in actions if scope_allows(kept, name, a))


