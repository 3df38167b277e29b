"""``/api/v1/orgs/{org}/teams``: teams and their members.

Permissions: read ``org:read`` in the org; create, change, delete and membership changes
``org:admin``. Members are existing users (or robots of the same org); a team with an
``idp_group`` gets its members from that OpenID Provider group at each OIDC login, and
refuses manual member changes (409).
"""

from __future__ import annotations

from litestar import Controller, delete, get, patch, post, put
from litestar.params import FromPath, JSONBody

from dtr.api.admin import guards as g
from dtr.api.admin import schemas as s
from dtr.api.admin.deps import Admin, Me
from dtr.api.admin.services import TeamView
from dtr.api.problems import problem_responses as errors

ADMIN = [g.org("org:admin")]


def team_out(view: TeamView) -> s.Team:
    """The response body of a team."""
    return s.convert(view.team, s.Team, members=view.members)


class TeamController(Controller):
    """Teams of one organization."""

    path = "/orgs/{org:str}/teams"
    tags = ("teams",)
    guards = (g.org("org:read"),)

    @get("/", summary="List teams", responses=errors(404))
    async def list_teams(self, admin: Admin, org: FromPath[str]) -> list[s.Team]:
        """The organization's teams with their members. Requires ``org:read``."""
        return [team_out(t) for t in await admin.list_teams(org)]

    @post("/", guards=ADMIN, summary="Create a team", responses=errors(404, 409, 422))
    async def create_team(self, admin: Admin, caller: Me, org: FromPath[str],
                          data: JSONBody[s.TeamCreate]) -> s.Team:
        """Create a team. Requires ``org:admin``."""
        return team_out(await admin.create_team(caller, org, data))

    @get("/{team:str}", summary="Show a team", responses=errors(404))
    async def get_team(self, admin: Admin, org: FromPath[str], team: FromPath[str]) -> s.Team:
        """One team with its members. Requires ``org:read``."""
        return team_out(await admin.get_team(org, team))

    @patch("/{team:str}", guards=ADMIN, summary="Change a team", responses=errors(404, 422))
    async def update_team(self, admin: Admin, caller: Me, org: FromPath[str],
                          team: FromPath[str], data: JSONBody[s.TeamUpdate]) -> s.Team:
        """Change the description or the mirrored provider group (``""`` clears).
        Requires ``org:admin``.
        """
        return team_out(await admin.update_team(caller, org, team, data))

    @delete("/{team:str}", guards=ADMIN, summary="Delete a team", responses=errors(404))
    async def delete_team(self, admin: Admin, caller: Me, org: FromPath[str],
                          team: FromPath[str]) -> None:
        """Delete a team with its memberships and grants. Requires ``org:admin``."""
        await admin.delete_team(caller, org, team)

    @get("/{team:str}/members", summary="List team members", responses=errors(404))
    async def list_members(self, admin: Admin, org: FromPath[str],
                           team: FromPath[str]) -> list[str]:
        """The team's member account names. Requires ``org:read``."""
        return (await admin.get_team(org, team)).members

    @put("/{team:str}/members/{user:str}", guards=ADMIN,
         summary="Add a team member", responses=errors(404, 409, 422))
    async def add_member(self, admin: Admin, caller: Me, org: FromPath[str],
                         team: FromPath[str], user: FromPath[str]) -> s.Team:
        """Add an existing user (idempotent). Requires ``org:admin``; 409 for a team
        synced from a provider group.
        """
        return team_out(await admin.add_member(caller, org, team, user))

    @delete("/{team:str}/members/{user:str}", guards=ADMIN,
            summary="Remove a team member", responses=errors(404, 409))
    async def remove_member(self, admin: Admin, caller: Me, org: FromPath[str],
                            team: FromPath[str], user: FromPath[str]) -> None:
        """Take a member out of the team. Requires ``org:admin``."""
        await admin.remove_member(caller, org, team, user)
