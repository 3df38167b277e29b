"""``verify_chain``: proves the stored audit trail was not altered, or names the first
sequence number that does not verify.

It reads the rows in ``seq`` order in pages (constant memory) and checks:

1. the start: the first row is ``seq`` 1 linking to the genesis hash, or (after retention)
   the row right after a validly signed checkpoint, linking to that checkpoint's hash;
2. every row: its hash covers its fields and its predecessor's hash (:class:`ChainWalker`);
3. every checkpoint: its signature is valid for a registry key, and it names the hash the
   chain has at its ``seq`` (a checkpoint beyond the last row means rows were cut off the
   end);
4. the end: the chain head, read again once the rows are walked (so events committed
   meanwhile are walked too, not taken for rows added behind its back), agrees with the
   last row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, func, select

from dtr.audit.chain import COLUMNS, GENESIS, Break, ChainWalker, head
from dtr.audit.checkpoints import Checkpoint, CheckpointKeys, checkpoints
from dtr.db.database import Database
from dtr.db.models import AuditEvent

PAGE = 5000


@dataclass(slots=True)
class VerifyReport:
    """What :func:`verify_chain` found.

    Attributes:
        ok: nothing wrong.
        checked: rows whose links verified.
        first_seq: the first row's ``seq`` (0 when there are none).
        last_seq: the last verified row's ``seq``.
        checkpoints: valid checkpoints that matched the chain.
        problem: the first break, when not ok.
    """

    ok: bool = True
    checked: int = 0
    first_seq: int = 0
    last_seq: int = 0
    checkpoints: int = 0
    problem: Break | None = None
    notes: list[str] = field(default_factory=list)

    def fail(self, found: Break) -> VerifyReport:
        """Record the first break."""
        if self.problem is None:
            self.ok, self.problem = False, found
        return self


async def verify_chain(db: Database, keys: CheckpointKeys,
                       progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check the whole stored chain (see the module docstring).

    A retention step that commits while the walk starts moves the first event; a break
    at the very start is checked again from the new first event (up to three times).

    Args:
        db: the metadata database.
        keys: the registry keys checkpoints may be signed with.
        progress: called with (rows checked, rows in total) after every page.
    """
    for _ in range(3):
        report = await _verify_once(db, keys, progress)
        if report.ok or report.checked or report.problem is None:
            return report

        def first_now(conn: Connection) -> int:
            return int(conn.execute(select(func.min(AuditEvent.seq))).scalar() or 0)

        if await db.run(first_now, write=False) == report.first_seq:
            return report
    return report


async def _verify_once(db: Database, keys: CheckpointKeys,
                       progress: Callable[[int, int], None] | None) -> VerifyReport:
    def start(conn: Connection) -> tuple[int, int, int, list[Checkpoint], tuple[int, str]]:
        first, last, count = conn.execute(select(
            func.min(AuditEvent.seq), func.max(AuditEvent.seq), func.count())).one()
        return (int(first or 0), int(last or 0), int(count), checkpoints(conn), head(conn))

    first, _, total, marks, (head_seq, head_hash) = await db.run(start, write=False)
    report = VerifyReport(first_seq=first)
    signed = {c.seq: c for c in marks if keys.valid(c)}
    for bad in marks:
        if bad.seq not in signed:
            return report.fail(Break(bad.seq, "checkpoint", f"the checkpoint at event "
                                     f"{bad.seq} is not signed by a registry key"))
    if total == 0:
        if head_seq != 0 and not signed:
            return report.fail(Break(1, "deleted", "the audit table is empty but the chain "
                                     f"head is at event {head_seq}"))
        return _check_end(report, head_seq, head_hash, signed, 0, GENESIS)

    if first == 1:
        walker = ChainWalker(1, GENESIS)
    elif first - 1 in signed:
        walker = ChainWalker(first, signed[first - 1].hash)
        report.notes.append(f"events before {first} were removed by retention; the chain "
                            f"starts at the signed checkpoint {first - 1}")
    else:
        return report.fail(Break(first, "deleted", f"the first event is {first}, and no "
                                 f"signed checkpoint anchors event {first - 1}: earlier "
                                 "events were deleted"))

    after = first - 1
    done = 0
    while True:
        def page(conn: Connection, after: int = after) -> list[dict[str, object]]:
            rows = conn.execute(select(*[getattr(AuditEvent, c) for c in COLUMNS])
                                .where(AuditEvent.seq > after)
                                .order_by(AuditEvent.seq, AuditEvent.time).limit(PAGE))
            return [dict(r._mapping) for r in rows]

        def check(rows: list[dict[str, object]]) -> Break | None:
            for row in rows:
                found = walker.feed(row)
                if found is not None:
                    report.checked, report.last_seq = walker.checked, walker.expected - 1
                    return found
                mark = signed.get(int(str(row["seq"])))
                if mark is not None:
                    if mark.hash != row["hash"]:
                        return Break(mark.seq, "modified", f"event {mark.seq} does not "
                                     "match its signed checkpoint")
                    report.checkpoints += 1
            return None

        rows = await db.run(page, write=False)
        if not rows:
            break
        # Hashing a page takes a while: off the event loop, so a server stays responsive.
        found = await asyncio.to_thread(check, rows)
        if found is not None:
            return report.fail(found)
        done += len(rows)
        report.checked, report.last_seq = walker.checked, walker.expected - 1
        after = int(str(rows[-1]["seq"]))
        if progress is not None:
            progress(done, total)
        if len(rows) < PAGE:
            # Caught up. The head is read after the rows, so it covers every row seen;
            # rows committed while walking (a busy registry) are walked too.
            head_seq, head_hash = await db.run(head, write=False)
            if head_seq <= walker.expected - 1:
                break
    return _check_end(report, head_seq, head_hash, signed, walker.expected - 1, walker.prev)


def _check_end(report: VerifyReport, head_seq: int, head_hash: str,
               signed: dict[int, Checkpoint], last: int, last_hash: str) -> VerifyReport:
    beyond = [seq for seq in signed if seq > last]
    if beyond:
        return report.fail(Break(last + 1, "deleted", f"a signed checkpoint names event "
                                 f"{min(beyond)}, but the chain ends at {last}: events were "
                                 "cut off the end"))
    if head_seq != last or head_hash != last_hash:
        return report.fail(Break(last + 1 if head_seq > last else head_seq, "head",
                                 f"the chain head says event {head_seq}, the rows end at "
                                 f"{last}: rows were removed from or added to the end"))
    return report
