"""The admin API's request and response bodies (msgspec Structs) and the conversions from
the auth and policy layers' values. Secrets appear only in the ``*Created`` bodies.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

Name = Annotated[str, Meta(min_length=1, max_length=64,
                           description="lowercase letters, digits, . _ - (64 at most)")]
Days = Annotated[int, Meta(ge=0, le=36500)]
Effect = Literal["allow", "deny"]
S = TypeVar("S", bound=msgspec.Struct)


class Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of request bodies: unknown fields are refused (a typo never passes silently)."""


# -- requests ---------------------------------------------------------------------------------

class UserCreate(Body):
    """A new user account: with a password, or ``oidc: true`` for a person who signs in
    only with single sign-on (no password; linked at their first OIDC login).
    """

    name: Name
    password: str | None = None
    email: str | None = None
    oidc: bool = False


class UserUpdate(Body):
    """Changes to a user; absent (null) fields stay as they are. ``email: ""`` clears it."""

    password: str | None = None
    email: str | None = None
    disabled: bool | None = None


class OrgCreate(Body):
    """A new organization; the creator becomes its owner."""

    name: Name
    description: str | None = None
    public: bool = False


class OrgUpdate(Body):
    """Changes to an organization; absent fields stay as they are."""

    description: str | None = None
    public: bool | None = None


class TeamCreate(Body):
    """A new team in an organization; ``idp_group`` = mirror that OpenID Provider group
    (members are then set at each OIDC login, not by hand).
    """

    name: Name
    description: str | None = None
    idp_group: str | None = None


class TeamUpdate(Body):
    """Changes to a team; absent fields stay. ``""`` clears the description or the
    provider group (membership is then managed in dtr again).
    """

    description: str | None = None
    idp_group: str | None = None


class GrantSpec(Body):
    """A role on repositories matching a glob (``**`` = the whole org)."""

    role: str
    repository: str = "**"


class RobotCreate(Body):
    """A new robot account. ``expires_in_days``: null = the server default, 0 = never."""

    name: Name
    description: str | None = None
    expires_in_days: Days | None = None
    grants: list[GrantSpec] = msgspec.field(default_factory=list)


class RobotUpdate(Body):
    """Changes to a robot; absent (null) fields stay. ``expires_in_days``: 0 = never,
    n = n days from now. ``description: ""`` clears it.
    """

    description: str | None = None
    disabled: bool | None = None
    expires_in_days: Days | None = None


class RoleCreate(Body):
    """A new custom role: its actions and the roles it includes."""

    name: Name
    actions: list[str] = msgspec.field(default_factory=list)
    includes: list[str] = msgspec.field(default_factory=list)
    description: str | None = None


class RoleUpdate(Body):
    """Changes to a custom role; absent fields stay as they are (lists are replaced)."""

    actions: list[str] | None = None
    includes: list[str] | None = None
    description: str | None = None


class GrantCreate(Body):
    """A grant: ``subject`` holds (or is denied) ``role`` on ``repository`` in ``org``."""

    subject: str
    org: str
    role: str
    repository: str = "**"
    effect: Effect = "allow"


class TokenCreate(Body):
    """A new personal access token; ``scopes`` null = the account's full rights."""

    name: Annotated[str, Meta(min_length=1, max_length=128)]
    scopes: list[str] | None = None
    expires_in_days: Annotated[int, Meta(ge=1)] | None = None


class CheckRow(Body):
    """One decision-table row: the expected outcome of one request."""

    subject: str
    repository: str
    action: str
    expected: Effect


class CheckRequest(Body):
    """A decision table to evaluate against the live policy."""

    rows: list[CheckRow]


class TrustCondition(Body):
    """A claim condition of a federation trust: ``exact`` value or ``glob`` (``*`` stays
    inside one ``/``-separated part, ``**`` crosses ``/``).
    """

    claim: Annotated[str, Meta(min_length=1, max_length=255)]
    pattern: Annotated[str, Meta(min_length=1, max_length=1024)]
    match: Literal["exact", "glob"] = "exact"


class TrustRoleBinding(Body):
    """A role on a repository glob of an organization, held by a robot made for the trust
    (``robot$<org>+<trust name>``, deleted with it).
    """

    org: Name
    role: str
    repository: str = "**"


class TrustCreate(Body):
    """A new federation trust (keyless CI). Give ``robot`` or ``role_binding``; ``preset``
    fills the issuer (GitHub, GitLab.com) and checks the conditions pin the right claim.
    ``max_token_seconds`` null = the server's ceiling; ``scopes`` null = the robot's rights.
    """

    name: Name
    audience: Annotated[str, Meta(min_length=1, max_length=255)]
    conditions: list[TrustCondition]
    issuer: str | None = None
    preset: Literal["github-actions", "gitlab-ci", "kubernetes"] | None = None
    robot: str | None = None
    role_binding: TrustRoleBinding | None = None
    scopes: list[str] | None = None
    max_token_seconds: Annotated[int, Meta(ge=60, le=3600)] | None = None
    enabled: bool = True
    description: str | None = None


