"""The audit Sink contract (``dtr/audit/sinks.py``), run against every sink with its real
receiver: stdout into a ``cat`` process, syslog into rsyslog over TCP and over TLS, the
webhook into a separate HTTP(S) receiving process. Then what each sink's wire format must
carry, read back from the receiver (rsyslog's own parse of our syslog messages; the
CloudEvents as the receiver got them).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dtr.audit.chain import GENESIS, ChainWalker, link_hash, row_of
from dtr.audit.forward import Forwarder
from dtr.audit.sinks import (
    DeliveryError,
    Sink,
    StdoutSink,
    SyslogSink,
    WebhookSink,
    event_document,
    signature,
    tls_context,
)
from dtr.config import ConfigError, load_settings
from dtr.db.database import Database
from dtr.events import SecurityEvent
from tests.support.syslog import (
    Pki,
    Rsyslog,
    complete_lines,
    make_pki,
    wait_for,
    wait_until,
)
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.anyio
SINKS = ["stdout", "syslog-tcp", "syslog-tls", "webhook-http", "webhook-https"]


def chained(events: list[SecurityEvent], first: int = 1) -> list[dict[str, Any]]:
    """Stored rows of ``events`` (as the forwarder reads them), hash-chained from seq
    ``first``.
    """
    rows, prev = [], GENESIS
    for seq, event in enumerate(events, first):
        row = row_of(event)
        row["seq"], row["prev_hash"] = seq, prev
        row["hash"] = prev = link_hash(row)
        rows.append(row)
    return rows


def sample(n: int = 5) -> list[dict[str, Any]]:
    """``n`` rows with every field and the characters each wire format must escape."""
    kinds: list[Any] = ["allow", "deny", "error"]
    return chained([SecurityEvent(
        action="manifest.pushed" if i % 2 else "auth.login", outcome=kinds[i % 3],
        actor_kind="user", actor=f"zoë \"q\" ]{i}", method="password", reason="bad ] \\ \"x\"",
        client_ip="192.0.2.7", user_agent="docker/27 (ünïcode)", resource="scope:x",
        token_id=f"tok{i}", org="acme", repository="acme/app", tag=f"v{i}",
        digest="sha256:" + "ab" * 32, rule="allow: team:ci push acme/**",
        request_id=f"req-{i}", detail={"n": i, "nested": {"list": [1, "two"]}, "big": "x" * 3000},
        time=1_700_000_000.123456 + i) for i in range(n)])


def as_row(doc: dict[str, Any]) -> dict[str, Any]:
    """A received event document back as a stored row (to re-check its hash)."""
    row = dict(doc)
    row["time"] = dt.datetime.strptime(doc["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=dt.UTC)
    row["detail"] = json.dumps(doc["detail"])
    return row


@dataclass
class Harness:
    """A sink wired to its real receiver."""

    sink: Sink
    events: Callable[[], list[dict[str, Any]]]
    """The event documents the receiver has, in arrival order."""
    stop: Callable[[], None]
    """Take the receiver down."""
    start: Callable[[], None] | None
    """Bring it back (None: it cannot come back, like a closed stdout)."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _stdout(tmp_path: Path) -> Iterator[Harness]:
    out = tmp_path / "stdout.jsonl"
    with out.open("wb") as target:
        proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=target)
    assert proc.stdin is not None

    def events() -> list[dict[str, Any]]:
        return [json.loads(line) for line in complete_lines(out) if line]

    def stop() -> None:
        proc.kill()
        proc.wait()

    yield Harness(StdoutSink("stdout", stream=proc.stdin), events, stop, None)
    stop()
    with contextlib.suppress(OSError):
        proc.stdin.close()


def _syslog(tmp_path: Path, pki: Pki | None) -> Iterator[Harness]:
    server = Rsyslog(tmp_path / "rsyslog", pki=pki)
    server.start()
    tls = tls_context(str(pki.ca)) if pki else None
    sink = SyslogSink("syslog", server.address, tls=tls, timeout=10)
    yield Harness(sink, server.events, server.stop, server.start)
    server.stop()


