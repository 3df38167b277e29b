"""Registry metadata tables. Bytes live in storage; everything else is a row here.

``blob`` is the global content-addressed catalogue (one row per stored digest);
``repository_blob`` links a blob to a repository (pull access follows links, so a
cross-repository mount is an insert); ``manifest`` holds each manifest's exact bytes;
``manifest_reference`` lists what a manifest points at (for validation and GC);
``tag`` points a name at a manifest; ``upload`` tracks upload sessions across replicas.

Access control: ``account`` holds users and robots (secrets hashed), ``organization`` and
``team`` the namespaces and groups, ``access_token`` personal access and refresh tokens
(hashed). ``casbin_rule`` is the whole policy (grants, team membership, role definitions),
read by the Casbin enforcer; ``role`` describes roles; ``policy_state`` holds the version
every replica polls; ``login_failure`` counts failed logins for rate limits.

Audit: ``audit_event`` is the hash-chained record (time-partitioned on PostgreSQL),
``audit_head`` the chain's last link and lock, ``audit_checkpoint`` the signed anchors, and
``audit_cursor`` each forwarding sink's position in the outbox.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from dtr.db.base import Base, UTCDateTime, utcnow

DIGEST_LEN = 200


class Repository(Base):
    """A repository (``org/team/app``); created on first push."""

    __tablename__ = "repository"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Blob(Base):
    """A stored blob. ``state`` is ``present`` or ``deleting`` (GC in progress)."""

    __tablename__ = "blob"
    digest: Mapped[str] = mapped_column(String(DIGEST_LEN), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="present")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_linked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RepositoryBlob(Base):
    """Link: the repository may serve the blob."""

    __tablename__ = "repository_blob"
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(
        ForeignKey("blob.digest", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_repository_blob_digest", "digest"),)


class Manifest(Base):
    """A manifest or index, stored byte for byte."""

    __tablename__ = "manifest"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(DIGEST_LEN))
    media_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    artifact_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    subject_digest: Mapped[str | None] = mapped_column(String(DIGEST_LEN), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("repository_id", "digest", name="uq_manifest_repository_digest"),
        Index("ix_manifest_subject", "repository_id", "subject_digest"),
    )


class ManifestReference(Base):
    """An edge from a manifest to a blob (``kind='blob'``) or child manifest."""

    __tablename__ = "manifest_reference"
    manifest_id: Mapped[int] = mapped_column(
        ForeignKey("manifest.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(String(DIGEST_LEN), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)

    __table_args__ = (Index("ix_manifest_reference_digest", "digest"),)


class Tag(Base):
    """A tag pointing at a manifest of the same repository."""

    __tablename__ = "tag"
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifest.id", ondelete="CASCADE"))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_tag_manifest", "manifest_id"),)


class Upload(Base):
    """An upload session. Bytes are segments in storage; ``size`` is the committed end."""

    __tablename__ = "upload"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    segments: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_upload_updated_at", "updated_at"),)


class UploadPart(Base):
    """One immutable segment of an upload, in offset order."""

    __tablename__ = "upload_part"
    upload_id: Mapped[str] = mapped_column(
        ForeignKey("upload.id", ondelete="CASCADE"), primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    key: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)


NAME_LEN = 255


class Account(Base):
    """A user (``kind='user'``) or robot account (``kind='robot'``).

    Robot names are ``robot$<org>+<name>`` (org robots) or ``robot$<name>`` (system robots).
    ``secret_hash`` is an argon2 hash of a user's password or a SHA-256 of a robot's random
    secret; it is never returned by any API.
    """

    __tablename__ = "account"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    org: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    email: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    secret_hash: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (Index("ix_account_org", "org"),)


class Organization(Base):
    """A namespace: the first path component of its repositories."""

    __tablename__ = "organization"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Team(Base):
    """A group of users inside one organization (membership lives in ``casbin_rule``)."""

    __tablename__ = "team"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    idp_group: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    """The OpenID Provider group this team mirrors (team sync): members are then set at
    each OIDC login from the groups claim. NULL = membership managed in dtr only."""
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_team_org_name"),
                      Index("ix_team_idp_group", "idp_group"))


class AccessToken(Base):
    """A personal access token (``kind='pat'``), refresh token (``kind='refresh'``) or
    OIDC login session (``kind='session'``).

    The presented secret is ``<prefix><id>_<random>``; only SHA-256 of the random part is
    stored. ``scopes`` (JSON list, NULL = the account's own rights) narrows what the token
    may do; revocation is immediate because every use is looked up here.
    """

    __tablename__ = "access_token"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    secret_hash: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[str | None] = mapped_column(Text, nullable=True)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_access_token_account", "account_id"),)


class CasbinRule(Base):
    """One Casbin policy line (the standard adapter's shape): ``p`` grants, ``g`` team
    membership, ``g2`` role definitions. Alembic owns the table; no adapter creates it.
    """

    __tablename__ = "casbin_rule"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ptype: Mapped[str] = mapped_column(String(8))
    v0: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    v1: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    v2: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    v3: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    v4: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    v5: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)

    __table_args__ = (Index("ix_casbin_rule_ptype_v0", "ptype", "v0"),)


class Role(Base):
    """A role's description; its actions are ``g2`` rows in ``casbin_rule``."""

    __tablename__ = "role"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PolicyState(Base):
    """One row (id 1): bumped in the same transaction as every policy change."""

    __tablename__ = "policy_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LoginFailure(Base):
    """Failed logins per key (``account:<name>`` or ``ip:<address>``) in the current window."""

    __tablename__ = "login_failure"
    key: Mapped[str] = mapped_column(String(320), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OIDCIdentity(Base):
    """A person's identity at the OpenID Provider (``iss`` + ``sub``) and the dtr user it
    signs in as. ``groups`` (JSON list) is the groups claim of the last login; the
    ``*_by_group`` flags record roles granted because of the admin or auditor group, so the
    next login can take them back when the group is gone (and only then).
    """

    __tablename__ = "oidc_identity"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer: Mapped[str] = mapped_column(String(NAME_LEN))
    subject: Mapped[str] = mapped_column(String(NAME_LEN))
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    email: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    groups: Mapped[str | None] = mapped_column(Text, nullable=True)
    admin_by_group: Mapped[bool] = mapped_column(Boolean, default=False)
    auditor_by_group: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_oidc_identity_iss_sub"),
                      Index("ix_oidc_identity_account", "account_id"))


class FederationTrust(Base):
    """Keyless CI: ID tokens of ``issuer`` for ``audience`` whose claims meet
    ``conditions`` (JSON list of ``{"claim", "pattern", "match": "exact"|"glob"}``) are
    exchanged for registry tokens acting as the robot ``robot_id``, for at most
    ``max_token_seconds`` (<= 3600). ``owns_robot``: the robot was created for this trust's
    role binding (JSON ``{"org", "repository", "role"}`` in ``role_binding``) and goes with
    it. ``scopes``: JSON list of scope restrictions, or NULL for the robot's full rights.
    """

    __tablename__ = "federation_trust"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    issuer: Mapped[str] = mapped_column(String(NAME_LEN))
    audience: Mapped[str] = mapped_column(String(NAME_LEN))
    conditions: Mapped[str] = mapped_column(Text)
    robot_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    owns_robot: Mapped[bool] = mapped_column(Boolean, default=False)
    scopes: Mapped[str | None] = mapped_column(Text, nullable=True)
    role_binding: Mapped[str | None] = mapped_column(Text, nullable=True)
    max_token_seconds: Mapped[int] = mapped_column(Integer, default=3600)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_federation_trust_issuer", "issuer"),)


# -- the signing gate (signing.md §8) -----------------------------------------------------
class SigningPolicy(Base):
    """A trust policy: repositories matching ``pattern`` (``*`` one segment, ``**`` any)
    are ``protected`` by it. ``mode`` is ``enforce`` or ``audit``; ``formats`` is a JSON
    list of accepted signature formats; ``source`` is ``config`` (seeded from the settings
    file) or ``api``; ``version`` counts edits of this policy.
    """

    __tablename__ = "signing_policy"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    pattern: Mapped[str] = mapped_column(String(NAME_LEN))
    protected: Mapped[bool] = mapped_column(Boolean, default=True)
    mode: Mapped[str] = mapped_column(String(16), default="enforce")
    min_signatures: Mapped[int] = mapped_column(Integer, default=1)
    require_children_signed: Mapped[bool] = mapped_column(Boolean, default=False)
    formats: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16), default="api")
    version: Mapped[int] = mapped_column(BigInteger, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SigningKey(Base):
    """A trusted cosign public key of a policy; ``key_id`` = hex SHA-256 of the DER SPKI.
    ``status`` is ``active``, ``retired`` (signatures first verified before ``retired_at``
    keep counting) or ``revoked`` (none count).
    """

    __tablename__ = "signing_key"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("signing_policy.id", ondelete="CASCADE"))
    key_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    pem: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="active")
    valid_from: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    retired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (UniqueConstraint("policy_id", "key_id", name="uq_signing_key_policy_key"),
                      Index("ix_signing_key_key_id", "key_id"))


