"""Keyless CI: federation trusts, and exchanging a CI system's OIDC ID token for the robot a
trust maps it to. Owns the ``federation_trust`` rows, their validation (issuer, audience,
claim conditions, binding, scopes, lifetime, presets) and the exchange decision; the
ID token itself is validated by :mod:`dtr.auth.oidc` only. Never imports api, core or
policy: a role binding's grant is written through the ``grant`` / ``remove_subject``
callables the composition root passes in (the policy layer's functions), in the same
transaction as the trust.

A trust says: ID tokens of ``issuer`` for ``audience`` whose claims meet **every**
condition act as robot R for at most ``max_token_seconds``. Conditions are
``{claim, pattern, match}``; ``exact`` compares strings, ``glob`` matches like repository
globs (``*`` stays inside one ``/``-separated part, ``**`` crosses ``/``). Claim values that
are not strings, numbers or booleans (lists, objects, missing claims) never match. A trust
needs at least one condition that pins a value (not only ``*``/``**``): a bare issuer would
let every workload of e.g. GitHub in.

The binding is either an existing ``robot`` or a ``role_binding`` ``{org, repository,
role}``, for which a robot ``robot$<org>+<trust name>`` is created with that grant; the
trust owns it (deleted with the trust). Trusts are read from the database at every
exchange, so a change made on any replica counts at the next exchange everywhere.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from sqlalchemy import Connection, Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from dtr.auth import accounts as acc
from dtr.auth.oidc import IdToken, IdTokenRefused, Providers, peek_issuer
from dtr.auth.principal import Principal
from dtr.auth.scopes import normalize_restrictions
from dtr.config import AuthSettings
from dtr.db.base import utcnow
from dtr.db.database import Database
from dtr.db.models import Account, FederationTrust
from dtr.errors import Conflict, Invalid, NotFound, Unauthorized, Unavailable
from dtr.events import SecurityEvent, SecurityEvents
from dtr.globs import glob_match

T = TypeVar("T")
Match = Literal["exact", "glob"]
GrantFn = Callable[[Connection, str, str, str, str], object]
"""``grant(conn, subject, org, repository, role)``: write a grant (the policy layer's
``create_grant``); raises ``Invalid``/``NotFound`` for a bad glob or role."""
RemoveSubjectFn = Callable[[Connection, str], object]
"""``remove_subject(conn, subject)``: drop every grant of a subject (policy layer)."""
OnChange = Callable[[Connection, "TrustInfo | None", "TrustInfo"], None]
"""``on_change(conn, before, after)``: called in a trust change's transaction once the change
is made (``before`` None for a creation; ``after`` the deleted trust for a deletion), to
record it (the audit log's security event)."""

ACTION = "auth.federation.exchange"
"""The security event action of every exchange (allowed, denied or failed)."""
HARD_CAP_SECONDS = 3600
"""No trust issues registry tokens living longer than an hour, whatever the settings say."""
MIN_TOKEN_SECONDS = 60
"""Clients assume 60 s when ``expires_in`` is absent: never issue less (token-auth.md §2)."""
MAX_CONDITIONS = 32
MAX_CLAIM = 255
MAX_PATTERN = 1024
MAX_AUDIENCE = 255
MAX_ISSUER = 255
UNUSABLE_CLAIMS = frozenset({"exp", "iat", "nbf", "jti"})
"""Claims that differ for every token: a condition on them would be a mistake."""
REASONS = ("federation_disabled", "unknown_issuer", "trust_disabled", "condition_not_met",
           "robot_disabled", "provider_unavailable")
"""The refusal reasons of the exchange itself (besides the validator's
``IdTokenRefused.reason`` values, which are passed through)."""
_WILDCARDS = re.compile(r"[*/]*")
_K8S_SUB = re.compile(r"system:serviceaccount:[a-z0-9]([a-z0-9.-]*[a-z0-9])?:[^:\s]+")


class FederationRefused(Unauthorized):
    """An ID token was not exchanged.

    Args:
        reason: a stable code (:data:`REASONS`, or the validator's reason).
        message: what is wrong, for the client and the audit log.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, {"reason": reason})
        self.reason = reason


# -- values -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Condition:
    """One claim condition.

    Attributes:
        claim: a top-level claim name (``repository``, ``ref``, ``sub``, ``project_path``).
        pattern: the value (``exact``) or glob (``glob``) the claim must match.
        match: ``exact`` or ``glob``.
    """

    claim: str
    pattern: str
    match: Match = "exact"

    def holds(self, claims: Mapping[str, Any]) -> bool:
        """True if the token's ``claims`` meet this condition.

        Strings compare as they are; numbers and booleans as their JSON spelling
        (``42``, ``true``); anything else (absent, null, lists, objects) never matches.
        """
        value = claim_text(claims.get(self.claim))
        if value is None:
            return False
        if self.match == "exact":
            return value == self.pattern
        return glob_match(self.pattern, value)

    def pins(self) -> bool:
        """True if the condition narrows the claim to something (not just wildcards)."""
        return self.match == "exact" or _WILDCARDS.fullmatch(self.pattern) is None

    def to_dict(self) -> dict[str, str]:
        """The stored / API form ``{"claim", "pattern", "match"}``."""
        return {"claim": self.claim, "pattern": self.pattern, "match": self.match}

    def __str__(self) -> str:
        """``claim = pattern`` or ``claim ~= pattern`` (glob)."""
        return f"{self.claim} {'=' if self.match == 'exact' else '~='} {self.pattern!r}"


def claim_text(value: object) -> str | None:
    """A claim value as the text conditions compare, or None if it can never match."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return None


@dataclass(frozen=True, slots=True)
class RoleBinding:
    """A role on a repository glob in an organization, held by the trust's own robot."""

    org: str
    repository: str
    role: str

    def to_dict(self) -> dict[str, str]:
        """The stored / API form."""
        return {"org": self.org, "repository": self.repository, "role": self.role}


@dataclass(frozen=True, slots=True)
class Preset:
    """What a CI system's trusts look like.

    Attributes:
        name: the preset's name (``github-actions``).
        issuer: the default issuer (``None``: must be given).
        claims: the claims of which at least one must be pinned by a condition.
        hint: how to pin it, for the error message.
    """

    name: str
    issuer: str | None
    claims: tuple[str, ...]
    hint: str


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("github-actions", "https://token.actions.githubusercontent.com",
           ("repository", "sub"),
           "pin the repository, e.g. --condition repository=acme/app "
           "(or sub~='repo:acme/app:**')"),
    Preset("gitlab-ci", "https://gitlab.com", ("project_path", "sub"),
           "pin the project, e.g. --condition project_path=acme/app "
           "(or sub~='project_path:acme/app:**')"),
    Preset("kubernetes", None, ("sub",),
           "pin the service account: --condition "
           "sub=system:serviceaccount:<namespace>:<name>"),
)}
"""The presets ``POST /api/v1/federation/trusts`` accepts."""


