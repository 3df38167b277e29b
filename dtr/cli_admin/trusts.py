"""``dtr trust`` (federation trusts for keyless CI) and ``dtr policy`` (``explain``,
and ``check`` of a decision table against a server or, ``--offline``, a policy
CSV), thin mirrors of ``/api/v1`` through ``dtr.client``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from dtr.cli_admin.base import (
    ApiGroup,
    call,
    emit,
    json_option,
    table,
)

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
