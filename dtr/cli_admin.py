"""The admin commands of the ``dtr`` CLI (login, users, orgs, teams, robots, roles, grants,
tokens, federation trusts, policy explain/check, signing policies, promotion): a thin
mirror of ``/api/v1`` through ``dtr.client``.
``dtr/cli.py`` registers ``ADMIN_COMMANDS``; never imports litestar or the server layers
(``dtr.policy`` only for ``policy check --offline``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import webbrowser
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from dtr.client import AdminClient, ApiError

CONFIG_ENV = "DTR_CLI_CONFIG"
URL_ENV, TOKEN_ENV = "DTR_CLI_URL", "DTR_CLI_TOKEN"
PAT_PREFIX = "dtr_pat_"
SESSION_PREFIX = "dtr_ses_"
F = TypeVar("F", bound=Callable[..., Any])


# -- configuration and output ---------------------------------------------------------------

def config_path() -> Path:
    """``$DTR_CLI_CONFIG`` or ``~/.config/dtr/cli.json``."""
    return Path(os.environ.get(CONFIG_ENV) or Path.home() / ".config/dtr/cli.json")


def load_config() -> dict[str, Any]:
    """The saved login (empty when there is none); ``DTR_CLI_URL``/``DTR_CLI_TOKEN`` win."""
    path, saved = config_path(), {}
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"cannot read {path}: {exc}") from None
    if os.environ.get(URL_ENV) and os.environ.get(TOKEN_ENV):
        saved = {"url": os.environ[URL_ENV], "token": os.environ[TOKEN_ENV]}
    return saved if isinstance(saved, dict) else {}


def save_config(data: dict[str, Any]) -> Path:
    """Write the login file with mode 0600 (it holds a token)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    path.chmod(0o600)
    return path


def connect() -> AdminClient:
    """A client for the saved login."""
    cfg = load_config()
    if not cfg.get("url") or not cfg.get("token"):
        raise click.ClickException("not logged in: run `dtr login URL` first")
    return AdminClient(cfg["url"], token=cfg["token"])


def call(fn: Callable[[AdminClient], Any]) -> Any:
    """Run ``fn`` with a connected client; an API error becomes a CLI error (exit 1)."""
    with connect() as client:
        return fn(client)


class ApiCommand(click.Command):
    """A command that prints a refused request's problem detail and exits 1."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, turning ``ApiError`` into a message on stderr."""
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            lines = [str(exc)]
            lines += ["  " + (", ".join(f"{k}={v}" for k, v in err.items())
                              if isinstance(err, dict) else str(err))
                      for err in exc.problem.get("errors") or []]
            raise click.ClickException("\n".join(lines)) from None


class ApiGroup(click.Group):
    """A group whose commands are ``ApiCommand``s."""

    command_class = ApiCommand


def json_option(fn: F) -> F:
    """Add ``--json`` (machine-readable output) to a command."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON instead of a table.")(fn)


def emit(data: Any, as_json: bool, columns: Sequence[str] = ()) -> None:
    """Print ``data`` as JSON or as a table of ``columns`` (a dict as key: value lines)."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif isinstance(data, list):
        click.echo(table(data, columns))
    elif isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        for key, value in data.items():
            click.echo(f"{key:<{width}}  {_cell(value)}")