@dataclass(frozen=True, slots=True)
class TrustSpec:
    """A trust to create (see :func:`create_trust` for the rules).

    Attributes:
        name: the trust's name (also the role-binding robot's short name).
        issuer: the issuer URL exactly as tokens carry it (empty: the preset's).
        audience: the ``aud`` tokens must carry.
        conditions: at least one; every one must hold.
        robot: an existing robot's full name (``robot$acme+ci``), or None.
        role_binding: a role binding (creates the trust's own robot), or None.
        scopes: restrictions narrowing what exchanged tokens may do (None = the robot's
            rights).
        max_token_seconds: registry token lifetime (None = the configured ceiling).
        enabled: whether exchanges are accepted.
        description: free text.
        preset: ``github-actions``, ``gitlab-ci``, ``kubernetes`` or None.
    """

    name: str
    audience: str
    conditions: tuple[Condition, ...]
    issuer: str = ""
    robot: str | None = None
    role_binding: RoleBinding | None = None
    scopes: tuple[str, ...] | None = None
    max_token_seconds: int | None = None
    enabled: bool = True
    description: str | None = None
    preset: str | None = None


@dataclass(frozen=True, slots=True)
class TrustUpdate:
    """Changes to a trust; ``None`` fields stay. ``scopes=()`` clears the restrictions,
    ``description=""`` clears the description.
    """

    issuer: str | None = None
    audience: str | None = None
    conditions: tuple[Condition, ...] | None = None
    scopes: tuple[str, ...] | None = None
    max_token_seconds: int | None = None
    enabled: bool | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class TrustInfo:
    """A trust as stored, with its robot's name and state."""

    id: int
    name: str
    description: str | None
    issuer: str
    audience: str
    conditions: tuple[Condition, ...]
    robot: str
    org: str | None
    owns_robot: bool
    role_binding: RoleBinding | None
    scopes: tuple[str, ...] | None
    max_token_seconds: int
    enabled: bool
    created_by: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    robot_disabled: bool = False
    robot_expires_at: dt.datetime | None = None
    robot_id: int = 0

    def matches(self, claims: Mapping[str, Any]) -> bool:
        """True if every condition holds for ``claims``."""
        return all(c.holds(claims) for c in self.conditions)

    def first_unmet(self, claims: Mapping[str, Any]) -> Condition | None:
        """The first condition ``claims`` do not meet (None if all hold)."""
        return next((c for c in self.conditions if not c.holds(claims)), None)

    def robot_usable(self, now: dt.datetime) -> bool:
        """The robot is enabled and unexpired."""
        return not self.robot_disabled and (self.robot_expires_at is None
                                             or self.robot_expires_at > now)


