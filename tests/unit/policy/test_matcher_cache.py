"""The two pycasbin costs the policy engine pays once (``dtr/policy/enforcer.py``): the
matcher is parsed once per snapshot, and each ``globMatch`` pattern is compiled once, with
exactly pycasbin's ``glob_match`` semantics. Decisions on repositories never seen before
stay Casbin's."""

from __future__ import annotations

import casbin
import pytest
from casbin.util.builtin_operators import glob_match as casbin_glob_match

from dtr.policy.enforcer import PolicyEngine, _memo_glob
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
