"""``/api/v1/orgs``: organizations (namespaces) and their visibility.

Permissions: list shows the orgs the caller has ``org:read`` on; create: any signed-in
user when ``auth.org_creation`` is ``everyone``, else ``system:admin``; show ``org:read``;
change and delete ``org:admin``. ``public`` is an anonymous ``reader`` grant on ``**``.
"""

from __future__ import annotations

from litestar import Controller, delete, get, patch, post
from litestar.params import FromPath, JSONBody

from dtr.api.admin import guards as g
from dtr.api.admin import schemas as s
from dtr.api.admin.deps import Admin, Me
from dtr.api.admin.services import OrgView
from dtr.api.problems import problem_responses as errors

READ = [g.org("org:read")]
ADMIN = [g.org("org:admin")]


def org_out(view: OrgView) -> s.Org:
    """The response body of an organization."""
    return s.convert(view.org, s.Org, public=view.public)


class OrgController(Controller):
    """Organizations."""

    path = "/orgs"
    tags = ("organizations",)

    @get("/", guards=[g.signed_in], summary="List organizations", responses=errors())
    async def list_orgs(self, admin: Admin, caller: Me) -> list[s.Org]:
        """The organizations the caller may read (all for administrators and auditors)."""
        return [org_out(o) for o in await admin.list_orgs(caller)]

    @post("/", guards=[g.signed_in], summary="Create an organization", responses=errors(409, 422))
    async def create_org(self, admin: Admin, caller: Me,
                         data: JSONBody[s.OrgCreate]) -> s.Org:
        """Create an organization; the creator becomes its ``owner``. Any signed-in user
        when ``auth.org_creation`` is ``everyone``, else ``system:admin``.
        """
        return org_out(await admin.create_org(caller, data))

    @get("/{org:str}", guards=READ, summary="Show an organization", responses=errors(404))
    async def get_org(self, admin: Admin, org: FromPath[str]) -> s.Org:
        """One organization. Requires ``org:read``."""
        return org_out(await admin.get_org(org))

    @patch("/{org:str}", guards=ADMIN, summary="Change an organization", responses=errors(404))
    async def update_org(self, admin: Admin, caller: Me, org: FromPath[str],
                         data: JSONBody[s.OrgUpdate]) -> s.Org:
        """Change the description or make the organization public / private. Requires
        ``org:admin``.
        """
        return org_out(await admin.update_org(caller, org, data))

    @delete("/{org:str}", guards=ADMIN, summary="Delete an organization", responses=errors(404))
    async def delete_org(self, admin: Admin, caller: Me, org: FromPath[str]) -> None:
        """Delete the organization, its teams, robots and grants. Requires ``org:admin``."""
        await admin.delete_org(caller, org)
