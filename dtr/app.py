"""The composition root: ``create_app(settings)`` builds the engine, the storage driver,
the core services and the hooks, and returns the Litestar application. The only module
that imports every layer; nothing imports it but the CLI and the ASGI server.
"""

from __future__ import annotations

import ctypes
import logging
import os

import msgspec
from litestar import Litestar

from dtr.api.oci.handlers import OciContext
from dtr.api.oci.router import build_routes
from dtr.api.oci.security import OpenAccess
from dtr.config import Settings, load_settings
from dtr.core.hooks import Hooks
from dtr.core.registry import Registry
from dtr.core.store import Limits, Store
from dtr.db.database import Database
from dtr.db.engine import current_revision
from dtr.db.migrate import head_revision
from dtr.db.reads import make_fast_reads
from dtr.storage.base import StorageDriver
from dtr.storage.filesystem import FilesystemDriver

log = logging.getLogger("dtr")
RESOLVED_ENV = "_DTR_RESOLVED_SETTINGS"
_M_MMAP_THRESHOLD = -3


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
    store = Store(db, storage or build_storage(settings), reads, Hooks(), limits(settings))
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


def create_app(settings: Settings, storage: StorageDriver | None = None) -> Litestar:
    """Build the application for ``settings`` (``storage`` overrides the configured driver)."""
    registry = build_registry(settings, storage)
    ensure = getattr(registry.store.storage, "ensure_bucket", None)
    ctx = OciContext(registry, OpenAccess(), settings.server.public_url,
                     settings.registry.chunk_min_bytes)

    async def startup() -> None:
        await check_schema(registry)
        if ensure is not None:
            await ensure()

    async def shutdown() -> None:
        await close_registry(registry)

    app = Litestar(route_handlers=build_routes(ctx, settings.registry.max_blob_bytes),
                   on_startup=[startup], on_shutdown=[shutdown], openapi_config=None)
    app.state.registry = registry
    return app


def _release_big_buffers_to_os() -> None:
    """Serve buffers of 1 MiB and more from mmap so freed upload parts go back to the OS.

    glibc otherwise keeps freed 16 MiB S3 part buffers in its heap, and a worker's RSS stays
    hundreds of MiB above idle after its first large upload (measured in the benchmark).
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 1024 * 1024)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return


def app_factory() -> Litestar:
    """ASGI factory for server workers: settings resolved by ``dtr serve`` or from env."""
    _release_big_buffers_to_os()
    raw = os.environ.get(RESOLVED_ENV)
    settings = msgspec.json.decode(raw, type=Settings) if raw else load_settings()
    return create_app(settings)
