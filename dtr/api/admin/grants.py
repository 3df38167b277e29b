"""``/api/v1/grants``: who holds which role on which repositories of which organization.

Permissions (checked against the grant's org, in the service): read ``org:read`` (system
grants: ``audit:read`` or ``system:admin``; one's own grants always); create and delete
``org:admin`` (system grants, org ``*``: ``system:admin``).
"""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody

from dtr.api.admin import guards as g
from dtr.api.admin import schemas as s
from dtr.api.admin.deps import Access, Me
from dtr.api.problems import problem_responses as errors
from dtr.policy.admin import Grant


def grant_out(grant: Grant) -> s.Grant:
    """The response body of a grant."""
    return s.convert(grant, s.Grant)


class GrantController(Controller):
    """Grants (the org of each grant decides who may see and change it)."""

    path = "/grants"
    tags = ("grants",)
    guards = (g.signed_in,)

    @get("/", summary="List grants", responses=errors())
    async def list_grants(self, access: Access, caller: Me, org: FromQuery[str | None] = None,
                          subject: FromQuery[str | None] = None) -> list[s.Grant]:
        """Grants the caller may read, filtered by ``org`` (``*`` = system) and
        ``subject``. ``org:read`` per org; ``audit:read`` for system grants.
        """
        return [grant_out(x) for x in await access.list_grants(caller, org, subject)]

    @post("/", summary="Create a grant", responses=errors(404, 409, 422))
    async def create_grant(self, access: Access, caller: Me,
                           data: JSONBody[s.GrantCreate]) -> s.Grant:
        """Grant (or deny) a role on a repository glob. ``org:admin`` in the org;
        ``system:admin`` for org ``*``.
        """
        return grant_out(await access.create_grant(caller, data))

    @delete("/{grant_id:int}", summary="Delete a grant", responses=errors(404))
    async def delete_grant(self, access: Access, caller: Me, grant_id: FromPath[int]) -> None:
        """Delete a grant. ``org:admin`` in its org; ``system:admin`` for system grants."""
        await access.delete_grant(caller, grant_id)
