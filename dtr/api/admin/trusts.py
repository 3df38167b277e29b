"""``/api/v1/federation/trusts``: federation trusts for keyless CI (which CI workloads, by
the claims of their OIDC ID tokens, act as which robot).

Permissions (checked against the trust's organization — the org of its robot or role
binding — in the service): create, change and delete ``org:admin`` in that org
(``system:admin`` for trusts bound to a system robot); read the same, or ``audit:read``.
Trusts the caller may not read are not listed and answer 404.

Every change is recorded as a security event (``federation.trust.created``, ``.updated``,
``.deleted``) in the transaction that makes it, with the robot and grant a role binding
creates or removes.
"""

from __future__ import annotations

from typing import TypeAlias

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from sqlalchemy import Connection

from dtr.api.admin import guards as g
from dtr.api.admin import schemas as s
from dtr.api.admin.deps import Me
from dtr.api.admin.guards import Caller, Hidden
from dtr.api.admin.services import Record, changed
from dtr.api.context import Security
from dtr.api.federation import federation_service
from dtr.api.problems import problem_responses as errors
from dtr.auth import federation as fed
from dtr.auth.federation import TrustInfo
from dtr.policy.actions import SYSTEM, parse_subject

COMPARED = ("issuer", "audience", "conditions", "scopes", "max_token_seconds", "enabled",
            "description")
"""The trust fields an update may change (named in ``federation.trust.updated``)."""


def trust_out(trust: TrustInfo) -> s.Trust:
    """The response body of a trust."""
    binding = trust.role_binding
    return s.Trust(
        name=trust.name, description=trust.description, issuer=trust.issuer,
        audience=trust.audience,
        conditions=[s.TrustConditionOut(claim=c.claim, pattern=c.pattern, match=c.match)
                    for c in trust.conditions],
        robot=trust.robot, org=trust.org, owns_robot=trust.owns_robot,
        role_binding=None if binding is None else s.TrustRoleBindingOut(
            org=binding.org, repository=binding.repository, role=binding.role),
        scopes=None if trust.scopes is None else list(trust.scopes),
        max_token_seconds=trust.max_token_seconds, enabled=trust.enabled,
        created_by=trust.created_by, created_at=trust.created_at,
        updated_at=trust.updated_at)


def _conditions(items: list[s.TrustCondition]) -> tuple[fed.Condition, ...]:
    return tuple(fed.Condition(c.claim, c.pattern, c.match) for c in items)


class TrustService:
    """Trust administration with the caller's permissions, reported as security events.

    Args:
        security: the worker's auth services.
    """

    def __init__(self, security: Security) -> None:
        self.security = security
        self.federation = federation_service(security)

    @staticmethod
    def _may_admin(caller: Caller, org: str | None) -> bool:
        return caller.may("system:admin") if org is None else caller.may("org:admin", org)

    def _may_read(self, caller: Caller, trust: TrustInfo) -> bool:
        return self._may_admin(caller, trust.org) or caller.may_any("audit:read")

    async def _visible(self, caller: Caller, name: str) -> TrustInfo:
        trust = await self.federation.get_trust(name)
        if not self._may_read(caller, trust):
            raise Hidden(f"federation trust {name} not found", {"trust": name})
        return trust

    def _require_admin(self, caller: Caller, org: str | None) -> None:
        caller.require("system:admin" if org is None else "org:admin", org or SYSTEM)

    def _recorder(self, caller: Caller, action: str) -> fed.OnChange:
        """Records ``action`` in the change's transaction (an update that changed nothing
        is not recorded).
        """
        rule, events = caller.why(), self.security.events

        def on_change(conn: Connection, before: TrustInfo | None, after: TrustInfo) -> None:
            detail = _detail(after)
            if action.endswith(".updated"):
                fields = changed(before, after, COMPARED)
                if not fields:
                    return
                detail["changed"] = fields
            Record(events, conn, rule)(action, after.name, org=after.org, **detail)

        return on_change

    async def list(self, caller: Caller) -> list[TrustInfo]:
        """The trusts the caller may read, in exchange order."""
        return [t for t in await self.federation.list_trusts() if self._may_read(caller, t)]

    async def get(self, caller: Caller, name: str) -> TrustInfo:
        """One trust (404 when the caller may not read it)."""
        return await self._visible(caller, name)

    async def create(self, caller: Caller, data: s.TrustCreate) -> TrustInfo:
        """Create a trust (and its robot and grant, for a role binding).

        Raises:
            Denied: the caller is not ``org:admin`` of the binding's org (``system:admin``
                for a system robot).
        """
        rb = data.role_binding
        org = rb.org if rb is not None else (
            parse_subject(f"robot:{data.robot}").org if data.robot else None)
        self._require_admin(caller, org)
        spec = fed.TrustSpec(
            name=data.name, issuer=data.issuer or "", audience=data.audience,
            conditions=_conditions(data.conditions), robot=data.robot,
            role_binding=None if rb is None else fed.RoleBinding(rb.org, rb.repository,
                                                                 rb.role),
            scopes=None if data.scopes is None else tuple(data.scopes),
            max_token_seconds=data.max_token_seconds, enabled=data.enabled,
            description=data.description, preset=data.preset)
        trust = await self.federation.create_trust(
            spec, created_by=caller.name,
            on_change=self._recorder(caller, "federation.trust.created"))
        await self.security.policy.refresh()
        return trust

    async def update(self, caller: Caller, name: str, data: s.TrustUpdate) -> TrustInfo:
        """Change a trust (404 when unreadable, 403 when readable but not administrable)."""
        found = await self._visible(caller, name)
        self._require_admin(caller, found.org)
        trust = await self.federation.update_trust(name, fed.TrustUpdate(
            issuer=data.issuer, audience=data.audience,
            conditions=None if data.conditions is None else _conditions(data.conditions),
            scopes=None if data.scopes is None else tuple(data.scopes),
            max_token_seconds=data.max_token_seconds, enabled=data.enabled,
            description=data.description),
            on_change=self._recorder(caller, "federation.trust.updated"))
        return trust

    async def delete(self, caller: Caller, name: str) -> None:
        """Delete a trust (and the robot it owns, with its grants)."""
        found = await self._visible(caller, name)
        self._require_admin(caller, found.org)
        await self.federation.delete_trust(
            name, on_change=self._recorder(caller, "federation.trust.deleted"))
        await self.security.policy.refresh()