class TrustUpdate(Body):
    """Changes to a federation trust; absent (null) fields stay. ``conditions`` replaces
    the list; ``scopes: []`` lifts the restrictions; ``description: ""`` clears it. The
    binding cannot change (delete and recreate the trust).
    """

    issuer: str | None = None
    audience: Annotated[str, Meta(min_length=1, max_length=255)] | None = None
    conditions: list[TrustCondition] | None = None
    scopes: list[str] | None = None
    max_token_seconds: Annotated[int, Meta(ge=60, le=3600)] | None = None
    enabled: bool | None = None
    description: str | None = None


# -- responses --------------------------------------------------------------------------------

class Me(msgspec.Struct, kw_only=True):
    """The caller."""

    name: str
    kind: str
    subject: str
    method: str
    teams: list[str]
    system_roles: list[str]
    token_id: str | None = None
    scopes: list[str] | None = None


class User(msgspec.Struct, kw_only=True):
    """A user account (never its password hash)."""

    name: str
    email: str | None
    disabled: bool
    created_by: str | None
    created_at: dt.datetime
    last_login_at: dt.datetime | None


class Org(msgspec.Struct, kw_only=True):
    """An organization; ``public`` = anyone may pull (an anonymous reader grant)."""

    name: str
    description: str | None
    public: bool
    created_by: str | None
    created_at: dt.datetime


class Team(msgspec.Struct, kw_only=True):
    """A team and its member subjects; ``idp_group``: the provider group it mirrors."""

    org: str
    name: str
    description: str | None
    members: list[str]
    created_at: dt.datetime
    idp_group: str | None = None


class Robot(msgspec.Struct, kw_only=True):
    """A robot account (never its secret)."""

    name: str
    org: str | None
    description: str | None
    disabled: bool
    expires_at: dt.datetime | None
    created_by: str | None
    created_at: dt.datetime
    last_login_at: dt.datetime | None


class RobotCreated(Robot, kw_only=True):
    """A new robot with its secret, shown this once."""

    secret: str
    grants: list[Grant] = msgspec.field(default_factory=list)


class RobotSecret(msgspec.Struct, kw_only=True):
    """A regenerated robot secret, shown this once."""

    name: str
    secret: str
    expires_at: dt.datetime | None


class Role(msgspec.Struct, kw_only=True):
    """A role: the actions it holds directly and the roles it includes."""

    name: str
    description: str | None
    builtin: bool
    actions: list[str]
    includes: list[str]


class Grant(msgspec.Struct, kw_only=True):
    """A grant (``org`` ``*`` = system-wide)."""

    id: int
    subject: str
    org: str
    repository: str
    role: str
    effect: Effect


class Token(msgspec.Struct, kw_only=True):
    """A personal access (or refresh) token, never its secret."""

    id: str
    name: str
    kind: str
    scopes: list[str] | None
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None
    created_at: dt.datetime


class TokenCreated(Token, kw_only=True):
    """A new token with its secret, shown this once."""

    secret: str


class Decision(msgspec.Struct, kw_only=True):
    """An explained policy decision."""

    allowed: bool
    subject: str
    domain: str
    object: str
    action: str
    rule: list[str] | None
    chain: list[str]
    reason: str


class CheckResult(msgspec.Struct, kw_only=True):
    """One evaluated decision-table row."""

    subject: str
    repository: str
    action: str
    expected: Effect
    actual: Effect
    ok: bool
    reason: str
    rule: list[str] | None


class CheckReport(msgspec.Struct, kw_only=True):
    """A whole decision table: every row, and the rows that did not match."""

    ok: bool
    rows: list[CheckResult]
    mismatches: list[CheckResult]


class TrustRoleBindingOut(msgspec.Struct, kw_only=True):
    """The role binding of a trust that owns its robot."""

    org: str
    repository: str
    role: str


class TrustConditionOut(msgspec.Struct, kw_only=True):
    """A claim condition of a trust."""

    claim: str
    pattern: str
    match: str


class Trust(msgspec.Struct, kw_only=True):
    """A federation trust: ID tokens of ``issuer`` for ``audience`` whose claims meet every
    condition are exchanged for registry tokens acting as ``robot``.
    """

    name: str
    description: str | None
    issuer: str
    audience: str
    conditions: list[TrustConditionOut]
    robot: str
    org: str | None
    owns_robot: bool
    role_binding: TrustRoleBindingOut | None
    scopes: list[str] | None
    max_token_seconds: int
    enabled: bool
    created_by: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


