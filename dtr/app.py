"""The composition root: ``create_app(settings)`` builds the engine, the storage driver,
the core services and the hooks, and returns the Litestar application. The only module
that imports every layer; nothing imports it but the CLI and the ASGI server.
"""

from __future__ import annotations

import ctypes
import gc
import ipaddress
import logging
import os
import secrets
from pathlib import Path
from typing import cast

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.handlers import HTTPRouteHandler
from litestar.types import (
    ASGIApp,
    ControllerRouterHandler,
    HTTPScope,
    LifeSpanReceive,
    LifeSpanScope,
    LifeSpanSend,
    Receive,
    Scope,
    Send,
)
from sqlalchemy import Connection

from dtr.api.admin import build_admin_router, openapi_config
from dtr.api.context import Security, audit_context
from dtr.api.health import build_health_routes
from dtr.api.oci.handlers import OciContext
from dtr.api.oci.lane import OciLane, takes
from dtr.api.oci.router import V2_HANDLER, build_routes
from dtr.api.oci.security import AccessControl, OpenAccess, TokenAccess
from dtr.api.oidc import build_oidc_router
from dtr.api.problems import app_exception_handlers
from dtr.api.token import build_token_routes
from dtr.audit.checkpoints import CheckpointKeys
from dtr.audit.config import record_config
from dtr.audit.forward import Forwarder
from dtr.audit.maintenance import AuditMaintenance
from dtr.audit.recorder import AuditRecorder
from dtr.audit.relay import SOCKET_ENV as RELAY_SOCKET_ENV
from dtr.audit.retention import RetentionPolicy
from dtr.auth import accounts
from dtr.auth.accounts import AccountService
from dtr.auth.credentials import CredentialVerifier
from dtr.auth.oidc import Providers
from dtr.auth.ratelimit import LoginLimiter
from dtr.auth.sso import LoginService
from dtr.auth.tokens import TokenIssuer, TokenKeys, TokenVerifier
from dtr.config import Settings, SigningSettings, resolved_settings
from dtr.core.hooks import Hooks
from dtr.core.registry import Registry
from dtr.core.store import Limits, Store
from dtr.db.database import Database
from dtr.db.engine import current_revision
from dtr.db.migrate import head_revision
from dtr.db.reads import FastReads, make_fast_reads
from dtr.events import SecurityEvent
from dtr.policy import admin as policy_admin
from dtr.policy.admin import PolicyAdmin
from dtr.policy.enforcer import PolicyEngine
from dtr.signing.gate import SigningGate
from dtr.signing.policy import KeySpec, PolicyService, PolicySpec, TrustStoreSpec
from dtr.storage.base import StorageDriver
from dtr.storage.filesystem import FilesystemDriver

log = logging.getLogger("dtr")
ADMIN_PASSWORD_ENV = "DTR_ADMIN_PASSWORD"  # noqa: S105 - a variable name
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 4 * 1024 * 1024
"""Buffers this big or bigger (S3 part buffers, 5 MiB and up) are mmapped, so freeing them
returns their memory to the OS; smaller ones (the ~1 MiB write buffers of every push) come
from the heap and are reused."""


class SchemaBehind(RuntimeError):
    """The database is not at the schema revision this code needs."""


def build_storage(settings: Settings) -> StorageDriver:
    """The storage driver the settings select."""
    backend = settings.storage.backend
    if backend == "s3":
        from dtr.storage.s3 import S3Driver  # noqa: PLC0415 - only when configured

        s3 = settings.storage.s3
        return S3Driver(s3.endpoint, s3.bucket, s3.access_key, s3.secret_key,
                        region=s3.region or None, secure=s3.secure, prefix=s3.prefix,
                        part_size=s3.part_size)
    if backend == "memory":
        from dtr.storage.memory import MemoryDriver  # noqa: PLC0415

        return MemoryDriver()
    return FilesystemDriver(settings.filesystem_root, fsync=settings.storage.filesystem.fsync)


