"""``/api/v1/authz``: explain one policy decision, or run a decision table against the live
policy.

Permissions: a caller may always ask about their own subject; about others they need
``org:admin`` in the org asked about, or ``system:admin`` / ``audit:read``.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import FromQuery, JSONBody, QueryParameter

from dtr.api.admin import guards as g
from dtr.api.admin import schemas as s
from dtr.api.admin.deps import Access, Me
from dtr.api.problems import problem_responses as errors
from dtr.errors import Invalid
from dtr.policy.actions import SYSTEM, SYSTEM_ACTIONS


def target(action: str, repository: str | None, org: str | None,
           obj: str | None) -> tuple[str, str | None]:
    """The (object, domain) a request asks about: a repository (its org is the domain), an
    org (object = the org unless given), or a bare object (system actions: ``*``).

    Raises:
        Invalid: a repository or org action without repository, org or object.
    """
    if repository:
        return repository, None
    if org:
        return obj or org, org
    if obj or action in SYSTEM_ACTIONS:
        return obj or SYSTEM, None
    raise Invalid("give repository= (repository actions), org= (org actions) or object=")


class AuthzController(Controller):
    """Explained decisions."""

    path = "/authz"
    tags = ("authorization",)
    guards = (g.signed_in,)

    @get("/explain", summary="Explain a decision", responses=errors(422))
    async def explain(self, access: Access, caller: Me, action: FromQuery[str],
                      subject: FromQuery[str | None] = None,
                      repository: FromQuery[str | None] = None,
                      org: FromQuery[str | None] = None,
                      obj: Annotated[str | None, QueryParameter(name="object")] = None,
                      ) -> s.Decision:
        """Whether ``subject`` (default: the caller) may do ``action``, the matched rule,
        the chain from subject to action, and a reason.
        """
        found, domain = target(action, repository, org, obj)
        return s.convert(access.explain(caller, subject, found, action, domain), s.Decision)

    @post("/check", status_code=200, opt={g.READ_ONLY: True},
          summary="Check a decision table", responses=errors(422))
    async def check(self, access: Access, caller: Me,
                    data: JSONBody[s.CheckRequest]) -> s.CheckReport:
        """Evaluate rows of (subject, repository, action, expected allow|deny); returns each
        result and the mismatches. Use ``*`` as repository for system actions and the org
        name for org actions.
        """
        return access.check(caller, data.rows)
