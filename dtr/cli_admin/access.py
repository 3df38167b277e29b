"""What accounts may do: ``dtr robot`` (org and system robots, secret shown once),
``dtr role`` and ``dtr grant`` (the RBAC grants), ``dtr token`` (personal access
tokens), each a thin mirror of ``/api/v1`` through ``dtr.client``.
"""

from __future__ import annotations

from typing import Any

import click

from dtr.cli_admin.base import (
    ApiGroup,
    F,
    call,
    emit,
    json_option,
)

# -- robots -----------------------------------------------------------------------------

def _robots(org_name: str | None) -> str:
    return f"/orgs/{org_name}/robots" if org_name else "/robots"


org_option = click.option("--org", "org_name", default=None,
                          help="The robot's organization (none: a system robot).")


def _show_secret(made: dict[str, Any], as_json: bool) -> None:
    emit(made, as_json)
    if not as_json:
        click.echo("\nThe secret is shown only once: store it now.", err=True)


@click.group("robot", cls=ApiGroup)
def robot() -> None:
    """Robot accounts for CI and automation."""


@robot.command("list")
@org_option
@json_option
def robot_list(org_name: str | None, as_json: bool) -> None:
    """List an organization's robots (or the system robots)."""
    emit(call(lambda c: c.get(_robots(org_name))), as_json,
         ("name", "description", "expires_at", "disabled", "created_by"))


@robot.command("create")
@click.argument("name")
@org_option
@click.option("--description", default=None)
@click.option("--expires-in-days", type=int, default=None,
              help="Days until the robot expires (0 = never; default: the server's).")
@click.option("--grant", "grants", multiple=True, metavar="ROLE:GLOB",
              help="Grant ROLE on the repositories GLOB matches (repeatable; org robots).")
@json_option
def robot_create(name: str, org_name: str | None, description: str | None,
                 expires_in_days: int | None, grants: tuple[str, ...], as_json: bool) -> None:
    """Create robot NAME and print its secret (once)."""
    parsed = []
    for grant in grants:
        role, sep, glob = grant.partition(":")
        if not role:
            raise click.BadParameter(f"{grant!r}: use ROLE:GLOB", param_hint="--grant")
        parsed.append({"role": role, "repository": glob if sep and glob else "**"})
    body = {"name": name, "description": description, "expires_in_days": expires_in_days,
            "grants": parsed}
    _show_secret(call(lambda c: c.post(_robots(org_name), body)), as_json)


@robot.command("update")
@click.argument("name")
@org_option
@click.option("--description", default=None, help='New description ("" clears it).')
@click.option("--disable/--enable", "disabled", default=None,
              help="Disable (logins refused at once) or enable the robot.")
@click.option("--expires-in-days", type=int, default=None,
              help="New expiry, counted from now (0 = never).")
@json_option
def robot_update(name: str, org_name: str | None, description: str | None,
                 disabled: bool | None, expires_in_days: int | None, as_json: bool) -> None:
    """Change robot NAME's description, disabled flag or expiry."""
    body = {k: v for k, v in {"description": description, "disabled": disabled,
                              "expires_in_days": expires_in_days}.items() if v is not None}
    emit(call(lambda c: c.patch(f"{_robots(org_name)}/{name}", body)), as_json)


@robot.command("delete")
@click.argument("name")
@org_option
def robot_delete(name: str, org_name: str | None) -> None:
    """Delete robot NAME and its grants."""
    call(lambda c: c.delete(f"{_robots(org_name)}/{name}"))
    click.echo(f"deleted robot {name}")


@robot.command("regenerate")
@click.argument("name")
@org_option
@json_option
def robot_regenerate(name: str, org_name: str | None, as_json: bool) -> None:
    """Replace robot NAME's secret and print the new one (once)."""
    _show_secret(call(lambda c: c.post(f"{_robots(org_name)}/{name}/secret")), as_json)


# -- roles and grants -------------------------------------------------------------------

@click.group("role", cls=ApiGroup)
def role() -> None:
    """Roles: named sets of actions (built-in ones cannot change)."""


@role.command("list")
@json_option
def role_list(as_json: bool) -> None:
    """List roles."""
    emit(call(lambda c: c.get("/roles")), as_json,
         ("name", "builtin", "actions", "includes", "description"))


@role.command("show")
@click.argument("name")
@json_option
def role_show(name: str, as_json: bool) -> None:
    """Show role NAME."""
    emit(call(lambda c: c.get(f"/roles/{name}")), as_json)