def limits(settings: Settings) -> Limits:
    """Core limits from the settings."""
    r = settings.registry
    return Limits(max_manifest_bytes=r.max_manifest_bytes, max_blob_bytes=r.max_blob_bytes,
                  max_tags_per_request=r.max_tags_per_request, page_size=r.page_size,
                  delete_enabled=r.delete_enabled)


def build_registry(settings: Settings, storage: StorageDriver | None = None) -> Registry:
    """Engine, store and core services (used by the app and by ``dtr gc``)."""
    db = Database(settings.database_url, pool_size=settings.database.pool_size,
                  echo=settings.database.echo)
    reads = make_fast_reads(settings.database_url, settings.database.pool_size)
    recorder = AuditRecorder(db, fail_closed=settings.audit.fail_closed,
                             max_pending=settings.audit.max_pending)
    hooks = Hooks(sinks=[recorder])
    gate = SigningGate(db, hooks)
    hooks.gate, hooks.observer, hooks.reads = gate, gate, gate
    store = Store(db, storage or build_storage(settings), reads, hooks, limits(settings))
    s3 = settings.storage.s3
    redirect = s3.redirect_expiry_seconds if (settings.storage.backend == "s3"
                                              and s3.redirect) else None
    return Registry(store, redirect_expiry=redirect)


async def close_registry(registry: Registry) -> None:
    """Release the registry's connections, threads and storage clients."""
    await registry.store.storage.close()
    await registry.store.reads.close()
    await registry.store.db.close()


async def check_schema(registry: Registry) -> None:
    """Refuse to run on a database that is not at the head revision.

    Raises:
        SchemaBehind: with the command that fixes it.
    """
    current = await current_revision(registry.store.db.engine)
    head = head_revision()
    if current != head:
        raise SchemaBehind(
            f"database schema is at {current or 'nothing (empty database)'}, this dtr needs "
            f"{head}: run `dtr db upgrade` (with the same --config / DTR_DATABASE_URL)")


def audit_recorder(registry: Registry) -> AuditRecorder:
    """The registry's audit recorder (the first event sink ``build_registry`` installs)."""
    recorder = registry.store.hooks.sinks[0]
    assert isinstance(recorder, AuditRecorder)
    return recorder


def checkpoint_keys(keys: TokenKeys) -> CheckpointKeys:
    """The registry key as the audit log's checkpoint signer."""
    return CheckpointKeys(keys.signing, keys.kid, keys.verifying)


def build_security(settings: Settings, db: Database, reads: FastReads | None = None,
                   recorder: AuditRecorder | None = None) -> Security:
    """The auth services of one process: accounts, credentials, policy, token keys
    (``reads``: the fast read path, for the policy version check; ``recorder``: where
    security events go, a new recorder on ``db`` when not given).
    """
    a = settings.auth
    keys = TokenKeys.load_or_create(settings.token_key_path, a.token.previous_key_files)
    limiter = LoginLimiter(db, a.login_failures_per_account, a.login_failures_per_ip,
                           a.login_failure_window_seconds)
    proxies = tuple(ipaddress.ip_network(p, strict=False) for p in settings.server.trusted_proxies)
    events = recorder or AuditRecorder(db, fail_closed=settings.audit.fail_closed,
                                       max_pending=settings.audit.max_pending)
    return Security(
        settings=a, db=db, accounts=AccountService(db),
        credentials=CredentialVerifier(
            db, limiter, local_login=a.oidc.local_login or not a.oidc.enabled,
            bootstrap_admin=a.admin_username, events=events),
        policy=PolicyEngine(db, refresh_seconds=a.policy_refresh_seconds,
                            version_reader=reads.policy_version if reads else None),
        policy_admin=PolicyAdmin(db), keys=keys,
        issuer=TokenIssuer(keys, a.token.issuer, a.token.lifetime_seconds),
        verifier=TokenVerifier(keys, a.token.issuer), trusted_proxies=proxies,
        events=events,
        providers=Providers(allow_http=a.oidc.allow_http, ca_file=a.oidc.ca_file,
                            clock_skew=a.oidc.clock_skew_seconds))


