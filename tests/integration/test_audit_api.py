"""The auditors' audit log API (``/api/v1/audit``) in-process on SQLite and PostgreSQL:
every filter alone and combined (checked against the stored rows with an independent
implementation of the filters, the repository glob being the access policy's
``dtr.globs.glob_match``), cursor pages without duplicates or gaps in both orders,
JSONL and CSV exports byte for byte and read page by page, and verification before and
after a row is tampered with directly in the table (the API and ``dtr audit verify
--local`` name its sequence number).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import io
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import rfc8785
import yaml
from click.testing import CliRunner
from litestar.testing import TestClient
from sqlalchemy import Connection, select, update

from dtr.app import create_app
from dtr.audit import chain
from dtr.audit import query as q
from dtr.audit.export import export
from dtr.cli import main
from dtr.cli_admin import login
from dtr.cli_audit import audit
from dtr.db.database import Database
from dtr.db.models import AuditEvent
from dtr.events import SecurityEvent
from dtr.globs import glob_match as policy_glob_match
from tests.conftest import make_settings
from tests.support.http import basic, bearer
from tests.support.peers import ADMIN_PASSWORD, dtr_server

ADMIN_PW = "admin-password-1"
V1 = "/api/v1/audit"
T0 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
"""The seeded events are in March 2025; the requests' own events (logins) are now."""
BEFORE_NOW = "2026-01-01T00:00:00Z"
REPOS = ["prod/app", "prod/x/y", "prod/x/y/z", "prodx/app", "staging/app", "prod_a/b",
         "prodxa/b", "team-1/svc", "team-2/svc", "prod/xa/b/c", "prod/app2", ""]
ACTIONS = ["manifest.pushed", "manifest.pulled", "tag.written", "tag.deleted", "auth.login",
           "auth.token.issued", "access.denied"]
ACTORS = ["alice", "bob", "robot$acme+ci", "carol"]


