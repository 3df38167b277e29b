"""The auditor persona (``auditor`` role on ``*, **``): reads the audit log — list, count,
export, verify, checkpoints — and everything else an auditor may read, and changes nothing:
every route that writes answers 403 (or 404 / an insufficient scope) except the few that
act on the caller's own account, which any signed-in user has.

The requests themselves run in ``test_admin_personas.py`` / ``test_oci_personas.py`` (the
table's ``auditor`` column); these tests hold the table to the role's promise and follow
an auditor through the audit log of the persona world.
"""

from __future__ import annotations

import csv
import io
import json
import time

from tests.integration.personas.conftest import SERVICE, World, load_table

V1 = "/api/v1"
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
SELF_SERVICE = {
    ("auth", "POST", "/auth/token", ""): "a registry token (pull only: see below)",
    ("admin", "PATCH", "/api/v1/users/{name:str}", "self"): "their own password",
    ("admin", "POST", "/api/v1/tokens", ""): "their own personal access token",
    ("admin", "DELETE", "/api/v1/tokens/{token_id:str}", ""): "revoking their own token",
    ("admin", "POST", "/api/v1/auth/logout", ""): "ending their own session (422 here)",
}
"""Writes any signed-in user may make on their own behalf (the reader persona has the same
cells): the auditor role adds none."""
REFUSED = {"403", "404", "scope"}
READ_ONLY_POSTS = {"/api/v1/authz/check"}
"""POSTs that change nothing (a decision table is evaluated): auditors may ask them about
anyone, as they may read every grant."""


def test_the_auditor_changes_nothing() -> None:
    """Every route that writes refuses the auditor, but the self-service ones."""
    wrong = []
    for row in load_table():
        key = (row.surface, row.method, row.path, row.case)
        if (row.method not in MUTATING or row.path in READ_ONLY_POSTS
                or (row.path.endswith("{rest:path}") and row.expect["auditor"] == "404")):
            continue
        cell = row.expect["auditor"]
        if key in SELF_SERVICE:
            assert cell == row.expect["reader"], (key, cell)
            continue
        if cell not in REFUSED:
            wrong.append((key, cell))
    assert not wrong, f"writes the auditor may make: {wrong}"


def test_the_auditor_reads_the_audit_log_and_only_they_and_the_admin_do() -> None:
    rows = [r for r in load_table() if r.path.startswith(f"{V1}/audit")]
    assert {r.path for r in rows} == {f"{V1}/audit{s}" for s in
                                      ("", "/count", "/export", "/verify", "/checkpoints")}
    for row in rows:
        assert row.method == "GET"
        readers = {p for p, cell in row.expect.items() if cell == "ok"}
        assert readers == {"admin", "auditor"}, (row.path, readers)


def test_the_auditor_follows_the_world_in_the_audit_log(world: World) -> None:
    """The seeded pushes (by the administrator) and the personas' refused calls are in the
    log, the export holds them, the chain verifies, the checkpoints are signed.
    """
    auth = world.credentials("auditor")
    r = world.client.get(f"{V1}/audit", params={"repository": "acme/**",
                                                 "action": "manifest.*", "limit": "1000"},
                         headers=auth)
    assert r.status_code == 200, r.text
    pushed = {(e["repository"], e["action"]) for e in r.json()["events"]}
    assert {("acme/app", "manifest.pushed"), ("acme/base", "manifest.pushed")} <= pushed
    count = world.client.get(f"{V1}/audit/count", params={"repository": "acme/**",
                                                           "action": "manifest.*"},
                             headers=auth).json()["count"]
    assert count >= len(r.json()["events"])

    denied = world.client.get(f"{V1}/users", headers=world.credentials("helpless"))
    assert denied.status_code == 403
    for _ in range(200):  # denials are committed by the group-commit writer, a moment later
        if world.client.get(f"{V1}/audit/count", params={"outcome": "deny"},
                            headers=auth).json()["count"]:
            break
        time.sleep(0.02)
    export = world.client.get(f"{V1}/audit/export", params={"format": "csv",
                                                             "outcome": "deny"},
                              headers=auth)
    assert export.status_code == 200, export.text
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert rows
    assert all(row["outcome"] == "deny" for row in rows)
    jsonl = world.client.get(f"{V1}/audit/export", params={"repository": "acme/app"},
                             headers=auth)
    events = [json.loads(line) for line in jsonl.text.splitlines()]
    assert events
    assert all(e["repository"] == "acme/app" for e in events)
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)

    report = world.client.get(f"{V1}/audit/verify", headers=auth).json()
    assert report["ok"] is True, report
    marks = world.client.get(f"{V1}/audit/checkpoints", headers=auth).json()["checkpoints"]
    assert all(m["valid"] for m in marks)


def test_an_auditor_token_never_carries_push_or_delete(world: World) -> None:
    r = world.client.get("/auth/token", params={
        "service": SERVICE, "scope": "repository:acme/app:pull,push,delete"},
        headers=world.credentials("auditor", password=True))
    assert r.status_code == 200, r.text
    from joserfc import jwt  # noqa: PLC0415 - claims only; the signature is the server's

    token = jwt.decode(r.json()["token"], world.client.app.state.security.keys.signing)
    access = token.claims["access"]
    assert access == [{"type": "repository", "name": "acme/app", "actions": ["pull"]}]
