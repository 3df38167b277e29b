"""The audit relay's seam, in one process: what a worker sends (``encode``) is what the relay
takes (``decode``), whatever the text; malformed datagrams are refused and counted, the
rest still taken; a worker's client gathers entries into datagrams, hands what it cannot
send to its own writer (no relay, relay gone) and reconnects when the relay is back; the
relay reads what is left in its socket when it stops; and entries it takes are chained by
a real recorder on SQLite, the chain verifying afterwards.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select

from dtr.audit import chain, relay
from dtr.audit.chain import Entry
from dtr.audit.recorder import AuditRecorder
from dtr.db.database import Database
from dtr.db.migrate import upgrade
from dtr.db.models import AuditEvent
from dtr.events import RequestContext, SecurityEvent, request_context

pytestmark = pytest.mark.anyio
TRICKY = ["plain", 'quote " \\ back', "ctl \x00\x1f\x7f", "é 中文 \u2028 😀", "", "\ud800"]


def entry(i: int, text: str = "") -> Entry:
    return chain.entry_of(SecurityEvent("manifest.pulled", "allow", actor=f"u{i}{text}",
                                        repository="acme/app", time=1.7e9 + i * 1.000001,
                                        detail={"n": i, "text": text}))


@pytest.mark.parametrize("text", TRICKY)
def test_decode_gives_back_what_encode_sent(text: str) -> None:
    sent = [entry(i, text) for i in range(3)]
    assert relay.decode(relay.encode(sent)) == sent


@pytest.mark.parametrize("data", [
    b"not json", b'{"a": 1}', b"[[1, 2]]", b'[["t", "{}"' + b', ""' * 17 + b"]]",
    b"[[1.5, {}" + b', ""' * 17 + b"]]", b"[[1.5, \"{}\"" + b", 3" * 17 + b"]]",
    b"\xff\xfe", b"[[true, \"{}\"" + b', ""' * 17 + b"]]"])
def test_decode_refuses_what_encode_cannot_make(data: bytes) -> None:
    with pytest.raises((ValueError, TypeError)):
        relay.decode(data)


async def test_client_batches_falls_back_and_reconnects(tmp_path: Path) -> None:
    path = str(tmp_path / "relay.sock")
    fell_back: list[Entry] = []
    client = relay.RelayClient(path, fell_back.extend)

    client.add(entry(0))  # nobody listens: the worker keeps it
    client.send()
    assert fell_back == [entry(0)]

    got: list[list[Entry]] = []
    stop = asyncio.Event()
    served = asyncio.create_task(relay.serve_relay(path, got.append, stop))
    while not Path(path).exists():
        await asyncio.sleep(0.01)
    client._down_until = 0.0  # the retry pause is over
    for i in range(1, relay.PER_DATAGRAM + 1):  # a full datagram goes at once
        client.add(entry(i))
    client.add(entry(99))  # a lone one waits for LINGER
    await asyncio.sleep(relay.LINGER * 4)
    assert [len(d) for d in got] == [relay.PER_DATAGRAM, 1]
    assert [e for d in got for e in d] == [entry(i) for i in (*range(1, 33), 99)]
    assert client.sent == relay.PER_DATAGRAM + 1
    assert client.fell_back == 1

    stop.set()
    assert await served == 0
    client.add(entry(100))  # the relay is gone: back to the worker's writer
    client.send()
    assert fell_back == [entry(0), entry(100)]
    client.close()


async def test_relay_reads_what_is_left_and_counts_malformed(tmp_path: Path) -> None:
    path = str(tmp_path / "relay.sock")
    got: list[Entry] = []
    stop = asyncio.Event()
    served = asyncio.create_task(relay.serve_relay(path, got.extend, stop))
    while not Path(path).exists():
        await asyncio.sleep(0.01)
    assert Path(path).stat().st_mode & 0o777 == 0o600
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(path)
        sock.send(relay.encode([entry(1)]))
        sock.send(b"[[garbage")
        sock.send(relay.encode([entry(2), entry(3)]))
        stop.set()  # set before the loop reads them: they are read while stopping
    assert await served == 1
    assert got == [entry(1), entry(2), entry(3)]
    assert not Path(path).exists()


async def test_relayed_entries_are_chained(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'dtr.db'}"
    await asyncio.to_thread(upgrade, url)
    db = Database(url)
    writer = AuditRecorder(db)  # the relay process's recorder
    worker = AuditRecorder(db)  # a worker's, relaying
    path = str(tmp_path / "relay.sock")
    stop = asyncio.Event()
    served = asyncio.create_task(relay.serve_relay(path, writer.accept, stop))
    while not Path(path).exists():
        await asyncio.sleep(0.01)
    worker.relay_to(path)
    ctx = RequestContext(request_id="r1", client_ip="10.0.0.9", user_agent="crane/0.20")
    with request_context(ctx):
        for i in range(100):
            await worker.emit(SecurityEvent("manifest.pulled", "allow", repository="acme/app",
                                            tag=f"v{i}", detail={"media_type": "x"}))
    await worker.aclose()
    assert worker.relay is not None
    assert worker.relay.sent == 100
    stop.set()
    await served
    await writer.aclose()

    def rows(conn: Connection) -> list[dict[str, Any]]:
        found = conn.execute(select(AuditEvent).order_by(AuditEvent.seq))
        return [dict(r._mapping) for r in found]

    stored = await db.run(rows, write=False)
    assert [(r["tag"], r["client_ip"], r["request_id"]) for r in stored] == [
        (f"v{i}", "10.0.0.9", "r1") for i in range(100)]
    assert list(chain.ChainWalker().walk(stored)) == []
    await db.close()


async def test_fail_closed_never_relays(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    recorder = AuditRecorder(db, fail_closed=True)
    recorder.relay_to(str(tmp_path / "relay.sock"))
    assert recorder.relay is None
    await db.close()