def table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as an aligned text table with a header."""
    cells = [[c.upper() for c in columns]]
    cells += [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value) or "-"
    return str(value)


def new_password(stdin: bool) -> str:
    """A new password from stdin (first line) or an interactive prompt with confirmation."""
    if stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


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


# -- federation trusts (keyless CI) -----------------------------------------------------

TRUSTS = "/federation/trusts"
TRUST_COLUMNS = ("name", "issuer", "audience", "robot", "conditions", "max_token_seconds",
                 "enabled")


def _conditions(values: Iterable[str]) -> list[dict[str, str]]:
    """``claim=value`` (exact) and ``claim~=glob`` options as API conditions."""
    parsed = []
    for value in values:
        claim, sep, pattern = value.partition("=")
        if not sep or not claim.strip("~ ") or not pattern:
            raise click.BadParameter(f"{value!r}: use claim=value or claim~=glob",
                                     param_hint="--condition")
        glob = claim.endswith("~")
        parsed.append({"claim": claim.removesuffix("~").strip(), "pattern": pattern,
                       "match": "glob" if glob else "exact"})
    return parsed


def _trust_row(trust: dict[str, Any]) -> dict[str, Any]:
    """A trust with its conditions spelled as on the command line."""
    spelled = [f"{c['claim']}{'~=' if c['match'] == 'glob' else '='}{c['pattern']}"
               for c in trust.get("conditions", [])]
    return {**trust, "conditions": spelled}


def _show_trust(trust: dict[str, Any], as_json: bool) -> None:
    emit(trust if as_json else _trust_row(trust), as_json)


condition_option = click.option(
    "--condition", "conditions", multiple=True, metavar="CLAIM=VALUE|CLAIM~=GLOB",
    help="A claim condition (repeatable; all must hold). '=' is exact, '~=' a glob where "
         "* stays inside one /-separated part and ** crosses /.")
scope_option = click.option(
    "--scope", "scopes", multiple=True, metavar="repository:GLOB:ACTIONS",
    help="Narrow what exchanged tokens may do (repeatable; default: the robot's rights).")


@click.group("trust", cls=ApiGroup)
def trust() -> None:
    """Federation trusts: CI workloads (by their OIDC ID token's claims) acting as a robot,
    with no stored secret (keyless CI).
    """


@trust.command("list")
@json_option
def trust_list(as_json: bool) -> None:
    """List the trusts you may read, in the order exchanges try them."""
    found = call(lambda c: c.get(TRUSTS))
    emit(found if as_json else [_trust_row(t) for t in found], as_json, TRUST_COLUMNS)


@trust.command("show")
@click.argument("name")
@json_option
def trust_show(name: str, as_json: bool) -> None:
    """Show trust NAME."""
    _show_trust(call(lambda c: c.get(f"{TRUSTS}/{name}")), as_json)


@trust.command("create")
@click.argument("name")
@click.option("--preset", type=click.Choice(["github-actions", "gitlab-ci", "kubernetes"]),
              default=None, help="Fill the issuer (GitHub, GitLab.com) and check the "
              "conditions pin the claim that names the workload.")
@click.option("--issuer", default=None, help="The issuer URL exactly as tokens carry it.")
@click.option("--audience", required=True, help="The aud the CI system puts in its tokens.")
@condition_option
@click.option("--robot", "robot_name", default=None,
              help="Act as this existing robot (robot$<org>+<name>).")
@click.option("--org", "org_name", default=None,
              help="Role binding: the organization (creates robot$<org>+NAME).")
@click.option("--repository", default="**", show_default=True,
              help="Role binding: the repository glob.")
@click.option("--role", "role_name", default=None, help="Role binding: the role.")
@scope_option
@click.option("--max-seconds", type=int, default=None,
              help="Registry token lifetime, 60-3600 (default: the server's ceiling).")
@click.option("--description", default=None)
@click.option("--disabled", is_flag=True, help="Create it disabled.")
@json_option
def trust_create(name: str, preset: str | None, issuer: str | None, audience: str,
                 conditions: tuple[str, ...], robot_name: str | None, org_name: str | None,
                 repository: str, role_name: str | None, scopes: tuple[str, ...],
                 max_seconds: int | None, description: str | None, disabled: bool,
                 as_json: bool) -> None:
    """Create trust NAME: give --robot, or --org and --role (a role binding)."""
    if (robot_name is None) == (org_name is None or role_name is None):
        raise click.UsageError("give --robot, or --org and --role (a role binding)")
    body: dict[str, Any] = {"name": name, "audience": audience,
                            "conditions": _conditions(conditions), "enabled": not disabled}
    optional = {"preset": preset, "issuer": issuer, "robot": robot_name,
                "max_token_seconds": max_seconds, "description": description,
                "scopes": list(scopes) or None}
    body.update({k: v for k, v in optional.items() if v is not None})
    if org_name is not None and role_name is not None:
        body["role_binding"] = {"org": org_name, "repository": repository, "role": role_name}
    _show_trust(call(lambda c: c.post(TRUSTS, body)), as_json)


@trust.command("update")
@click.argument("name")
@click.option("--issuer", default=None)
@click.option("--audience", default=None)
@condition_option
@scope_option
@click.option("--all-rights", is_flag=True, help="Drop the scope restrictions.")
@click.option("--max-seconds", type=int, default=None)
@click.option("--enable/--disable", "enabled", default=None,
              help="Accept or refuse exchanges (on every replica at the next exchange).")
@click.option("--description", default=None, help='New description ("" clears it).')
@json_option
def trust_update(name: str, issuer: str | None, audience: str | None,
                 conditions: tuple[str, ...], scopes: tuple[str, ...], all_rights: bool,
                 max_seconds: int | None, enabled: bool | None, description: str | None,
                 as_json: bool) -> None:
    """Change trust NAME (--condition and --scope replace the whole list)."""
    body: dict[str, Any] = {k: v for k, v in {
        "issuer": issuer, "audience": audience, "max_token_seconds": max_seconds,
        "enabled": enabled, "description": description}.items() if v is not None}
    if conditions:
        body["conditions"] = _conditions(conditions)
    if scopes or all_rights:
        body["scopes"] = list(scopes)
    _show_trust(call(lambda c: c.patch(f"{TRUSTS}/{name}", body)), as_json)


@trust.command("delete")
@click.argument("name")
@click.confirmation_option(prompt="Delete this trust (and a robot it created)?")
def trust_delete(name: str) -> None:
    """Delete trust NAME (a role binding's robot and grant go too)."""
    call(lambda c: c.delete(f"{TRUSTS}/{name}"))
    click.echo(f"deleted trust {name}")


# -- policy explain / check -------------------------------------------------------------

@click.group("policy", cls=ApiGroup)
def policy() -> None:
    """Ask why a request is allowed or denied; test decision tables."""


@policy.command("explain")
@click.option("--subject", default=None, help="Whose access (default: you).")
@click.option("--repository", default=None, help="A repository path (repository actions).")
@click.option("--org", "org_name", default=None, help="An organization (org actions).")
@click.option("--object", "obj", default=None, help="The object, for org or system actions.")
@click.option("--action", required=True, help="pull, push, delete, org:read, org:admin, …")
@json_option
def policy_explain(subject: str | None, repository: str | None, org_name: str | None,
                   obj: str | None, action: str, as_json: bool) -> None:
    """Explain the decision for one request: allowed or not, the rule and the chain."""
    params = {"subject": subject, "repository": repository, "org": org_name, "object": obj,
              "action": action}
    decision = call(lambda c: c.get("/authz/explain", **params))
    if as_json:
        emit(decision, True)
        return
    verdict = "ALLOWED" if decision["allowed"] else "DENIED"
    click.echo(f"{verdict}: {decision['subject']} {decision['action']} "
               f"{decision['object']} (org {decision['domain']})")
    click.echo(f"reason: {decision['reason']}")
    if decision.get("rule"):
        click.echo(f"rule:   {', '.join(decision['rule'])}")
    if decision.get("chain"):
        click.echo(f"chain:  {' → '.join(decision['chain'])}")


def _offline_mismatches(table_path: Path, policy_csv: Path) -> tuple[int, list[dict[str, Any]]]:
    """Run the table against ``policies/`` + ``policy_csv`` with the offline engine."""
    from dtr.errors import Invalid  # noqa: PLC0415 - only the offline path needs the engine
    from dtr.policy.enforcer import OfflineEngine, check_table, load_table  # noqa: PLC0415

    try:
        rows = load_table(table_path)
        found = check_table(OfflineEngine.from_files(policy_csv), rows)
    except Invalid as exc:
        raise click.ClickException(exc.message) from None
    return len(rows), [{"line": m.line, "subject": m.subject, "repository": m.object,
                        "action": m.action, "expected": m.expected, "actual": m.got,
                        "reason": m.reason} for m in found]


def _online_mismatches(table_path: Path) -> tuple[int, list[dict[str, Any]]]:
    """Run the table against the server's live policy (``POST /authz/check``)."""
    from dtr.policy.enforcer import load_table  # noqa: PLC0415 - the same CSV reader

    rows = load_table(table_path)
    columns = ("subject", "repository", "action", "expected")
    for row in rows:
        if any(not row.get(c) for c in columns):
            raise click.ClickException(f"{table_path}:{row['line']}: needs "
                                       f"{', '.join(columns)} (header row first)")
    body = {"rows": [{c: row[c].lower() if c == "expected" else row[c] for c in columns}
                     for row in rows]}
    report = call(lambda c: c.post("/authz/check", body))
    return len(rows), [{"line": int(row["line"]), **result}
                       for row, result in zip(rows, report["rows"], strict=True)
                       if not result["ok"]]


@policy.command("check")
@click.argument("table_path", metavar="FILE.csv", type=click.Path(exists=True, dir_okay=False,
                                                                   path_type=Path))
@click.option("--offline", is_flag=True, help="Evaluate locally against policies/ and --policy "
              "instead of asking the server.")
@click.option("--policy", "policy_csv", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help="Policy CSV (p, g, g2 lines) for --offline.")
@json_option
def policy_check(table_path: Path, offline: bool, policy_csv: Path | None,
                 as_json: bool) -> None:
    """Check a decision table (CSV header: subject,repository,action,expected with
    expected allow|deny); exit 1 and print the rows that do not match.
    """
    if offline and policy_csv is None:
        raise click.UsageError("--offline needs --policy FILE.csv")
    total, bad = (_offline_mismatches(table_path, policy_csv) if offline and policy_csv
                  else _online_mismatches(table_path))
    if as_json:
        emit({"rows": total, "mismatches": bad}, True)
    elif bad:
        click.echo(table(bad, ("line", "subject", "repository", "action", "expected", "actual",
                               "reason")))
        click.echo(f"{len(bad)} of {total} rows do not match", err=True)
    else:
        click.echo(f"all {total} rows match")
    if bad:
        sys.exit(1)


# -- signing policies and promotion ---------------------------------------------------------

POLICIES = "/signing/policies"
POLICY_COLUMNS = ("name", "pattern", "protected", "mode", "min_signatures", "keys",
                  "trust_stores", "source", "version")
KEY_COLUMNS = ("key_id", "name", "status", "valid_from", "retired_at", "revoked_at")


def _policy_row(policy: dict[str, Any]) -> dict[str, Any]:
    """A policy with its keys and trust stores summarised for a table."""
    return {**policy, "keys": [f"{k['key_id'][:12]}({k['status']})" for k in policy["keys"]],
            "trust_stores": [t["name"] for t in policy["trust_stores"]]}


def _show_policy(policy: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit(policy, True)
        return
    emit({k: v for k, v in _policy_row(policy).items() if k not in ("keys",)}, False)
    if policy["keys"]:
        click.echo("")
        click.echo(table(policy["keys"], KEY_COLUMNS))


def _read_text(path: str) -> str:
    """A PEM file's text (``-`` = stdin)."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).expanduser().read_text()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from None


@click.group("signing", cls=ApiGroup)
def signing() -> None:
    """Signing policies of the gate: protected repositories, trusted keys, trust stores."""


@signing.group("policy", cls=ApiGroup)
def signing_policy() -> None:
    """Trust policies (system administrators change them; auditors and org owners read)."""


@signing_policy.command("list")
@json_option
def signing_policy_list(as_json: bool) -> None:
    """List the signing policies you may read."""
    found = call(lambda c: c.get(POLICIES))
    emit(found if as_json else [_policy_row(p) for p in found], as_json, POLICY_COLUMNS)


@signing_policy.command("show")
@click.argument("name")
@json_option
def signing_policy_show(name: str, as_json: bool) -> None:
    """Show policy NAME with its keys and trust stores."""
    _show_policy(call(lambda c: c.get(f"{POLICIES}/{name}")), as_json)


mode_option = click.option("--mode", type=click.Choice(["enforce", "audit"]), default=None,
                           help="enforce refuses untrusted tags; audit only records them.")
min_option = click.option("--min-signatures", type=int, default=None, metavar="K",
                          help="Signatures from distinct trusted keys needed (k-of-n).")
formats_option = click.option("--format", "formats", multiple=True, metavar="FORMAT",
                              help="Accepted signature format (repeatable): cosign, "
                                   "notation, or one of their formats (default: all).")


@signing_policy.command("create")
@click.argument("name")
@click.option("--pattern", required=True, metavar="GLOB",
              help="Repositories protected (* one segment, ** any: prod/**).")
@mode_option
@min_option
@formats_option
@click.option("--require-children-signed", is_flag=True,
              help="An index is trusted only if every child manifest is.")
@click.option("--unprotected", is_flag=True, help="Store the policy without protecting.")
@click.option("--key", "keys", multiple=True, metavar="PEM_FILE",
              help="A trusted cosign public key (repeatable).")
@json_option
def signing_policy_create(name: str, pattern: str, mode: str | None,
                          min_signatures: int | None, formats: tuple[str, ...],
                          require_children_signed: bool, unprotected: bool,
                          keys: tuple[str, ...], as_json: bool) -> None:
    """Create signing policy NAME protecting the repositories matching --pattern."""
    body: dict[str, Any] = {"name": name, "pattern": pattern, "protected": not unprotected,
                            "require_children_signed": require_children_signed,
                            "keys": [{"pem": _read_text(k)} for k in keys]}
    if mode:
        body["mode"] = mode
    if min_signatures is not None:
        body["min_signatures"] = min_signatures
    if formats:
        body["formats"] = list(formats)
    _show_policy(call(lambda c: c.post(POLICIES, body)), as_json)


@signing_policy.command("update")
@click.argument("name")
@click.option("--pattern", default=None, metavar="GLOB", help="New repository glob.")
@mode_option
@min_option
@formats_option
@click.option("--require-children-signed/--no-require-children-signed", default=None,
              help="Whether an index needs every child trusted.")
@click.option("--protected/--unprotected", default=None, help="Protect or stop protecting.")
@json_option
def signing_policy_update(name: str, pattern: str | None, mode: str | None,
                          min_signatures: int | None, formats: tuple[str, ...],
                          require_children_signed: bool | None, protected: bool | None,
                          as_json: bool) -> None:
    """Change fields of policy NAME (its version goes up)."""
    body = {"pattern": pattern, "mode": mode, "min_signatures": min_signatures,
            "formats": list(formats) or None,
            "require_children_signed": require_children_signed, "protected": protected}
    _show_policy(call(lambda c: c.patch(f"{POLICIES}/{name}", body)), as_json)


@signing_policy.command("delete")
@click.argument("name")
@click.confirmation_option(prompt="Delete this signing policy (its repositories are then "
                                  "unprotected by it)?")
def signing_policy_delete(name: str) -> None:
    """Delete policy NAME with its keys and trust stores."""
    call(lambda c: c.delete(f"{POLICIES}/{name}"))
    click.echo(f"Deleted signing policy {name}")


@signing.group("key", cls=ApiGroup)
def signing_key() -> None:
    """Trusted cosign public keys of a policy and their lifecycle."""


@signing_key.command("add")
@click.argument("policy")
@click.argument("pem_file")
@click.option("--name", default=None, help="A label for the key.")
@json_option
def signing_key_add(policy: str, pem_file: str, name: str | None, as_json: bool) -> None:
    """Trust the public key in PEM_FILE (- = stdin) in POLICY; prints its id."""
    made = call(lambda c: c.post(f"{POLICIES}/{policy}/keys",
                                 {"pem": _read_text(pem_file), "name": name}))
    if as_json:
        emit(made, True)
    else:
        click.echo(made["key_id"])


def _set_status(policy: str, key_id: str, status: str, as_json: bool) -> None:
    done = call(lambda c: c.patch(f"{POLICIES}/{policy}/keys/{key_id}", {"status": status}))
    if as_json:
        emit(done, True)
        return
    click.echo(f"Key {key_id} of {policy} is {status}: {done['digests_affected']} digest(s), "
               f"{done['tags_affected']} tag(s) affected (policy version "
               f"{done['policy']['version']})")
    for ref in done["affected"]:
        click.echo(f"  {ref}")


@signing_key.command("retire")
@click.argument("policy")
@click.argument("key_id")
@json_option
def signing_key_retire(policy: str, key_id: str, as_json: bool) -> None:
    """Retire KEY_ID: signatures it made before now keep counting, new ones do not."""
    _set_status(policy, key_id, "retired", as_json)


@signing_key.command("revoke")
@click.argument("policy")
@click.argument("key_id")
@json_option
def signing_key_revoke(policy: str, key_id: str, as_json: bool) -> None:
    """Revoke KEY_ID now: none of its signatures count; tags it alone kept trusted answer
    SIGNATURE_REVOKED. Works on policies of the settings file too.
    """
    _set_status(policy, key_id, "revoked", as_json)


@signing_key.command("activate")
@click.argument("policy")
@click.argument("key_id")
@json_option
def signing_key_activate(policy: str, key_id: str, as_json: bool) -> None:
    """Make a retired or revoked KEY_ID active again."""
    _set_status(policy, key_id, "active", as_json)


@signing_key.command("delete")
@click.argument("policy")
@click.argument("key_id")
@click.confirmation_option(prompt="Remove this key (revoking keeps the record)?")
def signing_key_delete(policy: str, key_id: str) -> None:
    """Stop trusting KEY_ID in POLICY and forget it."""
    call(lambda c: c.delete(f"{POLICIES}/{policy}/keys/{key_id}"))
    click.echo(f"Removed key {key_id} from {policy}")


@signing.group("truststore", cls=ApiGroup)
def signing_truststore() -> None:
    """Notation trust stores (X.509 roots and trusted identities) of a policy."""


@signing_truststore.command("set")
@click.argument("policy")
@click.argument("name")
@click.option("--roots", "roots", required=True, metavar="PEM_FILE",
              help="Root certificates (concatenated PEM; - = stdin).")
@click.option("--identity", "identities", multiple=True, metavar="IDENTITY",
              help="A trusted identity ('x509.subject: C=US, ST=WA, O=Acme, CN=release' or "
                   "'*'; repeatable; default '*').")
@json_option
def signing_truststore_set(policy: str, name: str, roots: str,
                           identities: tuple[str, ...], as_json: bool) -> None:
    """Add or replace trust store NAME of POLICY."""
    body = {"roots_pem": _read_text(roots), "identities": list(identities) or ["*"]}
    _show_policy(call(lambda c: c.put(f"{POLICIES}/{policy}/trust-stores/{name}", body)),
                 as_json)


@signing_truststore.command("delete")
@click.argument("policy")
@click.argument("name")
@json_option
def signing_truststore_delete(policy: str, name: str, as_json: bool) -> None:
    """Remove trust store NAME from POLICY."""
    _show_policy(call(lambda c: c.delete(f"{POLICIES}/{policy}/trust-stores/{name}")),
                 as_json)


@click.command("promote", cls=ApiCommand)
@click.argument("source", metavar="SOURCE@sha256:DIGEST")
@click.argument("target")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="Tag to set in TARGET (repeatable; all or none are written).")
@json_option
def promote(source: str, target: str, tags: tuple[str, ...], as_json: bool) -> None:
    """Copy a signed digest (blobs, index children, signatures and other referrers) from
    SOURCE into repository TARGET and tag it there — refused unless TARGET's signing
    policy trusts the digest.
    """
    done = call(lambda c: c.post(f"/repositories/{target}/promotions",
                                 {"source": source, "tags": list(tags)}))
    if as_json:
        emit(done, True)
        return
    copied = done["copied"]
    click.echo(f"Promoted {done['digest']} to {done['repository']} "
               f"(tags: {', '.join(done['tags']) or '-'}; {copied['manifests']} manifest(s), "
               f"{copied['referrers']} referrer(s), {copied['blobs_mounted']} blob(s) mounted)")


ADMIN_COMMANDS: list[click.Command] = [login, logout, whoami, user, org, team, robot, role,
                                       grant, token, trust, policy, signing, promote]
"""The commands ``dtr/cli.py`` registers: ``for c in ADMIN_COMMANDS: main.add_command(c)``."""
