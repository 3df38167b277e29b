"""``/api/v1/audit``: the audit log for auditors: list with filters and cursor pages, count,
export (JSON Lines or CSV, streamed), verify the hash chain and its signed checkpoints, and
list the checkpoints.

Permissions: ``audit:read`` (the ``auditor`` role) or ``system:admin``; every operation
reads, none changes anything. Exports and verifications are themselves recorded in the
audit log (``audit.exported``, ``audit.verified``).

The work is :mod:`dtr.audit.query`, :mod:`dtr.audit.export` and
:func:`dtr.audit.verify.verify_chain`; this module parses the request and shapes the answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, Response, get
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.params import QueryParameter
from litestar.response import Stream

from dtr.api.admin import guards as g
from dtr.api.problems import problem_responses as errors
from dtr.audit import query as q
from dtr.audit.chain import format_time
from dtr.audit.checkpoints import Checkpoint, CheckpointKeys
from dtr.audit.export import MEDIA_TYPES, Format, export
from dtr.audit.verify import VerifyReport, verify_chain
from dtr.db.database import Database
from dtr.events import SecurityEvent, SecurityEvents

READ = [g.system("system:admin", "audit:read")]
EXPORTED = ResponseSpec(data_container=str, media_type=MEDIA_TYPES["jsonl"],
                        generate_examples=False,
                        description="The events, oldest first: JSON Lines "
                                    "(application/x-ndjson, one event per line) or, with "
                                    "format=csv, CSV (text/csv).")
LINK = ResponseHeader(name="Link", documentation_only=True, required=False,
                      description='`<…&cursor=…>; rel="next"` when another page follows.')


# -- bodies -------------------------------------------------------------------------------------

class AuditEvent(msgspec.Struct, kw_only=True):
    """One audit event as stored (``detail`` parsed). ``hash`` = SHA-256 of the RFC 8785
    JSON of every other field (``detail`` as an object), which includes ``prev_hash``, the
    hash of event ``seq - 1``.
    """

    seq: int
    time: str
    action: str
    outcome: str
    actor_kind: str
    actor_id: str
    actor: str
    method: str
    token_id: str
    client_ip: str
    user_agent: str
    request_id: str
    org: str
    repository: str
    tag: str
    digest: str
    resource: str
    reason: str
    rule: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(msgspec.Struct, kw_only=True):
    """One page of events; ``next`` is the cursor of the following page (null: last)."""

    events: list[AuditEvent]
    next: str | None


class AuditCount(msgspec.Struct, kw_only=True):
    """How many events match the filters."""

    count: int


class ChainBreak(msgspec.Struct, kw_only=True):
    """The first event that does not verify.

    ``problem``: ``modified``, ``deleted``, ``inserted``, ``reordered``, ``head``,
    ``anchor`` or ``checkpoint``.
    """

    seq: int
    problem: str
    message: str


class AuditVerification(msgspec.Struct, kw_only=True):
    """What the verification found: ``ok``, the events and checkpoints checked, and the
    first problem.
    """

    ok: bool
    checked: int
    first_seq: int
    last_seq: int
    checkpoints: int
    problem: ChainBreak | None
    notes: list[str]


class AuditCheckpoint(msgspec.Struct, kw_only=True):
    """A signed statement "event ``seq`` has hash ``hash``": ``signature`` is a compact JWS
    (ES256) by the registry key ``key_id`` (published in ``/auth/jwks.json``) over
    ``{"seq", "hash", "time", "kind"}``; ``valid`` says whether it verifies with a key
    the registry holds.
    """

    seq: int
    hash: str
    time: str
    kind: str
    key_id: str
    signature: str
    valid: bool


class AuditCheckpointPage(msgspec.Struct, kw_only=True):
    """One page of checkpoints; ``next`` is the cursor of the following page."""

    checkpoints: list[AuditCheckpoint]
    next: str | None


# -- the service --------------------------------------------------------------------------------

class AuditApi:
    """The audit log as auditors read it.

    Args:
        db: the metadata database.
        keys: the registry keys checkpoints are signed and verified with.
        events: where exports and verifications are recorded.
    """

    def __init__(self, db: Database, keys: CheckpointKeys, events: SecurityEvents) -> None:
        self.db = db
        self.keys = keys
        self.events = events

    async def export(self, flt: q.AuditFilter, fmt: Format) -> AsyncIterator[bytes]:
        """The export stream of the events up to the chain head now (recorded first)."""
        upto = await q.chain_head(self.db)
        await self.events.emit(SecurityEvent(
            action="audit.exported", outcome="allow", resource="audit",
            detail={"format": fmt, "filter": flt.params(), "upto": upto}))
        return export(self.db, flt, fmt, upto=upto)

    async def verify(self) -> VerifyReport:
        """Verify the whole chain (then record that it was verified, and the result)."""
        report = await verify_chain(self.db, self.keys)
        problem = report.problem
        await self.events.emit(SecurityEvent(
            action="audit.verified", outcome="allow", resource="audit",
            reason="" if problem is None else problem.problem,
            detail={"ok": report.ok, "checked": report.checked,
                    "first_bad_seq": None if problem is None else problem.seq}))
        return report

    def checkpoint_out(self, mark: Checkpoint) -> AuditCheckpoint:
        """A checkpoint and whether its signature verifies."""
        return AuditCheckpoint(seq=mark.seq, hash=mark.hash, time=format_time(mark.time),
                               kind=mark.kind, key_id=mark.key_id, signature=mark.signature,
                               valid=self.keys.valid(mark))


Audit = NamedDependency[AuditApi]
"""The worker's audit log reader (provided by ``build_admin_router``)."""


