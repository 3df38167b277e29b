"""``/api/v1/orgs/{org}/robots`` and ``/api/v1/robots``: robot accounts of an organization
and system robots. The secret is returned once, on create and on regenerate.

Permissions: org robots ``org:admin`` in the org; system robots ``system:admin``.
"""

from __future__ import annotations

from litestar import Controller, delete, get, patch, post
from litestar.params import FromPath, JSONBody

from dtr.api.admin import guards as g
from dtr.api.admin import schemas as s
from dtr.api.admin.deps import Admin, Me
from dtr.api.problems import problem_responses as errors
from dtr.auth.accounts import AccountInfo, NewSecret
from dtr.policy.admin import Grant


def robot_out(info: AccountInfo) -> s.Robot:
    """The response body of a robot (never its secret)."""
    return s.convert(info, s.Robot)


def created_out(made: tuple[NewSecret[AccountInfo], list[Grant]]) -> s.RobotCreated:
    """The response body of a new robot: its secret (this once) and initial grants."""
    secret, grants = made
    return s.convert(secret.info, s.RobotCreated, secret=secret.secret,
                     grants=[s.convert(x, s.Grant) for x in grants])


def secret_out(made: NewSecret[AccountInfo]) -> s.RobotSecret:
    """The response body of a regenerated secret."""
    return s.RobotSecret(name=made.info.name, secret=made.secret,
                         expires_at=made.info.expires_at)


class OrgRobotController(Controller):
    """Robots of one organization (``robot$<org>+<name>``)."""

    path = "/orgs/{org:str}/robots"
    tags = ("robots",)
    guards = (g.org("org:admin"),)

    @get("/", summary="List an organization's robots", responses=errors(404))
    async def list_robots(self, admin: Admin, org: FromPath[str]) -> list[s.Robot]:
        """The organization's robots. Requires ``org:admin``."""
        return [robot_out(r) for r in await admin.list_robots(org)]

    @post("/", summary="Create an organization robot", responses=errors(404, 409, 422))
    async def create_robot(self, admin: Admin, caller: Me, org: FromPath[str],
                           data: JSONBody[s.RobotCreate]) -> s.RobotCreated:
        """Create a robot with optional grants in the org; the secret is shown once.
        Requires ``org:admin``.
        """
        return created_out(await admin.create_robot(caller, org, data))

    @get("/{name:str}", summary="Show an organization robot", responses=errors(404))
    async def get_robot(self, admin: Admin, org: FromPath[str], name: FromPath[str]) -> s.Robot:
        """One robot by its short name. Requires ``org:admin``."""
        return robot_out(await admin.get_robot(org, name))

    @patch("/{name:str}", summary="Update an organization robot",
           responses=errors(404, 422))
    async def update_robot(self, admin: Admin, caller: Me, org: FromPath[str],
                           name: FromPath[str], data: JSONBody[s.RobotUpdate]) -> s.Robot:
        """Change description, disabled flag or expiry. Requires ``org:admin``."""
        return robot_out(await admin.update_robot(caller, org, name, data))

    @delete("/{name:str}", summary="Delete an organization robot", responses=errors(404))
    async def delete_robot(self, admin: Admin, caller: Me, org: FromPath[str],
                           name: FromPath[str]) -> None:
        """Delete the robot and its grants. Requires ``org:admin``."""
        await admin.delete_robot(caller, org, name)

    @post("/{name:str}/secret", status_code=200,
          summary="Regenerate a robot secret", responses=errors(404))
    async def regenerate(self, admin: Admin, caller: Me, org: FromPath[str],
                         name: FromPath[str]) -> s.RobotSecret:
        """Replace the secret (the old one stops working); shown once. Requires
        ``org:admin``.
        """
        return secret_out(await admin.regenerate_robot(caller, org, name))


class SystemRobotController(Controller):
    """System robots (``robot$<name>``), whose grants may span organizations."""

    path = "/robots"
    tags = ("robots",)
    guards = (g.system("system:admin"),)

    @get("/", summary="List system robots", responses=errors(404))
    async def list_robots(self, admin: Admin) -> list[s.Robot]:
        """The system robots. Requires ``system:admin``."""
        return [robot_out(r) for r in await admin.list_robots(None)]

    @post("/", summary="Create a system robot", responses=errors(404, 409, 422))
    async def create_robot(self, admin: Admin, caller: Me,
                           data: JSONBody[s.RobotCreate]) -> s.RobotCreated:
        """Create a system robot with optional system-wide grants (``repository`` globs
        such as ``acme/**``); the secret is shown once. Requires ``system:admin``.
        """
        return created_out(await admin.create_robot(caller, None, data))

    @get("/{name:str}", summary="Show a system robot", responses=errors(404))
    async def get_robot(self, admin: Admin, name: FromPath[str]) -> s.Robot:
        """One system robot. Requires ``system:admin``."""
        return robot_out(await admin.get_robot(None, name))

    @patch("/{name:str}", summary="Update a system robot", responses=errors(404, 422))
    async def update_robot(self, admin: Admin, caller: Me, name: FromPath[str],
                           data: JSONBody[s.RobotUpdate]) -> s.Robot:
        """Change description, disabled flag or expiry. Requires ``system:admin``."""
        return robot_out(await admin.update_robot(caller, None, name, data))

    @delete("/{name:str}", summary="Delete a system robot", responses=errors(404))
    async def delete_robot(self, admin: Admin, caller: Me, name: FromPath[str]) -> None:
        """Delete the robot and its grants. Requires ``system:admin``."""
        await admin.delete_robot(caller, None, name)

    @post("/{name:str}/secret", status_code=200,
          summary="Regenerate a system robot secret", responses=errors(404))
    async def regenerate(self, admin: Admin, caller: Me, name: FromPath[str]) -> s.RobotSecret:
        """Replace the secret; shown once. Requires ``system:admin``."""
        return secret_out(await admin.regenerate_robot(caller, None, name))