@dataclass(frozen=True, slots=True)
class Limits:
    """What the settings allow trusts: http issuers, and the lifetime ceiling."""

    allow_http: bool = False
    max_token_seconds: int = HARD_CAP_SECONDS

    @classmethod
    def of(cls, settings: AuthSettings) -> Limits:
        """From ``auth`` settings (``oidc.allow_http``, ``federation.max_token_seconds``)."""
        return cls(settings.oidc.allow_http,
                   max(MIN_TOKEN_SECONDS, min(settings.federation.max_token_seconds,
                                              HARD_CAP_SECONDS)))


# -- validation (pure) --------------------------------------------------------------------------


def parse_condition(value: Condition | Mapping[str, Any] | str) -> Condition:
    """A condition from its API form ``{claim, pattern, match?}`` or its CLI form
    ``claim=pattern`` (exact) / ``claim~=pattern`` (glob).

    Raises:
        Invalid: malformed.
    """
    if isinstance(value, Condition):
        cond = value
    elif isinstance(value, str):
        claim, sep, pattern = value.partition("=")
        if not sep:
            raise Invalid(f"condition {value!r}: use claim=value or claim~=glob")
        glob = claim.endswith("~")
        cond = Condition(claim.removesuffix("~").strip(), pattern,
                         "glob" if glob else "exact")
    else:
        name, text, kind = (value.get("claim"), value.get("pattern"),
                            value.get("match", "exact"))
        if not isinstance(name, str) or not isinstance(text, str) or kind not in (
                "exact", "glob"):
            raise Invalid(f"condition {dict(value)!r}: give claim, pattern and match "
                          "(exact or glob)")
        cond = Condition(name, text, kind)
    check_condition(cond)
    return cond


def check_condition(cond: Condition) -> None:
    """Check one condition's claim name, pattern and match kind.

    Raises:
        Invalid: naming what is wrong.
    """
    if not cond.claim or len(cond.claim) > MAX_CLAIM or not cond.claim.isprintable() or any(
            ch.isspace() for ch in cond.claim):
        raise Invalid(f"condition claim {cond.claim!r}: give a claim name without spaces")
    if cond.claim in UNUSABLE_CLAIMS:
        raise Invalid(f"condition claim {cond.claim!r} differs for every token; pin a claim "
                      "naming the workload (repository, ref, sub, project_path, …)")
    if cond.match not in ("exact", "glob"):
        raise Invalid(f"condition match {cond.match!r}: use exact or glob")
    if not cond.pattern or len(cond.pattern) > MAX_PATTERN or not cond.pattern.isprintable():
        raise Invalid(f"condition on {cond.claim}: the pattern must be 1-{MAX_PATTERN} "
                      "printable characters")
    if cond.match == "glob" and "***" in cond.pattern:
        raise Invalid(f"condition on {cond.claim}: '***' is not a glob; use * (one path "
                      "part) or ** (any depth)")


