"""``dtr signing policy|key|truststore`` and ``dtr promote`` against a live ``dtr serve``:
the CLI mirrors ``/api/v1/signing/policies`` and the promotions route, and prints refusals
from the problem detail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dtr.signing.keys import TrustedKey
from tests.integration.admin.test_cli import Cli
from tests.support.peers import ADMIN_PASSWORD, DtrServer, dtr_server
from tests.unit.signing import material as m


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DtrServer]:
    with dtr_server(tmp_path_factory.mktemp("dtr"), workers=1, auth=True) as s:
        yield s


@pytest.fixture
def dtr(server: DtrServer, tmp_path: Path) -> Cli:
    cli = Cli(tmp_path / "cli.json")
    cli("login", server.url, "--username", "admin", input=f"{ADMIN_PASSWORD}\n")
    return cli


def test_signing_policy_lifecycle(dtr: Cli, tmp_path: Path) -> None:
    key = tmp_path / "cosign.pub"
    key.write_bytes(m.public_pem(m.new_key("p256")))
    kid = TrustedKey.from_pem(key.read_text()).id
    made = dtr.json("signing", "policy", "create", "prod", "--pattern", "prod/**",
                    "--key", str(key), "--format", "cosign")
    assert made["version"] == 1
    assert made["keys"][0]["key_id"] == kid
    assert "prod/**" in dtr("signing", "policy", "list").stdout
    assert dtr.json("signing", "policy", "update", "prod", "--mode", "audit")["version"] == 2
    assert kid in dtr("signing", "policy", "show", "prod").stdout
    roots = tmp_path / "roots.pem"
    roots.write_bytes(m.pki().pem())
    stored = dtr.json("signing", "truststore", "set", "prod", "roots", "--roots", str(roots))
    assert [t["name"] for t in stored["trust_stores"]] == ["roots"]
    dtr("signing", "truststore", "delete", "prod", "roots")
    other = tmp_path / "other.pub"
    other.write_bytes(m.public_pem(m.new_key("ed25519")))
    added = dtr("signing", "key", "add", "prod", str(other)).stdout.strip()
    assert added == TrustedKey.from_pem(other.read_text()).id
    assert "retired" in dtr("signing", "key", "retire", "prod", added).stdout
    out = dtr("signing", "key", "revoke", "prod", kid).stdout
    assert "0 digest(s), 0 tag(s) affected" in out
    dtr("signing", "key", "delete", "prod", added, "--yes")
    assert "already has key" in dtr("signing", "key", "add", "prod", str(key), code=1).output
    dtr("signing", "policy", "delete", "prod", "--yes")
    assert "not found" in dtr("signing", "policy", "show", "prod", code=1).output


def test_promote_refusals_are_printed(dtr: Cli) -> None:
    digest = "sha256:" + "0" * 64
    out = dtr("promote", f"staging/app@{digest}", "prod/app", "--tag", "1.0", code=1).output
    assert "not known" in out
    bad = dtr("promote", "staging/app", "prod/app", code=1).output
    assert "REPOSITORY@DIGEST" in bad
