"""The seams outer layers plug into core's write and read paths: the signing gate
(``PushGate`` for tag writes, ``ManifestObserver`` for every manifest stored or deleted,
``ReadGate`` for manifest reads) and the audit log (``EventSink``). Defaults allow
everything and record nothing; the composition root (``app.py``) passes real ones. Core
calls them; it never imports them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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


@dataclass(frozen=True, slots=True)
class ManifestWrite:
    """A manifest is being stored (``ManifestService.put``), with the tags it gets.

    ``content`` is the exact body; ``children`` the child manifest digests of an index;
    ``tags`` every tag the request writes (the reference tag first).
    """

    repository: str
    digest: str
    media_type: str
    artifact_type: str | None
    subject: str | None
    content: bytes
    tags: tuple[str, ...] = ()
    children: tuple[str, ...] = ()


BlobReader = Callable[[str], Awaitable[bytes]]
"""Reads a stored blob's bytes by digest; raises ``KeyError`` when there is none."""

MayPush = Callable[[], Awaitable[bool]]
"""Answers whether the caller of a read may push to the repository (asked lazily)."""


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


class ManifestObserver(Protocol):
    """Sees every manifest stored or deleted (the signing gate classifies and verifies
    signature objects here and keeps each digest's trust state).
    """

    async def prepare(self, write: ManifestWrite, blobs: BlobReader) -> object:
        """Before the manifest transaction, outside any transaction: read what is needed
        (blobs through ``blobs``), verify, and return an opaque value for :meth:`stored`.

        May run its own short transactions. Raising aborts the push with that error.
        """
        ...

    def stored(self, session: Connection, write: ManifestWrite, prepared: object) -> None:
        """Inside the manifest transaction, after the manifest row is written and before
        any tag is checked or written; ``prepared`` is what :meth:`prepare` returned.
        Raising aborts the whole change.
        """
        ...

    def deleted(self, session: Connection, repository: str, digest: str,
                subject: str | None) -> None:
        """Inside the delete transaction, after the manifest ``digest`` (whose ``subject``
        is given) and its tags were deleted.
        """
        ...

    def tag_deleted(self, session: Connection, repository: str, tag: str,
                    digest: str) -> None:
        """Inside the delete transaction, after the tag ``tag`` (which pointed at the
        manifest ``digest``, still stored) was deleted by name. Raising aborts the delete.
        """
        ...


class ReadGate(Protocol):
    """Decides whether a stored manifest may be served (quarantine and revocation)."""

    async def check_read(self, repository: str, reference: str, digest: str,
                         may_push: MayPush) -> None:
        """Return to allow; raise ``dtr.errors.Denied`` to refuse.

        ``reference`` is what the client asked for (a tag or ``digest``); ``digest`` is
        the manifest it resolved to. Runs after the manifest was found, outside any
        transaction. Never decided by anything the client controls but its credentials.
        """
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


class NullObserver:
    """The observer used when no repository is protected: nothing to prepare or keep."""

    async def prepare(self, write: ManifestWrite, blobs: BlobReader) -> object:
        """Nothing."""
        return None

    def stored(self, session: Connection, write: ManifestWrite, prepared: object) -> None:
        """Nothing."""
        return

    def deleted(self, session: Connection, repository: str, digest: str,
                subject: str | None) -> None:
        """Nothing."""
        return

    def tag_deleted(self, session: Connection, repository: str, tag: str,
                    digest: str) -> None:
        """Nothing."""
        return


class AllowAllReads:
    """The read gate used when no repository is protected: every read is allowed."""

    async def check_read(self, repository: str, reference: str, digest: str,
                         may_push: MayPush) -> None:
        """Allow."""
        return


@dataclass(slots=True)
class Hooks:
    """The hooks core runs; built once by the composition root."""

    gate: PushGate = field(default_factory=AllowAllGate)
    sinks: list[EventSink] = field(default_factory=list)
    observer: ManifestObserver = field(default_factory=NullObserver)
    reads: ReadGate = field(default_factory=AllowAllReads)

    def emit(self, session: Connection, event: RegistryEvent) -> None:
        """Send ``event`` to every sink, in order, in the caller's transaction."""
        for sink in self.sinks:
            sink.record(session, event)
