"""The ``dtr`` command line: serve, db, config verify, gc. Imports the composition root;
nothing imports this module but ``__main__``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from dtr.config import RESOLVED_ENV, ConfigError, Settings, load_settings


def _settings(config: str | None, overrides: dict[str, Any] | None = None) -> Settings:
    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


config_option = click.option("--config", "config", type=click.Path(dir_okay=False),
                             default=None, help="YAML configuration file (or DTR_CONFIG).")


@click.group()
@click.version_option(package_name="dtr")
def main() -> None:
    """dtr: a trusted OCI container registry."""


@main.command()
@config_option
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="TCP port (default 5000).")
@click.option("--data-dir", default=None, help="Data folder (default ./data).")
@click.option("--workers", type=int, default=None, help="Worker processes (default 2).")
@click.option("--tls-cert", default=None, type=click.Path(dir_okay=False),
              help="PEM certificate chain: serve HTTPS directly (else plain HTTP).")
@click.option("--tls-key", default=None, type=click.Path(dir_okay=False),
              help="PEM private key of --tls-cert.")
@click.option("--migrate/--no-migrate", default=None,
              help="Upgrade the schema before serving (default: on for the embedded SQLite "
                   "database, off otherwise).")
def serve(config: str | None, host: str | None, port: int | None, data_dir: str | None,
          workers: int | None, tls_cert: str | None, tls_key: str | None,
          migrate: bool | None) -> None:
    """Run the registry (granian, several worker processes)."""
    server: dict[str, Any] = {k: v for k, v in
                              {"host": host, "port": port, "data_dir": data_dir,
                               "workers": workers, "tls_cert": tls_cert,
                               "tls_key": tls_key}.items() if v is not None}
    settings = _settings(config, {"server": server} if server else None)
    settings.data_path.mkdir(parents=True, exist_ok=True)
    from dtr import app as app_module  # noqa: PLC0415
    from dtr.db import migrate as mig  # noqa: PLC0415

    embedded = not settings.database.url
    if migrate or (migrate is None and embedded):
        mig.upgrade(settings.database_url)
    try:
        generated = asyncio.run(_check(settings))
    except (app_module.SchemaBehind, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    if generated:
        click.echo(f"created the administrator {settings.auth.admin_username!r}; its generated "
                   f"password (shown once) is: {generated}", err=True)
    os.environ[RESOLVED_ENV] = msgspec.json.encode(settings).decode()
    from granian.constants import Interfaces  # noqa: PLC0415
    from granian.server import Server  # noqa: PLC0415

    tls = settings.server.tls_cert
    scheme = "https" if tls else "http"
    if not settings.auth.enabled:
        click.echo("WARNING: authentication is disabled (auth.enabled: false): anyone who "
                   "can reach this port may push and delete", err=True)
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    database = make_url(settings.database_url).get_backend_name()
    click.echo(f"dtr listening on {scheme}://{settings.server.host}:{settings.server.port} "
               f"({settings.server.workers} workers, database {database}, storage "
               f"{settings.storage.backend})", err=True)
    relay = None
    if settings.audit.relay and not settings.audit.fail_closed:
        from dtr.audit.relay import SOCKET_ENV, RelayProcess  # noqa: PLC0415

        try:
            relay = RelayProcess(dict(os.environ))
        except OSError as exc:  # no writable temporary folder: workers write themselves
            click.echo(f"WARNING: no audit relay ({exc}); each worker writes its own audit "
                       "events", err=True)
        else:
            relay.start()
            os.environ[SOCKET_ENV] = relay.path
    try:
        Server("dtr.app:app_factory", address=settings.server.host, port=settings.server.port,
               interface=Interfaces.ASGI, workers=settings.server.workers, factory=True,
               log_access=False, backlog=2048, respawn_failed_workers=True,
               ssl_cert=Path(tls).expanduser() if tls else None,
               ssl_key=Path(settings.server.tls_key).expanduser() if tls else None).serve()
    finally:
        if relay is not None:  # after the workers: it writes what they sent last
            relay.stop()


async def _check(settings: Settings) -> str | None:
    """Refuse a stale schema and unusable audit sink files; create the first administrator
    (returns a generated password to print once).
    """
    from dtr.app import (  # noqa: PLC0415
        ADMIN_PASSWORD_ENV,
        bootstrap_admin,
        build_registry,
        build_security,
        check_schema,
        close_registry,
    )
    from dtr.audit.forward import Forwarder  # noqa: PLC0415

    registry = build_registry(settings)
    try:
        await check_schema(registry)
        # the audit sinks' files (CA, client certificate, secrets) are read now, so a bad
        # one stops dtr serve here rather than inside every worker (ConfigError)
        await Forwarder.from_settings(settings, registry.store.db).aclose()
        if not settings.auth.enabled:
            return None
        security = build_security(settings, registry.store.db)
        await security.policy.start()
        try:
            return await bootstrap_admin(security, os.environ.get(ADMIN_PASSWORD_ENV))
        finally:
            await security.policy.close()
    finally:
        await close_registry(registry)


@main.group()
def db() -> None:
    """Database schema (Alembic)."""


@db.command("upgrade")
@config_option
@click.option("--revision", default="head", show_default=True)
def db_upgrade(config: str | None, revision: str) -> None:
    """Upgrade the schema to the newest (or given) revision."""
    from dtr.db import migrate as mig  # noqa: PLC0415

    settings = _settings(config)
    settings.data_path.mkdir(parents=True, exist_ok=True)
    mig.upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@config_option
@click.argument("revision")
def db_downgrade(config: str | None, revision: str) -> None:
    """Downgrade the schema to REVISION (``base`` removes every table)."""
    from dtr.db import migrate as mig  # noqa: PLC0415

    mig.downgrade(_settings(config).database_url, revision)
    click.echo(f"database at {revision}")


@db.command("current")
@config_option
def db_current(config: str | None) -> None:
    """Print the schema revision and whether it is the newest."""
    from dtr.db.engine import current_revision, make_engine  # noqa: PLC0415
    from dtr.db.migrate import head_revision  # noqa: PLC0415

    settings = _settings(config)

    async def _get() -> str | None:
        engine = make_engine(settings.database_url)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    current, head = asyncio.run(_get()), head_revision()
    click.echo(f"current {current or '(empty)'}, head {head}"
               + ("" if current == head else " — run `dtr db upgrade`"))
    if current != head:
        sys.exit(1)


@main.group("config")
def config_group() -> None:
    """Configuration."""


@config_group.command("verify")
@config_option
def config_verify(config: str | None) -> None:
    """Load and validate the configuration; print the effective settings (secrets hidden)."""
    settings = _settings(config)
    shown = msgspec.to_builtins(settings)
    shown["storage"]["s3"]["secret_key"] = "***" if settings.storage.s3.secret_key else ""
    if settings.database.url and "@" in settings.database.url:
        scheme, rest = settings.database.url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        shown["database"]["url"] = f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    import yaml  # noqa: PLC0415

    click.echo(yaml.safe_dump(shown, sort_keys=False).rstrip())
    click.echo("configuration OK", err=True)


@main.command()
@config_option
@click.option("--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
@click.option("--upload-max-age", type=int, default=None,
              help="Seconds after which an untouched upload is abandoned.")
@click.option("--blob-grace", type=int, default=None,
              help="Seconds an unreferenced blob is kept after it was last linked.")
def gc(config: str | None, dry_run: bool, upload_max_age: int | None,
       blob_grace: int | None) -> None:
    """Remove abandoned uploads and blobs no manifest references (safe while serving)."""
    from dtr.app import build_registry, check_schema, close_registry  # noqa: PLC0415
    from dtr.core.gc import GarbageCollector  # noqa: PLC0415

    settings = _settings(config)

    async def _run() -> None:
        registry = build_registry(settings)
        try:
            await check_schema(registry)
            collector = GarbageCollector(
                registry.store,
                upload_max_age=upload_max_age or settings.gc.upload_max_age_seconds,
                blob_grace=blob_grace if blob_grace is not None
                else settings.gc.blob_grace_seconds,
                quarantine_grace=settings.signing.quarantine_grace_seconds)
            report = await collector.run(dry_run=dry_run,
                                         progress=lambda msg: click.echo(msg, err=True))
            click.echo(report.summary())
        finally:
            await close_registry(registry)

    asyncio.run(_run())


def _register_admin_commands() -> None:
    """The admin API mirror (``dtr login``, ``dtr org …``, ``dtr policy …``, ``dtr audit …``)."""
    from dtr.cli_admin import ADMIN_COMMANDS  # noqa: PLC0415
    from dtr.cli_audit import audit  # noqa: PLC0415

    for command in [*ADMIN_COMMANDS, audit]:
        main.add_command(command)


_register_admin_commands()