def signing_policies(signing: SigningSettings) -> list[PolicySpec]:
    """The settings file's signing policies as specs (PEM files read here)."""
    def text(inline: str, path: str) -> str:
        return inline or Path(path).expanduser().read_text()

    return [PolicySpec(
        name=p.name, pattern=p.repositories, protected=p.protected, mode=p.mode,
        min_signatures=p.min_signatures, require_children_signed=p.require_children_signed,
        formats=tuple(p.formats),
        keys=tuple(KeySpec(text(k.pem, k.pem_file), k.name or None, k.status)
                   for k in p.keys),
        trust_stores=tuple(TrustStoreSpec(t.name, text(t.roots_pem, t.roots_file),
                                          tuple(t.identities)) for t in p.trust_stores))
        for p in signing.policies]


def signing_service(registry: Registry) -> PolicyService:
    """The signing-policy service over the registry's database and event seam."""
    return PolicyService(registry.store.db, registry.store.hooks.emit)


async def bootstrap_admin(security: Security, password: str | None) -> str | None:
    """Create the first system administrator when no user exists yet (recorded as
    ``user.created`` with ``bootstrap`` in its detail, in the same transaction).

    Returns:
        The password when one was generated (to print once), else None.
    """
    name = security.settings.admin_username
    generated = None if password else secrets.token_urlsafe(18)
    chosen = password or generated or ""

    def tx(conn: Connection) -> bool:
        created = accounts.ensure_admin(conn, name, chosen)
        if created:
            grant = policy_admin.create_grant(conn, f"user:{name}", "*", "**", "admin")
            security.events.record(conn, SecurityEvent(
                action="user.created", outcome="allow", actor_kind="system", actor="dtr",
                resource=name,
                detail={"bootstrap": True, "sign_in": "password", "grant": grant.line,
                        "password": "generated" if generated else "DTR_ADMIN_PASSWORD"}))
        return created

    created = await security.db.run(tx, write=True)
    if created:
        await security.policy.refresh()
    return generated if created else None


