"""``/api/v1/roles``: built-in and custom roles (named sets of actions).

Permissions: read any signed-in caller; create, change, delete ``system:admin``; built-in
roles cannot change (403).
"""

from __future__ import annotations

from litestar import Controller, delete, get, patch, post
from litestar.params import FromPath, JSONBody

from dtr.api.admin import guards as g
from dtr.api.admin import schemas as s
from dtr.api.admin.deps import Access, Me
from dtr.api.problems import problem_responses as errors
from dtr.policy.admin import RoleInfo

ADMIN = [g.system("system:admin")]


def role_out(info: RoleInfo) -> s.Role:
    """The response body of a role."""
    return s.convert(info, s.Role)


class RoleController(Controller):
    """Roles."""

    path = "/roles"
    tags = ("roles",)
    guards = (g.signed_in,)

    @get("/", summary="List roles", responses=errors())
    async def list_roles(self, access: Access) -> list[s.Role]:
        """Every role, built-in first. Any signed-in caller."""
        return [role_out(r) for r in await access.list_roles()]

    @post("/", guards=ADMIN, summary="Create a custom role", responses=errors(409, 422))
    async def create_role(self, access: Access, caller: Me,
                          data: JSONBody[s.RoleCreate]) -> s.Role:
        """Create a role from actions and included roles. Requires ``system:admin``."""
        return role_out(await access.create_role(caller, data))

    @get("/{name:str}", summary="Show a role", responses=errors(404))
    async def get_role(self, access: Access, name: FromPath[str]) -> s.Role:
        """One role. Any signed-in caller."""
        return role_out(await access.get_role(name))

    @patch("/{name:str}", guards=ADMIN, summary="Change a custom role", responses=errors(404, 422))
    async def update_role(self, access: Access, caller: Me, name: FromPath[str],
                          data: JSONBody[s.RoleUpdate]) -> s.Role:
        """Replace a custom role's actions, includes or description. Requires
        ``system:admin``.
        """
        return role_out(await access.update_role(caller, name, data))

    @delete("/{name:str}", guards=ADMIN, summary="Delete a custom role", responses=errors(404, 409))
    async def delete_role(self, access: Access, caller: Me, name: FromPath[str]) -> None:
        """Delete a custom role no grant or role uses. Requires ``system:admin``."""
        await access.delete_role(caller, name)