def check_conditions(conditions: Iterable[Condition | Mapping[str, Any] | str]
                     ) -> tuple[Condition, ...]:
    """Parse, de-duplicate and check a trust's conditions.

    Raises:
        Invalid: none given, too many, or none pins a value.
    """
    parsed = tuple(dict.fromkeys(parse_condition(c) for c in conditions))
    if not parsed:
        raise Invalid("conditions: give at least one (e.g. repository=acme/app); a trust "
                      "on a bare issuer would let every workload of that issuer in")
    if len(parsed) > MAX_CONDITIONS:
        raise Invalid(f"conditions: at most {MAX_CONDITIONS}")
    if not any(c.pins() for c in parsed):
        raise Invalid("conditions: at least one must pin a value (not only * or **); "
                      "a trust on a bare issuer would let every workload of that issuer in")
    return parsed


def check_issuer(issuer: str, allow_http: bool) -> None:
    """An issuer is an https URL with a host, no query or fragment (http only when
    ``auth.oidc.allow_http``).

    Raises:
        Invalid: naming what is wrong.
    """
    parts = urlsplit(issuer)
    scheme_ok = parts.scheme == "https" or (parts.scheme == "http" and allow_http)
    if (not scheme_ok or not parts.hostname or parts.query or parts.fragment
            or len(issuer) > MAX_ISSUER or any(ch.isspace() for ch in issuer)):
        extra = "" if allow_http else " (http only with auth.oidc.allow_http)"
        raise Invalid(f"issuer {issuer!r}: give the https URL tokens carry in iss{extra}")


def check_audience(audience: str) -> None:
    """Raises ``Invalid`` unless ``audience`` is 1-255 printable characters, no spaces."""
    if (not audience or len(audience) > MAX_AUDIENCE or not audience.isprintable()
            or any(ch.isspace() for ch in audience)):
        raise Invalid(f"audience {audience!r}: give the aud value the CI system puts in its "
                      "tokens (1-255 characters, no spaces)")


def check_lifetime(seconds: int, limits: Limits) -> None:
    """Raises ``Invalid`` unless ``MIN_TOKEN_SECONDS <= seconds <= the ceiling``."""
    if not MIN_TOKEN_SECONDS <= seconds <= limits.max_token_seconds:
        raise Invalid(f"max_token_seconds: between {MIN_TOKEN_SECONDS} and "
                      f"{limits.max_token_seconds} (auth.federation.max_token_seconds)")


def apply_preset(spec: TrustSpec) -> TrustSpec:
    """Fill the preset's issuer and check the conditions pin the claims that matter.

    Raises:
        Invalid: unknown preset, no issuer where the preset has none, or the conditions
            do not pin the preset's claim.
    """
    if spec.preset is None:
        if not spec.issuer:
            raise Invalid("issuer: required (or give a preset)")
        return spec
    preset = PRESETS.get(spec.preset)
    if preset is None:
        raise Invalid(f"preset {spec.preset!r}: use one of {', '.join(PRESETS)}")
    issuer = spec.issuer or preset.issuer
    if not issuer:
        raise Invalid(f"preset {preset.name}: give the cluster's service-account issuer "
                      "(kubectl get --raw /.well-known/openid-configuration)")
    pinned = [c for c in spec.conditions if c.claim in preset.claims and c.pins()
              and not c.pattern.startswith("*")]
    if preset.name == "kubernetes":
        pinned = [c for c in pinned if _K8S_SUB.fullmatch(c.pattern)
                  and "*" not in c.pattern.split(":")[2]]
    if not pinned:
        raise Invalid(f"preset {preset.name}: a condition must pin "
                      f"{' or '.join(preset.claims)}: {preset.hint}")
    return replace(spec, issuer=issuer)


