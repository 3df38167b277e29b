"""The admin API's policy operations: roles, grants, explained decisions and decision
tables. Who may read or change a grant depends on the grant's org, so it is checked here.
Role and grant changes are recorded as security events in their transaction (``role.*``,
``grant.created`` / ``grant.deleted`` with the grant's policy line).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection

from dtr.api.admin import schemas as s
from dtr.api.admin.guards import Caller, Hidden, PolicyDenied
from dtr.api.admin.services import Record, ServiceBase, changed
from dtr.errors import Invalid
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

    async def create_role(self, caller: Caller, data: s.RoleCreate) -> RoleInfo:
        """Create a custom role."""
        def tx(conn: Connection, record: Record) -> RoleInfo:
            role = pol.create_role(conn, data.name, data.actions, data.includes,
                                   data.description)
            record("role.created", role.name, actions=role.actions, includes=role.includes)
            return role

        return await self._write(caller, tx)

    async def update_role(self, caller: Caller, name: str, data: s.RoleUpdate) -> RoleInfo:
        """Change a custom role (built-in roles are refused)."""
        def tx(conn: Connection, record: Record) -> RoleInfo:
            before = pol.get_role(conn, name)
            after = pol.update_role(conn, name, actions=data.actions, includes=data.includes,
                                    description=data.description)
            fields = changed(before, after, ("actions", "includes", "description"))
            if fields:
                record("role.updated", name, changed=fields, actions=after.actions,
                       includes=after.includes)
            return after

        return await self._write(caller, tx)

    async def delete_role(self, caller: Caller, name: str) -> None:
        """Delete a custom role that nothing uses."""
        def tx(conn: Connection, record: Record) -> None:
            pol.delete_role(conn, name)
            record("role.deleted", name)

        await self._write(caller, tx)

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
            raise PolicyDenied(f"{caller.subject} may not read the grants of "
                               f"{'the system' if org == SYSTEM else org}",
                               caller.refusal(("audit:read",) if org == SYSTEM
                                              else ("org:read",), org))
        grants = await self._read(lambda c: pol.list_grants(c, org=org, subject=subject))
        return [g for g in grants
                if g.subject == caller.subject or self._may_read_grants(caller, g.org)]

    async def create_grant(self, caller: Caller, data: s.GrantCreate) -> Grant:
        """Create a grant: ``org:admin`` in its org, ``system:admin`` for system grants."""
        self._require_grant_admin(caller, data.org)

        def tx(conn: Connection, record: Record) -> Grant:
            grant = pol.create_grant(conn, data.subject, data.org, data.repository,
                                     data.role, data.effect)
            _record_grant(record, "grant.created", grant)
            return grant

        return await self._write(caller, tx)

    async def delete_grant(self, caller: Caller, grant_id: int) -> None:
        """Delete a grant (404 when the caller may not even read its org)."""
        grant = await self._read(lambda c: pol.get_grant(c, grant_id))
        if not self._may_read_grants(caller, grant.org):
            raise Hidden(f"grant {grant_id} does not exist", {"grant": grant_id})
        self._require_grant_admin(caller, grant.org)

        def tx(conn: Connection, record: Record) -> None:
            _record_grant(record, "grant.deleted", pol.delete_grant(conn, grant_id))

        await self._write(caller, tx)

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
            raise PolicyDenied(f"{caller.subject} may not explain decisions for {who} in "
                               f"{'the system' if domain == SYSTEM else domain}",
                               caller.refusal(("audit:read",) if domain == SYSTEM
                                              else ("org:admin",), domain))
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


def _record_grant(record: Record, action: str, grant: Grant) -> None:
    record(action, f"grant:{grant.id}", org=grant.org, line=grant.line,
           subject=grant.subject, repository=grant.repository, role=grant.role,
           effect=grant.effect)
