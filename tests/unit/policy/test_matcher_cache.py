"""The pycasbin costs the policy engine avoids (``dtr/policy/enforcer.py``): the matcher is
parsed once per snapshot, each ``globMatch`` pattern is compiled once, with exactly
pycasbin's ``glob_match`` semantics, and decisions are cached by the set of rules whose
globs match (only for a matcher where that set decides). Decisions on repositories never
seen before stay Casbin's."""

from __future__ import annotations

import casbin
import pytest
from casbin.model import Model
from casbin.util.builtin_operators import glob_match as casbin_glob_match

from dtr.policy.enforcer import PolicyEngine, _memo_glob, _object_only_in_glob
from tests.policy.test_decisions import POLICY

PATTERNS = ["*", "**", "*/**", "acme/*", "acme/**", "acme/***", "a*/b", "acme/team/**",
            "*/app", "**/app", "acme/{a,b}", "acme/[ab]pp", "acme/?pp", "*/*/x", "acme/**/x",
            "acme", "", "acme/**/", "***", "a**b/c", "acme/app/**", "*/", "**/**"]
NAMES = ["acme", "acme/app", "acme/bpp", "acme/team/app", "acme/team/x", "other/app", "a/b",
         "ab/b", "acme/app/x", "x", "", "acme/a", "acme/{a,b}", "a/b/x", "acme/x", "aXb/c"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_compiled_patterns_match_like_pycasbin(pattern: str) -> None:
    glob = _memo_glob(100)
    for name in NAMES:
        assert glob(name, pattern) is casbin_glob_match(name, pattern), (name, pattern)


def test_the_matcher_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    parses = []
    real = casbin.Enforcer._get_expression

    def counting(expr: str, functions: object = None) -> object:
        parses.append(expr)
        return real(expr, functions)

    engine = PolicyEngine.from_files(POLICY)
    monkeypatch.setattr(casbin.Enforcer, "_get_expression", staticmethod(counting))
    answers = [engine.allowed("user:dave", f"acme/new-{i}", action)
               for i in range(50) for action in ("pull", "push", "delete")]
    assert len(parses) <= 1  # at most the first decision parsed (once per snapshot)
    assert len(set(answers)) == 2  # both answers occur: the parsed matcher still decides
    fresh = PolicyEngine.from_files(POLICY)  # a new snapshot, parsed anew
    assert [fresh.allowed("user:dave", f"acme/new-{i}", action)
            for i in range(50) for action in ("pull", "push", "delete")] == answers


# -- decisions cached by the set of matching rules ---------------------------------------------

SUBJECTS = ["user:root", "user:audrey", "user:rita", "user:dave", "user:mia", "user:olga",
            "user:nobody", "anonymous", "robot:robot$mirror", "robot:acme+ci"]
REPOS = ["acme/app", "acme/team/app", "acme/secret/x", "beta/web/a", "beta/web/a/b", "beta/x",
         "gamma/app", "gamma/other", "pub/lib", "pub/internal/x", "mixed/docs", "mixed/app",
         "zeta/new", "acme", "acme/a/b/c/d"]


def _names(policy_text: str) -> list[str]:
    """Subjects the fixture policy names, so every grant is exercised."""
    found = {f.strip() for line in policy_text.splitlines() if line.startswith("p,")
             for f in line.split(",")[1:2]}
    return sorted(found | set(SUBJECTS))


def test_match_set_cache_gives_casbins_decisions() -> None:
    """Every (subject, repository, action) the cache answers equals Casbin deciding over
    every candidate rule (``decide``: uncached, all rules loaded), fresh repositories and
    repeated ones alike."""
    engine = PolicyEngine.from_files(POLICY)
    assert engine._snapshot._by_match is not None  # policies/model.conf has the right shape
    subjects = _names(POLICY.read_text())
    for round_ in range(2):  # second round: answered from the caches
        for subject in subjects:
            for repo in REPOS + [f"{r}-{round_}" for r in REPOS]:
                for action in ("pull", "push", "delete", "repo:manage"):
                    want = engine.decide(subject, repo, action).allowed
                    assert engine.allowed(subject, repo, action) is want, (subject, repo, action)


def test_a_new_repository_matching_known_rules_skips_casbin(
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine = PolicyEngine.from_files(POLICY)
    calls = []
    snap = engine._snapshot
    real = snap._enforcer.enforce_ex

    def counting(*args: str) -> object:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(snap._enforcer, "enforce_ex", counting)
    first = [engine.allowed("user:dave", "acme/new-0", a) for a in ("pull", "push", "delete")]
    assert len(calls) == 3
    assert first == [True, True, False]
    rest = [engine.allowed("user:dave", f"acme/new-{i}", a)
            for i in range(1, 50) for a in ("pull", "push", "delete")]
    assert len(calls) == 3  # same matching rules: no Casbin call
    assert rest == first * 49
    engine.allowed("user:dave", "beta/web/new", "pull")  # other rules match: Casbin decides
    assert len(calls) == 4


@pytest.mark.parametrize(("matcher", "cached"), [
    ('g(r.sub, p.sub, r.dom) && globMatch(r.obj, p.obj) && g2(r.act, p.act)', True),
    # the object also decides elsewhere: the match set is not enough
    ('g(r.sub, p.sub, r.dom) && globMatch(r.obj, p.obj) && r.obj != "acme/x"', False),
    # the glob term is not a top-level conjunct
    ('g(r.sub, p.sub, r.dom) && (globMatch(r.obj, p.obj) || p.sub == "anonymous")', False),
    ('g(r.sub, p.sub, r.dom) || globMatch(r.obj, p.obj)', False),
    ('!globMatch(r.obj, p.obj) && g(r.sub, p.sub, r.dom)', False),
])
def test_match_set_cache_only_for_a_matcher_of_the_right_shape(matcher: str,
                                                                cached: bool) -> None:
    model = Model()
    model.load_model_from_text(
        "[request_definition]\nr = sub, dom, obj, act\n[policy_definition]\n"
        "p = sub, dom, obj, act, eft\n[role_definition]\ng = _, _, _\ng2 = _, _\n"
        "[policy_effect]\ne = some(where (p.eft == allow))\n"
        f"[matchers]\nm = {matcher}\n")
    assert _object_only_in_glob(model) is cached
