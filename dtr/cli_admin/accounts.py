"""``dtr login`` / ``logout`` / ``whoami`` and the account commands: ``dtr user``,
``dtr org``, ``dtr team`` (members and their roles), each a thin mirror of
``/api/v1`` through ``dtr.client``.
"""

from __future__ import annotations

import os
import socket
import sys
import webbrowser
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import click

from dtr.cli_admin.base import (
    PAT_PREFIX,
    SESSION_PREFIX,
    ApiCommand,
    ApiGroup,
    call,
    config_path,
    emit,
    json_option,
    load_config,
    new_password,
    save_config,
)
from dtr.client import AdminClient, ApiError

# -- login ------------------------------------------------------------------------------

@click.command("login", cls=ApiCommand)
@click.argument("url")
@click.option("--username", "-u", default=None, help="Account name (prompted if needed).")
@click.option("--token-stdin", is_flag=True, help="Read an existing personal access token "
              "(or OIDC session token) from stdin instead of prompting.")
@click.option("--oidc", is_flag=True, help="Sign in with single sign-on: open the login "
              "page, then paste the session token it shows.")
def login(url: str, username: str | None, token_stdin: bool, oidc: bool) -> None:
    """Log in to the registry at URL and save a personal access token for the CLI.

    With a password, a token named ``dtr-cli@<hostname>`` is minted; the password is
    never stored. With ``--oidc`` the session token of a browser login is saved instead
    (mint personal access tokens with it: ``dtr token create NAME``).
    """
    if "://" not in url:
        local = urlsplit(f"//{url}").hostname in ("localhost", "127.0.0.1", "::1")
        url = f"{'http' if local else 'https'}://{url}"
    if oidc:
        secret = _oidc_session(url, token_stdin)
    elif token_stdin:
        secret = sys.stdin.readline().strip()
    else:
        username = username or click.prompt("Username", default=os.environ.get("USER"))
        secret = click.prompt("Password or token", hide_input=True)
    if secret.startswith((PAT_PREFIX, SESSION_PREFIX)) or token_stdin or oidc:
        with AdminClient(url, token=secret) as client:
            me = client.get("/me")
        saved = {"url": url, "token": secret, "username": me["name"], "minted": False,
                 "session": secret.startswith(SESSION_PREFIX)}
    else:
        with AdminClient(url, basic=(username or "", secret)) as client:
            made = client.post("/tokens", {"name": f"dtr-cli@{socket.gethostname()}"})
        saved = {"url": url, "token": made["secret"], "username": username,
                 "token_id": made["id"], "minted": True}
    path = save_config(saved)
    click.echo(f"Logged in to {url} as {saved['username']} (token saved in {path})")


def _oidc_session(url: str, from_stdin: bool) -> str:
    """Point the person at the registry's OIDC login page (opening a browser when there
    is a display) and read the session token it shows.
    """
    with AdminClient(url) as client:
        info = client.get("/auth/oidc")
    if not info.get("enabled"):
        raise click.ClickException(f"{url} does not offer OIDC login")
    login_url = str(info["login_url"])
    click.echo(f"Sign in at:\n\n  {login_url}\n\nthen paste the session token shown.",
               err=True)
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        webbrowser.open(login_url)
    if from_stdin:
        return sys.stdin.readline().strip()
    return str(click.prompt("Session token", hide_input=True)).strip()


@click.command("logout", cls=ApiCommand)
def logout() -> None:
    """Forget the saved login (and revoke the token ``dtr login`` minted, or the OIDC
    session it saved).
    """
    path, cfg = config_path(), load_config()
    revoke: Callable[[AdminClient], Any] | None = None
    if cfg.get("session"):
        revoke = lambda c: c.post("/auth/logout")  # noqa: E731
    elif cfg.get("minted") and cfg.get("token_id"):
        revoke = lambda c: c.delete(f"/tokens/{cfg['token_id']}")  # noqa: E731
    if revoke is not None:
        try:
            call(revoke)
        except ApiError as exc:
            click.echo(f"warning: could not revoke the token: {exc}", err=True)
    path.unlink(missing_ok=True)
    click.echo("Logged out")