# -- rows ---------------------------------------------------------------------------------------


def _select() -> Any:
    return (select(*FederationTrust.__table__.columns, Account.name.label("robot_name"),
                   Account.org.label("robot_org"), Account.disabled.label("robot_disabled"),
                   Account.expires_at.label("robot_expires_at"))
            .join(Account, Account.id == FederationTrust.robot_id))


def _info(row: Row[Any]) -> TrustInfo:
    t = row._mapping
    binding = json.loads(t["role_binding"]) if t["role_binding"] else None
    return TrustInfo(
        id=t["id"], name=t["name"], description=t["description"], issuer=t["issuer"],
        audience=t["audience"],
        conditions=tuple(Condition(c["claim"], c["pattern"], c.get("match", "exact"))
                         for c in json.loads(t["conditions"])),
        robot=t["robot_name"], org=t["robot_org"], owns_robot=bool(t["owns_robot"]),
        role_binding=RoleBinding(**binding) if binding else None,
        scopes=None if t["scopes"] is None else tuple(json.loads(t["scopes"])),
        max_token_seconds=t["max_token_seconds"], enabled=bool(t["enabled"]),
        created_by=t["created_by"], created_at=t["created_at"], updated_at=t["updated_at"],
        robot_disabled=bool(t["robot_disabled"]), robot_expires_at=t["robot_expires_at"],
        robot_id=t["robot_id"])


def get_trust(conn: Connection, name: str) -> TrustInfo:
    """The trust called ``name``.

    Raises:
        NotFound: no such trust.
    """
    row = conn.execute(_select().where(FederationTrust.name == name)).first()
    if row is None:
        raise NotFound(f"federation trust {name} not found", {"trust": name})
    return _info(row)


def list_trusts(conn: Connection, *, issuer: str | None = None) -> list[TrustInfo]:
    """Every trust (of ``issuer`` only, when given), in id order (the exchange order)."""
    query = _select().order_by(FederationTrust.id)
    if issuer is not None:
        query = query.where(FederationTrust.issuer == issuer)
    return [_info(row) for row in conn.execute(query)]


def create_trust(conn: Connection, spec: TrustSpec, limits: Limits, *,
                 grant: GrantFn | None = None, created_by: str | None = None) -> TrustInfo:
    """Create a trust (and, for a role binding, its robot and grant) in this transaction.

    Raises:
        Invalid: bad name, issuer, audience, conditions, scopes, lifetime or preset; both
            or neither of robot and role binding; the robot is not a robot; the role
            binding's organization does not exist or its glob is bad.
        NotFound: the robot or the role does not exist.
        Conflict: a trust of that name exists, or the role binding's robot does.
    """
    spec = apply_preset(replace(spec, conditions=check_conditions(spec.conditions)))
    if not acc.NAME_RE.fullmatch(spec.name):
        raise Invalid(f"trust name {spec.name!r}: {acc.NAME_RULE}")
    check_issuer(spec.issuer, limits.allow_http)
    check_audience(spec.audience)
    seconds = limits.max_token_seconds if spec.max_token_seconds is None \
        else spec.max_token_seconds
    check_lifetime(seconds, limits)
    scopes = None if spec.scopes is None else normalize_restrictions(spec.scopes)
    if (spec.robot is None) == (spec.role_binding is None):
        raise Invalid("give either robot (an existing robot account) or role_binding "
                      "(org, repository, role), not both")
    if conn.execute(select(FederationTrust.id).where(
            FederationTrust.name == spec.name)).first() is not None:
        raise Conflict(f"federation trust {spec.name} already exists", {"trust": spec.name})
    binding = spec.role_binding
    if binding is not None:
        if grant is None:
            raise Invalid("role bindings need the policy (no grant function given)")
        made = acc.create_robot(conn, spec.name, binding.org,
                                description=f"federation trust {spec.name}",
                                created_by=created_by)
        grant(conn, made.info.subject, binding.org, binding.repository, binding.role)
        robot_id, owns = made.info.id, True
    else:
        assert spec.robot is not None
        robot = acc.get_account(conn, spec.robot) if spec.robot else None
        if robot is None or robot.kind != "robot":
            raise Invalid(f"robot {spec.robot!r} is not a robot account (robot$<org>+<name> "
                          "or robot$<name>)")
        robot_id, owns = robot.id, False
    now = utcnow()
    try:
        with conn.begin_nested():
            conn.execute(insert(FederationTrust).values(
                name=spec.name, description=spec.description or None, issuer=spec.issuer,
                audience=spec.audience,
                conditions=json.dumps([c.to_dict() for c in spec.conditions]),
                robot_id=robot_id, owns_robot=owns,
                scopes=None if scopes is None else json.dumps(list(scopes)),
                role_binding=None if binding is None else json.dumps(binding.to_dict()),
                max_token_seconds=seconds, enabled=spec.enabled, created_by=created_by,
                created_at=now, updated_at=now))
    except IntegrityError:
        raise Conflict(f"federation trust {spec.name} already exists",
                       {"trust": spec.name}) from None
    return get_trust(conn, spec.name)


