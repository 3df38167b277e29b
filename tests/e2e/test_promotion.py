"""``dtr promote`` (``signing.md`` §8.8 flow 2, "push to staging → sign → promote") with the
REAL cosign v3.1.2 and crane against a live dtr with authentication on, whose protected
repository ``prod/**`` is configured through the settings file (one trusted cosign key).

Push to the unprotected ``staging/app`` with crane, ``cosign sign --key`` the staging
digest (v3 bundle), ``dtr promote`` it to ``prod/app:1.0`` (the CLI logged in as the
admin) → the counts; ``cosign verify`` of ``prod/app:1.0`` against dtr succeeds. An
unsigned digest is refused (403 ``UNSIGNED_MANIFEST`` over the HTTP API, the message from
the CLI) and nothing is tagged. Revoking the key over the admin API (``PATCH …/keys/{id}``,
allowed for settings-file policies) makes crane's tag pull fail with ``SIGNATURE_REVOKED``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dtr.signing.keys import TrustedKey
from tests.e2e.test_signing_recipes import (  # noqa: F401 - fixtures
    OFFLINE,
    Tools,
    cosign_keys,
    sentinel,
    tools,
)
from tests.integration.admin.test_cli import Cli
from tests.support.peers import ADMIN_PASSWORD, DtrServer, dtr_server, peer

pytestmark = pytest.mark.e2e
POLICY = "promo-signing"
PROD = "prod/app"


@dataclass
class Promo:
    """The live server, the signing tools logged in to it and the admin CLI."""

    server: DtrServer
    tools: Tools
    key: Path
    pub: TrustedKey
    cli: Cli

    @property
    def reg(self) -> str:
        return self.server.addr

    def run(self, tool: str, *args: str, check: bool = True) -> tuple[int, str]:
        proc = self.tools.client.run_any([peer(tool), *args], cwd=self.tools.home,
                                         check=check)
        return proc.returncode, proc.stdout + proc.stderr

    def staged(self, name: str) -> str:
        """A fresh image pushed (by tag) to the unprotected ``staging/app``; its digest."""
        return self.tools.stage_image(f"{self.reg}/staging/app:{name}", "promo")

    def v2_get(self, path: str) -> httpx.Response:
        """GET ``path`` of the OCI API with an admin pull token (from the challenge)."""
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        challenge = httpx.get(f"{self.server.url}{path}", headers=accept)
        assert challenge.status_code == 401, challenge.text
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge.headers["www-authenticate"]))
        r = httpx.get(params["realm"], auth=("admin", ADMIN_PASSWORD), params={
            "service": params["service"], "scope": params["scope"]})
        assert r.status_code == 200, r.text
        return httpx.get(f"{self.server.url}{path}",
                         headers={**accept, "Authorization": f"Bearer {r.json()['token']}"})

    def api(self) -> httpx.Client:
        """The admin API with the CLI's token (the admin)."""
        token = json.loads(self.cli.config.read_text())["token"]
        return httpx.Client(base_url=f"{self.server.url}/api/v1", timeout=60,
                            headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def promo(tools: Tools,  # noqa: F811 - the imported fixture
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Promo]:
    key, pub = cosign_keys(tools, "promo")
    data = tmp_path_factory.mktemp("promo")
    config = data / "dtr.yaml"
    config.write_text(json.dumps({"signing": {"policies": [{
        "name": POLICY, "repositories": "prod/**",
        "keys": [{"pem_file": str(key.with_suffix(".pub")), "name": "ci"}]}]}}))
    with dtr_server(data, auth=True, extra={"DTR_CONFIG": str(config)}) as server:
        cli = Cli(data / "cli.json")
        cli("login", server.url, "--username", "admin", input=f"{ADMIN_PASSWORD}\n")
        promo = Promo(server, tools, key, pub, cli)
        # crane and cosign share the tools' DOCKER_CONFIG
        promo.run("crane", "auth", "login", server.addr, "-u", "admin", "-p", ADMIN_PASSWORD)
        yield promo


def test_unsigned_promotion_is_refused_and_nothing_is_tagged(promo: Promo) -> None:
    digest = promo.staged("unsigned")
    with promo.api() as api:
        r = api.post(f"/repositories/{PROD}/promotions",
                     json={"source": f"staging/app@{digest}", "tags": ["unsigned"]})
    assert r.status_code == 403, r.text
    problem: dict[str, Any] = r.json()
    # the admin API answers problem+json: the gate's reason is in ``context``
    assert problem["context"]["reason"] == "UNSIGNED_MANIFEST", problem
    out = promo.cli("promote", f"staging/app@{digest}", PROD, "--tag", "unsigned",
                    code=1).output
    assert "signature required" in out, out
    rc, out = promo.run("crane", "manifest", f"{promo.reg}/{PROD}:unsigned", check=False)
    assert rc != 0
    assert "MANIFEST_UNKNOWN: manifest unsigned is not known to prod/app" in out, out
    assert promo.v2_get(f"/v2/{PROD}/manifests/unsigned").status_code == 404


def test_signed_promotion_verifies_then_revocation_blocks_pulls(promo: Promo) -> None:
    digest = promo.staged("signed")
    promo.run("cosign", "sign", "--key", str(promo.key), *OFFLINE,
              f"{promo.reg}/staging/app@{digest}")
    done = promo.cli.json("promote", f"staging/app@{digest}", PROD, "--tag", "1.0")
    assert done["repository"] == PROD
    assert done["digest"] == digest
    assert done["tags"] == ["1.0"]
    assert done["copied"]["manifests"] == 1
    assert done["copied"]["referrers"] == 1  # the cosign v3 bundle
    assert done["copied"]["blobs_mounted"] >= 3  # config, layer, bundle blob
    rc, out = promo.run("crane", "digest", f"{promo.reg}/{PROD}:1.0")
    assert out.strip() == digest
    promo.run("cosign", "verify", "--key", str(promo.key.with_suffix(".pub")),
              "--insecure-ignore-tlog=true", f"{promo.reg}/{PROD}:1.0")

    with promo.api() as api:
        r = api.patch(f"/signing/policies/{POLICY}/keys/{promo.pub.id}",
                      json={"status": "revoked"})
    assert r.status_code == 200, r.text
    assert f"{PROD}@{digest}" in r.json()["affected"]
    rc, out = promo.run("crane", "manifest", f"{promo.reg}/{PROD}:1.0", check=False)
    assert rc != 0
    assert "DENIED" in out, out
    assert "reason:SIGNATURE_REVOKED" in out, out
    r = promo.v2_get(f"/v2/{PROD}/manifests/1.0")
    assert r.status_code == 403, r.text
    assert r.json()["errors"][0]["detail"]["reason"] == "SIGNATURE_REVOKED"