# -- parameters ---------------------------------------------------------------------------------

async def audit_filter(
    since: Annotated[str | None, QueryParameter(
        description="Events at or after this RFC 3339 time (2026-11-30T08:00:00Z) or "
                    "date (midnight UTC).")] = None,
    until: Annotated[str | None, QueryParameter(
        description="Events before this RFC 3339 time or date.")] = None,
    actor: Annotated[str | None, QueryParameter(
        description="The actor's account name, exactly.")] = None,
    action: Annotated[str | None, QueryParameter(
        description="The action exactly (auth.login), or a prefix ending in * "
                    "(auth.*).")] = None,
    repository: Annotated[str | None, QueryParameter(
        description="A repository glob: * matches within one path part, ** across parts "
                    "(prod/** matches prod/x/y).")] = None,
    outcome: Annotated[Literal["allow", "deny", "error"] | None, QueryParameter(
        description="allow, deny or error.")] = None,
) -> q.AuditFilter:
    """The filters every listing, count and export accepts (all must hold)."""
    return q.AuditFilter.parse(since=since, until=until, actor=actor, action=action,
                               repository=repository, outcome=outcome)


Where = NamedDependency[q.AuditFilter]
Limit = Annotated[int, QueryParameter(ge=1, le=q.MAX_LIMIT,
                                 description=f"Items per page (1..{q.MAX_LIMIT}).")]
Cursor = Annotated[str | None, QueryParameter(
    description="The `next` of the previous page (send the same filters with it).")]


def _next_link(request: Request[Any, Any, Any], cursor: str) -> str:
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    return f'<{request.url.path}?{urlencode([*params, ("cursor", cursor)])}>; rel="next"'


# -- the controller -----------------------------------------------------------------------------