def seeded_event(i: int) -> SecurityEvent:
    """Event ``i`` of the seeded history (deterministic, every filter value several times)."""
    action = ACTIONS[i % len(ACTIONS)]
    outcome = "deny" if action == "access.denied" or i % 11 == 0 else (
        "error" if i % 23 == 0 else "allow")
    repo = REPOS[(i * 5) % len(REPOS)]
    return SecurityEvent(
        action=action, outcome=outcome, actor=ACTORS[(i // 3) % len(ACTORS)],
        actor_kind="robot" if (i // 3) % len(ACTORS) == 2 else "user",
        client_ip=f"10.0.0.{i % 250}", user_agent="docker/27.3 (größe)",
        repository=repo, org=repo.split("/")[0] if repo else "",
        tag=f"v{i}" if action.startswith("tag.") else "",
        reason="no_grant" if outcome == "deny" else "",
        rule="deny: user:bob push prod/**" if outcome == "deny" else "",
        detail={"n": i, "note": "seeded", "nested": {"k": [1, 2]}},
        time=(T0 + dt.timedelta(minutes=10 * i)).timestamp())


SEEDED = 240


@pytest.fixture
def settings_tree(tmp_path: Path, db_url: str) -> dict[str, Any]:
    return {"server": {"data_dir": str(tmp_path / "data")}, "database": {"url": db_url},
            "auth": {"enabled": True}}


@pytest.fixture
def client(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[TestClient[Any]]:
    monkeypatch.setenv("DTR_ADMIN_PASSWORD", ADMIN_PW)
    settings = make_settings(tmp_path / "data", database={"url": db_url},
                             auth={"enabled": True})
    with TestClient(create_app(settings)) as c:

        def seed(conn: Connection) -> None:
            chain.append(conn, [seeded_event(i) for i in range(SEEDED)])

        run(c, seed)
        yield c


def run(c: TestClient[Any], fn: Callable[[Connection], Any]) -> Any:
    """Run ``fn`` as one write transaction on the app's database."""
    db: Database = c.app.state.security.db
    return c.blocking_portal.call(functools.partial(db.run, fn, write=True))


@pytest.fixture
def auditor(client: TestClient[Any]) -> dict[str, str]:
    """An auditor's personal access token header (the admin creates and grants them)."""
    admin = basic("admin", ADMIN_PW)
    assert client.post("/api/v1/users", json={"name": "audrey", "password": "audrey-pw-123456"},
                       headers=admin).status_code == 201
    assert client.post("/api/v1/grants", json={"subject": "user:audrey", "org": "*",
                                                "role": "auditor"},
                       headers=admin).status_code == 201
    r = client.post("/api/v1/tokens", json={"name": "audit"},
                    headers=basic("audrey", "audrey-pw-123456"))
    assert r.status_code == 201, r.text
    return bearer(r.json()["secret"])


def stored(c: TestClient[Any]) -> list[dict[str, Any]]:
    """Every stored row, oldest first."""
    return list(run(c, lambda conn: [dict(r._mapping) for r in conn.execute(
        select(AuditEvent.__table__).order_by(AuditEvent.seq))]))


def expected(c: TestClient[Any], **f: str) -> list[int]:
    """The seqs the filters select, newest first (an independent implementation)."""
    since = dt.datetime.fromisoformat(f["since"]) if "since" in f else None
    until = dt.datetime.fromisoformat(f["until"]) if "until" in f else None
    out = []
    for row in stored(c):
        if ((since and row["time"] < since) or (until and row["time"] >= until)
                or ("actor" in f and row["actor"] != f["actor"])
                or ("outcome" in f and row["outcome"] != f["outcome"])
                or ("repository" in f and not policy_glob_match(f["repository"],
                                                                row["repository"]))):
            continue
        action = f.get("action")
        if action and not (row["action"].startswith(action[:-1]) if action.endswith("*")
                           else row["action"] == action):
            continue
        out.append(int(row["seq"]))
    return out[::-1]


def listed(c: TestClient[Any], headers: dict[str, str], limit: int = 1000,
           **params: str) -> list[dict[str, Any]]:
    """Every event of a listing, following ``next`` cursors (checked against ``Link``)."""
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = c.get(V1, params={**params, "limit": str(limit),
                              **({"cursor": cursor} if cursor else {})}, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        events += body["events"]
        cursor = body["next"]
        if cursor is None:
            assert "link" not in r.headers
            return events
        link = r.headers["link"]
        assert link.startswith(f"<{V1}?"), link
        assert link.endswith('>; rel="next"'), link
        assert f"cursor={cursor}" in link


# -- filters --------------------------------------------------------------------------------

FILTERS = [
    {"actor": "bob"},
    {"actor": "robot$acme+ci"},
    {"action": "tag.written"},
    {"action": "manifest.*"},
    {"action": "tag.*"},
    {"outcome": "deny"},
    {"outcome": "error"},
    {"since": "2025-03-01T12:00:00+00:00", "until": "2025-03-02T03:30:00+00:00"},
    {"repository": "prod/**"},
    {"actor": "alice", "action": "manifest.*", "repository": "prod/**", "outcome": "allow"},
    {"actor": "bob", "outcome": "deny", "since": "2025-03-01T06:00:00+00:00"},
    {"action": "auth.*", "until": "2025-03-02T00:00:00+00:00"},
    {"repository": "*/app", "since": "2025-03-01T00:00:00+00:00",
     "until": "2025-03-01T20:00:00+00:00", "outcome": "allow"},
]


@pytest.mark.parametrize("f", FILTERS, ids=lambda f: "&".join(f"{k}={v}" for k, v in f.items()))
def test_each_filter_alone_and_combined(client: TestClient[Any], auditor: dict[str, str],
                                        f: dict[str, str]) -> None:
    got = [e["seq"] for e in listed(client, auditor, limit=17, **f)]
    want = expected(client, **f)
    assert want, f"the seeded history has no event for {f}"
    assert got == want


GLOBS = {
    "prod/**": {"prod/app", "prod/x/y", "prod/x/y/z", "prod/xa/b/c", "prod/app2"},
    "prod/*": {"prod/app", "prod/app2"},
    "prod/*/y": {"prod/x/y"},
    "*/app": {"prod/app", "prodx/app", "staging/app"},
    "**/y": {"prod/x/y"},
    "prod/**/z": {"prod/x/y/z"},
    "prod_a/*": {"prod_a/b"},
    "prod/x*/**": {"prod/x/y", "prod/x/y/z", "prod/xa/b/c"},
    "*/*/y/**": {"prod/x/y/z"},
    "team-*/svc": {"team-1/svc", "team-2/svc"},
    "prod/app": {"prod/app"},
    "prod": set(),
}


@pytest.mark.parametrize(("glob", "names"), GLOBS.items(), ids=list(GLOBS))
def test_repository_globs_match_like_the_access_policy(
        client: TestClient[Any], auditor: dict[str, str], glob: str, names: set[str]) -> None:
    """``*`` stays inside one path part, ``**`` crosses them (``prod/**`` matches
    ``prod/x/y``), ``_`` is literal; the same answers as the policy's glob matching.
    """
    assert {n for n in REPOS if policy_glob_match(glob, n)} == names
    events = listed(client, auditor, limit=1000, repository=glob)
    assert {e["repository"] for e in events} == names
    assert [e["seq"] for e in events] == expected(client, repository=glob)
    r = client.get(f"{V1}/count", params={"repository": glob}, headers=auditor)
    assert r.json() == {"count": len(events)}


@pytest.mark.parametrize("params", [
    {"since": "yesterday"}, {"until": "2025-03-01T00:00:00"}, {"action": "auth.*.x"},
    {"repository": "prod/***"}, {"repository": "Prod App"}, {"outcome": "maybe"},
    {"since": "2025-03-02T00:00:00Z", "until": "2025-03-01T00:00:00Z"},
    {"cursor": "not-a-cursor"}, {"limit": "0"}, {"limit": "1001"}])
def test_bad_filters_are_refused(client: TestClient[Any], auditor: dict[str, str],
                                 params: dict[str, str]) -> None:
    r = client.get(V1, params=params, headers=auditor)
    assert r.status_code in (400, 422), r.text
    assert r.headers["content-type"].startswith("application/problem+json")


# -- pages ----------------------------------------------------------------------------------

def test_cursor_pages_have_no_duplicates_or_gaps(client: TestClient[Any],
                                                 auditor: dict[str, str]) -> None:
    """Newest first over many pages: every sequence number once, down to 1 (the chain has
    no gaps, so neither may the listing), while the requests add events on top.
    """
    events = listed(client, auditor, limit=23)
    seqs = [e["seq"] for e in events]
    assert len(seqs) > 3 * 23
    assert seqs == list(range(seqs[0], 0, -1))
    oldest_first = listed(client, auditor, limit=31, order="asc",
                          until=BEFORE_NOW)
    seeded = expected(client, until=BEFORE_NOW)[::-1]
    assert len(seeded) == SEEDED
    assert [e["seq"] for e in oldest_first] == seeded == list(range(seeded[0], seeded[-1] + 1))


def test_a_cursor_keeps_its_order_and_its_position(client: TestClient[Any],
                                                   auditor: dict[str, str]) -> None:
    first = client.get(V1, params={"limit": "5", "action": "tag.*"}, headers=auditor).json()
    cursor = first["next"]
    assert cursor
    r = client.get(V1, params={"limit": "5", "action": "tag.*", "cursor": cursor,
                               "order": "asc"}, headers=auditor)
    assert r.status_code == 422
    assert "desc" in r.json()["detail"]
    second = client.get(V1, params={"limit": "5", "action": "tag.*", "cursor": cursor},
                        headers=auditor).json()
    assert second["events"][0]["seq"] < first["events"][-1]["seq"]
    assert [e["seq"] for e in first["events"] + second["events"]] == expected(
        client, action="tag.*")[:10]


def test_events_carry_every_stored_field(client: TestClient[Any],
                                         auditor: dict[str, str]) -> None:
    event = listed(client, auditor, limit=1, actor="robot$acme+ci", until=BEFORE_NOW)[-1]
    row = next(r for r in stored(client) if r["seq"] == event["seq"])
    assert list(event) == list(chain.COLUMNS)
    assert event["time"] == chain.format_time(row["time"])
    assert event["detail"] == json.loads(row["detail"]) == {
        "n": event["detail"]["n"], "note": "seeded", "nested": {"k": [1, 2]}}
    assert {k: v for k, v in event.items() if k not in ("time", "detail")} == {
        k: row[k] for k in chain.COLUMNS if k not in ("time", "detail")}


# -- export ---------------------------------------------------------------------------------

def _plain(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in chain.COLUMNS}
    out["time"] = chain.format_time(row["time"])
    return out


def test_jsonl_export_is_every_stored_field_in_seq_order(client: TestClient[Any],
                                                         auditor: dict[str, str]) -> None:
    r = client.get(f"{V1}/export", params={"format": "jsonl", "actor": "alice"},
                   headers=auditor)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert "content-length" not in r.headers  # streamed, not built whole
    rows = [row for row in stored(client) if row["actor"] == "alice"]
    want = b"".join(json.dumps({**_plain(row), "detail": json.loads(row["detail"])},
                               separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
                    for row in rows)
    assert r.content == want
    for line in r.content.splitlines():  # an export can be re-verified outside dtr
        event = json.loads(line)
        claimed = event.pop("hash")
        assert hashlib.sha256(rfc8785.dumps(event)).hexdigest() == claimed


def test_csv_export_has_the_column_header_and_one_row_per_event(
        client: TestClient[Any], auditor: dict[str, str]) -> None:
    r = client.get(f"{V1}/export", params={"format": "csv", "repository": "prod/**",
                                           "until": BEFORE_NOW}, headers=auditor)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert 'filename="audit.csv"' in r.headers["content-disposition"]
    rows = [_plain(row) for row in stored(client)
            if policy_glob_match("prod/**", row["repository"])]
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")
    out.writerow(chain.COLUMNS)
    out.writerows([[row[k] for k in chain.COLUMNS] for row in rows])
    assert r.content == buf.getvalue().encode()
    parsed = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(p["seq"]) for p in parsed] == [row["seq"] for row in rows]
    assert len(parsed) == client.get(f"{V1}/count", params={
        "repository": "prod/**", "until": BEFORE_NOW}, headers=auditor).json()["count"]


class CountingDatabase:
    """A ``Database`` that records how many rows each read transaction returned."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.reads: list[int] = []

    async def run(self, fn: Callable[[Connection], Any], *, write: bool = True) -> Any:
        result = await self.db.run(fn, write=write)
        self.reads.append(len(result) if isinstance(result, list) else -1)
        return result


def test_an_export_reads_one_page_at_a_time(client: TestClient[Any]) -> None:
    """The export iterator holds one page: each chunk is one read of at most ``page`` rows,
    made only when the previous chunk was consumed.
    """
    counting = CountingDatabase(client.app.state.security.db)
    flt = q.AuditFilter.parse(until=BEFORE_NOW)

    async def consume() -> tuple[list[int], list[list[int]]]:
        chunks: AsyncIterator[bytes] = export(counting, flt, "jsonl",  # type: ignore[arg-type]
                                              page=50)
        lines_per_chunk, reads_seen = [], []
        async for chunk in chunks:
            reads_seen.append(list(counting.reads))
            lines_per_chunk.append(chunk.count(b"\n"))
        return lines_per_chunk, reads_seen

    lines, reads = client.blocking_portal.call(consume)
    assert sum(lines) == SEEDED
    assert lines == [50, 50, 50, 50, 40]
    assert [len(r) for r in reads] == [1, 2, 3, 4, 5]  # one read per chunk, lazily
    assert max(counting.reads) <= 50


# -- verify ---------------------------------------------------------------------------------

def test_verify_then_tamper(client: TestClient[Any], auditor: dict[str, str],
                            settings_tree: dict[str, Any], tmp_path: Path) -> None:
    r = client.get(f"{V1}/verify", headers=auditor)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["ok"] is True, report
    assert report["problem"] is None
    assert report["first_seq"] == 1
    assert report["checked"] >= SEEDED

    run(client, lambda c: c.execute(update(AuditEvent).where(AuditEvent.seq == 77)
                                    .values(actor="mallory")))
    report = client.get(f"{V1}/verify", headers=auditor).json()
    assert report["ok"] is False
    assert report["problem"]["seq"] == 77
    assert report["problem"]["problem"] == "modified"
    assert report["checked"] == 76

    config = tmp_path / "dtr.yml"
    config.write_text(yaml.safe_dump(settings_tree))
    result = CliRunner().invoke(main, ["audit", "verify", "--local", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert "audit chain BROKEN at event 77: modified" in result.stdout
    client.blocking_portal.call(client.app.state.audit.flush)  # audit.verified is queued
    verified = list(listed(client, auditor, action="audit.verified"))
    assert [e["detail"]["ok"] for e in verified] == [False, True]
    assert verified[0]["detail"]["first_bad_seq"] == 77
    assert verified[0]["actor"] == "audrey"


def test_verify_local_passes_on_an_intact_log(client: TestClient[Any],
                                              settings_tree: dict[str, Any],
                                              tmp_path: Path) -> None:
    config = tmp_path / "dtr.yml"
    config.write_text(yaml.safe_dump(settings_tree))
    result = CliRunner().invoke(main, ["audit", "verify", "--local", "--config", str(config),
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["checked"] >= SEEDED


def test_checkpoints_are_listed_with_their_validity(client: TestClient[Any],
                                                    auditor: dict[str, str]) -> None:
    from dtr.app import checkpoint_keys  # noqa: PLC0415
    from dtr.audit.checkpoints import sign_checkpoint  # noqa: PLC0415

    keys = checkpoint_keys(client.app.state.security.keys)
    rows = {r["seq"]: r for r in stored(client)}
    ours = sorted(rows)[10::60][:3]
    run(client, lambda c: [sign_checkpoint(c, keys, n, rows[n]["hash"]) for n in ours])
    listed_marks: list[dict[str, Any]] = []
    cursor = None
    while True:  # pages of 2, oldest first
        r = client.get(f"{V1}/checkpoints", params={"limit": "2", **(
            {"cursor": cursor} if cursor else {})}, headers=auditor)
        assert r.status_code == 200, r.text
        listed_marks += r.json()["checkpoints"]
        cursor = r.json()["next"]
        if cursor is None:
            break
    seqs = [c["seq"] for c in listed_marks]
    assert seqs == sorted(set(seqs))
    assert set(ours) <= set(seqs)
    for mark in listed_marks:
        assert mark["valid"]
        assert mark["key_id"] == keys.kid
        if mark["seq"] in ours:
            assert mark["hash"] == rows[mark["seq"]]["hash"]
    newest = client.get(f"{V1}/checkpoints", params={"order": "desc", "limit": "1"},
                        headers=auditor).json()
    assert newest["checkpoints"][0]["seq"] >= seqs[-1]
    report = client.get(f"{V1}/verify", headers=auditor).json()
    assert report["ok"]
    assert report["checkpoints"] >= len(seqs)


# -- who may read -------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["", "/count", "/export", "/verify", "/checkpoints"])
def test_only_auditors_and_administrators_read_the_log(client: TestClient[Any],
                                                       path: str) -> None:
    admin = basic("admin", ADMIN_PW)
    assert client.post("/api/v1/users", json={"name": "dev", "password": "dev-password-123"},
                       headers=admin).status_code == 201
    assert client.post("/api/v1/orgs", json={"name": "devorg"},
                       headers=basic("dev", "dev-password-123")).status_code == 201
    r = client.get(f"{V1}{path}", headers=basic("dev", "dev-password-123"))
    assert r.status_code == 403, r.text
    assert client.get(f"{V1}{path}").status_code == 401
    assert client.get(f"{V1}{path}", headers=admin).status_code == 200


def test_http_client_follows_the_link_header(client: TestClient[Any],
                                             auditor: dict[str, str]) -> None:
    """A generic client that knows only RFC 8288 links reaches the same events."""
    seen: list[int] = []
    url: str | None = f"{V1}?limit=40&until={BEFORE_NOW}"
    while url:
        r = client.get(url, headers=auditor)
        seen += [e["seq"] for e in r.json()["events"]]
        link = r.headers.get("link")
        url = link[1:link.index(">")] if link else None
        if url:
            assert httpx.URL(url).params["until"] == BEFORE_NOW
    assert seen == expected(client, until=BEFORE_NOW)


def test_verify_while_events_are_appended(client: TestClient[Any],
                                          auditor: dict[str, str]) -> None:
    """A busy registry keeps appending while an auditor verifies: rows committed during the
    walk are not mistaken for rows added behind the chain head's back.
    """
    recorder = client.app.state.audit

    async def append_for_a_while() -> int:
        import asyncio  # noqa: PLC0415

        n = 0
        loop = asyncio.get_running_loop()
        stop = loop.time() + 3.0
        while loop.time() < stop:
            await recorder.emit(SecurityEvent("manifest.pulled", "allow", actor="busy"))
            n += 1
            await asyncio.sleep(0.001)
        return n

    future = client.blocking_portal.start_task_soon(append_for_a_while)
    reports = []
    while not future.done():
        reports.append(client.get(f"{V1}/verify", headers=auditor).json())
    assert future.result() > 100
    assert len(reports) > 3
    assert all(r["ok"] for r in reports), [r["problem"] for r in reports if not r["ok"]]


# -- the CLI against a live server --------------------------------------------------------


def test_the_cli_lists_exports_and_verifies_through_a_live_server(tmp_path: Path) -> None:
    """``dtr audit list|export|checkpoints|verify`` over HTTP as an auditor (a real
    ``dtr serve``), then a row tampered with in its SQLite file.
    """
    cli = click.Group("dtr", commands=[login, audit])
    env = {"DTR_CLI_CONFIG": str(tmp_path / "cli.json"), "DTR_CLI_URL": None,
           "DTR_CLI_TOKEN": None}

    def dtr(*args: str, code: int = 0, stdin: str | None = None) -> Any:
        result = CliRunner().invoke(cli, list(args), input=stdin, env=env)
        assert result.exit_code == code, (args, result.output, result.exception)
        return result

    with dtr_server(tmp_path / "srv", workers=1, auth=True) as server:
        admin = httpx.Client(base_url=server.url, auth=("admin", ADMIN_PASSWORD))
        for path, body in (("/api/v1/users", {"name": "audrey", "password": "audrey-pw-1234"}),
                           ("/api/v1/grants", {"subject": "user:audrey", "org": "*",
                                               "role": "auditor"}),
                           ("/api/v1/orgs", {"name": "acme"}), ("/api/v1/orgs", {"name": "prod"})):
            admin.post(path, json=body).raise_for_status()
        admin.close()
        dtr("login", server.url, "--username", "audrey", stdin="audrey-pw-1234\n")
        for _ in range(100):  # the group-commit writer records logins a moment later
            events = json.loads(dtr("audit", "list", "--limit", "1000", "--json").stdout)
            if any(e["action"] == "token.created" for e in events):
                break
        assert [e["seq"] for e in events] == list(range(events[0]["seq"], 0, -1))
        table = dtr("audit", "list", "--action", "org.*").stdout.splitlines()
        assert table[0].split() == ["SEQ", "TIME", "ACTOR", "ACTION", "OUTCOME", "TARGET",
                                    "CLIENT_IP", "REASON"]
        assert [line.split()[3] for line in table[1:]] == ["org.created", "org.created"]
        assert [line.split()[5] for line in table[1:]] == ["prod", "acme"]

        out = dtr("audit", "export", "--format", "jsonl", "--action", "org.*", "-o",
                  str(tmp_path / "orgs.jsonl"))
        assert "wrote 2 events" in out.stderr
        lines = (tmp_path / "orgs.jsonl").read_text().splitlines()
        assert [json.loads(x)["resource"] for x in lines] == ["acme", "prod"]
        dtr("audit", "export", "--format", "csv", "-o", str(tmp_path / "all.csv"))
        rows = list(csv.DictReader((tmp_path / "all.csv").open()))
        assert [int(r["seq"]) for r in rows] == list(range(1, len(rows) + 1))
        assert not list(tmp_path.glob(".*.part"))

        marks = json.loads(dtr("audit", "checkpoints", "--json").stdout)
        assert all(m["valid"] for m in marks)
        assert "audit chain OK" in dtr("audit", "verify").stdout

        db = sqlite3.connect(tmp_path / "srv" / "dtr.db")
        db.execute("UPDATE audit_event SET reason = 'edited' WHERE seq = 4")
        db.commit()
        db.close()
        broken = dtr("audit", "verify", code=1)
        assert "audit chain BROKEN at event 4: modified" in broken.stdout
        report = json.loads(dtr("audit", "verify", "--json", code=1).stdout)
        assert report["problem"]["seq"] == 4
