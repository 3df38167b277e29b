"""Configuration as evidence: at every start the composition root calls
:func:`record_config`, which records ``config.loaded`` (the SHA-256 fingerprint of the
effective settings, and the settings themselves as dotted names) and, when the fingerprint
differs from the last one recorded, ``config.changed`` naming the settings that changed.

Secrets never reach the log: a setting whose name says it holds one (``secret``,
``password``, ``key``, ``pem``, ``credential``, ``private``, ``authorization``, ``cookie``,
or ending in ``token``) is replaced by ``"<redacted>"`` when set (an empty one stays empty,
so setting or clearing it shows as a change, its value never does), and a password inside a
URL (``postgresql://user:pw@host/db``) becomes ``<redacted>`` too. The fingerprint is
computed over the redacted form: rotating a secret to another value is not a change here.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import rfc8785
from sqlalchemy import Connection, select

from dtr.config import Settings
from dtr.db.database import Database
from dtr.db.models import AuditEvent, AuditHead
from dtr.events import SecurityEvent, SecurityEvents

LOADED = "config.loaded"
CHANGED = "config.changed"
REDACTED = "<redacted>"
SECRET_WORDS = frozenset({"secret", "secrets", "password", "passwd", "passphrase", "key",
                          "keys", "pem", "credential", "credentials", "private",
                          "authorization", "cookie"})
"""A setting is secret when one of the words of its name (split at ``_``, ``-``, ``.``) is
one of these, or its last word is ``token`` / ``tokens``."""
_WORDS = re.compile(r"[^a-z0-9]+")
_ABSENT = object()


def is_secret(name: str) -> bool:
    """True if a setting called ``name`` (its last dotted part) holds a secret."""
    words = [w for w in _WORDS.split(name.lower()) if w]
    return bool(SECRET_WORDS.intersection(words)) or (bool(words)
                                                      and words[-1] in ("token", "tokens"))


def redact(name: str, value: Any) -> Any:
    """``value`` of the setting ``name`` with every secret in it replaced (recursively
    through tables and lists).
    """
    if is_secret(name):
        return REDACTED if value not in (None, "", [], {}) else value
    if isinstance(value, dict):
        return {k: redact(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(name, v) for v in value]
    if isinstance(value, str) and "@" in value and "://" in value:
        return _url_without_password(value)
    return value


def _url_without_password(value: str) -> str:
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return value
    if not password:
        return value
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))


def effective(settings: Settings) -> dict[str, Any]:
    """The settings as dotted names → JSON values, secrets redacted (tables flattened,
    each leaf judged by its own name; lists kept whole).
    """
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = redact(prefix.rpartition(".")[2], value)

    walk("", msgspec.to_builtins(settings))
    return flat


def fingerprint(flat: dict[str, Any]) -> str:
    """SHA-256 (hex) of the RFC 8785 JSON of the redacted settings."""
    return hashlib.sha256(rfc8785.dumps(flat)).hexdigest()


def changed_names(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The dotted names whose values differ (added and removed settings included)."""
    return sorted(n for n in set(before) | set(after)
                  if before.get(n, _ABSENT) != after.get(n, _ABSENT))


def _config_events(conn: Connection, events: SecurityEvents, flat: dict[str, Any],
                   digest: str) -> list[str] | None:
    # one start at a time compares with the last record (the chain lock), so replicas
    # starting together report a change once
    conn.execute(select(AuditHead.seq).where(AuditHead.id == 1).with_for_update())
    last = conn.execute(select(AuditEvent.detail).where(AuditEvent.action == LOADED)
                        .order_by(AuditEvent.seq.desc()).limit(1)).scalar()
    previous: dict[str, Any] = json.loads(last) if last else {}
    events.record(conn, SecurityEvent(
        action=LOADED, outcome="allow", actor_kind="system", actor="dtr",
        resource="settings", detail={"fingerprint": digest, "settings": flat}))
    if not previous or previous.get("fingerprint") == digest:
        return None
    names = changed_names(dict(previous.get("settings") or {}), flat)
    events.record(conn, SecurityEvent(
        action=CHANGED, outcome="allow", actor_kind="system", actor="dtr",
        resource="settings", detail={"changed": names, "fingerprint": digest,
                                     "previous_fingerprint": previous.get("fingerprint")}))
    return names


async def record_config(db: Database, events: SecurityEvents,
                        settings: Settings) -> list[str] | None:
    """Record ``config.loaded`` for ``settings`` and, when they differ from the settings
    of the last ``config.loaded`` in the chain, ``config.changed`` (one transaction).

    Returns:
        The dotted names of the settings that changed, or None (first start, or same
        settings).
    """
    flat = effective(settings)
    digest = fingerprint(flat)
    return await db.run(lambda conn: _config_events(conn, events, flat, digest))