# -- signing policies and promotion --------------------------------------------------------

Mode = Literal["enforce", "audit"]
KeyStatus = Literal["active", "retired", "revoked"]


class SigningKeyAdd(Body):
    """A cosign public key to trust: PEM SubjectPublicKeyInfo (ECDSA P-256/P-384,
    Ed25519 or RSA). Its id is the hex SHA-256 of the DER key.
    """

    pem: str
    name: str | None = None


class TrustStoreSet(Body):
    """A notation trust store: X.509 root certificates (concatenated PEM) and the trusted
    identities (``x509.subject: C=US, O=Acme, CN=release`` or ``*``).
    """

    roots_pem: str
    identities: list[str] = msgspec.field(default_factory=lambda: ["*"])


class TrustStoreCreate(Body):
    """A named trust store (inside a new policy)."""

    name: Name
    roots_pem: str
    identities: list[str] = msgspec.field(default_factory=lambda: ["*"])


class SigningPolicyCreate(Body):
    """A new trust policy. ``pattern`` is a repository glob (``*`` one path segment, ``**``
    any number); ``formats`` accepts ``cosign``/``notation`` shorthands (default: all).
    """

    name: Name
    pattern: str
    protected: bool = True
    mode: Mode = "enforce"
    min_signatures: Annotated[int, Meta(ge=1, le=64)] = 1
    require_children_signed: bool = False
    formats: list[str] | None = None
    keys: list[SigningKeyAdd] = msgspec.field(default_factory=list)
    trust_stores: list[TrustStoreCreate] = msgspec.field(default_factory=list)


class SigningPolicyUpdate(Body):
    """Changes to a policy; absent (null) fields stay as they are."""

    pattern: str | None = None
    protected: bool | None = None
    mode: Mode | None = None
    min_signatures: Annotated[int, Meta(ge=1, le=64)] | None = None
    require_children_signed: bool | None = None
    formats: list[str] | None = None


class SigningKeyStatus(Body):
    """A key's new status: ``retired`` (signatures first verified before now keep
    counting), ``revoked`` (none count, at once) or ``active`` again.
    """

    status: KeyStatus


class SigningKeyOut(msgspec.Struct, kw_only=True):
    """A trusted cosign public key and its lifecycle."""

    key_id: str
    name: str | None
    status: str
    pem: str
    valid_from: dt.datetime
    retired_at: dt.datetime | None
    revoked_at: dt.datetime | None


class TrustStoreOut(msgspec.Struct, kw_only=True):
    """A notation trust store."""

    name: str
    roots_pem: str
    identities: list[str]
    created_at: dt.datetime


class SigningPolicy(msgspec.Struct, kw_only=True):
    """A trust policy of the signing gate. ``version`` counts its edits; ``source`` is
    ``config`` (the settings file owns it) or ``api``.
    """

    name: str
    pattern: str
    protected: bool
    mode: str
    min_signatures: int
    require_children_signed: bool
    formats: list[str]
    source: str
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    keys: list[SigningKeyOut]
    trust_stores: list[TrustStoreOut]


class SigningKeyAdded(msgspec.Struct, kw_only=True):
    """A key added to a policy (``key_id`` = hex SHA-256 of the DER key)."""

    key_id: str
    policy: SigningPolicy


class SigningKeyChanged(msgspec.Struct, kw_only=True):
    """A key status change and what it recomputed at once."""

    key_id: str
    status: str
    digests_affected: int
    tags_affected: int
    affected: list[str]
    """``repository@digest`` whose trust state changed."""
    policy: SigningPolicy


class PromotionCreate(Body):
    """Promote ``source`` (``repository@sha256:…``) into the path's repository and point
    ``tags`` at it.
    """

    source: str
    tags: list[str] = msgspec.field(default_factory=list)


class PromotionCopied(msgspec.Struct, kw_only=True):
    """What a promotion copied."""

    manifests: int
    referrers: int
    blobs_mounted: int


class Promotion(msgspec.Struct, kw_only=True):
    """A promoted digest, tagged in the target repository."""

    repository: str
    digest: str
    tags: list[str]
    copied: PromotionCopied


def convert(value: Any, schema: type[S], **extra: Any) -> S:
    """Build ``schema`` from the same-named attributes of ``value`` plus ``extra`` fields.

    Other attributes of ``value`` are ignored (the auth and policy values may grow).

    Raises:
        msgspec.ValidationError: a field is missing or has the wrong type (a bug here).
    """
    names = {f.name for f in msgspec.structs.fields(schema)}
    data = {n: getattr(value, n) for n in names if hasattr(value, n)}
    data.update(extra)
    return msgspec.convert(data, schema)