def update_trust(conn: Connection, name: str, changes: TrustUpdate,
                 limits: Limits) -> TrustInfo:
    """Change a trust (its binding stays: delete and recreate to rebind).

    Raises:
        NotFound: no such trust.
        Invalid: as for :func:`create_trust`.
    """
    trust = get_trust(conn, name)
    values: dict[str, Any] = {}
    if changes.issuer is not None:
        check_issuer(changes.issuer, limits.allow_http)
        values["issuer"] = changes.issuer
    if changes.audience is not None:
        check_audience(changes.audience)
        values["audience"] = changes.audience
    if changes.conditions is not None:
        values["conditions"] = json.dumps([c.to_dict()
                                           for c in check_conditions(changes.conditions)])
    if changes.scopes is not None:
        values["scopes"] = (json.dumps(list(normalize_restrictions(changes.scopes)))
                            if changes.scopes else None)
    if changes.max_token_seconds is not None:
        check_lifetime(changes.max_token_seconds, limits)
        values["max_token_seconds"] = changes.max_token_seconds
    if changes.enabled is not None:
        values["enabled"] = changes.enabled
    if changes.description is not None:
        values["description"] = changes.description or None
    if values:
        values["updated_at"] = utcnow()
        conn.execute(update(FederationTrust).where(FederationTrust.id == trust.id)
                     .values(**values))
    return get_trust(conn, name)


def delete_trust(conn: Connection, name: str, *,
                 remove_subject: RemoveSubjectFn | None = None) -> TrustInfo:
    """Delete a trust; a robot it owns goes too, with its grants (``remove_subject``).

    Raises:
        NotFound: no such trust.
    """
    trust = get_trust(conn, name)
    conn.execute(delete(FederationTrust).where(FederationTrust.id == trust.id))
    if trust.owns_robot:
        acc.delete_account(conn, trust.robot)
        if remove_subject is not None:
            remove_subject(conn, f"robot:{trust.robot}")
    return trust