def _detail(trust: TrustInfo) -> dict[str, object]:
    binding = trust.role_binding
    return {"issuer": trust.issuer, "audience": trust.audience, "robot": trust.robot,
            "owns_robot": trust.owns_robot, "enabled": trust.enabled,
            "conditions": [str(c) for c in trust.conditions],
            "role_binding": None if binding is None else binding.to_dict(),
            "scopes": None if trust.scopes is None else list(trust.scopes),
            "max_token_seconds": trust.max_token_seconds}


Trusts: TypeAlias = NamedDependency[TrustService]
"""The worker's trust operations (injected as ``trusts``)."""


class TrustController(Controller):
    """Federation trusts (keyless CI)."""

    path = "/federation/trusts"
    tags = ("federation",)
    guards = (g.signed_in,)

    @get("/", summary="List federation trusts", responses=errors())
    async def list_trusts(self, trusts: Trusts, caller: Me) -> list[s.Trust]:
        """The trusts the caller may read, in the order exchanges try them. ``org:admin``
        of a trust's org, ``system:admin`` or ``audit:read``.
        """
        return [trust_out(t) for t in await trusts.list(caller)]

    @post("/", summary="Create a federation trust", responses=errors(404, 409, 422))
    async def create_trust(self, trusts: Trusts, caller: Me,
                           data: JSONBody[s.TrustCreate]) -> s.Trust:
        """Trust ID tokens of an issuer for an audience whose claims meet every condition,
        acting as an existing robot or a role binding's new robot. ``org:admin`` in the
        robot's or binding's org; ``system:admin`` for a system robot.
        """
        return trust_out(await trusts.create(caller, data))

    @get("/{name:str}", summary="Show a federation trust", responses=errors(404))
    async def get_trust(self, trusts: Trusts, caller: Me,
                        name: FromPath[str]) -> s.Trust:
        """One trust. ``org:admin`` of its org, ``system:admin`` or ``audit:read``."""
        return trust_out(await trusts.get(caller, name))

    @patch("/{name:str}", summary="Update a federation trust",
           responses=errors(404, 422))
    async def update_trust(self, trusts: Trusts, caller: Me, name: FromPath[str],
                           data: JSONBody[s.TrustUpdate]) -> s.Trust:
        """Change issuer, audience, conditions, scopes, lifetime, enabled flag or
        description; the next exchange on any replica sees it. ``org:admin`` of its org.
        """
        return trust_out(await trusts.update(caller, name, data))

    @delete("/{name:str}", summary="Delete a federation trust", responses=errors(404))
    async def delete_trust(self, trusts: Trusts, caller: Me,
                           name: FromPath[str]) -> None:
        """Delete the trust; a robot it created for a role binding goes too. ``org:admin``
        of its org.
        """
        await trusts.delete(caller, name)