def _webhook(tmp_path: Path, pki: Pki | None) -> Iterator[Harness]:
    receiver = WebhookReceiver(tmp_path / "webhook", cert=pki.server_cert if pki else None,
                               key=pki.server_key if pki else None)
    receiver.start()
    tls = tls_context(str(pki.ca)) if pki else None
    sink = WebhookSink("webhook", receiver.url, tls=tls, source="https://registry.test",
                       registry_id="registry.test", timeout=10)
    yield Harness(sink, receiver.events, receiver.stop, receiver.start)
    receiver.stop()


@pytest.fixture(params=SINKS)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    kind: str = request.param
    tls = request.getfixturevalue("pki") if kind.endswith(("-tls", "-https")) else None
    if kind == "stdout":
        made = _stdout(tmp_path)
    elif kind.startswith("syslog"):
        made = _syslog(tmp_path, tls)
    else:
        made = _webhook(tmp_path, tls)
    h = next(made)
    try:
        yield h
    finally:
        try:
            await h.sink.aclose()
        finally:
            next(made, None)


def received(h: Harness, count: int) -> list[dict[str, Any]]:
    """Wait (generously) until the receiver has ``count`` events; return them."""
    return wait_for(h.events, lambda got: len(got) >= count, what=f"{count} events")


# -- the contract ------------------------------------------------------------------------------


async def test_delivers_every_event_in_order_with_every_stored_field(harness: Harness) -> None:
    rows = sample(5)
    await harness.sink.deliver(rows)
    got = received(harness, 5)
    assert got == [event_document(r) for r in rows]
    walker = ChainWalker()
    assert list(walker.walk(as_row(doc) for doc in got)) == []  # the receiver can re-check
    assert walker.checked == 5


async def test_a_batch_may_be_delivered_again_and_is_recognisable(harness: Harness) -> None:
    rows = sample(3)
    await harness.sink.deliver(rows)
    await harness.sink.deliver(rows[1:])
    got = received(harness, 5)
    assert [e["seq"] for e in got] == [1, 2, 3, 2, 3]
    assert {e["seq"]: e["hash"] for e in got} == {r["seq"]: r["hash"] for r in rows}


async def test_a_receiver_that_is_down_fails_the_delivery(harness: Harness) -> None:
    rows = sample(4)
    await harness.sink.deliver(rows[:2])
    received(harness, 2)
    harness.stop()
    with pytest.raises(OSError if harness.start is None else DeliveryError):
        await harness.sink.deliver(rows[2:])
    assert [e["seq"] for e in harness.events()] == [1, 2]


@pytest.mark.parametrize("harness", [k for k in SINKS if k != "stdout"], indirect=True)
async def test_delivers_again_once_the_receiver_is_back(harness: Harness) -> None:
    # (a closed stdout does not come back: the process restarts instead)
    assert harness.start is not None
    rows = sample(4)
    harness.stop()
    with pytest.raises(DeliveryError):
        await harness.sink.deliver(rows)
    harness.start()
    await harness.sink.deliver(rows)
    assert [e["seq"] for e in received(harness, 4)] == [1, 2, 3, 4]


async def test_aclose_twice_is_harmless(harness: Harness) -> None:
    await harness.sink.aclose()
    await harness.sink.aclose()


# -- syslog: the wire format as rsyslog parses it ----------------------------------------------


async def test_syslog_messages_are_rfc5424_as_rsyslog_reads_them(tmp_path: Path) -> None:
    server = Rsyslog(tmp_path / "rsyslog")
    server.start()
    try:
        rows = sample(3)
        sink = SyslogSink("syslog", server.address, facility="local3", sd_id="acme@32473")
        await sink.deliver(rows)
        got = wait_until(lambda: server.messages() if len(server.messages()) >= 3 else None)
    finally:
        server.stop()
    assert [m["msgid"] for m in got] == ["auth.login", "manifest.pushed", "auth.login"]
    assert [m["severity"] for m in got] == ["6", "4", "3"]  # allow, deny, error
    assert {m["facility"] for m in got} == {"19"}  # local3
    assert {m["version"] for m in got} == {"1"}
    assert {m["app_name"] for m in got} == {"dtr"}
    assert got[0]["timestamp"] == "2023-11-14T22:13:20.123456Z"
    for m, row in zip(got, rows, strict=True):
        assert m["sd"] == (f'[acme@32473 seq="{row["seq"]}" outcome="{row["outcome"]}" '
                           f'actor="{sink_escape(row["actor"])}"]')
        assert json.loads(m["msg"]) == event_document(row)


