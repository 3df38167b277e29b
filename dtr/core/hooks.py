"""The seams outer layers plug into core's write paths: the signing gate (``PushGate``)
and the audit log (``EventSink``). Defaults allow everything and record nothing; the
composition root (``app.py``) passes real ones. Core calls them; it never imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection


@dataclass(frozen=True, slots=True)
class TagWrite:
    """A tag is about to point at a manifest (``ManifestService.put`` with a tag)."""

    repository: str
    tag: str
    digest: str
    media_type: str
    artifact_type: str | None
    subject: str | None


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """Something happened to registry content (push, delete, mount, …).

    ``action`` is dotted (``manifest.pushed``, ``tag.deleted``, ``blob.mounted``).
    """

    action: str
    repository: str
    digest: str | None = None
    tag: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class PushGate(Protocol):
    """Decides whether a tag write may happen (the signing gate implements this)."""

    def check_tag_write(self, session: Connection, write: TagWrite) -> None:
        """Return to allow; raise ``dtr.errors.Denied`` (with a reason) to refuse.

        Runs inside the manifest transaction (synchronously, in the transaction's thread),
        before the tag row is written.
        """
        ...


class EventSink(Protocol):
    """Receives registry events inside the transaction that made them (audit outbox)."""

    def record(self, session: Connection, event: RegistryEvent) -> None:
        """Record ``event``; raising aborts the whole change."""
        ...


class AllowAllGate:
    """The gate used when no repository is protected: every tag write is allowed."""

    def check_tag_write(self, session: Connection, write: TagWrite) -> None:
        """Allow."""
        return


class NullSink:
    """The sink used when audit is not configured: events are dropped."""

    def record(self, session: Connection, event: RegistryEvent) -> None:
        """Drop."""
        return


@dataclass(slots=True)
class Hooks:
    """The hooks core runs; built once by the composition root."""

    gate: PushGate = field(default_factory=AllowAllGate)
    sinks: list[EventSink] = field(default_factory=list)

    def emit(self, session: Connection, event: RegistryEvent) -> None:
        """Send ``event`` to every sink, in order, in the caller's transaction."""
        for sink in self.sinks:
            sink.record(session, event)