class SigningTrustStore(Base):
    """A notation trust store of a policy: X.509 roots (``roots_pem``, concatenated PEM)
    and the trusted identities (JSON list of ``x509.subject: …`` strings or ``*``).
    """

    __tablename__ = "signing_trust_store"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("signing_policy.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    roots_pem: Mapped[str] = mapped_column(Text)
    identities: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("policy_id", "name", name="uq_signing_trust_store_name"),)


class SignatureRecord(Base):
    """One signature (of a signature manifest) offered for ``subject_digest`` in a
    repository, and its verdict: ``valid`` = cryptographically valid for a key / identity
    of the policy (``signer`` = key id or certificate subject); the key's status decides
    whether it counts. ``first_verified_at`` is the registry's receipt time (the
    retired-key rule); ``policy_version`` is the global version the verdict was made under;
    ``certificate_chain`` is a notation signature's chain (PEM, leaf first), kept when only
    the trust check could fail, so that a trust-store edit checks it again at once.
    """

    __tablename__ = "signing_signature"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"))
    subject_digest: Mapped[str] = mapped_column(String(DIGEST_LEN))
    signature_digest: Mapped[str] = mapped_column(String(DIGEST_LEN))
    position: Mapped[int] = mapped_column(Integer, default=0)
    format: Mapped[str | None] = mapped_column(String(32), nullable=True)
    signer: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    valid: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    policy_version: Mapped[int] = mapped_column(BigInteger, default=0)
    first_verified_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    certificate_chain: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        UniqueConstraint("repository_id", "signature_digest", "subject_digest", "position",
                         name="uq_signing_signature"),
        Index("ix_signing_signature_subject", "repository_id", "subject_digest"),
        Index("ix_signing_signature_signer", "signer"),
    )