# -- the exchange -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """A successful exchange.

    Attributes:
        principal: the robot, ``method="federation"``, ``token_id`` = the ID token's id,
            ``scopes`` = the trust's restrictions.
        lifetime: seconds the registry token may live.
        trust: the trust that matched.
        id_token: the validated ID token.
    """

    principal: Principal
    lifetime: int
    trust: TrustInfo
    id_token: IdToken


@dataclass(slots=True)
class _Audit:
    """What the exchange's security event says, filled in as the exchange proceeds."""

    client_ip: str
    user_agent: str
    actor: str = ""
    trust: str = ""
    token_id: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class FederationService:
    """Trust administration (each operation one transaction) and the token exchange.

    Args:
        db: the metadata database.
        providers: the OpenID Providers (ID-token validation).
        settings: ``auth`` settings (federation switch and ceiling, ``oidc.allow_http``).
        events: where every exchange decision is reported.
        grant: writes a role binding's grant (the policy layer's ``create_grant``).
        remove_subject: drops a deleted robot's grants (the policy layer's
            ``remove_subject``).
    """

    def __init__(self, db: Database, providers: Providers, settings: AuthSettings,
                 events: SecurityEvents, *, grant: GrantFn | None = None,
                 remove_subject: RemoveSubjectFn | None = None) -> None:
        self.db = db
        self.providers = providers
        self.settings = settings
        self.events = events
        self.limits = Limits.of(settings)
        self._grant = grant
        self._remove_subject = remove_subject

    # -- administration ----------------------------------------------------------------------

    async def list_trusts(self, issuer: str | None = None) -> list[TrustInfo]:
        """See :func:`list_trusts`."""
        return await self.db.run(lambda c: list_trusts(c, issuer=issuer), write=False)

    async def get_trust(self, name: str) -> TrustInfo:
        """See :func:`get_trust`."""
        return await self.db.run(lambda c: get_trust(c, name), write=False)

    async def create_trust(self, spec: TrustSpec, *, created_by: str | None = None,
                           on_change: OnChange | None = None) -> TrustInfo:
        """See :func:`create_trust` (``on_change`` records it in the transaction)."""
        def tx(conn: Connection) -> TrustInfo:
            trust = create_trust(conn, spec, self.limits, grant=self._grant,
                                 created_by=created_by)
            if on_change is not None:
                on_change(conn, None, trust)
            return trust

        return await self.db.run(tx, write=True)

    async def update_trust(self, name: str, changes: TrustUpdate, *,
                           on_change: OnChange | None = None) -> TrustInfo:
        """See :func:`update_trust` (``on_change`` records it in the transaction)."""
        def tx(conn: Connection) -> TrustInfo:
            before = get_trust(conn, name)
            trust = update_trust(conn, name, changes, self.limits)
            if on_change is not None:
                on_change(conn, before, trust)
            return trust

        return await self.db.run(tx, write=True)

    async def delete_trust(self, name: str, *,
                           on_change: OnChange | None = None) -> TrustInfo:
        """See :func:`delete_trust` (``on_change`` records it in the transaction)."""
        def tx(conn: Connection) -> TrustInfo:
            trust = delete_trust(conn, name, remove_subject=self._remove_subject)
            if on_change is not None:
                on_change(conn, trust, trust)
            return trust

        return await self.db.run(tx, write=True)

    # -- exchange ----------------------------------------------------------------------------

    async def exchange(self, id_token: str, *, client_ip: str = "",
                       user_agent: str = "") -> Exchange:
        """Exchange a CI system's ID token for the robot of the first trust it satisfies.

        Steps: the (unverified) ``iss`` picks the trusts of that issuer (read from the
        database now); the token is validated once per distinct audience among them;
        enabled trusts are tried in id order and the first whose conditions all hold wins;
        its robot must be enabled and unexpired. Every outcome is emitted as a
        ``auth.federation.exchange`` security event with a stable ``reason``.

        Raises:
            FederationRefused: ``federation_disabled``, ``unknown_issuer``,
                ``trust_disabled``, ``condition_not_met``, ``robot_disabled``.
            IdTokenRefused: the validator's refusal (``wrong_audience``, ``expired``,
                ``bad_signature``, ``unknown_key``, …).
            Unavailable: the provider's keys cannot be fetched.
        """
        audit = _Audit(client_ip, user_agent)
        try:
            result = await self._exchange(id_token, audit)
        except (FederationRefused, IdTokenRefused) as exc:
            await self._emit(audit, "deny", exc.reason, exc.message)
            raise
        except Unavailable as exc:
            await self._emit(audit, "error", "provider_unavailable", exc.message)
            raise
        p = result.principal
        await self.events.emit(SecurityEvent(
            action=ACTION, outcome="allow", actor_kind="robot", actor=p.name,
            method="federation", client_ip=client_ip, user_agent=user_agent,
            resource=result.trust.name, token_id=result.id_token.token_id,
            detail={**audit.detail, "lifetime": result.lifetime}))
        return result

    async def _emit(self, audit: _Audit, outcome: Literal["deny", "error"], reason: str,
                    message: str) -> None:
        await self.events.emit(SecurityEvent(
            action=ACTION, outcome=outcome, actor_kind="identity", actor=audit.actor,
            method="federation", reason=reason, client_ip=audit.client_ip,
            user_agent=audit.user_agent, resource=audit.trust, token_id=audit.token_id,
            detail={**audit.detail, "message": message}))

    async def _exchange(self, token: str, audit: _Audit) -> Exchange:
        if not self.settings.federation.enabled:
            raise FederationRefused("federation_disabled", "keyless CI (federated ID tokens) "
                                    "is switched off on this registry")
        issuer = peek_issuer(token)
        audit.actor = issuer
        audit.detail["issuer"] = issuer
        trusts = await self.list_trusts(issuer)
        if not trusts:
            raise FederationRefused("unknown_issuer", f"no federation trust accepts ID tokens "
                                    f"of issuer {issuer!r}")
        provider = self.providers.get(issuer)
        verified = await self._verify(provider.verify_id_token, token, trusts, audit)
        claims = verified.claims
        candidates = [t for t in trusts if t.audience in verified.audience]
        now = utcnow()
        for trust in candidates:
            if trust.enabled and trust.matches(claims):
                audit.trust = trust.name
                if not trust.robot_usable(now):
                    raise FederationRefused("robot_disabled", f"trust {trust.name!r} acts as "
                                            f"{trust.robot}, which is disabled or expired")
                lifetime = min(trust.max_token_seconds, self.limits.max_token_seconds)
                principal = Principal("robot", trust.robot, account_id=trust.robot_id,
                                      method="federation", token_id=verified.token_id,
                                      scopes=trust.scopes)
                return Exchange(principal, lifetime, trust, verified)
        disabled = next((t for t in candidates if not t.enabled and t.matches(claims)), None)
        if disabled is not None:
            audit.trust = disabled.name
            raise FederationRefused("trust_disabled", f"trust {disabled.name!r} matches this "
                                    "token but is disabled")
        raise FederationRefused("condition_not_met", _unmet(issuer, candidates, claims))

    async def _verify(self, verify: Callable[..., Any], token: str,
                      trusts: Sequence[TrustInfo], audit: _Audit) -> IdToken:
        """Validate ``token`` for the first audience among ``trusts`` it carries."""
        audiences = list(dict.fromkeys(t.audience for t in trusts))
        refused: IdTokenRefused | None = None
        for audience in audiences:
            try:
                verified: IdToken = await verify(token, audience=audience)
            except IdTokenRefused as exc:
                if exc.reason != "wrong_audience":
                    raise
                refused = exc
                continue
            audit.actor = f"{verified.issuer}#{verified.subject}"
            audit.token_id = verified.token_id
            audit.detail.update(subject=verified.subject, audience=audience,
                                key_id=verified.key_id)
            return verified
        assert refused is not None
        if len(audiences) == 1:
            raise refused
        raise IdTokenRefused("wrong_audience", f"{refused.message.split(';')[0]}; the trusts "
                             f"of this issuer expect one of {', '.join(map(repr, audiences))}")


def _unmet(issuer: str, trusts: Sequence[TrustInfo], claims: Mapping[str, Any]) -> str:
    """Why no trust matched: each enabled trust's first unmet condition (three at most)."""
    parts = []
    for trust in [t for t in trusts if t.enabled][:3]:
        cond = trust.first_unmet(claims)
        if cond is None:
            continue
        got = claim_text(claims.get(cond.claim))
        has = "has no such claim" if cond.claim not in claims else (
            f"has {got!r}" if got is not None else "has a value that is not a string")
        parts.append(f"trust {trust.name!r} requires {cond} (the token {has})")
    return (f"no federation trust of issuer {issuer!r} accepts this token: "
            + "; ".join(parts or ["no enabled trust"]))
