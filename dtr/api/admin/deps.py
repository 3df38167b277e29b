"""The admin handlers' injected parameters: ``admin`` (``AdminService``), ``access``
(``AccessService``) and ``caller``
(the request's signed-in ``Caller``), provided by the router in ``build_admin_router``.
"""

from __future__ import annotations

from typing import TypeAlias

from litestar.di import NamedDependency

from dtr.api.admin.access import AccessService
from dtr.api.admin.guards import Caller
from dtr.api.admin.services import AdminService

Admin: TypeAlias = NamedDependency[AdminService]
"""The worker's account operations (users, orgs, teams, robots, tokens)."""
Access: TypeAlias = NamedDependency[AccessService]
"""The worker's policy operations (roles, grants, decisions)."""
Me: TypeAlias = NamedDependency[Caller]
"""The signed-in caller of this request."""
