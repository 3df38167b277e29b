"""``/api/v1/me`` and ``/api/v1/users``: the caller, and user accounts.

Permissions: ``/me`` any signed-in caller; list users ``system:admin`` or ``audit:read``;
show / change a user: that user (own password only) or the same; create and delete
``system:admin``.
"""

from __future__ import annotations

from litestar import Controller, delete, get, patch, post
from litestar.params import FromPath, JSONBody

from dtr.api.admin import guards as g
from dtr.api.admin import schemas as s
from dtr.api.admin.deps import Admin, Me
from dtr.api.problems import problem_responses as errors
from dtr.auth.accounts import AccountInfo

READ = [g.system("system:admin", "audit:read")]
ADMIN = [g.system("system:admin")]


def user_out(info: AccountInfo) -> s.User:
    """The response body of a user."""
    return s.convert(info, s.User)


class MeController(Controller):
    """The caller."""

    path = "/me"
    tags = ("me",)
    guards = (g.signed_in,)

    @get("/", summary="Who am I", responses=errors())
    async def me(self, admin: Admin, caller: Me) -> s.Me:
        """The caller: account, how they signed in, teams and system-wide roles."""
        return await admin.me(caller)


class UserController(Controller):
    """User accounts."""

    path = "/users"
    tags = ("users",)

    @get("/", guards=READ, summary="List users", responses=errors())
    async def list_users(self, admin: Admin) -> list[s.User]:
        """Every user. Requires ``system:admin`` or ``audit:read``."""
        return [user_out(u) for u in await admin.list_users()]

    @post("/", guards=ADMIN, summary="Create a user", responses=errors(409, 422))
    async def create_user(self, admin: Admin, caller: Me,
                          data: JSONBody[s.UserCreate]) -> s.User:
        """Create a user. Requires ``system:admin``."""
        return user_out(await admin.create_user(caller, data))

    @get("/{name:str}", guards=[g.self_or_system("system:admin", "audit:read")],
         summary="Show a user", responses=errors(404))
    async def get_user(self, admin: Admin, name: FromPath[str]) -> s.User:
        """One user. The user themselves, ``system:admin`` or ``audit:read``."""
        return user_out(await admin.get_user(name))

    @patch("/{name:str}", guards=[g.self_or_system("system:admin")],
           summary="Change a user", responses=errors(404, 422))
    async def update_user(self, admin: Admin, caller: Me, name: FromPath[str],
                          data: JSONBody[s.UserUpdate]) -> s.User:
        """Change password, e-mail or lock state. ``system:admin``; a user may change
        their own password.
        """
        return user_out(await admin.update_user(caller, name, data))

    @delete("/{name:str}", guards=ADMIN, summary="Delete a user", responses=errors(404, 409))
    async def delete_user(self, admin: Admin, caller: Me, name: FromPath[str]) -> None:
        """Delete a user, their tokens, grants and team memberships. Requires
        ``system:admin``.
        """
        await admin.delete_user(caller, name)