def sink_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


async def test_syslog_tls_refuses_a_receiver_the_ca_did_not_issue(tmp_path: Path, pki: Pki) -> None:
    server = Rsyslog(tmp_path / "rsyslog", pki=pki)
    server.start()
    try:
        wrong = SyslogSink("syslog", server.address, tls=tls_context(str(pki.other_ca)))
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            await wrong.deliver(sample(2))
        misnamed = SyslogSink("syslog", server.address, tls=tls_context(str(pki.ca)),
                              server_name="elsewhere.test")
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            await misnamed.deliver(sample(2))
        named = SyslogSink("syslog", server.address, tls=tls_context(str(pki.ca)),
                           server_name="syslog.test")
        await named.deliver(sample(1))
        any_name = SyslogSink("syslog", server.address, server_name="elsewhere.test",
                              tls=tls_context(str(pki.ca), check_server_name=False))
        await any_name.deliver(sample(2)[1:])
        got = wait_until(lambda: server.events() if len(server.events()) >= 2 else None)
    finally:
        server.stop()
    assert [e["seq"] for e in got] == [1, 2]  # only what the right CA and name let through


# -- webhook: CloudEvents as the receiver got them ---------------------------------------------


async def test_webhook_posts_structured_cloudevents(tmp_path: Path) -> None:
    receiver = WebhookReceiver(tmp_path / "webhook", token="s3cret", hmac_secret="k3y")
    receiver.start()
    try:
        rows = sample(3)
        sink = WebhookSink("webhook", receiver.url, source="https://registry.test",
                           registry_id="registry.test", token="s3cret", hmac_secret="k3y",
                           headers={"X-Tenant": "acme"})
        await sink.deliver(rows)
        await sink.aclose()
        got = wait_until(lambda: receiver.received() if len(receiver.received()) >= 3
                         else None)
    finally:
        receiver.stop()
    for request, row in zip(got, rows, strict=True):
        event, headers = request["event"], request["headers"]
        assert headers["content-type"] == "application/cloudevents+json; charset=utf-8"
        assert headers["x-tenant"] == "acme"
        assert event == {
            "specversion": "1.0", "id": f"registry.test-{row['seq']}",
            "source": "https://registry.test", "type": f"io.dtr.audit.{row['action']}",
            "time": event_document(row)["time"], "datacontenttype": "application/json",
            "subject": f"acme/app:{row['tag']}@{row['digest']}",
            "data": event_document(row)}


async def test_webhook_refuses_wrong_credentials_and_certificates(tmp_path: Path, pki: Pki) -> None:
    receiver = WebhookReceiver(tmp_path / "webhook", cert=pki.server_cert, key=pki.server_key,
                               client_ca=pki.ca, token="s3cret")
    receiver.start()
    try:
        client = tls_context(str(pki.ca), str(pki.client_cert), str(pki.client_key))
        cases = {
            "wrong token": WebhookSink("w", receiver.url, tls=client, token="guess"),
            "wrong CA": WebhookSink("w", receiver.url, token="s3cret", tls=tls_context(
                str(pki.other_ca), str(pki.client_cert), str(pki.client_key))),
            "no client certificate": WebhookSink("w", receiver.url, token="s3cret",
                                                 tls=tls_context(str(pki.ca))),
        }
        for case, sink in cases.items():
            with pytest.raises(DeliveryError) as failed:
                await sink.deliver(sample(1))
            assert failed.value.delivered == 0, case
        good = WebhookSink("w", receiver.url, tls=client, token="s3cret")
        await good.deliver(sample(2))
        await good.aclose()
        assert [e["seq"] for e in receiver.events()] == [1, 2]
    finally:
        receiver.stop()


