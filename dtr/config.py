"""Settings: one typed object built from an optional YAML file plus ``DTR_*`` variables.

Owns the configuration schema, its defaults, loading and validation. Precedence:
environment > YAML file > defaults. An environment variable names a setting by its path:
``DTR_<SECTION>_<FIELD>`` (``DTR_STORAGE_S3_ACCESS_KEY`` → ``storage.s3.access_key``); the
shortcut ``DTR_DATABASE_URL`` is ``database.url``. No globals: callers pass ``Settings`` down.
Imports nothing from dtr but ``dtr.errors``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

ENV_PREFIX = "DTR_"
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SINK_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SYSLOG_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+)(:[0-9]{1,5})?")
"""``host``, ``host:port`` or ``[v6]:port``."""
_SD_ID = re.compile(r"[!#-<>?A-\\^-~]+@[0-9]+(?:\.[0-9]+)*")
"""An RFC 5424 private SD-ID: printable ASCII but ``= ] " @`` and space, ``@``, a number."""


class ConfigError(Exception):
    """The configuration is invalid; the message says which setting and why."""


class ServerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """HTTP server."""

    host: str = "127.0.0.1"
    """Address to bind (``0.0.0.0`` for every interface)."""
    port: int = 5000
    """TCP port."""
    workers: int = 2
    """Worker processes (granian). Each has its own database pool."""
    public_url: str = ""
    """External base URL (``https://registry.example``) used in absolute links; empty =
    relative ``Location`` headers, which every client accepts."""
    data_dir: str = "./data"
    """Folder for the embedded SQLite database, filesystem blobs and generated keys."""
    tls_cert: str = ""
    """PEM certificate (chain) to serve HTTPS directly; empty = plain HTTP (terminate TLS
    in front, e.g. an ingress)."""
    tls_key: str = ""
    """PEM private key matching ``tls_cert``."""
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    """Peer addresses (IPs or CIDRs) whose ``X-Forwarded-For`` is believed for the client
    IP used by login rate limits (and audit). Empty = use the socket peer address."""


class DatabaseSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Metadata database."""

    url: str = ""
    """SQLAlchemy URL. Empty = SQLite file ``<data_dir>/dtr.db``. Production:
    ``postgresql+asyncpg://user:pass@host:5432/dtr``."""
    pool_size: int = 10
    """Connections per worker (PostgreSQL)."""
    echo: bool = False
    """Log every SQL statement (debugging only)."""


class FilesystemSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Local-disk blob storage."""

    root: str = ""
    """Folder for blobs and uploads. Empty = ``<data_dir>/storage``."""
    fsync: bool = True
    """fsync each blob before it becomes visible (durable commits)."""


class S3Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """S3-compatible object storage (MinIO) through the ``minio`` SDK."""

    endpoint: str = ""
    """``host:port`` of the S3 endpoint, no scheme."""
    bucket: str = "dtr"
    """Bucket name; created at start-up if missing."""
    access_key: str = ""
    """Access key id."""
    secret_key: str = ""
    """Secret access key."""
    region: str = ""
    """Region (empty = the server's default)."""
    secure: bool = True
    """Use HTTPS to reach the endpoint."""
    prefix: str = ""
    """Key prefix inside the bucket (several registries can share one bucket)."""
    redirect: bool = False
    """Answer blob GETs with a 307 to a presigned URL instead of proxying the bytes."""
    redirect_expiry_seconds: int = 600
    """Lifetime of presigned URLs."""
    part_size: int = 16 * 1024 * 1024
    """Multipart part size in bytes (>= 5 MiB)."""


class StorageSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where blob bytes live."""

    backend: Literal["filesystem", "s3", "memory"] = "filesystem"
    """``filesystem`` (default), ``s3`` (MinIO or any S3), ``memory`` (tests only)."""
    filesystem: FilesystemSettings = msgspec.field(default_factory=FilesystemSettings)
    s3: S3Settings = msgspec.field(default_factory=S3Settings)


class RegistrySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """OCI registry behaviour."""

    max_manifest_bytes: int = 4 * 1024 * 1024
    """Manifests larger than this are refused with 413."""
    max_blob_bytes: int = 64 * 1024 * 1024 * 1024
    """Largest blob accepted (bytes)."""
    max_tags_per_request: int = 32
    """Most ``?tag=`` parameters on one manifest PUT (414 above)."""
    delete_enabled: bool = True
    """Allow DELETE of manifests, tags and blobs."""
    chunk_min_bytes: int = 0
    """Advertised ``OCI-Chunk-Min-Length`` (0 = not sent)."""
    page_size: int = 1000
    """Default and maximum page size of tag lists, catalog and referrers."""


class GCSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Garbage collection (``dtr gc``)."""

    upload_max_age_seconds: int = 24 * 3600
    """Uploads untouched this long are abandoned and removed."""
    blob_grace_seconds: int = 3600
    """A blob no manifest references is kept this long after it was last linked."""


class TokenSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Registry bearer tokens (Docker token authentication)."""

    issuer: str = "dtr"
    """JWT ``iss`` of issued tokens (and the only issuer ``/v2`` accepts)."""
    service: str = ""
    """Service name in the challenge and the JWT ``aud``; empty = the request's host."""
    lifetime_seconds: int = 300
    """Lifetime of registry tokens (``expires_in``); at least 60."""
    key_file: str = ""
    """PEM EC P-256 private key signing tokens. Empty = ``<data_dir>/token-signing-key.pem``,
    generated on first start. Replicas must share it (mount the same secret)."""
    previous_key_files: list[str] = msgspec.field(default_factory=list)
    """Retired public or private keys still published in the JWKS during a rotation."""
    refresh_lifetime_days: int = 90
    """Lifetime of refresh tokens (``offline_token=true``, ``access_type=offline``)."""


class OIDCSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Single sign-on for people with an OpenID Provider (authorization code + PKCE)."""

    enabled: bool = False
    """Offer OIDC login (``/api/v1/auth/oidc/login``)."""
    issuer: str = ""
    """The provider's issuer URL exactly as its ID tokens carry it
    (``https://keycloak.example/realms/acme``); discovery is read from
    ``<issuer>/.well-known/openid-configuration``."""
    client_id: str = ""
    """dtr's client id at the provider (the ID tokens' audience)."""
    client_secret: str = ""
    """The client secret; empty = a public client (PKCE only)."""
    scopes: list[str] = msgspec.field(default_factory=lambda: ["openid", "profile", "email"])
    """Scopes requested at login (``openid`` is always sent); add the scope that releases
    the groups claim where the provider needs one (``groups``)."""
    redirect_url: str = ""
    """The callback URL registered at the provider. Empty =
    ``<server.public_url>/api/v1/auth/oidc/callback`` (or the request's own origin)."""
    username_claim: str = "preferred_username"
    """Claim naming the dtr user (lower-cased; must be a valid user name)."""
    email_claim: str = "email"
    """Claim holding the e-mail address."""
    groups_claim: str = "groups"
    """Claim holding the list of groups (team sync, admin and auditor groups)."""
    admin_group: str = ""
    """Members of this provider group are system administrators (re-checked at every
    login). Empty = none."""
    auditor_group: str = ""
    """Members of this provider group get the auditor role. Empty = none."""
    auto_onboard: bool = True
    """Create the dtr user at its first login; ``false`` = an admin creates users first
    (``dtr user create NAME --oidc``) and others are refused."""
    local_login: bool = True
    """Local passwords keep working beside OIDC. ``false`` = only the bootstrap admin
    and robots sign in without the provider."""
    session_hours: int = 8
    """Lifetime of the dtr session an OIDC login returns (used to mint personal access
    tokens); independent of the provider's own session."""
    clock_skew_seconds: int = 60
    """Tolerance for ``exp``, ``nbf`` and ``iat`` of provider tokens."""
    ca_file: str = ""
    """PEM bundle to trust for the provider's TLS (private CAs); empty = system CAs."""
    allow_http: bool = False
    """Accept ``http://`` issuers (login and federation). Only for loopback test setups."""


class FederationSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Keyless CI: OIDC ID tokens of CI systems exchanged for registry tokens."""

    enabled: bool = True
    """Accept federated ID tokens at the token endpoint (trusts are data, managed through
    ``/api/v1/federation/trusts``)."""
    username: str = "$oidc"
    """The reserved user name that marks the password as an ID token
    (``docker login -u '$oidc' -p "$ID_TOKEN"``)."""
    max_token_seconds: int = 3600
    """Ceiling for every trust's ``max_token_seconds`` (at most 3600)."""


class AuthSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Authentication and authorization."""

    enabled: bool = True
    """Require credentials (Docker token auth + RBAC). ``false`` = an open registry for
    isolated test setups only; every request is then allowed."""
    admin_username: str = "admin"
    """The bootstrap system administrator, created on first start when no user exists. Its
    password is ``DTR_ADMIN_PASSWORD`` or generated and printed once."""
    token: TokenSettings = msgspec.field(default_factory=TokenSettings)
    org_creation: Literal["everyone", "admin"] = "everyone"
    """Who may create organizations: any signed-in user (who then owns it) or only system
    administrators."""
    login_failures_per_account: int = 10
    """Failed logins allowed per account within the window before 429."""
    login_failures_per_ip: int = 50
    """Failed logins allowed per client IP within the window before 429."""
    login_failure_window_seconds: int = 300
    """Window of the failed-login limits (and how long a locked client waits)."""
    policy_refresh_seconds: float = 2.0
    """How often each worker checks the database for policy changes made elsewhere."""
    token_max_days: int = 365
    """Longest lifetime of a personal access token (days)."""
    robot_default_expiry_days: int = 0
    """Default robot expiry in days when none is given (0 = never)."""
    oidc: OIDCSettings = msgspec.field(default_factory=OIDCSettings)
    federation: FederationSettings = msgspec.field(default_factory=FederationSettings)


class SigningKeySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A trusted cosign public key of a signing policy."""

    pem: str = ""
    """The key as PEM ``PUBLIC KEY`` (``cosign.pub``); ECDSA P-256/P-384, Ed25519 or RSA."""
    pem_file: str = ""
    """A file holding the PEM, instead of ``pem``."""
    name: str = ""
    """A label for people (the key id is the SHA-256 of the DER key)."""
    status: Literal["active", "retired", "revoked"] = "active"
    """``retired``: signatures first verified before retirement keep counting;
    ``revoked``: none count."""


class SigningTrustStoreSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A notation trust store of a signing policy."""

    name: str
    """The store's name (``ca:<name>`` in notation terms)."""
    roots_pem: str = ""
    """Root certificates, PEM (several may be concatenated)."""
    roots_file: str = ""
    """A file holding the roots, instead of ``roots_pem``."""
    identities: list[str] = msgspec.field(default_factory=lambda: ["*"])
    """Trusted identities: ``*`` or ``x509.subject: C=…, ST=…, O=…, CN=…``."""


class SigningPolicySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A signing policy declared in the settings file (seeded at startup)."""

    name: str
    """Unique policy name (shown in refusals)."""
    repositories: str
    """Repository glob: ``*`` one path segment, ``**`` any (``prod/**``)."""
    protected: bool = True
    """Gate on (``false`` keeps the policy but switches the gate off)."""
    mode: Literal["enforce", "audit"] = "enforce"
    """``audit``: unsigned tag writes are accepted and recorded instead of refused."""
    min_signatures: int = 1
    """Valid signatures from distinct trusted keys/identities a digest needs."""
    require_children_signed: bool = False
    """Indexes: every child manifest must be signed too."""
    formats: list[str] = msgspec.field(default_factory=lambda: ["cosign", "notation"])
    """Accepted formats: ``cosign``, ``notation`` or precise ones (``cosign-bundle``, …)."""
    keys: list[SigningKeySettings] = msgspec.field(default_factory=list)
    """Trusted cosign public keys."""
    trust_stores: list[SigningTrustStoreSettings] = msgspec.field(default_factory=list)
    """notation trust stores with their trusted identities."""


class SigningSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The signing gate."""

    policies: list[SigningPolicySettings] = msgspec.field(default_factory=list)
    """Policies seeded into the database at startup (upserted; marked as from config)."""
    quarantine_grace_seconds: int = 7 * 24 * 3600
    """``dtr gc`` keeps untagged quarantined manifests this long, so push → sign → tag is
    not raced by garbage collection."""


SyslogFacility = Literal["kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news",
                         "uucp", "cron", "authpriv", "ftp", "ntp", "audit", "alert", "clock",
                         "local0", "local1", "local2", "local3", "local4", "local5", "local6",
                         "local7"]
"""RFC 5424 facility names, in code order (``kern`` = 0 … ``local7`` = 23)."""


class AuditSinkSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A destination audit events are forwarded to (``audit.sinks``; docs/audit.md)."""

    name: str
    """Unique name (lower case, digits, ``.``, ``_``, ``-``); keys the sink's delivered
    position, so renaming a sink starts it again from the oldest stored event."""
    type: Literal["stdout", "syslog", "webhook"]
    """``stdout`` (JSON lines), ``syslog`` (RFC 5424 over TCP, or TLS with ``tls``) or
    ``webhook`` (CloudEvents over HTTP(S))."""
    enabled: bool = True
    """``false`` keeps the sink's position but delivers nothing (and its backlog does not
    count for ``audit.fail_closed_backlog``)."""
    address: str = ""
    """syslog: ``host:port`` of the receiver (``[v6]:port``; the port defaults to 6514 with
    TLS, 514 without)."""
    url: str = ""
    """webhook: the ``http://`` or ``https://`` URL events are POSTed to."""
    tls: bool = False
    """syslog: RFC 5425 TLS instead of plain TCP (webhooks use TLS for ``https://`` URLs)."""
    ca_file: str = ""
    """PEM bundle trusted for the receiver's certificate; empty = the system CAs."""
    cert_file: str = ""
    """PEM client certificate (chain) presented to the receiver (mutual TLS)."""
    key_file: str = ""
    """PEM private key of ``cert_file``."""
    server_name: str = ""
    """Name the receiver's certificate must carry; empty = the host of ``address``/``url``."""
    check_server_name: bool = True
    """Check the certificate's name; ``false`` accepts any certificate the CA issued
    (rsyslog's ``x509/certvalid``). The chain is always verified."""
    facility: SyslogFacility = "authpriv"
    """syslog facility (``authpriv``: security/authorization messages)."""
    sd_id: str = "dtr@32473"
    """syslog structured-data id; 32473 is the documentation enterprise number (RFC 5612):
    use your organization's own when it has one."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """webhook: extra HTTP headers sent with every request."""
    token: str = ""
    """webhook: bearer token sent as ``Authorization: Bearer …``."""
    token_file: str = ""
    """webhook: a file holding the bearer token, instead of ``token``."""
    hmac_secret: str = ""
    """webhook: key of the ``X-Dtr-Signature: sha256=<hex HMAC-SHA256 of the body>``
    header."""
    hmac_secret_file: str = ""
    """webhook: a file holding the HMAC key, instead of ``hmac_secret``."""
    batch_size: int = 100
    """Most events read and delivered at once; the delivered position advances per batch."""
    retry_max_seconds: float = 60.0
    """Longest wait between delivery attempts (exponential backoff with jitter up to it)."""
    timeout_seconds: float = 10.0
    """Connect, send and confirm timeout of one delivery."""


class AuditSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The audit log."""

    fail_closed: bool = False
    """Refuse a request (503) when its audit event cannot be committed. Changes always
    commit together with their events; this also holds pulls, denials and logins until
    their events are committed."""
    record_pulls: bool = True
    """Record every manifest pull (``GET`` of a manifest by tag or digest)."""
    relay: bool = True
    """``dtr serve``: chain the events recorded on their own (pulls, denials, logins) in
    one separate process (the audit relay) instead of a writer thread in each worker,
    whose work slows the worker's requests; failing open only. A worker that cannot reach
    the relay writes its events itself, so none are lost."""
    max_pending: int = 100_000
    """Events (pulls, denials, logins) kept in memory while the database refuses writes,
    when failing open; older ones are dropped, and the loss is logged."""
    checkpoint_events: int = 1000
    """Sign a checkpoint after this many events..."""
    checkpoint_seconds: float = 60.0
    """...or when unsigned events are this old."""
    retention_days: int = 0
    """Remove events older than this many days; 0 keeps them forever. On PostgreSQL whole
    partitions (``partition_days`` each) are dropped, so events are kept up to
    ``partition_days`` longer; a signed checkpoint keeps the rest verifiable."""
    partition_days: int = 7
    """PostgreSQL: days of events per partition of ``audit_event`` (aligned to Monday
    2000-01-03 UTC, so every replica computes the same bounds)."""
    retention_interval_seconds: float = 3600.0
    """How often one replica applies retention (partitions are created daily)."""
    sinks: list[AuditSinkSettings] = msgspec.field(default_factory=list)
    """Where events are forwarded (stdout, syslog, webhook); see docs/audit.md."""
    forward_poll_seconds: float = 1.0
    """How often each process looks for new events to forward (and updates backlogs)."""
    fail_closed_backlog: int = 0
    """Refuse (503) every request that records an event while an enabled sink is more than
    this many events behind; 0 = off."""


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every dtr setting. Build with :func:`load_settings`."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    registry: RegistrySettings = msgspec.field(default_factory=RegistrySettings)
    gc: GCSettings = msgspec.field(default_factory=GCSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    signing: SigningSettings = msgspec.field(default_factory=SigningSettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)

    @property
    def data_path(self) -> Path:
        """The data folder as an absolute path."""
        return Path(self.server.data_dir).expanduser().resolve()

    @property
    def database_url(self) -> str:
        """The effective SQLAlchemy URL (SQLite in the data folder by default)."""
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{self.data_path / 'dtr.db'}"

    @property
    def token_key_path(self) -> Path:
        """The effective token-signing key file."""
        if self.auth.token.key_file:
            return Path(self.auth.token.key_file).expanduser().resolve()
        return self.data_path / "token-signing-key.pem"

    @property
    def filesystem_root(self) -> Path:
        """The effective filesystem storage root."""
        if self.storage.filesystem.root:
            return Path(self.storage.filesystem.root).expanduser().resolve()
        return self.data_path / "storage"


def _struct_fields(cls: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(cls)}


def _set_path(tree: dict[str, Any], cls: type[msgspec.Struct], tokens: list[str], value: str,
              var: str) -> None:
    """Place ``value`` in ``tree`` at the field path spelt by ``tokens`` (greedy on ``_``)."""
    fields = _struct_fields(cls)
    for i in range(len(tokens), 0, -1):
        name = "_".join(tokens[:i])
        if name not in fields:
            continue
        ftype = fields[name]
        rest = tokens[i:]
        if isinstance(ftype, type) and issubclass(ftype, msgspec.Struct):
            if not rest:
                continue
            sub = tree.setdefault(name, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"{var}: {name} is a section")
            _set_path(sub, ftype, rest, value, var)
            return
        if rest:
            continue
        is_list = getattr(ftype, "__origin__", None) is list or str(ftype).startswith("list")
        tree[name] = [v.strip() for v in value.split(",") if v.strip()] if is_list else value
        return
    raise ConfigError(f"{var}: no such setting")


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, val in over.items():
        if isinstance(val, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], val)
        else:
            out[key] = val
    return out


RESOLVED_ENV = "_DTR_RESOLVED_SETTINGS"
"""Set by ``dtr serve`` for the processes it starts: the settings it resolved (JSON)."""


def resolved_settings() -> Settings:
    """The settings ``dtr serve`` resolved for its processes (``RESOLVED_ENV``), or the
    environment's and default ones when not started by it.
    """
    raw = os.environ.get(RESOLVED_ENV)
    return msgspec.json.decode(raw, type=Settings) if raw else load_settings()


def load_settings(config_file: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build and validate the settings.

    Args:
        config_file: optional YAML file; ``DTR_CONFIG`` names one when this is None.
        env: the environment to read ``DTR_*`` from (default ``os.environ``).
        overrides: a nested mapping applied last (command-line flags).

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or failed validation.
    """
    env = os.environ if env is None else env
    tree: dict[str, Any] = {}
    path = config_file or env.get("DTR_CONFIG")
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
        tree = loaded
    env_tree: dict[str, Any] = {}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or var == "DTR_CONFIG":
            continue
        if var in ("DTR_ADMIN_PASSWORD",) or var.startswith(("DTR_TEST_", "DTR_CLI_")):
            continue
        tokens = var[len(ENV_PREFIX):].lower().split("_")
        _set_path(env_tree, Settings, tokens, value, var)
    tree = _merge(tree, env_tree)
    if overrides:
        tree = _merge(tree, overrides)
    try:
        settings = msgspec.convert(tree, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Check cross-field rules that types cannot express.

    Raises:
        ConfigError: the first rule broken, naming the setting.
    """
    s = settings
    if not 0 < s.server.port < 65536:
        raise ConfigError(f"server.port: {s.server.port} is not a TCP port")
    if s.server.workers < 1:
        raise ConfigError("server.workers: must be at least 1")
    url = s.database_url
    if not (url.startswith("sqlite+aiosqlite://") or url.startswith("postgresql+asyncpg://")):
        raise ConfigError(
            "database.url: use sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db")
    if s.storage.backend == "s3":
        s3 = s.storage.s3
        if not s3.endpoint or "://" in s3.endpoint:
            raise ConfigError("storage.s3.endpoint: set host:port without a scheme")
        if not s3.access_key or not s3.secret_key:
            raise ConfigError("storage.s3.access_key and storage.s3.secret_key are required")
        if s3.part_size < 5 * 1024 * 1024:
            raise ConfigError("storage.s3.part_size: S3 needs at least 5 MiB parts")
    if s.registry.max_manifest_bytes < 4 * 1024 * 1024:
        raise ConfigError("registry.max_manifest_bytes: OCI requires at least 4 MiB")
    if s.registry.max_tags_per_request < 10:
        raise ConfigError("registry.max_tags_per_request: OCI requires at least 10")
    if s.registry.page_size < 1:
        raise ConfigError("registry.page_size: must be at least 1")
    if s.gc.upload_max_age_seconds < 60:
        raise ConfigError("gc.upload_max_age_seconds: must be at least 60")
    if s.gc.blob_grace_seconds < 0:
        raise ConfigError("gc.blob_grace_seconds: must not be negative")
    if bool(s.server.tls_cert) != bool(s.server.tls_key):
        raise ConfigError("server.tls_cert and server.tls_key: set both or neither")
    for name in ("tls_cert", "tls_key"):
        value = getattr(s.server, name)
        if value and not Path(value).expanduser().is_file():
            raise ConfigError(f"server.{name}: {value} is not a readable file")
    _validate_auth(s.auth)
    _validate_signing(s.signing)
    _validate_audit(s.audit)


def _validate_audit(a: AuditSettings) -> None:
    if a.max_pending < 1:
        raise ConfigError("audit.max_pending: must be at least 1")
    if a.checkpoint_events < 1:
        raise ConfigError("audit.checkpoint_events: must be at least 1")
    if a.checkpoint_seconds <= 0:
        raise ConfigError("audit.checkpoint_seconds: must be more than 0")
    if a.retention_days < 0:
        raise ConfigError("audit.retention_days: must not be negative (0 keeps forever)")
    if not 1 <= a.partition_days <= 366:
        raise ConfigError("audit.partition_days: must be between 1 and 366")
    if a.retention_interval_seconds < 1:
        raise ConfigError("audit.retention_interval_seconds: must be at least 1")
    if a.forward_poll_seconds <= 0:
        raise ConfigError("audit.forward_poll_seconds: must be more than 0")
    if a.fail_closed_backlog < 0:
        raise ConfigError("audit.fail_closed_backlog: must not be negative")
    names: set[str] = set()
    for sink in a.sinks:
        if not _SINK_NAME.fullmatch(sink.name):
            raise ConfigError(f"audit.sinks: {sink.name!r} is not a valid sink name "
                              "(lower case, digits, '.', '_', '-'; at most 64)")
        if sink.name in names:
            raise ConfigError(f"audit.sinks.{sink.name}: duplicate sink name")
        names.add(sink.name)
        _validate_sink(sink)


def _validate_sink(s: AuditSinkSettings) -> None:
    where = f"audit.sinks.{s.name}"
    if s.batch_size < 1:
        raise ConfigError(f"{where}.batch_size: must be at least 1")
    if s.retry_max_seconds < 1:
        raise ConfigError(f"{where}.retry_max_seconds: must be at least 1")
    if s.timeout_seconds <= 0:
        raise ConfigError(f"{where}.timeout_seconds: must be more than 0")
    if bool(s.cert_file) != bool(s.key_file):
        raise ConfigError(f"{where}: set both cert_file and key_file or neither")
    if s.type == "syslog":
        if not _SYSLOG_ADDRESS.fullmatch(s.address):
            raise ConfigError(f"{where}.address: set host:port (no scheme) for syslog")
        if not s.tls and (s.ca_file or s.cert_file):
            raise ConfigError(f"{where}: ca_file and cert_file need tls: true")
        if len(s.sd_id) > 32 or not _SD_ID.fullmatch(s.sd_id):
            raise ConfigError(f"{where}.sd_id: an RFC 5424 SD-ID is name@number")
    if s.type == "webhook":
        if not s.url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.url: set an http:// or https:// URL")
        if s.url.startswith("http://") and (s.ca_file or s.cert_file):
            raise ConfigError(f"{where}: ca_file and cert_file need an https:// url")
        if s.token and s.token_file:
            raise ConfigError(f"{where}: set token or token_file, not both")
        if s.hmac_secret and s.hmac_secret_file:
            raise ConfigError(f"{where}: set hmac_secret or hmac_secret_file, not both")


def _validate_signing(g: SigningSettings) -> None:
    if g.quarantine_grace_seconds < 0:
        raise ConfigError("signing.quarantine_grace_seconds: must not be negative")
    names: set[str] = set()
    for p in g.policies:
        where = f"signing.policies.{p.name}"
        if p.name in names:
            raise ConfigError(f"{where}: duplicate policy name")
        names.add(p.name)
        if p.min_signatures < 1:
            raise ConfigError(f"{where}.min_signatures: must be at least 1")
        for k in p.keys:
            if bool(k.pem) == bool(k.pem_file):
                raise ConfigError(f"{where}.keys: set exactly one of pem and pem_file")
            if k.pem_file and not Path(k.pem_file).expanduser().is_file():
                raise ConfigError(f"{where}.keys: {k.pem_file} is not a readable file")
        for t in p.trust_stores:
            if bool(t.roots_pem) == bool(t.roots_file):
                raise ConfigError(f"{where}.trust_stores.{t.name}: set exactly one of "
                                  "roots_pem and roots_file")
            if t.roots_file and not Path(t.roots_file).expanduser().is_file():
                raise ConfigError(f"{where}.trust_stores.{t.name}: {t.roots_file} is not "
                                  "a readable file")


def _validate_auth(a: AuthSettings) -> None:
    if a.token.lifetime_seconds < 60:
        raise ConfigError("auth.token.lifetime_seconds: clients assume at least 60")
    if a.token.refresh_lifetime_days < 1:
        raise ConfigError("auth.token.refresh_lifetime_days: must be at least 1")
    if min(a.login_failures_per_account, a.login_failures_per_ip) < 1:
        raise ConfigError("auth.login_failures_per_*: must be at least 1")
    if a.login_failure_window_seconds < 1:
        raise ConfigError("auth.login_failure_window_seconds: must be at least 1")
    if a.policy_refresh_seconds <= 0 or a.policy_refresh_seconds > 5:
        raise ConfigError("auth.policy_refresh_seconds: must be in (0, 5] so policy changes "
                          "reach every replica within 5 seconds")
    if a.token_max_days < 1:
        raise ConfigError("auth.token_max_days: must be at least 1")
    if not _USERNAME.fullmatch(a.admin_username):
        raise ConfigError("auth.admin_username: use lowercase letters, digits, . _ -")
    _validate_oidc(a.oidc)
    if not 60 <= a.federation.max_token_seconds <= 3600:
        raise ConfigError("auth.federation.max_token_seconds: must be in [60, 3600]")
    if not a.federation.username or _USERNAME.fullmatch(a.federation.username):
        raise ConfigError("auth.federation.username: must not be a possible user name "
                          "(start it with $)")


def _validate_oidc(o: OIDCSettings) -> None:
    if not o.enabled:
        return
    if not o.issuer or not o.client_id:
        raise ConfigError("auth.oidc.issuer and auth.oidc.client_id are required when "
                          "auth.oidc.enabled is true")
    scheme = o.issuer.partition("://")[0]
    if scheme != "https" and not (scheme == "http" and o.allow_http):
        raise ConfigError("auth.oidc.issuer: must be an https:// URL (http:// only with "
                          "auth.oidc.allow_http for loopback tests)")
    if o.redirect_url and not o.redirect_url.startswith(("https://", "http://")):
        raise ConfigError("auth.oidc.redirect_url: must be an absolute http(s) URL")
    if not 1 <= o.session_hours <= 24 * 30:
        raise ConfigError("auth.oidc.session_hours: must be in [1, 720]")
    if not 0 <= o.clock_skew_seconds <= 300:
        raise ConfigError("auth.oidc.clock_skew_seconds: must be in [0, 300]")
    if o.ca_file and not Path(o.ca_file).expanduser().is_file():
        raise ConfigError(f"auth.oidc.ca_file: {o.ca_file} is not a readable file")
