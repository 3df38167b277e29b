"""The admin CLI's plumbing: where ``dtr login`` keeps the server URL and token
(``DTR_CLI_CONFIG``, else the user config folder; ``DTR_CLI_URL`` / ``DTR_CLI_TOKEN``
override), the client it builds, how API errors become a clear message and exit 1
(``ApiCommand``, ``ApiGroup``), and how results print (a table, or ``--json``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

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