def _role_options(fn: F) -> F:
    fn = click.option("--description", default=None)(fn)
    fn = click.option("--include", "includes", multiple=True,
                      help="A role whose actions this role also holds (repeatable).")(fn)
    return click.option("--action", "actions", multiple=True,
                        help="An action the role holds (repeatable).")(fn)


@role.command("create")
@click.argument("name")
@_role_options
@json_option
def role_create(name: str, actions: tuple[str, ...], includes: tuple[str, ...],
                description: str | None, as_json: bool) -> None:
    """Create custom role NAME."""
    body = {"name": name, "actions": list(actions), "includes": list(includes),
            "description": description}
    emit(call(lambda c: c.post("/roles", body)), as_json)


@role.command("update")
@click.argument("name")
@_role_options
@json_option
def role_update(name: str, actions: tuple[str, ...], includes: tuple[str, ...],
                description: str | None, as_json: bool) -> None:
    """Replace custom role NAME's actions, includes or description (those given)."""
    body = {"actions": list(actions) or None, "includes": list(includes) or None,
            "description": description}
    emit(call(lambda c: c.patch(f"/roles/{name}", body)), as_json)


@role.command("delete")
@click.argument("name")
def role_delete(name: str) -> None:
    """Delete custom role NAME (refused while a grant uses it)."""
    call(lambda c: c.delete(f"/roles/{name}"))
    click.echo(f"deleted role {name}")


GRANT_COLUMNS = ("id", "subject", "org", "repository", "role", "effect")


@click.group("grant", cls=ApiGroup)
def grant() -> None:
    """Grants: a subject holds a role on repositories of an organization."""


@grant.command("list")
@click.option("--org", "org_name", default=None, help="Only this organization ('*': system).")
@click.option("--subject", default=None, help="Only this subject (user:alice, team:acme/devs).")
@json_option
def grant_list(org_name: str | None, subject: str | None, as_json: bool) -> None:
    """List grants."""
    emit(call(lambda c: c.get("/grants", org=org_name, subject=subject)), as_json,
         GRANT_COLUMNS)


@grant.command("create")
@click.option("--subject", required=True,
              help="user:<name>, robot:<name>, team:<org>/<team> or anonymous.")
@click.option("--org", "org_name", required=True, help="Organization ('*' = system-wide).")
@click.option("--role", "role_name", required=True)
@click.option("--repository", default="**", show_default=True,
              help="Repository glob inside the org (acme/prod/**); ** = the whole org.")
@click.option("--deny", is_flag=True, help="A deny grant (deny overrides allow).")
@json_option
def grant_create(subject: str, org_name: str, role_name: str, repository: str, deny: bool,
                 as_json: bool) -> None:
    """Grant a role to a subject."""
    body = {"subject": subject, "org": org_name, "role": role_name, "repository": repository,
            "effect": "deny" if deny else "allow"}
    emit(call(lambda c: c.post("/grants", body)), as_json)


@grant.command("delete")
@click.argument("grant_id", metavar="ID", type=int)
def grant_delete(grant_id: int) -> None:
    """Delete grant ID."""
    call(lambda c: c.delete(f"/grants/{grant_id}"))
    click.echo(f"deleted grant {grant_id}")


# -- personal access tokens -------------------------------------------------------------

@click.group("token", cls=ApiGroup)
def token() -> None:
    """Your personal access tokens."""


@token.command("list")
@json_option
def token_list(as_json: bool) -> None:
    """List your tokens (never their secrets)."""
    emit(call(lambda c: c.get("/tokens")), as_json,
         ("id", "name", "kind", "scopes", "expires_at", "last_used_at", "revoked_at"))


@token.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, metavar="repository:GLOB:ACTIONS",
              help="Limit the token (repeatable); none = your full rights.")
@click.option("--expires-in-days", type=int, default=None, help="Lifetime (default 90).")
@json_option
def token_create(name: str, scopes: tuple[str, ...], expires_in_days: int | None,
                 as_json: bool) -> None:
    """Create a token and print its secret (once)."""
    body = {"name": name, "scopes": list(scopes) or None, "expires_in_days": expires_in_days}
    _show_secret(call(lambda c: c.post("/tokens", body)), as_json)


@token.command("revoke")
@click.argument("token_id", metavar="ID")
def token_revoke(token_id: str) -> None:
    """Revoke token ID (effective at once)."""
    call(lambda c: c.delete(f"/tokens/{token_id}"))
    click.echo(f"revoked token {token_id}")
