"""The signing gate's commands: ``dtr signing`` (signing policies, their keys and trust
stores) and ``dtr promote``, thin mirrors of ``/api/v1`` through ``dtr.client``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from dtr.cli_admin.base import (
    ApiCommand,
    ApiGroup,
    call,
    emit,
    json_option,
    table,
)

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