@click.command("whoami", cls=ApiCommand)
@json_option
def whoami(as_json: bool) -> None:
    """Show who the saved login is."""
    emit(call(lambda c: c.get("/me")), as_json)


# -- users ------------------------------------------------------------------------------

USER_COLUMNS = ("name", "email", "disabled", "created_at", "last_login_at")


@click.group("user", cls=ApiGroup)
def user() -> None:
    """User accounts (system administrators)."""


@user.command("list")
@json_option
def user_list(as_json: bool) -> None:
    """List users."""
    emit(call(lambda c: c.get("/users")), as_json, USER_COLUMNS)


@user.command("create")
@click.argument("name")
@click.option("--email", default=None)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--oidc", is_flag=True, help="A single sign-on user: no password; linked at "
              "their first OIDC login.")
@json_option
def user_create(name: str, email: str | None, password_stdin: bool, oidc: bool,
                as_json: bool) -> None:
    """Create user NAME (the password is prompted for, unless --oidc)."""
    body: dict[str, Any] = {"name": name, "email": email}
    body.update({"oidc": True} if oidc else {"password": new_password(password_stdin)})
    emit(call(lambda c: c.post("/users", body)), as_json)


@user.command("show")
@click.argument("name")
@json_option
def user_show(name: str, as_json: bool) -> None:
    """Show user NAME."""
    emit(call(lambda c: c.get(f"/users/{name}")), as_json)


@user.command("update")
@click.argument("name")
@click.option("--email", default=None, help="New e-mail address ('' clears it).")
@click.option("--disable/--enable", "disabled", default=None, help="Lock or unlock the account.")
@click.option("--set-password", is_flag=True, help="Prompt for a new password.")
@click.option("--password-stdin", is_flag=True, help="Read a new password from stdin.")
@json_option
def user_update(name: str, email: str | None, disabled: bool | None, set_password: bool,
                password_stdin: bool, as_json: bool) -> None:
    """Change user NAME's e-mail, password or lock state."""
    body: dict[str, Any] = {"email": email, "disabled": disabled}
    if set_password or password_stdin:
        body["password"] = new_password(password_stdin)
    emit(call(lambda c: c.patch(f"/users/{name}", body)), as_json)


@user.command("delete")
@click.argument("name")
@click.confirmation_option(prompt="Delete this user and all their grants and tokens?")
def user_delete(name: str) -> None:
    """Delete user NAME, their grants, team memberships and tokens."""
    call(lambda c: c.delete(f"/users/{name}"))
    click.echo(f"deleted user {name}")


# -- organizations and teams ------------------------------------------------------------

ORG_COLUMNS = ("name", "public", "description", "created_by", "created_at")


@click.group("org", cls=ApiGroup)
def org() -> None:
    """Organizations (namespaces)."""


@org.command("list")
@json_option
def org_list(as_json: bool) -> None:
    """List the organizations you can see."""
    emit(call(lambda c: c.get("/orgs")), as_json, ORG_COLUMNS)


@org.command("create")
@click.argument("name")
@click.option("--description", default=None)
@click.option("--public/--private", default=False, show_default=True,
              help="Public: anyone may pull, even without logging in.")
@json_option
def org_create(name: str, description: str | None, public: bool, as_json: bool) -> None:
    """Create organization NAME (you become its owner)."""
    body = {"name": name, "description": description, "public": public}
    emit(call(lambda c: c.post("/orgs", body)), as_json)


@org.command("show")
@click.argument("name")
@json_option
def org_show(name: str, as_json: bool) -> None:
    """Show organization NAME."""
    emit(call(lambda c: c.get(f"/orgs/{name}")), as_json)


