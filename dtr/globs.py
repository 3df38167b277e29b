"""Repository globs, shared by the access policy (``dtr.auth.scopes``) and the audit log's
repository filter (``dtr.audit.query``): ``*`` stays inside one ``/``-separated part,
``**`` crosses ``/``, everything else is literal. Imports nothing from dtr.
"""

from __future__ import annotations

import functools
import re


def glob_match(pattern: str, name: str) -> bool:
    """True if the repository glob ``pattern`` matches ``name`` (see the module docstring)."""
    return _glob_regex(pattern).fullmatch(name) is not None


@functools.lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for i, chunk in enumerate(pattern.split("**")):
        if i:
            parts.append(".*")
        parts.append("[^/]*".join(re.escape(p) for p in chunk.split("*")))
    return re.compile("".join(parts), re.S)
