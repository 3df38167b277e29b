"""Benchmark the audit log's query API on PostgreSQL with one million events.

One run:

1. starts a PostgreSQL 15 on 127.0.0.1 (``tests/support/peers``), creates a database and
   migrates it;
2. bulk-loads ``--events`` (default 1,000,000) realistic events spread over ``--days``
   (default 60): pulls, pushes, tags, logins, tokens, denials with their matched rule,
   signature verdicts and admin changes, by a few thousand users and robots (a few busy,
   most occasional) on a few thousand repositories in nested organizations. Each row is
   built and chained with ``dtr.audit.chain`` (``row_of``, ``link_hash``) and loaded with
   ``COPY`` in batches; a checkpoint is signed with the registry key every 1000 events, so
   ``verify_chain`` is run on the result and must pass (its time is reported too);
3. starts a real ``dtr serve`` (2 workers) on that database, creates an auditor with a
   personal access token, and sends a fixed set of ``GET /api/v1/audit`` queries over HTTP:
   no filter, an actor, an action prefix, a repository glob, ``outcome=deny``, a time
   range, filters combined, and page 50 reached through cursors; ``--samples`` (default
   200) each, one at a time, the parameters of each query cycling through several
   variants (busy and rare actors, broad and narrow globs, time windows across the whole
   range) so no single lucky value is measured;
4. prints p50 / p95 / p99 latency per query and writes them into ``docs/performance.md``
   between the ``bench-audit`` markers (the text around them is kept).

Usage::

    uv run python scripts/bench_audit.py                 # the full run (~6 min), writes the doc
    uv run python scripts/bench_audit.py --events 100000 --samples 50 --out -   # smoke run

Exit status 1 if a request failed, the loaded chain does not verify, or (with
``--budget-ms``) a query's p95 is over the budget.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import Connection, update

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dtr.audit import chain  # noqa: E402
from dtr.audit.checkpoints import CheckpointKeys, sign_checkpoint  # noqa: E402
from dtr.audit.retention import ensure_partitions  # noqa: E402
from dtr.audit.verify import verify_chain  # noqa: E402
from dtr.auth.tokens import TokenKeys  # noqa: E402
from dtr.config import load_settings  # noqa: E402
from dtr.db.database import Database  # noqa: E402
from dtr.db.migrate import upgrade  # noqa: E402
from dtr.db.models import AuditHead  # noqa: E402
from dtr.events import SecurityEvent  # noqa: E402
from tests.support import peers  # noqa: E402

BEGIN = "<!-- bench-audit:start -->"
END = "<!-- bench-audit:end -->"
DOC = ROOT / "docs" / "performance.md"
BATCH = 20_000
CHECKPOINT_EVERY = 1000
PARTITION_DAYS = 7
AUDITOR = "auditor"
AUDITOR_PASSWORD = "auditor-bench-password-1"
UA = ("docker/27.3.1 go/go1.22.7 git-commit/41ca978 kernel/6.8.0 os/linux arch/amd64",
      "containerd/v1.7.22", "skopeo/1.16.1", "crane/0.20.2", "oras/1.2.0",
      "Helm/3.16.2", "cosign/v2.4.1 (linux; amd64)", "dtr-cli", "python-httpx/0.28.1",
      "kaniko/v1.23.2")


# -- the synthetic world ----------------------------------------------------------------------

@dataclass
class World:
    """Accounts, repositories and how often each acts or is touched (Zipf-like)."""

    rng: random.Random
    users: list[str] = field(default_factory=list)
    robots: list[str] = field(default_factory=list)
    repos: list[str] = field(default_factory=list)
    actors: list[str] = field(default_factory=list)
    actor_weights: list[float] = field(default_factory=list)
    repo_weights: list[float] = field(default_factory=list)

    @classmethod
    def build(cls, seed: int) -> World:
        rng = random.Random(seed)
        w = cls(rng)
        w.users = [f"user{i:04d}" for i in range(2000)]
        orgs = ["prod", "staging", "dev", "library", *[f"team-{i:02d}" for i in range(36)]]
        w.robots = [f"robot${org}+{name}" for org in orgs for name in ("ci", "deploy",
                                                                         "mirror")][:110]
        services = [f"svc{i:02d}" for i in range(40)]
        for org in orgs:
            if org in ("prod", "staging"):
                w.repos += [f"{org}/{s}/{c}" for s in services[:30]
                            for c in ("api", "worker", "web")]
            elif org == "library":
                w.repos += [f"library/{n}" for n in ("alpine", "debian", "ubuntu", "python",
                                                     "node", "golang", "nginx", "redis",
                                                     "postgres", "busybox")]
            else:
                w.repos += [f"{org}/{s}" for s in services[: rng.randint(10, 40)]]
        actors = w.users + w.robots
        rng.shuffle(actors)
        w.users = [a for a in actors if not a.startswith("robot$")]
        w.robots = [a for a in actors if a.startswith("robot$")]
        w.actors = actors
        w.actor_weights = [1.0 / (rank + 5) for rank in range(len(actors))]
        repos = list(w.repos)
        rng.shuffle(repos)
        w.repos = repos
        w.repo_weights = [1.0 / (rank + 3) ** 0.9 for rank in range(len(repos))]
        return w

    def actor(self) -> str:
        return self.rng.choices(self.actors, self.actor_weights)[0]

    def repo(self) -> str:
        return self.rng.choices(self.repos, self.repo_weights)[0]


ACTIONS: list[tuple[str, float]] = [
    ("manifest.pulled", 40.0), ("auth.token.issued", 14.0), ("auth.login", 10.0),
    ("manifest.pushed", 6.0), ("tag.written", 6.0), ("signature.accepted", 3.0),
    ("access.denied", 3.0), ("blob.mounted", 2.0), ("manifest.trusted", 2.0),
    ("manifest.pull.denied", 1.0), ("auth.token.rejected", 1.0), ("tag.deleted", 1.0),
    ("manifest.deleted", 0.5), ("blob.deleted", 0.5), ("tag.denied", 0.5),
    ("signature.rejected", 0.4), ("token.created", 0.3), ("robot.secret.regenerated", 0.1),
    ("grant.created", 0.1), ("grant.deleted", 0.05), ("team.member.added", 0.1),
    ("org.updated", 0.02), ("user.created", 0.02), ("policy.updated", 0.02),
    ("key.rotated", 0.005),
]
DENIALS = {"access.denied", "manifest.pull.denied", "auth.token.rejected", "tag.denied",
           "signature.rejected"}


def make_event(w: World, when: float) -> SecurityEvent:
    """One plausible event at ``when``."""
    rng = w.rng
    action = rng.choices([a for a, _ in ACTIONS], [p for _, p in ACTIONS])[0]
    actor = w.actor()
    kind = "robot" if actor.startswith("robot$") else "user"
    repo = w.repo() if not action.startswith(("auth.", "token.", "robot.", "grant.", "team.",
                                              "org.", "user.", "policy.", "key."))else ""
    outcome = "deny" if action in DENIALS else "allow"
    reason = rule = tag = digest = resource = ""
    detail: dict[str, Any] = {}
    method = "token" if repo else rng.choice(("password", "pat", "oidc", "robot_secret"))
    if action == "auth.login":
        if rng.random() < 0.06:
            outcome, reason = "deny", rng.choice(("bad_password", "unknown_account",
                                                  "disabled", "rate_limited"))
    elif action == "auth.token.issued":
        resource = f"repository:{w.repo()}:pull" + (",push" if rng.random() < .3 else "")
        detail = {"scopes": [resource], "expires_in": 300}
    elif action in ("access.denied", "manifest.pull.denied", "tag.denied"):
        reason = rng.choice(("no_grant", "deny_rule", "immutable_tag", "protected"))
        rule = f"deny: user:{actor} push {repo.split('/')[0]}/**" if reason == "deny_rule" \
            else ""
    if action.startswith(("manifest.", "tag.", "signature.")):
        tag = rng.choice(("latest", "v1", "v1.2.3", "main", f"build-{rng.randint(1, 9999)}"))
        digest = f"sha256:{rng.getrandbits(256):064x}"
    if action == "blob.mounted":
        digest = f"sha256:{rng.getrandbits(256):064x}"
        detail = {"from": w.repo()}
    if action.startswith(("grant.", "team.", "org.", "user.", "policy.", "key.", "robot.",
                          "token.")):
        resource = w.repo().split("/")[0]
        detail = {"by": actor}
    if rng.random() < 0.002:
        outcome, reason = "error", "unavailable"
    ip = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    return SecurityEvent(
        action=action, outcome=outcome,  # type: ignore[arg-type]
        actor_kind=kind, actor=actor, actor_id=f"{kind}:{actor}", method=method,
        reason=reason, client_ip=ip, user_agent=rng.choice(UA), resource=resource,
        token_id=f"{rng.getrandbits(64):016x}" if method in ("pat", "token") else "",
        detail=detail, time=when, org=repo.split("/")[0] if repo else "",
        repository=repo, tag=tag, digest=digest, rule=rule,
        request_id=f"{rng.getrandbits(64):016x}")


ROW_COLUMNS = list(chain.COLUMNS)


def chained_rows(w: World, n: int, start: float, span: float
                 ) -> Iterator[list[tuple[Any, ...]]]:
    """``n`` chained rows in batches of :data:`BATCH` (tuples in ``COLUMNS`` order)."""
    prev, batch = chain.GENESIS, []
    step = span / n
    for seq in range(1, n + 1):
        # commit order is not quite creation order: a few events are a little late
        jitter = -w.rng.random() * 2.0 if w.rng.random() < 0.05 else 0.0
        row = chain.row_of(make_event(w, start + seq * step + jitter))
        row["seq"], row["prev_hash"] = seq, prev
        row["hash"] = prev = chain.link_hash(row)
        batch.append(tuple(row[c] for c in ROW_COLUMNS))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def load(url: str, w: World, n: int, days: float, keys: CheckpointKeys,
               log: Any) -> tuple[float, str]:
    """Load ``n`` chained events, set the head, sign a checkpoint every 1000 events.

    The weekly partitions a registry running for ``days`` would have are made first
    (``dtr.audit.retention.ensure_partitions``), so ``COPY`` routes each row to its own.
    """
    span = days * 86400
    start = time.time() - span
    db = Database(url)
    try:
        when = dt.datetime.fromtimestamp(start - 60, dt.UTC)
        made = await db.run(lambda c: ensure_partitions(c, when, days=PARTITION_DAYS,
                                                        ahead=int(days // 7) + 2))
        log(f"  {len(made)} partitions")
    finally:
        await db.close()
    conn = await asyncpg.connect(asyncpg_dsn(url))
    t0 = time.perf_counter()
    loaded, hashes = 0, {}
    try:
        for batch in chained_rows(w, n, start, span):
            await conn.copy_records_to_table("audit_event", records=batch,
                                             columns=ROW_COLUMNS)
            loaded += len(batch)
            for row in batch:
                if row[0] % CHECKPOINT_EVERY == 0 or row[0] == n:
                    hashes[row[0]] = row[-1]
            if loaded % 100_000 == 0:
                log(f"  {loaded} events loaded ({time.perf_counter() - t0:.0f} s)")
        last = hashes[n]
        log("  ANALYZE")
        await conn.execute("ANALYZE audit_event")
    finally:
        await conn.close()
    db = Database(url)
    try:
        def finish(c: Connection) -> None:
            c.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=n, hash=last))
            for seq in sorted(hashes):
                sign_checkpoint(c, keys, seq, hashes[seq])

        await db.run(finish)
    finally:
        await db.close()
    return time.perf_counter() - t0, last


# -- the queries ------------------------------------------------------------------------------

def iso(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def query_set(w: World, start: float, span: float) -> dict[str, list[dict[str, str]]]:
    """The fixed queries, each with the parameter variants its samples cycle through."""
    rng = random.Random(7)
    actors = w.actors
    picks = [actors[r] for r in (0, 1, 3, 10, 30, 100, 300, 1000, 1500, 2000)]
    windows = []
    for _ in range(10):
        t = start + rng.random() * (span - 86400)
        windows.append({"since": iso(t), "until": iso(t + rng.choice((3600, 6 * 3600,
                                                                       86400)))})
    recent = iso(start + span - 7 * 86400)
    return {
        "no filter": [{}],
        "actor": [{"actor": a} for a in picks],
        "action prefix": [{"action": p} for p in ("auth.*", "manifest.*", "tag.*",
                                                   "signature.*", "grant.*", "org.*")],
        "repository glob": [{"repository": g} for g in (
            "prod/**", "team-07/*", "prod/svc03/**", "library/*", "staging/*/api",
            "dev/**", "*/svc01", "prod/*/worker")],
        "outcome=deny": [{"outcome": "deny"}, {"outcome": "error"}],
        "time range": windows,
        "combined": [
            {"actor": picks[1], "action": "manifest.*", "outcome": "allow", "since": recent},
            {"repository": "prod/**", "outcome": "deny", "action": "access.*"},
            {"actor": picks[4], "repository": "team-*/**", **windows[0]},
            {"action": "auth.*", "outcome": "deny", **windows[1]},
        ],
    }


@dataclass
class Result:
    name: str
    variants: int
    samples: list[float]
    errors: int = 0
    rows: int = 0

    def pct(self, q: float) -> float:
        data = sorted(self.samples)
        return data[min(len(data) - 1, round(q / 100 * (len(data) - 1)))] * 1000


def measure(client: httpx.Client, name: str, variants: list[dict[str, str]],
            samples: int, warmup: int = 5) -> Result:
    result = Result(name, len(variants), [])
    for i in range(warmup + samples):
        params = {**variants[i % len(variants)], "limit": "100"}
        t0 = time.perf_counter()
        r = client.get("/api/v1/audit", params=params)
        took = time.perf_counter() - t0
        if r.status_code != 200:
            result.errors += 1
            print(f"{name}: {r.status_code} {r.text[:200]}", file=sys.stderr)
            continue
        if i >= warmup:
            result.samples.append(took)
            result.rows += len(r.json()["events"])
    return result


def page_cursor(client: httpx.Client, params: dict[str, str], page: int) -> dict[str, str]:
    """The parameters of page ``page`` (1-based) of ``params``, reached through cursors
    (the last page when there are fewer: small smoke runs).
    """
    current = dict(params)
    for _ in range(page - 1):
        r = client.get("/api/v1/audit", params={**current, "limit": "100"})
        r.raise_for_status()
        nxt = r.json()["next"]
        if nxt is None:
            break
        current = {**params, "cursor": nxt}
    return current


def wait_until_allowed(client: httpx.Client, timeout: float = 30.0) -> None:
    """Every worker refreshes its policy within ``auth.policy_refresh_seconds``: wait until
    the auditor's grant is seen (a few requests in a row succeed).
    """
    deadline, streak = time.monotonic() + timeout, 0
    while streak < 10:
        if time.monotonic() > deadline:
            raise TimeoutError("the auditor grant did not reach every worker")
        ok = client.get("/api/v1/audit", params={"limit": "1"}).status_code == 200
        streak = streak + 1 if ok else 0
        if not ok:
            time.sleep(0.2)


# -- report -----------------------------------------------------------------------------------

def render(results: list[Result], info: dict[str, str]) -> str:
    lines = [BEGIN, "<!-- generated by scripts/bench_audit.py (make bench-audit); edit outside "
             "the markers -->", "",
             f"Run {info['date']} on {info['machine']}: {info['events']} events over "
             f"{info['days']} days on PostgreSQL {info['postgres']}, `dtr serve` with 2 "
             f"workers, one client sending one request at a time over HTTP/1.1 "
             f"keep-alive, `limit=100`, {info['samples']} samples per query (after 5 "
             "warm-up requests), parameters cycling through the variants listed.",
             "",
             "| query | variants | p50 ms | p95 ms | p99 ms | rows/page (mean) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        mean_rows = r.rows / len(r.samples) if r.samples else 0
        lines.append(f"| {r.name} | {r.variants} | {r.pct(50):.1f} | {r.pct(95):.1f} | "
                     f"{r.pct(99):.1f} | {mean_rows:.0f} |")
    lines += ["", f"Bulk load (chain built in Python, `COPY`): {info['load']}; "
              f"`verify_chain` over the whole log: {info['verify']}.", "", END]
    return "\n".join(lines) + "\n"


def write_report(path: Path, generated: str) -> None:
    """Replace the part of ``path`` between the markers (append it when missing)."""
    text = path.read_text() if path.exists() else "# Performance\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + generated + (("\n" + tail) if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + generated
    path.write_text(text)


# -- main -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--days", type=float, default=60.0)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=20261130)
    ap.add_argument("--out", default=str(DOC), help="Markdown file to update ('-': none)")
    ap.add_argument("--budget-ms", type=float, default=None,
                    help="fail (exit 1) when a query's p95 is over this many ms")
    ap.add_argument("--skip-verify", action="store_true",
                    help="do not run verify_chain on the loaded log")
    a = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    failed = False
    with contextlib.ExitStack() as stack:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dtr-bench-audit-")))
        pg = stack.enter_context(peers.postgres())
        url = pg.create_db("bench_audit")
        log(f"PostgreSQL on port {pg.port}; migrating")
        upgrade(url)
        settings = load_settings(env={}, overrides={"server": {"data_dir": str(data)},
                                                    "database": {"url": url}})
        token_keys = TokenKeys.load_or_create(settings.token_key_path)
        keys = CheckpointKeys(token_keys.signing, token_keys.kid, token_keys.verifying)
        world = World.build(a.seed)
        span = a.days * 86400
        log(f"loading {a.events} chained events")
        load_s, _ = asyncio.run(load(url, world, a.events, a.days, keys, log))
        log(f"loaded in {load_s:.0f} s")
        verify_text = "skipped"
        if not a.skip_verify:
            async def verify() -> tuple[bool, str, float]:
                db = Database(url)
                t0 = time.perf_counter()
                try:
                    report = await verify_chain(db, keys)
                finally:
                    await db.close()
                return report.ok, str(report.problem), time.perf_counter() - t0

            ok, problem, took = asyncio.run(verify())
            verify_text = f"{took:.0f} s ({a.events / took:,.0f} events/s), " + (
                "ok" if ok else f"FAILED: {problem}")
            log(f"verify_chain: {verify_text}")
            failed |= not ok
        start = time.time() - span
        queries = query_set(world, start, span)
        server = stack.enter_context(peers.dtr_server(data, workers=2, database_url=url,
                                                      auth=True))
        admin = httpx.Client(base_url=server.url, auth=("admin", peers.ADMIN_PASSWORD),
                             timeout=60)
        stack.callback(admin.close)
        for call in (("/api/v1/users", {"name": AUDITOR, "password": AUDITOR_PASSWORD}),
                     ("/api/v1/grants", {"subject": f"user:{AUDITOR}", "org": "*",
                                         "role": "auditor"})):
            admin.post(call[0], json=call[1]).raise_for_status()
        r = httpx.post(f"{server.url}/api/v1/tokens", json={"name": "bench"},
                       auth=(AUDITOR, AUDITOR_PASSWORD), timeout=60)
        r.raise_for_status()
        client = httpx.Client(base_url=server.url, timeout=60,
                              headers={"Authorization": f"Bearer {r.json()['secret']}"})
        stack.callback(client.close)
        wait_until_allowed(client)
        results = []
        for name, variants in queries.items():
            log(f"query: {name} ({len(variants)} variants)")
            results.append(measure(client, name, variants, a.samples))
        log("query: page 50 via cursor")
        deep = [page_cursor(client, p, 50) for p in ({}, {"repository": "prod/**"},
                                                     {"outcome": "deny"})]
        results.append(measure(client, "page 50 via cursor", deep, a.samples))
        pg_version = asyncio.run(_pg_version(url))
    info = {"date": time.strftime("%Y-%m-%d"), "events": f"{a.events:,}",
            "days": f"{a.days:g}", "samples": str(a.samples), "postgres": pg_version,
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python "
                       f"{platform.python_version()}",
            "load": f"{load_s:.0f} s", "verify": verify_text}
    text = render(results, info)
    print(text)
    if a.out != "-":
        write_report(Path(a.out), text)
        log(f"wrote {a.out}")
    failed |= any(r.errors for r in results)
    if a.budget_ms is not None:
        over = [r.name for r in results if r.pct(95) > a.budget_ms]
        if over:
            log(f"p95 over {a.budget_ms} ms: {', '.join(over)}")
            failed = True
    return 1 if failed else 0


async def _pg_version(url: str) -> str:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return str(await conn.fetchval("SHOW server_version")).split()[0]
    finally:
        await conn.close()


if __name__ == "__main__":
    sys.exit(main())
