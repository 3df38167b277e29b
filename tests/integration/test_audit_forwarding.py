"""Audit forwarding through the outbox, with real receiving processes (rsyslog over TLS, a
CloudEvents webhook receiver) that are killed and restarted, on SQLite and PostgreSQL:
nothing is lost, a wrong CA delivers nothing and keeps the position, the stdout lines of a
live ``dtr serve`` parse, one process delivers a sink at a time, a partly confirmed batch
advances only past what arrived, and the fail-closed backlog refuses writes until the sinks
catch up. No timing assertions: every wait polls with a generous timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from litestar.testing import TestClient

from dtr.app import create_app
from dtr.audit import chain
from dtr.audit.forward import Forwarder, Route, SinkLeases, sink_status
from dtr.audit.sinks import WebhookSink
from dtr.config import AuditSinkSettings
from dtr.db.database import Database
from dtr.events import SecurityEvent
from tests.conftest import make_settings
from tests.support import peers
from tests.support.oci import OciClient
from tests.support.syslog import (
    Pki,
    Rsyslog,
    complete_lines,
    make_pki,
    wait_for,
    wait_until,
)
from tests.support.webhook_receiver import WebhookReceiver


def positions(db_url: str, names: list[str]) -> tuple[int, dict[str, int]]:
    """The chain head and each sink's delivered position, read from the database."""
    async def read() -> tuple[int, dict[str, int]]:
        db = Database(db_url)
        try:
            found = await sink_status(db, [AuditSinkSettings(name=n, type="stdout")
                                           for n in names])
        finally:
            await db.close()
        return (found[0].head if found else 0), {s.name: s.position for s in found}

    return asyncio.run(read())


def first_arrivals(events: list[dict[str, Any]]) -> list[int]:
    """The ``seq`` of each event in order of first arrival (duplicates dropped)."""
    seen: dict[int, None] = {}
    for event in events:
        seen.setdefault(int(event["seq"]), None)
    return list(seen)


def assert_chain(events: list[dict[str, Any]], head: int) -> None:
    """The received events, de-duplicated, are 1..head and hash-chain correctly."""
    by_seq = {int(e["seq"]): e for e in events}
    assert sorted(by_seq) == list(range(1, head + 1))
    walker = chain.ChainWalker()
    rows = []
    for seq in sorted(by_seq):
        row = dict(by_seq[seq])
        row["time"] = dt.datetime.strptime(row["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=dt.UTC)
        row["detail"] = json.dumps(row["detail"])
        rows.append(row)
    assert list(walker.walk(rows)) == []


@contextlib.contextmanager
def serve(data_dir: Path, config: Path, db_url: str) -> Iterator[tuple[str, Path]]:
    """``dtr serve`` (2 workers) with ``config``; yields its URL and its stdout file (stderr
    goes elsewhere, so stdout holds only what the stdout sink writes).
    """
    env = peers.dtr_env(data_dir, database_url=db_url,
                        extra={"DTR_CONFIG": str(config)})
    peers.dtr("db", "upgrade", env=env)
    port = peers.free_port()
    stdout, stderr = data_dir / "stdout.log", data_dir / "stderr.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "dtr", "serve", "--port", str(port),
                                 "--workers", "2"], env=env, stdout=out, stderr=err,
                                start_new_session=True)
    try:
        peers.wait_http(f"http://127.0.0.1:{port}/v2/", 60, proc, ok=(200, 401))
        yield f"http://127.0.0.1:{port}", stdout
    finally:
        peers._stop(proc)


def push(url: str, repo: str, count: int) -> None:
    with httpx.Client(base_url=url, timeout=60) as http:
        oci = OciClient(http)
        for i in range(count):
            _, body = oci.push_image(repo, f"v{i}")
            assert http.get(f"/v2/{repo}/manifests/v{i}").status_code == 200
            assert body


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_no_event_is_lost_while_the_receivers_are_down(db_url: str, tmp_path: Path,
                                                       pki: Pki) -> None:
    syslog = Rsyslog(tmp_path / "rsyslog", pki=pki)
    webhook = WebhookReceiver(tmp_path / "webhook")
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "dtr.yml"
    config.write_text(yaml.safe_dump({"audit": {"forward_poll_seconds": 0.2, "sinks": [
        {"name": "console", "type": "stdout"},
        {"name": "siem", "type": "syslog", "address": syslog.address, "tls": True,
         "ca_file": str(pki.ca), "retry_max_seconds": 2},
        {"name": "hook", "type": "webhook", "url": webhook.url, "batch_size": 7,
         "retry_max_seconds": 2},
        {"name": "wrong-ca", "type": "syslog", "address": syslog.address, "tls": True,
         "ca_file": str(pki.other_ca), "retry_max_seconds": 2},
    ]}}))
    names = ["console", "siem", "hook", "wrong-ca"]
    try:
        syslog.start()
        webhook.start(fail_first=2)  # retried from the first event on
        with serve(data, config, db_url) as (url, stdout):
            push(url, "acme/app", 3)
            before, _ = positions(db_url, names)
            assert before > 0
            wait_until(lambda: set(first_arrivals(syslog.events())) >= set(range(1, before + 1))
                       and set(first_arrivals(webhook.events())) >= set(range(1, before + 1)),
                       what="the first events at both receivers")

            syslog.stop(kill=True)
            webhook.stop()
            push(url, "acme/app", 4)
            head, during = positions(db_url, names)
            assert head > before
            for sink, receiver in (("siem", syslog), ("hook", webhook)):
                # the position never claims more than the receiver got; the new events wait
                assert during[sink] <= max(first_arrivals(receiver.events()))
                assert during[sink] < head

            syslog.start()
            webhook.start()
            # (re-reading the head: a pull's event is committed just after its response)
            head, _ = wait_for(lambda: positions(db_url, names), lambda found: all(
                p == found[0] for n, p in found[1].items() if n != "wrong-ca"),
                what="every sink to catch up")
            got_syslog = wait_for(syslog.events, lambda e: len(set(first_arrivals(e))) >= head,
                                  what="every event at rsyslog")
            got_webhook = webhook.events()
            _, after = positions(db_url, names)
            lines = [json.loads(line) for line in complete_lines(stdout)
                     if line.startswith("{")]
    finally:
        syslog.stop()
        webhook.stop()

    for got in (got_syslog, got_webhook, lines):
        upto = [e for e in got if e["seq"] <= head]
        assert first_arrivals(upto) == list(range(1, head + 1))  # at least once, in order
        assert_chain(upto, head)
    assert after["wrong-ca"] == 0  # the wrong CA delivered nothing, so its events wait
    hook_ids = {r["event"]["id"] for r in webhook.received() if r["event"]["data"]["seq"] <= head}
    assert hook_ids == {f"dtr-{seq}" for seq in range(1, head + 1)}
    assert "CERTIFICATE_VERIFY_FAILED" in (data / "stderr.log").read_text()


