"""``dtr audit``: list, count, export and verify the audit log. ``list``, ``export``,
``checkpoints`` and ``verify`` talk to a running registry's ``/api/v1/audit`` with the saved
login (``dtr login``), like the other admin commands; ``verify --local`` reads the database
directly with the registry's configuration (like ``dtr gc``), for an auditor on the
database host or a registry that is down. ``prune`` applies retention directly on the
database (dtr/audit/retention.py).

Registered by ``dtr/cli.py``; imports the server layers only inside ``verify --local``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from dtr.cli_admin import ApiGroup, connect, emit, json_option, load_config
from dtr.client import AdminClient

if TYPE_CHECKING:
    from dtr.auth.tokens import TokenKeys
    from dtr.config import Settings

F = TypeVar("F", bound=Callable[..., Any])
COLUMNS = ("seq", "time", "actor", "action", "outcome", "target", "client_ip", "reason")
VERIFY_TIMEOUT = 3600.0
"""Seconds a remote verification may take (it reads every event: seconds per million)."""
PAGE = 1000


def filter_options(fn: F) -> F:
    """Add the event filters (``--since``, ``--until``, ``--actor``, ``--action``,
    ``--repository``, ``--outcome``) to a command.
    """
    options = [
        click.option("--since", help="Events at or after this RFC 3339 time or date."),
        click.option("--until", help="Events before this RFC 3339 time or date."),
        click.option("--actor", help="The actor's account name, exactly."),
        click.option("--action", help="The action, or a prefix ending in * (auth.*)."),
        click.option("--repository", help="A repository glob (* one path part, ** any)."),
        click.option("--outcome", type=click.Choice(["allow", "deny", "error"])),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _filters(kw: dict[str, Any]) -> dict[str, Any]:
    names = ("since", "until", "actor", "action", "repository", "outcome")
    return {k: kw.get(k) for k in names if kw.get(k)}


@click.group("audit", cls=ApiGroup)
def audit() -> None:
    """The tamper-evident audit log (auditors and system administrators)."""


@audit.command("list")
@filter_options
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True,
              help="Events to show (follows the API's pages).")
@click.option("--asc", "ascending", is_flag=True, help="Oldest first (default newest first).")
@json_option
def audit_list(limit: int, ascending: bool, as_json: bool, **kw: Any) -> None:
    """Events matching the filters, newest first."""
    params: dict[str, Any] = {**_filters(kw), "order": "asc" if ascending else None}
    events: list[dict[str, Any]] = []
    with connect() as client:
        cursor = None
        while len(events) < limit:
            page = client.get("/audit", **params, limit=min(PAGE, limit - len(events)),
                              cursor=cursor)
            events += page["events"]
            cursor = page["next"]
            if not cursor:
                break
    if as_json:
        emit(events, True)
        return
    for event in events:
        event["target"] = (event["repository"] + (f":{event['tag']}" if event["tag"] else "")
                           or event["resource"] or event["org"])
        event["actor"] = event["actor"] or event["actor_kind"]
    emit(events, False, COLUMNS)


@audit.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True, help="JSON Lines (one event per line) or CSV.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              required=True, help="The file to write (replaced when complete).")
@filter_options
def audit_export(fmt: str, output: str, **kw: Any) -> None:
    """Export the events matching the filters, oldest first, streamed to a file with a
    progress bar.
    """
    params = _filters(kw)
    target = Path(output)
    partial = target.with_name(f".{target.name}.part")
    lines = 0
    with connect() as client:
        total = int(client.get("/audit/count", **params)["count"])
        try:
            with client.stream("/audit/export", {**params, "format": fmt}) as response, \
                    partial.open("wb") as out, \
                    click.progressbar(length=total, label=f"exporting {total} events",
                                      file=sys.stderr) as bar:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    found = chunk.count(b"\n")
                    lines += found
                    bar.update(found)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    events = lines - 1 if fmt == "csv" else lines
    click.echo(f"wrote {events} events to {target}", err=True)


@audit.command("checkpoints")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True,
              help="The newest checkpoints to show.")
@json_option
def audit_checkpoints(limit: int, as_json: bool) -> None:
    """The newest signed checkpoints and whether each signature verifies."""
    with connect() as client:
        found = client.get("/audit/checkpoints", order="desc",
                           limit=min(limit, PAGE))["checkpoints"]
    emit(found, as_json, ("seq", "time", "kind", "key_id", "valid", "hash"))


@audit.command("verify")
@click.option("--local", is_flag=True,
              help="Read the database directly (with --config) instead of asking the API.")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="With --local: the registry's YAML configuration (or DTR_CONFIG).")
@json_option
def audit_verify(local: bool, config: str | None, as_json: bool) -> None:
    """Verify the hash chain and the signed checkpoints; exit status 1 and the first bad
    sequence number when the log was altered.
    """
    if local:
        report = _verify_local(config, progress=not as_json)
    else:
        if config:
            raise click.UsageError("--config goes with --local")
        cfg = load_config()
        if not cfg.get("url") or not cfg.get("token"):
            raise click.ClickException("not logged in: run `dtr login URL` first")
        click.echo("verifying the audit chain on the server…", err=True)
        with AdminClient(cfg["url"], token=cfg["token"], timeout=VERIFY_TIMEOUT) as client:
            report = client.get("/audit/verify")
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo(describe(report))
    if not report["ok"]:
        sys.exit(1)


def describe(report: dict[str, Any]) -> str:
    """A verification report for people."""
    lines = []
    problem = report.get("problem")
    if problem:
        lines.append(f"audit chain BROKEN at event {problem['seq']}: {problem['problem']}: "
                     f"{problem['message']}")
        lines.append(f"({report['checked']} events verified before it)")
    else:
        span = (f"events {report['first_seq']}..{report['last_seq']}" if report["checked"]
                else "no events")
        marks = report["checkpoints"]
        lines.append(f"audit chain OK: {span} ({report['checked']} verified), "
                     f"{marks} signed checkpoint{'' if marks == 1 else 's'}")
    lines += [f"note: {note}" for note in report.get("notes") or ()]
    return "\n".join(lines)


def _settings_and_keys(config: str | None, why: str) -> tuple[Settings, TokenKeys]:
    """The configured settings and the registry's signing keys (current and previous), for
    the commands that work on the database directly.

    Raises:
        click.ClickException: unusable configuration, or no key file (``why`` it is needed).
    """
    from dtr.auth.tokens import TokenKeys  # noqa: PLC0415
    from dtr.config import ConfigError, load_settings  # noqa: PLC0415

    try:
        settings = load_settings(config)
        key = Path(settings.token_key_path)
        if not key.is_file():
            raise click.ClickException(f"no registry key at {key}: {why}")
        keys = TokenKeys.from_pem(key.read_bytes(), [
            Path(p).read_bytes() for p in settings.auth.token.previous_key_files])
    except (ConfigError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    return settings, keys


def _verify_local(config: str | None, *, progress: bool) -> dict[str, Any]:
    """Run the verification on the configured database (like ``dtr gc``)."""
    from dtr.app import (  # noqa: PLC0415 - the server layers, only for --local
        SchemaBehind,
        build_registry,
        check_schema,
        checkpoint_keys,
        close_registry,
    )
    from dtr.audit.verify import verify_chain  # noqa: PLC0415
    from dtr.errors import Unavailable  # noqa: PLC0415

    settings, keys = _settings_and_keys(config, "checkpoints are verified with the key "
                                        "the registry signs with")

    async def run() -> dict[str, Any]:
        registry = build_registry(settings)
        try:
            await check_schema(registry)
            with click.progressbar(length=1, label="verifying", file=sys.stderr,
                                   hidden=not progress) as bar:
                def step(done: int, total: int) -> None:
                    bar.length = max(total, done, 1)
                    bar.update(done - bar.pos)

                report = await verify_chain(registry.store.db, checkpoint_keys(keys),
                                            progress=step)
        finally:
            await close_registry(registry)
        problem = report.problem
        return {"ok": report.ok, "checked": report.checked, "first_seq": report.first_seq,
                "last_seq": report.last_seq, "checkpoints": report.checkpoints,
                "notes": report.notes,
                "problem": None if problem is None else {
                    "seq": problem.seq, "problem": problem.problem,
                    "message": problem.message}}

    try:
        return asyncio.run(run())
    except (SchemaBehind, Unavailable) as exc:
        raise click.ClickException(str(exc)) from None


@audit.command("prune")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="The registry's YAML configuration (or DTR_CONFIG).")
@click.option("--dry-run", is_flag=True,
              help="Verify and report what would be removed; change nothing.")
def audit_prune(config: str | None, dry_run: bool) -> None:
    """Apply retention now (audit.retention_days), directly on the database: verify the
    events to remove, sign the retention checkpoint that anchors the rest, then drop old
    partitions (PostgreSQL) or delete in batches (SQLite).
    """
    from sqlalchemy.exc import DBAPIError  # noqa: PLC0415

    from dtr.app import checkpoint_keys  # noqa: PLC0415 - the server layers, only here
    from dtr.audit.maintenance import exclusive  # noqa: PLC0415
    from dtr.audit.retention import (  # noqa: PLC0415
        RetentionPolicy,
        apply_retention,
        ensure_partitions,
    )
    from dtr.db.base import utcnow  # noqa: PLC0415
    from dtr.db.database import Database  # noqa: PLC0415
    from dtr.db.engine import current_revision  # noqa: PLC0415
    from dtr.db.migrate import head_revision  # noqa: PLC0415
    from dtr.errors import Unavailable  # noqa: PLC0415

    settings, keys = _settings_and_keys(config, "the retention checkpoint is signed with "
                                        "the key the registry signs with")
    policy = RetentionPolicy.of(settings.audit)
    if policy.days <= 0:
        click.echo("audit.retention_days is 0 (events are kept forever): nothing to prune")
        return

    async def step(done: int, last: int) -> None:
        click.echo(f"removed events up to {done} of {last}", err=True)

    async def run() -> str:
        db = Database(settings.database_url)
        try:
            current = await current_revision(db.engine)
            if current != head_revision():
                raise click.ClickException(
                    f"database schema is at {current or 'nothing'}, this dtr needs "
                    f"{head_revision()}: run `dtr db upgrade`")
            async with exclusive(db) as mine:
                if not mine:
                    raise click.ClickException("another process is doing audit maintenance; "
                                               "try again in a moment")
                if not dry_run:
                    await db.run(lambda c: ensure_partitions(c, utcnow(),
                                                             days=policy.partition_days))
                summary = await apply_retention(db, checkpoint_keys(keys), utcnow(), policy,
                                                dry_run=dry_run, via="cli", progress=step)
            if summary.problem:
                raise click.ClickException(summary.describe())
            return ("dry run: " if dry_run else "") + summary.describe()
        finally:
            await db.close()

    try:
        click.echo(asyncio.run(run()))
    except Unavailable as exc:
        raise click.ClickException(str(exc)) from None
    except DBAPIError as exc:  # a lock not granted in time
        raise click.ClickException(f"audit prune stopped: {exc.orig}") from None
