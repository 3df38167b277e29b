"""The admin API's policy operations: roles, grants, explained decisions and decision
tables. Who may read or change a grant depends on the grant's org, so it is checked here.
"""

from __future__ import annotations

from collections.abc import Sequence

from dtr.api.admin import schemas as s
from dtr.api.admin.guards import Caller
from dtr.api.admin.services import ServiceBase
from dtr.errors import Denied, Invalid, NotFound
from dtr.policy import admin as pol
from dtr.policy.actions import ALL_ACTIONS, SYSTEM, SYSTEM_ACTIONS, namespace, parse_subject
from dtr.policy.admin import Grant, RoleInfo
from dtr.policy.enforcer import Decision


class AccessService(ServiceBase):
    """Roles, grants and decisions."""

    # -- roles -------------------------------------------------------------------------------

    async def list_roles(self) -> list[RoleInfo]:
        """Every role."""
        return await self._read(pol.list_roles)

    async def get_role(self, name: str) -> RoleInfo:
        """One role."""
        return await self._read(lambda c: pol.get_role(c, name))

    async def create_role(self, data: s.RoleCreate) -> RoleInfo:
        """Create a custom role."""
        return await self._write(lambda c: pol.create_role(
            c, data.name, data.actions, data.includes, data.description))

    async def update_role(self, name: str, data: s.RoleUpdate) -> RoleInfo:
        """Change a custom role (built-in roles are refused)."""
        return await self._write(lambda c: pol.update_role(
            c, name, actions=data.actions, includes=data.includes,
            description=data.description))

    async def delete_role(self, name: str) -> None:
        """Delete a custom role that nothing uses."""
        await self._write(lambda c: pol.delete_role(c, name))

    # -- grants ------------------------------------------------------------------------------

    @staticmethod
    def _may_read_grants(caller: Caller, org: str) -> bool:
        if org == SYSTEM:
            return caller.may_any("audit:read", "system:admin")
        return caller.may("org:read", org)

    @staticmethod
    def _require_grant_admin(caller: Caller, org: str) -> None:
        caller.require("system:admin" if org == SYSTEM else "org:admin", org)

    async def list_grants(self, caller: Caller, org: str | None,
                          subject: str | None) -> list[Grant]:
        """Grants the caller may see (``org:read`` in their org, auditors everything,
        and always the caller's own).

        Raises:
            Denied: ``org`` is given, the caller may not read it, and ``subject`` is not
                the caller.
        """
        if (org is not None and subject != caller.subject
                and not self._may_read_grants(caller, org)):
            raise Denied(f"{caller.subject} may not read the grants of "
                         f"{'the system' if org == SYSTEM else org}")
        grants = await self._read(lambda c: pol.list_grants(c, org=org, subject=subject))
        return [g for g in grants
                if g.subject == caller.subject or self._may_read_grants(caller, g.org)]

    async def create_grant(self, caller: Caller, data: s.GrantCreate) -> Grant:
        """Create a grant: ``org:admin`` in its org, ``system:admin`` for system grants."""
        self._require_grant_admin(caller, data.org)
        return await self._write(lambda c: pol.create_grant(
            c, data.subject, data.org, data.repository, data.role, data.effect))

    async def delete_grant(self, caller: Caller, grant_id: int) -> None:
        """Delete a grant (404 when the caller may not even read its org)."""
        grant = await self._read(lambda c: pol.get_grant(c, grant_id))
        if not self._may_read_grants(caller, grant.org):
            raise NotFound(f"grant {grant_id} does not exist")
        self._require_grant_admin(caller, grant.org)
        await self._write(lambda c: pol.delete_grant(c, grant_id))

    # -- explain / check ---------------------------------------------------------------------

    def explain(self, caller: Caller, subject: str | None, obj: str, action: str,
                domain: str | None = None) -> Decision:
        """Explain one decision after checking the caller may ask about ``subject``.

        Raises:
            Invalid: unknown subject grammar or action.
            Denied: another subject, and the caller is not ``org:admin`` there nor an
                administrator or auditor.
        """
        who = subject or caller.subject
        parse_subject(who)
        if action not in ALL_ACTIONS:
            raise Invalid(f"unknown action {action!r} (known: {', '.join(ALL_ACTIONS)})")
        if domain is None:
            domain = SYSTEM if action in SYSTEM_ACTIONS else namespace(obj)
        if who != caller.subject and not (
                caller.may_any("system:admin", "audit:read")
                or (domain != SYSTEM and caller.may("org:admin", domain))):
            raise Denied(f"{caller.subject} may not explain decisions for {who} in "
                         f"{'the system' if domain == SYSTEM else domain}")
        return self.security.policy.decide(who, obj, action, domain=domain)

    def check(self, caller: Caller, rows: Sequence[s.CheckRow]) -> s.CheckReport:
        """Evaluate a decision table (each row authorized like :meth:`explain`)."""
        results = []
        for row in rows:
            d = self.explain(caller, row.subject, row.repository, row.action)
            actual: s.Effect = "allow" if d.allowed else "deny"
            results.append(s.CheckResult(
                subject=row.subject, repository=row.repository, action=row.action,
                expected=row.expected, actual=actual, ok=actual == row.expected,
                reason=d.reason, rule=None if d.rule is None else list(d.rule)))
        bad = [r for r in results if not r.ok]
        return s.CheckReport(ok=not bad, rows=results, mismatches=bad)