async def _append(db: Database, count: int, start: int = 0) -> None:
    await db.run(lambda conn: chain.append(conn, [
        SecurityEvent(action="auth.login", outcome="allow", actor=f"user{i}")
        for i in range(start, start + count)]))


def test_one_process_delivers_a_sink_and_another_takes_over(db_url: str,
                                                             tmp_path: Path) -> None:
    receiver = WebhookReceiver(tmp_path / "webhook")
    receiver.start(fail_seq=(3,))  # event 3 fails once: the batch is partly confirmed

    async def scenario() -> None:
        dbs = [Database(db_url), Database(db_url)]
        forwarders = [Forwarder(db, [Route(WebhookSink("hook", receiver.url), "webhook",
                                            batch_size=10, retry_max_seconds=1)],
                                poll_seconds=0.1) for db in dbs]
        try:
            await _append(dbs[0], 5)
            for f in forwarders:
                f.start()
            await settled(lambda: [e["seq"] for e in receiver.events()] == [1, 2, 3, 4, 5])
            await settled(lambda: sum(f.status()[0].delivering for f in forwarders) == 1)
            leader = next(f for f in forwarders if f.status()[0].delivering)
            standby = next(f for f in forwarders if f is not leader)
            await settled(lambda: leader.status()[0].position == 5)
            assert leader.status()[0].failures == 0  # recovered from the failed event 3
            await leader.aclose()
            await _append(dbs[0], 3, start=5)
            await settled(lambda: standby.status()[0].position == 8)
            assert [e["seq"] for e in receiver.events()] == list(range(1, 9))  # exactly once
            assert standby.status()[0].delivering
            assert [s.position for s in await standby.refresh()] == [8]
        finally:
            for f in forwarders:
                await f.aclose()
            for db in dbs:
                await db.close()

    try:
        asyncio.run(scenario())
    finally:
        receiver.stop()


async def settled(check: Any, timeout: float = 60.0) -> None:
    """Poll ``check()`` in the event loop until it is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)


def test_leases_exclude_each_other(db_url: str) -> None:
    async def scenario() -> None:
        a, b = Database(db_url), Database(db_url)
        first, second = SinkLeases(a), SinkLeases(b)
        try:
            assert await first.acquire("siem")
            assert await first.acquire("siem")  # kept
            assert not await second.acquire("siem")
            assert await second.acquire("hook")  # per sink
            await first.aclose()
            assert await second.acquire("siem")
        finally:
            await first.aclose()
            await second.aclose()
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_fail_closed_backlog_refuses_writes_until_the_sink_catches_up(tmp_path: Path) -> None:
    receiver = WebhookReceiver(tmp_path / "webhook")  # not started yet: the sink is down
    settings = make_settings(tmp_path, audit={
        "fail_closed_backlog": 2, "forward_poll_seconds": 0.1,
        "sinks": [{"name": "hook", "type": "webhook", "url": receiver.url,
                   "retry_max_seconds": 1}]})
    try:
        with TestClient(create_app(settings)) as client:
            oci = OciClient(client)
            body = oci.image("acme/app")
            statuses: list[int] = []

            def refused() -> bool:
                answer = oci.put_manifest("acme/app", f"t{len(statuses)}", body)
                statuses.append(answer.status_code)
                return answer.status_code == 503

            wait_until(refused, timeout=60, what="a refused write")
            assert set(statuses[:-1]) <= {201}
            forwarder: Forwarder = client.app.state.forwarder
            backlog = forwarder.status()[0].backlog
            assert backlog > 2
            refusal = oci.put_manifest("acme/app", "refused", body)
            assert refusal.status_code == 503
            assert "audit sink 'hook'" in refusal.text

            receiver.start()
            wait_until(lambda: oci.put_manifest("acme/app", "again", body).status_code == 201,
                       timeout=60, what="writes accepted again")
            head = wait_for(forwarder.status, lambda s: s[0].backlog == 0,
                            what="the sink to catch up")[0].head
            seqs = first_arrivals(receiver.events())
            assert seqs[:head] == list(range(1, head + 1))
    finally:
        receiver.stop()