class DtrApp(Litestar):
    """The application: Litestar, with the ``/v2`` lane in front of its router.

    ``/v2`` requests the lane takes (``dtr.api.oci.lane.takes``) are served by ``lane``
    (the OCI handlers under the app's middleware, without Litestar's per-request routing
    and response machinery); every other request, and every request when ``lane`` is
    None, goes through Litestar as usual.
    """

    lane: ASGIApp | None = None

    async def __call__(self, scope: Scope | LifeSpanScope, receive: Receive | LifeSpanReceive,
                       send: Send | LifeSpanSend) -> None:
        """ASGI entry point (see the class docstring)."""
        if scope["type"] == ScopeType.HTTP and self.lane is not None and not self.before_send:
            http = cast("HTTPScope", scope)
            path = takes(http)
            if path is not None:
                http["path"] = path
                http["app"] = http["litestar_app"] = self
                http.setdefault("state", {})
                await self.lane(http, cast("Receive", receive), cast("Send", send))
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, storage: StorageDriver | None = None) -> DtrApp:
    """Build the application for ``settings`` (``storage`` overrides the configured driver)."""
    registry = build_registry(settings, storage)
    ensure = getattr(registry.store.storage, "ensure_bucket", None)
    recorder = audit_recorder(registry)
    relay = os.environ.get(RELAY_SOCKET_ENV)
    if relay and settings.audit.relay:  # a worker of dtr serve, which runs the relay
        recorder.relay_to(relay)
    security = build_security(settings, registry.store.db, registry.store.reads, recorder)
    maintenance = AuditMaintenance(
        registry.store.db, checkpoint_keys(security.keys),
        every_events=settings.audit.checkpoint_events,
        every_seconds=settings.audit.checkpoint_seconds,
        retention=RetentionPolicy.of(settings.audit))
    forwarder = Forwarder.from_settings(settings, registry.store.db, hold=recorder.hold)
    sso = LoginService(settings.auth.oidc, security.db, security.providers, security.keys,
                       security.events)
    access: AccessControl = (TokenAccess(security, settings.server.public_url)
                             if settings.auth.enabled else OpenAccess())
    ctx = OciContext(registry, access, settings.server.public_url,
                     settings.registry.chunk_min_bytes, events=security.events,
                     record_pulls=settings.audit.record_pulls)

    signing = signing_service(registry)

    async def startup() -> None:
        await check_schema(registry)
        await record_config(registry.store.db, recorder, settings)
        if settings.signing.policies:
            await signing.seed(signing_policies(settings.signing))
        if ensure is not None:
            await ensure()
        await security.policy.start()
        maintenance.start()
        forwarder.start()
        if not settings.auth.enabled:
            return
        generated = await bootstrap_admin(security, os.environ.get(ADMIN_PASSWORD_ENV))
        if generated:
            log.warning("created the administrator %r with the generated password %s "
                        "(shown once; change it with `dtr user update`)",
                        security.settings.admin_username, generated)

    async def shutdown() -> None:
        await forwarder.aclose()
        await maintenance.aclose()
        await recorder.aclose()
        await security.policy.close()
        await security.providers.aclose()
        await close_registry(registry)

    handlers: list[ControllerRouterHandler] = [*build_routes(ctx, settings.registry.max_blob_bytes),
                *build_token_routes(security),
                *build_health_routes(registry.health),
                build_admin_router(security, settings.auth, registry,
                                   checkpoint_keys(security.keys)),
                build_oidc_router(security, sso, settings.server.public_url)]
    middleware = audit_context(security)
    app = DtrApp(route_handlers=handlers, on_startup=[startup], on_shutdown=[shutdown],
                 openapi_config=openapi_config(), middleware=[middleware],
                 exception_handlers=app_exception_handlers())
    index = app.get_handler_index_by_name(V2_HANDLER)
    v2 = index["handler"] if index is not None else None
    if not isinstance(v2, HTTPRouteHandler):
        raise TypeError(f"route handler {V2_HANDLER!r} is not registered")
    app.lane = middleware(OciLane(ctx, v2))
    app.state.registry = registry
    app.state.signing = signing
    app.state.security = security
    app.state.audit = recorder
    app.state.forwarder = forwarder
    app.state.sso = sso
    return app


def _release_big_buffers_to_os() -> None:
    """Serve buffers of :data:`_MMAP_THRESHOLD` and more from mmap so freed S3 upload parts
    go back to the OS.

    glibc otherwise keeps freed 16 MiB S3 part buffers in its heap, and a worker's RSS stays
    hundreds of MiB above idle after its first large upload (measured in the benchmark).
    The threshold stays above the ~1 MiB buffers every push allocates per MiB received: a
    fresh mapping costs a page fault and a zeroed page per 4 KiB, ~0.6 ms per MB written
    (measured: 700 µs against 30 µs per 1.2 MB ``bytes.join``). Setting the threshold turns
    glibc's dynamic tuning off, so the trim threshold is set to the value that tuning would
    give (twice the mmap threshold): the heap is not shrunk and regrown for every buffer.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return


def app_factory() -> DtrApp:
    """ASGI factory for server workers: settings resolved by ``dtr serve`` or from env."""
    _release_big_buffers_to_os()
    app = create_app(resolved_settings())
    app.on_startup.append(_freeze_startup_heap)
    return app


def _freeze_startup_heap() -> None:
    """Move every object alive after start-up out of the cyclic garbage collector's reach.

    A worker holds ~175,000 long-lived objects (modules, routes, SQLAlchemy and msgspec
    metadata) that every full collection walked, in the middle of some request. Frozen
    (``gc.freeze``), they are never scanned again; what requests allocate is collected as
    before. Measured on the embedded default, one client, manifest ``GET``: p99 1.22 and
    2.23 ms against 1.70 and 2.67 ms, CPU per request 401 and 496 µs against 499 and
    539 µs (two runs each; docs/performance.md). Only ``dtr serve``'s workers do this
    (tests build many apps in one process).
    """
    gc.collect()
    gc.freeze()