class AuditController(Controller):
    """The audit log (read only)."""

    path = "/audit"
    tags = ("audit",)
    guards = READ
    dependencies = {"where": Provide(audit_filter)}  # noqa: RUF012 - Litestar's layout

    @get("/", summary="List audit events", responses=errors(422), response_headers=[LINK])
    async def list_events(
        self, request: Request[Any, Any, Any], audit: Audit, where: Where,
        limit: Limit = q.DEFAULT_LIMIT, cursor: Cursor = None,
        order: Annotated[Literal["asc", "desc"] | None, QueryParameter(
            description="desc (newest first, the default) or asc.")] = None,
    ) -> Response[AuditPage]:
        """Events matching the filters, newest first (``order=asc``: oldest first), in
        pages of ``limit``; follow ``next`` (or the ``Link`` header) for the next page.
        Requires ``audit:read`` or ``system:admin``.
        """
        page = await q.query_page(audit.db, where, order=order, limit=limit, cursor=cursor)
        body = AuditPage(events=[msgspec.convert(q.event_of(r), AuditEvent) for r in page.rows],
                         next=page.next.encode() if page.next else None)
        headers = {"Link": _next_link(request, body.next)} if body.next else {}
        return Response(body, headers=headers)

    @get("/count", summary="Count audit events", responses=errors(422))
    async def count_events(self, audit: Audit, where: Where) -> AuditCount:
        """How many events match the filters (what an export of them would hold).
        Requires ``audit:read`` or ``system:admin``.
        """
        return AuditCount(count=await q.count(audit.db, where))

    @get("/export", summary="Export audit events", responses={**errors(422), 200: EXPORTED})
    async def export_events(
        self, audit: Audit, where: Where,
        fmt: Annotated[Literal["jsonl", "csv"], QueryParameter(
            name="format", description="jsonl (one JSON event per line) or csv "
                                        "(a header row, then one row per event).")] = "jsonl",
    ) -> Stream:
        """Every event matching the filters, oldest first, streamed (constant memory on
        the server), up to the last event committed when the export started: JSON Lines
        (every stored field, ``detail`` as an object) or CSV (header = the field names).
        The export is recorded as an ``audit.exported`` event. Requires ``audit:read`` or
        ``system:admin``.
        """
        chosen: Format = "csv" if fmt == "csv" else "jsonl"
        chunks = await audit.export(where, chosen)
        return Stream(chunks, media_type=MEDIA_TYPES[chosen], headers={
            "Content-Disposition": f'attachment; filename="audit.{chosen}"'})

    @get("/verify", summary="Verify the audit chain", responses=errors())
    async def verify(self, audit: Audit) -> AuditVerification:
        """Walk the whole hash chain and check every signed checkpoint: ``ok``, or the
        first sequence number that does not verify and why (a row modified, deleted,
        inserted or reordered; rows cut off the end; a checkpoint not signed by a registry
        key). Reads every event: seconds per million. Recorded as an ``audit.verified``
        event. Requires ``audit:read`` or ``system:admin``.
        """
        report = await audit.verify()
        problem = report.problem
        return AuditVerification(
            ok=report.ok, checked=report.checked, first_seq=report.first_seq,
            last_seq=report.last_seq, checkpoints=report.checkpoints, notes=report.notes,
            problem=None if problem is None else ChainBreak(
                seq=problem.seq, problem=problem.problem, message=problem.message))

    @get("/checkpoints", summary="List signed checkpoints", responses=errors(422),
         response_headers=[LINK])
    async def list_checkpoints(
        self, request: Request[Any, Any, Any], audit: Audit,
        limit: Limit = q.DEFAULT_LIMIT, cursor: Cursor = None,
        order: Annotated[Literal["asc", "desc"] | None, QueryParameter(
            description="asc (oldest first, the default) or desc.")] = None,
    ) -> Response[AuditCheckpointPage]:
        """The signed checkpoints of the chain, oldest first, each with whether its
        signature verifies with a registry key. Requires ``audit:read`` or
        ``system:admin``.
        """
        page = await q.checkpoint_page(audit.db, order=order, limit=limit, cursor=cursor)
        body = AuditCheckpointPage(checkpoints=[audit.checkpoint_out(c)
                                                for c in page.checkpoints],
                                   next=page.next.encode() if page.next else None)
        headers = {"Link": _next_link(request, body.next)} if body.next else {}
        return Response(body, headers=headers)