async def test_webhook_failure_mid_batch_says_how_many_arrived(tmp_path: Path) -> None:
    receiver = WebhookReceiver(tmp_path / "webhook", hmac_secret="k")
    receiver.start(fail_seq=(3,))
    try:
        sink = WebhookSink("w", receiver.url, hmac_secret="k")
        rows = sample(4)
        with pytest.raises(DeliveryError, match="HTTP 500") as failed:
            await sink.deliver(rows)
        assert failed.value.delivered == 2
        await sink.deliver(rows[2:])
        await sink.aclose()
        assert [e["seq"] for e in receiver.events()] == [1, 2, 3, 4]
        body = receiver.received()[0]
        assert body["headers"]["x-dtr-signature"] == signature(
            "k", json.dumps(body["event"], ensure_ascii=False, separators=(",", ":")).encode())
    finally:
        receiver.stop()


# -- from the settings -------------------------------------------------------------------------


BAD_SINKS = {
    "duplicate sink name": [{"name": "a", "type": "stdout"}, {"name": "a", "type": "stdout"}],
    "not a valid sink name": [{"name": "Not Valid", "type": "stdout"}],
    "address: set host:port": [{"name": "s", "type": "syslog", "address": "tcp://h:514"}],
    "url: set an http": [{"name": "w", "type": "webhook", "url": "ftp://h/x"}],
    "token or token_file": [{"name": "w", "type": "webhook", "url": "https://h/",
                             "token": "t", "token_file": "/f"}],
    "cert_file and key_file": [{"name": "w", "type": "webhook", "url": "https://h/",
                                "cert_file": "/c"}],
    "need tls: true": [{"name": "s", "type": "syslog", "address": "h:514", "ca_file": "/c"}],
    "SD-ID": [{"name": "s", "type": "syslog", "address": "h", "sd_id": "no-number"}],
    "batch_size": [{"name": "s", "type": "stdout", "batch_size": 0}],
}


@pytest.mark.parametrize("problem", BAD_SINKS)
async def test_sink_settings_are_validated(problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings(env={}, overrides={"audit": {"sinks": BAD_SINKS[problem]}})


async def test_sinks_built_from_settings_deliver(tmp_path: Path, pki: Pki) -> None:
    token = tmp_path / "token"
    token.write_text("from-a-file\n")
    receiver = WebhookReceiver(tmp_path / "webhook", cert=pki.server_cert,
                               key=pki.server_key, token="from-a-file")
    server = Rsyslog(tmp_path / "rsyslog", pki=pki)
    settings = load_settings(env={}, overrides={
        "server": {"public_url": "https://registry.test:5443"},
        "audit": {"sinks": [
            {"name": "hook", "type": "webhook", "url": receiver.url, "ca_file": str(pki.ca),
             "token_file": str(token)},
            {"name": "siem", "type": "syslog", "address": server.address, "tls": True,
             "ca_file": str(pki.ca), "facility": "local0"}]}})
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'dtr.db'}")
    forwarder = Forwarder.from_settings(settings, db)
    receiver.start()
    server.start()
    try:
        for route in forwarder.routes:
            await route.sink.deliver(sample(2))
        got = wait_for(receiver.received, lambda r: len(r) >= 2)
        assert [r["event"]["id"] for r in got] == ["registry.test:5443-1",
                                                   "registry.test:5443-2"]
        assert {r["event"]["source"] for r in got} == {"https://registry.test:5443"}
        messages = wait_for(server.messages, lambda m: len(m) >= 2)
        assert {m["facility"] for m in messages} == {"16"}
    finally:
        await forwarder.aclose()
        await db.close()
        receiver.stop()
        server.stop()


async def test_unreadable_sink_files_fail_at_start(tmp_path: Path) -> None:
    settings = load_settings(env={}, overrides={"audit": {"sinks": [
        {"name": "siem", "type": "syslog", "address": "h:6514", "tls": True,
         "ca_file": str(tmp_path / "missing.pem")}]}})
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'dtr.db'}")
    try:
        with pytest.raises(ConfigError, match=r"audit\.sinks\.siem: .*No such file"):
            Forwarder.from_settings(settings, db)
    finally:
        await db.close()
