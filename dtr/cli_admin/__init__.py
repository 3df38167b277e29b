"""The admin commands of the ``dtr`` CLI (login, users, orgs, teams, robots, roles, grants,
tokens, federation trusts, policy explain/check, signing policies, promotion): a thin
mirror of ``/api/v1`` through ``dtr.client``.
Split by subject: ``base`` (configuration, client, errors, output), ``accounts``
(login, users, orgs, teams), ``access`` (robots, roles, grants, tokens), ``trusts``
(federation trusts, policy explain/check), ``gate`` (signing policies, promotion).
``dtr/cli.py`` registers ``ADMIN_COMMANDS``; never imports litestar or the server layers
(``dtr.policy`` only for ``policy check --offline``).
"""

from __future__ import annotations

import click

from dtr.cli_admin.access import grant, robot, role, token
from dtr.cli_admin.accounts import login, logout, org, team, user, whoami
from dtr.cli_admin.base import ApiGroup, connect, emit, json_option, load_config
from dtr.cli_admin.gate import promote, signing
from dtr.cli_admin.trusts import policy, trust

ADMIN_COMMANDS: list[click.Command] = [login, logout, whoami, user, org, team, robot, role,
                                       grant, token, trust, policy, signing, promote]
"""The commands ``dtr/cli.py`` registers: ``for c in ADMIN_COMMANDS: main.add_command(c)``."""

__all__ = ["ADMIN_COMMANDS", "ApiGroup", "connect", "emit", "json_option", "load_config", "login"]
