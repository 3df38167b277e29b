"""The policy decision point: pycasbin over ``policies/model.conf`` and the ``casbin_rule``
rows, with explained decisions, a per-version decision cache, polling for changes made by
other replicas, and an offline engine over files for decision tables.
Never imports api or core; writes go through ``dtr.policy.admin``, never through Casbin.

Casbin still decides every uncached request, but two of its per-call costs are paid once:
the matcher is parsed once per snapshot (pycasbin re-parses it with ``ast`` on every
``enforce_ex``), and each ``globMatch`` pattern is compiled once per engine (pycasbin
expands and compiles it on every call), so a decision on a repository never seen before
(every new repository's first token) costs a walk of the parsed matcher, not a parse.
And when the model's matcher uses the object only in a top-level
``globMatch(r.obj, p.obj)`` conjunct (as ``policies/model.conf`` does), Casbin's decision
depends on the repository only through *which* rules' globs it matches: decisions are then
also cached by that set of rules, so a new repository that matches the same grants as one
already decided (``acme/app-2`` after ``acme/app-1``) costs a few compiled glob matches.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import csv
import functools
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import casbin
from casbin.model import Model
from casbin.persist import Adapter
from casbin.util.log import disabled_logging
from wcmatch import glob as wcglob

from dtr.db.database import Database
from dtr.errors import Invalid, NotFound, Unavailable
from dtr.policy import admin
from dtr.policy.actions import (
    ALL_ACTIONS,
    ANONYMOUS,
    ROLE_PREFIX,
    SYSTEM,
    SYSTEM_ACTIONS,
    find_cycle,
    load_roles,
    namespace,
    parse_subject,
    policy_dir,
    role_links,
)

log = logging.getLogger("dtr.policy")

Rule = tuple[str, ...]
CACHE_SIZE = 65536
_NO_DOMAIN = "\x00none"  # stands in for domains without rules (bounds Casbin's per-domain maps)
_ARITY = {"p": 5, "g": 3, "g2": 2}


@dataclass(frozen=True)
class Decision:
    """One explained decision.

    Attributes:
        allowed: the answer.
        subject: who asked (``user:alice``, ``robot:…``, ``anonymous``).
        domain: the org asked in (``*`` for system actions).
        object: the repository path, org name, or ``*``.
        action: what was asked.
        rule: the matched ``p`` line (sub, dom, obj, act, eft): the deny rule for a denial,
            an allow rule for an allowed request, None when no grant matched.
        chain: the path from the subject to the action through the rule, e.g.
            ``("user:alice", "team:acme/devs", "role:developer", "push")``.
        reason: one sentence for humans (and the audit log).
    """

    allowed: bool
    subject: str
    domain: str
    object: str
    action: str
    rule: tuple[str, ...] | None
    chain: tuple[str, ...]
    reason: str

    @property
    def line(self) -> str:
        """The matched rule as a policy line (``p, user:alice, acme, acme/**,
        role:developer, allow``), ``""`` when no grant matched (the audit log's ``rule``).
        """
        return "" if self.rule is None else rule_line(self.rule)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists for tuples)."""
        return {"allowed": self.allowed, "subject": self.subject, "domain": self.domain,
                "object": self.object, "action": self.action,
                "rule": None if self.rule is None else list(self.rule),
                "chain": list(self.chain), "reason": self.reason}


class _RowsAdapter(Adapter):  # type: ignore[misc]
    """Feeds already-read rows into a Casbin model (read-only: Casbin never writes)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = rules

    def load_policy(self, model: Any) -> None:
        for ptype, *values in self.rules:
            model.model[ptype[0]][ptype].policy.append(list(values))


def _well_formed(rules: Iterable[Rule]) -> list[Rule]:
    good = []
    for rule in rules:
        arity = _ARITY.get(rule[0]) if rule else None
        if arity is None or len(rule) != arity + 1 or (rule[0] == "p"
                                                       and rule[5] not in ("allow", "deny")):
            log.warning("ignoring malformed policy line %r", rule)
            continue
        good.append(rule)
    return good


class _Enforcer(casbin.Enforcer):  # type: ignore[misc]
    """A Casbin enforcer that parses its matcher once.

    pycasbin's ``enforce_ex`` builds a new ``SimpleEval`` (an ``ast.parse`` of the matcher)
    on every call; the parsed expression only depends on the matcher text, so it is kept
    per text and handed the call's functions. Only used under ``_Snapshot._lock``.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._expressions: dict[str, Any] = {}

    def _get_expression(self, expr: str, functions: Any = None) -> Any:
        parsed = self._expressions.get(expr)
        if parsed is None:
            parsed = casbin.Enforcer._get_expression(expr, functions)
            if len(self._expressions) < 64:  # one matcher in dtr's model; bounded anyway
                self._expressions[expr] = parsed
        else:
            parsed.functions = functions
        return parsed


class _Snapshot:
    """One policy version compiled: a Casbin enforcer, its ``p`` rules indexed by (domain,
    subject), and the links the explanation walks. Immutable after construction except for
    Casbin's lazy role maps and the swapped rule list, which ``_lock`` guards.
    """

    def __init__(self, version: int, rules: Sequence[Rule], model_text: str,
                 cache_size: int, glob: Callable[[str, str], bool]) -> None:
        self.version = version
        rules = _well_formed(rules)
        self.count = len(rules)
        disabled_logging()  # Casbin logs every loaded rule at INFO; dtr logs a summary
        model = Model()
        model.load_model_from_text(model_text)
        self._enforcer = _Enforcer(model, _RowsAdapter(rules))
        self._enforcer.add_function("globMatch", glob)
        # Casbin's domain role manager defaults to an equality "pattern" function, which makes
        # building a domain's role map quadratic in its links; dtr has no patterns.
        self._enforcer.add_named_matching_func("g", None)
        self._assertion = self._enforcer.model.model["p"]["p"]
        self._all = self._assertion.policy
        self._index: dict[tuple[str, str], list[tuple[int, list[str]]]] = {}
        for i, p in enumerate(self._all):
            self._index.setdefault((p[1], p[0]), []).append((i, p))
        self._teams: dict[tuple[str, str], list[str]] = {}
        self._parents: dict[str, list[str]] = {}
        for rule in rules:
            if rule[0] == "g":
                self._teams.setdefault((rule[3], rule[1]), []).append(rule[2])
            elif rule[0] == "g2":
                self._parents.setdefault(rule[1], []).append(rule[2])
        self._domains = {dom for dom, _ in self._index} | {dom for dom, _ in self._teams}
        members = self._enforcer.get_role_manager()
        for dom in self._domains:  # build each domain's role map now, off the event loop
            members.has_link(_NO_DOMAIN, _NO_DOMAIN, dom)
        self._lock = threading.Lock()
        self._glob = glob
        self._by_match: dict[tuple[str, str, tuple[int, ...], str], bool] | None = (
            {} if _object_only_in_glob(self._enforcer.model) else None)
        self._by_match_size = cache_size
        self.allowed = functools.lru_cache(maxsize=cache_size)(self._allowed)

    def _candidates(self, subject: str, domain: str) -> list[list[str]]:
        """The ``p`` rules the matcher could accept, in policy order: those of the subject,
        its teams in ``domain`` and ``anonymous``, in ``domain`` or system-wide. A superset of
        what ``g(r.sub, p.sub, r.dom) || p.sub == "anonymous"`` admits, so Casbin still
        decides; it only skips rules that cannot match.
        """
        return [p for _, p in self._indexed_candidates(subject, domain)]

    def _indexed_candidates(self, subject: str, domain: str) -> list[tuple[int, list[str]]]:
        """:meth:`_candidates` with each rule's position in the policy."""
        subjects = {subject, ANONYMOUS}
        queue = [subject]
        while queue:
            for team in self._teams.get((domain, queue.pop()), ()):
                if team not in subjects:
                    subjects.add(team)
                    queue.append(team)
        found = [hit for dom in {domain, SYSTEM} for sub in subjects
                 for hit in self._index.get((dom, sub), ())]
        return sorted(found, key=lambda hit: hit[0])

    def enforce(self, subject: str, domain: str, obj: str, action: str) -> tuple[bool, Rule]:
        """Casbin's ``enforce_ex`` over the rules that could match."""
        return self._enforce(subject, domain, obj, action, self._candidates(subject, domain))

    def _enforce(self, subject: str, domain: str, obj: str, action: str,
                 rules: list[list[str]]) -> tuple[bool, Rule]:
        """Casbin's ``enforce_ex`` with only ``rules`` loaded (a superset of those that
        can match).
        """
        if not rules:
            return False, ()
        dom = domain if domain in self._domains else _NO_DOMAIN
        with self._lock:
            self._assertion.policy = rules
            try:
                ok, rule = self._enforcer.enforce_ex(subject, dom, obj, action)
            finally:
                self._assertion.policy = self._all
        return bool(ok), tuple(rule)

    def _allowed(self, subject: str, domain: str, obj: str, action: str) -> bool:
        if action not in ALL_ACTIONS:
            return False
        if self._by_match is None:
            return self.enforce(subject, domain, obj, action)[0]
        # Only the rules whose glob matches ``obj`` can match (the matcher is a conjunction
        # with ``globMatch(r.obj, p.obj)``, and uses the object nowhere else), so Casbin's
        # answer is the same for every object matching the same rules.
        hits = [(i, p) for i, p in self._indexed_candidates(subject, domain)
                if self._glob(obj, p[2])]
        key = (subject, domain, tuple(i for i, _ in hits), action)
        known = self._by_match.get(key)
        if known is None:
            known = self._enforce(subject, domain, obj, action, [p for _, p in hits])[0]
            if len(self._by_match) >= self._by_match_size:
                self._by_match.clear()
            self._by_match[key] = known
        return known

    def subject_path(self, subject: str, target: str, domain: str) -> list[str]:
        """``subject`` → … → ``target`` through team membership in ``domain``."""
        if subject == target:
            return [subject]
        if target == ANONYMOUS:
            return [subject, ANONYMOUS]
        return _bfs(subject, target, lambda s: self._teams.get((domain, s), ()))

    def action_path(self, action: str, target: str) -> list[str]:
        """``target`` (a role or the action) → … → ``action`` through role definitions."""
        return list(reversed(_bfs(action, target, lambda a: self._parents.get(a, ()))))


def _object_only_in_glob(model: Model) -> bool:
    """True if the matcher is a conjunction with a ``globMatch(r.obj, p.obj)`` term and
    mentions ``r.obj`` nowhere else: then a decision depends on the object only through
    which rules' globs match it. Any other shape (or a matcher that does not parse) is
    False, and every uncached decision goes to Casbin with all candidate rules.
    """
    try:
        text = model.model["m"]["m"].value
        # pycasbin's own rewrite to Python (``CoreEnforcer._get_expression``)
        text = re.sub(r"!(?!=)", "not ", text.replace("&&", "and").replace("||", "or"))
        tree = ast.parse(text, mode="eval").body
    except (KeyError, AttributeError, SyntaxError):
        return False
    if not (isinstance(tree, ast.BoolOp) and isinstance(tree.op, ast.And)):
        return False

    def is_glob_term(node: ast.expr) -> bool:
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "globMatch" and not node.keywords
                and [ast.unparse(a) for a in node.args] == ["r_obj", "p_obj"])

    def mentions_object(node: ast.expr) -> bool:
        return any(isinstance(n, ast.Name) and n.id == "r_obj" for n in ast.walk(node))

    globs = [v for v in tree.values if is_glob_term(v)]
    others = [v for v in tree.values if not is_glob_term(v)]
    return len(globs) >= 1 and not any(mentions_object(v) for v in others)


def _bfs(start: str, goal: str, nxt: Any) -> list[str]:
    prev: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = [node]
            while (parent := prev[path[-1]]) is not None:
                path.append(parent)
            return path[::-1]
        for n in nxt(node):
            if n not in prev:
                prev[n] = node
                queue.append(n)
    return [start, goal]


def rule_line(rule: Sequence[str]) -> str:
    """A ``p`` rule's fields (sub, dom, obj, act, eft) as its policy line."""
    return "p, " + ", ".join(rule)


class _Evaluator:
    """Decisions over the current snapshot (shared by the live and the offline engine)."""

    _snapshot: _Snapshot

    @property
    def version(self) -> int:
        """The policy version decisions are made on (-1 before the first load)."""
        return self._snapshot.version

    @staticmethod
    def _domain(obj: str, action: str, domain: str | None) -> str:
        if domain is not None:
            return domain
        return SYSTEM if action in SYSTEM_ACTIONS else namespace(obj)

    def decide(self, subject: str, obj: str, action: str, domain: str | None = None) -> Decision:
        """Decide and explain (not cached; use :meth:`allowed` on hot paths).

        Args:
            subject: ``user:<name>``, ``robot:<name>`` or ``anonymous``.
            obj: the repository path, the org name (org actions) or ``*`` (system actions).
            action: one of ``ALL_ACTIONS``; anything else is denied.
            domain: the org; default ``namespace(obj)`` (``*`` for system actions).
        """
        snap = self._snapshot
        dom = self._domain(obj, action, domain)
        if action not in ALL_ACTIONS:
            return Decision(False, subject, dom, obj, action, None, (subject,),
                            f"unknown action {action!r}")
        ok, rule = snap.enforce(subject, dom, obj, action)
        if not rule:
            return Decision(False, subject, dom, obj, action, None, (subject,),
                            f"no grant gives {action} on {obj} to {subject}")
        chain = tuple(snap.subject_path(subject, rule[0], dom)
                      + snap.action_path(action, rule[3]))
        path = " → ".join(chain)
        if ok:
            reason = f"allowed by {rule_line(rule)!r} ({path})"
        else:
            reason = f"denied by {rule_line(rule)!r} ({path}); deny overrides allow"
        return Decision(ok, subject, dom, obj, action, rule, chain, reason)

    def allowed(self, subject: str, obj: str, action: str, domain: str | None = None) -> bool:
        """The decision alone, cached per policy version (LRU) — the hot path."""
        return self._snapshot.allowed(subject, self._domain(obj, action, domain), obj, action)

    def granted(self, subject: str, repository: str, actions: Iterable[str]) -> tuple[str, ...]:
        """The subset of ``actions`` allowed on ``repository`` (order kept, no duplicates)."""
        return tuple(a for a in dict.fromkeys(actions) if self.allowed(subject, repository, a))


def _wcmatch_pattern(pattern: str) -> str:
    """The pattern rewrite of pycasbin 2.8's ``glob_match`` (``casbin.util.builtin_operators``):
    a leading ``*/`` loses its star, ``**`` stays only as a whole path component (other runs
    of stars become one), and a trailing ``/**`` also matches the path without it.
    """
    if pattern.startswith("*/"):
        pattern = pattern[1:]
    parts = [part if part == "**" else re.sub(r"\*{2,}", "*", part)
             for part in pattern.split("/")]
    result = "/".join(parts)
    if result.endswith("/**"):
        result = "{" + result[:-3] + "," + result + "}"
    return result


def _memo_glob(size: int) -> Callable[[str, str], bool]:
    """Casbin's globMatch with each pattern compiled once.

    pycasbin's ``glob_match(string, pattern)`` rewrites, brace-expands and compiles the
    pattern on every call (~50 us), and a memo keyed by (string, pattern) misses for every
    new repository. Here the compiled matcher is memoised per pattern (the patterns are the
    policy's, a few hundred at most), so a new repository costs one regex match per
    candidate rule. The memo outlives policy reloads (one per engine).
    """
    @functools.lru_cache(maxsize=size)
    def matcher(pattern: str) -> Callable[[str], bool]:
        compiled = wcglob.compile(_wcmatch_pattern(pattern),
                                  flags=wcglob.GLOBSTAR | wcglob.BRACE)
        return compiled.match

    def glob_match(string: str, pattern: str) -> bool:
        return bool(matcher(pattern)(string))

    return glob_match


def _model_text(model_path: Path | None) -> str:
    return (model_path or policy_dir() / "model.conf").read_text(encoding="utf-8")


class OfflineEngine(_Evaluator):
    """Decisions over given rules, without a database (decision tables, ``--offline``).

    Args:
        rules: Casbin lines as tuples (``("p", sub, dom, obj, act, eft)``, ``("g", …)``,
            ``("g2", …)``), taken as they are.
        model_path: the model (default ``policies/model.conf``).
        cache_size: decisions cached by :meth:`allowed`.
    """

    def __init__(self, rules: Sequence[Rule], *, model_path: Path | None = None,
                 cache_size: int = CACHE_SIZE) -> None:
        self.rules = list(rules)
        self._snapshot = _Snapshot(0, self.rules, _model_text(model_path), cache_size,
                                   _memo_glob(cache_size))

    @classmethod
    def from_files(cls, policy_csv: Path, *, model_path: Path | None = None,
                   roles_path: Path | None = None) -> OfflineEngine:
        """The built-in roles (``roles.yaml``) plus a checked policy CSV of ``p``/``g``/``g2``
        lines (``#`` comments allowed; custom roles are ``g2`` lines).

        Raises:
            Invalid: ``path:line: what is wrong``.
        """
        roles = load_roles(roles_path)
        rules: list[Rule] = [("g2", *link) for spec in roles.values() for link in role_links(spec)]
        lines: list[tuple[int, list[str]]] = []
        for number, text in enumerate(policy_csv.read_text(encoding="utf-8").splitlines(), 1):
            if text.strip() and not text.lstrip().startswith("#"):
                lines.append((number, [t.strip() for t in text.split(",")]))
        custom = {f[2].removeprefix(ROLE_PREFIX) for _, f in lines if f[0] == "g2" and len(f) > 2}
        for number, fields in lines:
            try:
                rules.append(_checked_line(fields, roles.keys(), custom))
            except (Invalid, NotFound) as exc:
                raise Invalid(f"{policy_csv}:{number}: {exc.message}", exc.detail) from exc
        graph: dict[str, list[str]] = {}
        for rule in rules:
            if rule[0] == "g2" and rule[1].startswith(ROLE_PREFIX):
                graph.setdefault(rule[2], []).append(rule[1])
        cycle = find_cycle(graph)
        if cycle:
            raise Invalid(f"{policy_csv}: roles include each other: {' → '.join(cycle)}")
        return cls(rules, model_path=model_path)


def _checked_line(fields: list[str], builtin: Iterable[str], custom: set[str]) -> Rule:
    kind, values = fields[0], fields[1:]
    if kind not in _ARITY or len(values) != _ARITY[kind]:
        raise Invalid(f"expected 'p, sub, org, glob, role, effect', 'g, member, team, org' or "
                      f"'g2, action-or-role, role', got {', '.join(fields)!r}")
    known = set(builtin) | custom
    if kind == "p":
        _, act = admin.check_grant(values[0], values[1], values[2], values[3], values[4],
                                   known.__contains__)
        return ("p", values[0], values[1], values[2], act, values[4])
    if kind == "g":
        member, team = parse_subject(values[0]), parse_subject(values[1])
        if member.kind not in ("user", "robot") or team.kind != "team" or team.org != values[2]:
            raise Invalid("a g line is 'g, user:… or robot:…, team:<org>/<team>, <org>'")
        return ("g", *values)
    target = values[1].removeprefix(ROLE_PREFIX)
    child = values[0].removeprefix(ROLE_PREFIX)
    if not values[1].startswith(ROLE_PREFIX) or target in builtin:
        raise Invalid(f"g2 lines define custom roles (role:<name>); {values[1]!r} is not one")
    if values[0] not in ALL_ACTIONS and (not values[0].startswith(ROLE_PREFIX)
                                         or child not in known):
        raise Invalid(f"{values[0]!r} is neither an action nor a role:<name> that exists")
    return ("g2", *values)


class PolicyEngine(_Evaluator):
    """The live policy of one process: seeded and loaded at start, reloaded when
    ``policy_state.version`` changes (polled every ``refresh_seconds``).

    Args:
        db: the metadata database.
        refresh_seconds: polling period; 0 turns polling off (call :meth:`refresh`).
        model_path: the Casbin model (default ``policies/model.conf``).
        roles_path: the built-in roles (default ``policies/roles.yaml``).
        cache_size: decisions cached per policy version by :meth:`allowed`.
        version_reader: a cheap read of ``policy_state.version`` (the fast read path), used
            to skip the reload transaction when nothing changed.
    """

    def __init__(self, db: Database, *, refresh_seconds: float = 2.0,
                 model_path: Path | None = None, roles_path: Path | None = None,
                 cache_size: int = CACHE_SIZE,
                 version_reader: Callable[[], Awaitable[int]] | None = None) -> None:
        self.db = db
        self._read_version = version_reader
        self.refresh_seconds = refresh_seconds
        self.roles_path = roles_path
        self._model = _model_text(model_path)
        self._cache_size = cache_size
        self._glob = _memo_glob(cache_size)
        self._snapshot = _Snapshot(-1, [], self._model, cache_size, self._glob)
        self._refresh_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def from_files(policy_csv: Path, *, model_path: Path | None = None,
                   roles_path: Path | None = None) -> OfflineEngine:
        """An :class:`OfflineEngine` over files (see :meth:`OfflineEngine.from_files`)."""
        return OfflineEngine.from_files(policy_csv, model_path=model_path,
                                        roles_path=roles_path)

    async def start(self) -> None:
        """Seed the built-in roles (idempotent, safe across replicas), load the policy and
        start polling.

        Raises:
            Invalid: roles.yaml is broken.
            Unavailable: the database cannot be reached.
        """
        await self.db.run(functools.partial(admin.sync_builtin_roles, roles=
                                            load_roles(self.roles_path)), write=True)
        async with self._refresh_lock:
            await self._load()
        if self.refresh_seconds > 0 and self._task is None:
            self._task = asyncio.create_task(self._poll(), name="dtr-policy-refresh")

    async def close(self) -> None:
        """Stop polling."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def refresh(self) -> bool:
        """Reload if ``policy_state.version`` changed; True when it did.

        Raises:
            Unavailable: the database cannot be reached (the last policy stays in force).
        """
        # the common case (nothing changed) without a transaction or a thread hop
        if (self._read_version is not None
                and await self._read_version() == self._snapshot.version):
            return False
        async with self._refresh_lock:
            version = await self.db.run(admin.read_version, write=False)
            if version == self._snapshot.version:
                return False
            await self._load()
            return True

    async def _load(self) -> None:
        began = time.perf_counter()
        version, rules = await self.db.run(admin.read_rules, write=False)
        snap = await asyncio.to_thread(_Snapshot, version, rules, self._model, self._cache_size,
                                       self._glob)
        self._snapshot = snap  # the old snapshot and its decision cache go with it
        log.info("policy version %d loaded: %d rules in %.1f ms", version, snap.count,
                 (time.perf_counter() - began) * 1000)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except Unavailable as exc:
                log.warning("policy refresh failed, keeping version %d: %s", self.version, exc)
            except Exception:
                log.exception("policy refresh failed, keeping version %d", self.version)


class Decider(Protocol):
    """Anything that decides: :class:`PolicyEngine` or :class:`OfflineEngine`."""

    def decide(self, subject: str, obj: str, action: str,
               domain: str | None = None) -> Decision:
        """See :meth:`PolicyEngine.decide`."""
        ...


@dataclass(frozen=True)
class Mismatch:
    """A decision-table row the policy answers differently."""

    line: int
    subject: str
    domain: str
    object: str
    action: str
    expected: str
    got: str
    reason: str


def load_table(path: Path) -> list[dict[str, str]]:
    """Read a decision-table CSV (header row; ``#`` lines and blank lines skipped); each row
    also gets ``line`` = its line number in the file.
    """
    text = path.read_text(encoding="utf-8").splitlines()
    kept = [(n, t) for n, t in enumerate(text, 1) if t.strip() and not t.lstrip().startswith("#")]
    reader = csv.DictReader([t for _, t in kept], skipinitialspace=True)
    return [{**{k: (v or "").strip() for k, v in row.items()}, "line": str(kept[i + 1][0])}
            for i, row in enumerate(reader)]


def check_table(engine: Decider, rows: Iterable[Mapping[str, str]]) -> list[Mismatch]:
    """Run a decision table: rows with ``subject``, ``repository`` (or ``object``),
    ``action``, ``expected`` (allow|deny) and optionally ``domain`` and ``line``.

    Returns:
        The rows the engine answers differently, with the decision's reason.

    Raises:
        Invalid: a row lacks a field or ``expected`` is not allow or deny.
    """
    out = []
    for index, row in enumerate(rows, 1):
        line = int(row.get("line") or index)
        obj = row.get("repository") or row.get("object") or ""
        expected = (row.get("expected") or "").strip().lower()
        if not row.get("subject") or not obj or not row.get("action") or expected not in (
                "allow", "deny"):
            raise Invalid(f"row {line}: needs subject, repository, action and expected "
                          f"allow|deny, got {dict(row)!r}")
        decision = engine.decide(row["subject"], obj, row["action"], row.get("domain") or None)
        got = "allow" if decision.allowed else "deny"
        if got != expected:
            out.append(Mismatch(line, decision.subject, decision.domain, obj, decision.action,
                                expected, got, decision.reason))
    return out