class TrustState(Base):
    """The gate's state of a manifest digest in a repository: ``QUARANTINED``,
    ``TRUSTED`` (``via`` = ``direct`` or the trusted index it inherits from) or
    ``REVOKED`` (was trusted, lost its qualifying signatures). No foreign key to
    ``manifest``: a legacy signature may arrive before its image (sign before push).
    """

    __tablename__ = "signing_trust"
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(String(DIGEST_LEN), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    via: Mapped[str | None] = mapped_column(String(DIGEST_LEN), nullable=True)
    policy_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SigningState(Base):
    """One row (id 1): the global signing-policy version, bumped by every policy edit."""

    __tablename__ = "signing_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditEvent(Base):
    """One audit event, hash-chained: ``hash`` = SHA-256 of the RFC 8785 canonical JSON of
    the event's fields together with ``seq`` and ``prev_hash`` (the previous event's hash).
    ``seq`` is the chain position, gap-free and in commit order. On PostgreSQL the table is
    partitioned by ``time`` (retention drops whole partitions), so the key is
    (``seq``, ``time``).
    """

    __tablename__ = "audit_event"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime(), primary_key=True)
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(8))
    actor_kind: Mapped[str] = mapped_column(String(16), default="")
    actor_id: Mapped[str] = mapped_column(String(NAME_LEN), default="")
    actor: Mapped[str] = mapped_column(String(NAME_LEN), default="")
    method: Mapped[str] = mapped_column(String(32), default="")
    token_id: Mapped[str] = mapped_column(String(64), default="")
    client_ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(512), default="")
    request_id: Mapped[str] = mapped_column(String(64), default="")
    org: Mapped[str] = mapped_column(String(NAME_LEN), default="")
    repository: Mapped[str] = mapped_column(String(255), default="")
    tag: Mapped[str] = mapped_column(String(255), default="")
    digest: Mapped[str] = mapped_column(String(DIGEST_LEN), default="")
    resource: Mapped[str] = mapped_column(String(512), default="")
    reason: Mapped[str] = mapped_column(String(255), default="")
    rule: Mapped[str] = mapped_column(String(512), default="")
    detail: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_event_time", "time"),
        Index("ix_audit_event_actor", "actor", "seq"),
        # pattern_ops: on PostgreSQL the prefix filters (action auth.*, repository prod/**)
        # are LIKE 'prefix%', which a default-collation index cannot serve
        Index("ix_audit_event_action", "action", "seq",
              postgresql_ops={"action": "varchar_pattern_ops"}),
        Index("ix_audit_event_repository", "repository", "seq",
              postgresql_ops={"repository": "varchar_pattern_ops"}),
        Index("ix_audit_event_outcome", "outcome", "seq"),
        # PostgreSQL only: globs with no literal prefix but a literal suffix (*/app)
        Index("ix_audit_event_repository_reversed", text("reverse(repository) text_pattern_ops"),
              "seq").ddl_if(dialect="postgresql"),
    )


class AuditHead(Base):
    """One row (id 1): the last chained event's ``seq`` and ``hash`` (the chain lock)."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed statement "event ``seq`` has hash ``hash``": ``signature`` is a compact
    JWS by the registry key ``key_id`` over ``{"seq", "hash", "time", "kind"}``.
    ``kind`` is ``periodic`` or ``retention`` (written before old events are dropped, so
    the first remaining event stays anchored).
    """

    __tablename__ = "audit_checkpoint"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(16), default="periodic")
    key_id: Mapped[str] = mapped_column(String(128))
    signature: Mapped[str] = mapped_column(Text)


class AuditCursor(Base):
    """How far each forwarding sink has delivered (the outbox read position)."""

    __tablename__ = "audit_cursor"
    sink: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