@org.command("update")
@click.argument("name")
@click.option("--description", default=None)
@click.option("--public/--private", default=None)
@json_option
def org_update(name: str, description: str | None, public: bool | None, as_json: bool) -> None:
    """Change organization NAME's description or visibility."""
    body = {"description": description, "public": public}
    emit(call(lambda c: c.patch(f"/orgs/{name}", body)), as_json)


@org.command("delete")
@click.argument("name")
@click.confirmation_option(prompt="Delete this organization, its teams, robots and grants?")
def org_delete(name: str) -> None:
    """Delete organization NAME with its teams, robots and grants."""
    call(lambda c: c.delete(f"/orgs/{name}"))
    click.echo(f"deleted organization {name}")


@click.group("team", cls=ApiGroup)
def team() -> None:
    """Teams inside an organization."""


@team.command("list")
@click.argument("org_name", metavar="ORG")
@json_option
def team_list(org_name: str, as_json: bool) -> None:
    """List ORG's teams."""
    emit(call(lambda c: c.get(f"/orgs/{org_name}/teams")), as_json,
         ("name", "description", "idp_group", "members"))


@team.command("create")
@click.argument("org_name", metavar="ORG")
@click.argument("name")
@click.option("--description", default=None)
@click.option("--idp-group", default=None, metavar="GROUP",
              help="Mirror this identity provider group (members set at each OIDC login).")
@json_option
def team_create(org_name: str, name: str, description: str | None, idp_group: str | None,
                as_json: bool) -> None:
    """Create team NAME in ORG."""
    body = {"name": name, "description": description, "idp_group": idp_group}
    emit(call(lambda c: c.post(f"/orgs/{org_name}/teams", body)), as_json)


@team.command("update")
@click.argument("org_name", metavar="ORG")
@click.argument("name")
@click.option("--description", default=None, help='New description ("" clears it).')
@click.option("--idp-group", default=None, metavar="GROUP",
              help='Mirror this identity provider group ("" = manage members in dtr).')
@json_option
def team_update(org_name: str, name: str, description: str | None, idp_group: str | None,
                as_json: bool) -> None:
    """Change team NAME of ORG: description or mirrored identity provider group."""
    body = {"description": description, "idp_group": idp_group}
    emit(call(lambda c: c.patch(f"/orgs/{org_name}/teams/{name}", body)), as_json)


@team.command("delete")
@click.argument("org_name", metavar="ORG")
@click.argument("name")
def team_delete(org_name: str, name: str) -> None:
    """Delete team NAME of ORG (and its grants)."""
    call(lambda c: c.delete(f"/orgs/{org_name}/teams/{name}"))
    click.echo(f"deleted team {org_name}/{name}")


@team.command("members")
@click.argument("org_name", metavar="ORG")
@click.argument("name")
@json_option
def team_members(org_name: str, name: str, as_json: bool) -> None:
    """List the members of team NAME in ORG."""
    members = call(lambda c: c.get(f"/orgs/{org_name}/teams/{name}/members"))
    emit(members if as_json else [{"user": m} for m in members], as_json, ("user",))


@team.command("add-member")
@click.argument("org_name", metavar="ORG")
@click.argument("name")
@click.argument("username")
def team_add_member(org_name: str, name: str, username: str) -> None:
    """Add USERNAME to team NAME in ORG."""
    call(lambda c: c.put(f"/orgs/{org_name}/teams/{name}/members/{username}"))
    click.echo(f"added {username} to {org_name}/{name}")


@team.command("remove-member")
@click.argument("org_name", metavar="ORG")
@click.argument("name")
@click.argument("username")
def team_remove_member(org_name: str, name: str, username: str) -> None:
    """Remove USERNAME from team NAME in ORG."""
    call(lambda c: c.delete(f"/orgs/{org_name}/teams/{name}/members/{username}"))
    click.echo(f"removed {username} from {org_name}/{name}")
