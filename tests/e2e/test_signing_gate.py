"""The signing gate against the REAL clients (cosign v3, notation v1.3.2, crane, skopeo) and a
live dtr whose protected repository ``prod/**`` is configured through the settings file
(``signing.policies``: two trusted cosign keys and a notation trust store).

Flows that must work (``signing.md`` §8.8): push by digest → ``cosign sign`` (v3 bundle) →
``crane tag``; the same with ``notation sign``; sign before push with legacy cosign, then
``skopeo copy`` to the tag. Refusals: an unsigned ``skopeo copy`` to a tag (the client prints
the gate's message), a signature by an untrusted key, a valid signature over another digest,
a ``cosign attest`` offered as a signature, a real cosign signature whose signature or
payload was tampered with, tag pulls after the key was revoked (``SIGNATURE_REVOKED``),
and (on a second gated server with authentication on) a pull-only user reading a
quarantined digest with a real skopeo and with cosign's and notation's User-Agent. After
acceptance ``cosign verify`` and ``notation verify`` succeed against dtr.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dtr.app import build_registry, close_registry, signing_service
from dtr.config import load_settings
from dtr.signing.keys import TrustedKey
from tests.e2e.test_auth_clients import Admin
from tests.e2e.test_signing_recipes import (  # noqa: F401 - fixtures
    OFFLINE,
    Tools,
    cosign_keys,
    sentinel,
    tools,
)
from tests.support.peers import DtrServer, dtr_server, peer

pytestmark = pytest.mark.e2e
PROD = "prod/app"


class Gate:
    """The live gated server and what the tests need to sign for it."""

    def __init__(self, server: DtrServer, tools: Tools,  # noqa: F811
                 keys: dict[str, Path],
                 pubs: dict[str, TrustedKey]) -> None:
        self.server = server
        self.tools = tools
        self.keys = keys
        self.pubs = pubs

    @property
    def reg(self) -> str:
        return self.server.addr

    def run(self, tool: str, *args: str, check: bool = True) -> tuple[int, str]:
        proc = self.tools.client.run_any([_peer(tool), *args], cwd=self.tools.home,
                                         check=check)
        return proc.returncode, proc.stdout + proc.stderr

    def skopeo(self, *args: str) -> tuple[int, str]:
        proc = self.tools.client.run_any([*self.tools.client.skopeo_argv(), *args],
                                         cwd=self.tools.home)
        return proc.returncode, proc.stdout + proc.stderr

    def staged(self, name: str) -> str:
        """A fresh image pushed (by tag) to the unprotected ``staging/app``; its digest."""
        return self.tools.stage_image(f"{self.reg}/staging/app:{name}", "gate")

    def to_prod(self, name: str) -> str:
        """Stage an image and copy it into ``prod/app`` by digest (quarantined)."""
        digest = self.staged(name)
        self.run("crane", "copy", f"{self.reg}/staging/app:{name}",
                 f"{self.reg}/{PROD}@{digest}")
        return digest

    def tag(self, digest: str, tag: str) -> tuple[int, str]:
        return self.run("crane", "tag", f"{self.reg}/{PROD}@{digest}", tag, check=False)


def _peer(tool: str) -> str:
    return peer(tool)


@pytest.fixture(scope="module")
def gate(tools: Tools,  # noqa: F811 - the imported fixture
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    keys: dict[str, Path] = {}
    pubs: dict[str, TrustedKey] = {}
    for name in ("trusted", "revocable", "other"):
        keys[name], pubs[name] = cosign_keys(tools, f"gate-{name}")
    tools.run("notation", "cert", "generate-test", "--default", "dtr-gate")
    ca = tools.home / ".config" / "notation" / "truststore" / "x509" / "ca" / "dtr-gate"
    [root] = list(ca.iterdir())
    data = tmp_path_factory.mktemp("gated")
    config = data / "dtr.yaml"
    config.write_text(json.dumps({"signing": {"policies": [{
        "name": "prod-signing", "repositories": "prod/**",
        "keys": [{"pem_file": str(keys["trusted"].with_suffix(".pub")), "name": "ci"},
                 {"pem_file": str(keys["revocable"].with_suffix(".pub")),
                  "name": "revocable"}],
        "trust_stores": [{"name": "dtr-gate", "roots_file": str(root),
                          "identities": ["*"]}]}]}}))
    with dtr_server(data, extra={"DTR_CONFIG": str(config)}) as server:
        yield Gate(server, tools, keys, pubs)


def sign(gate: Gate, key: str, digest: str, *extra: str) -> None:
    gate.run("cosign", "sign", "--key", str(gate.keys[key]), *OFFLINE, *extra,
             f"{gate.reg}/{PROD}@{digest}")


# -- flows that work ---------------------------------------------------------------------------
def test_cosign_v3_bundle_then_crane_tag(gate: Gate) -> None:
    digest = gate.to_prod("v3")
    rc, out = gate.tag(digest, "v3")
    assert rc != 0
    assert "signature required" in out, out
    sign(gate, "trusted", digest)
    rc, out = gate.tag(digest, "v3")
    assert rc == 0, out
    gate.run("cosign", "verify", "--key", str(gate.keys["trusted"].with_suffix(".pub")),
             "--insecure-ignore-tlog=true", f"{gate.reg}/{PROD}:v3")


def test_notation_sign_then_crane_tag(gate: Gate) -> None:
    digest = gate.to_prod("notation")
    gate.run("notation", "sign", "--insecure-registry", f"{gate.reg}/{PROD}@{digest}")
    rc, out = gate.tag(digest, "notation")
    assert rc == 0, out
    policy = {"version": "1.0", "trustPolicies": [{
        "name": "gate", "registryScopes": [f"{gate.reg}/{PROD}"],
        "signatureVerification": {"level": "strict"},
        "trustStores": ["ca:dtr-gate"], "trustedIdentities": ["*"]}]}
    policy_file = gate.tools.home / "gate-trustpolicy.json"
    policy_file.write_text(json.dumps(policy))
    gate.run("notation", "policy", "import", "--force", str(policy_file))
    gate.run("notation", "verify", "--insecure-registry", f"{gate.reg}/{PROD}:notation")


def test_legacy_sign_before_push_then_skopeo_copy(gate: Gate) -> None:
    digest = gate.staged("legacy")
    # the image is not in prod/app yet: legacy cosign tolerates the 404
    sign(gate, "trusted", digest, "--new-bundle-format=false")
    rc, out = gate.skopeo("copy", "--preserve-digests", "--src-tls-verify=false",
                          "--dest-tls-verify=false", f"docker://{gate.reg}/staging/app:legacy",
                          f"docker://{gate.reg}/{PROD}:legacy")
    assert rc == 0, out
    rc, out = gate.run("crane", "digest", f"{gate.reg}/{PROD}:legacy")
    assert out.strip() == digest


# -- refusals ------------------------------------------------------------------------------------
def test_unsigned_skopeo_copy_is_refused_with_the_message(gate: Gate) -> None:
    gate.staged("unsigned")
    rc, out = gate.skopeo("copy", "--preserve-digests", "--src-tls-verify=false",
                          "--dest-tls-verify=false",
                          f"docker://{gate.reg}/staging/app:unsigned",
                          f"docker://{gate.reg}/{PROD}:unsigned")
    assert rc != 0
    assert "signature required: repository prod/app only accepts tags" in out, out
    assert "Push by digest, sign it" in out, out


def test_untrusted_key_refused(gate: Gate) -> None:
    digest = gate.to_prod("untrusted")
    sign(gate, "other", digest)
    rc, out = gate.tag(digest, "untrusted")
    assert rc != 0
    assert "signature required" in out, out


def test_signature_over_another_digest_refused(gate: Gate) -> None:
    signed = gate.to_prod("signed-other")
    target = gate.to_prod("target")
    sign(gate, "trusted", signed, "--new-bundle-format=false")
    gate.run("crane", "copy", f"{gate.reg}/{PROD}:{signed.replace(':', '-')}.sig",
             f"{gate.reg}/{PROD}:{target.replace(':', '-')}.sig")
    rc, out = gate.tag(target, "target")
    assert rc != 0
    assert "signature required" in out, out


def test_attestation_is_not_a_signature(gate: Gate, tmp_path: Path) -> None:
    digest = gate.to_prod("attested")
    predicate = tmp_path / "predicate.json"
    predicate.write_text(json.dumps({"builder": "e2e"}))
    gate.run("cosign", "attest", "--key", str(gate.keys["trusted"]), *OFFLINE, "--predicate",
             str(predicate), "--type", "custom", f"{gate.reg}/{PROD}@{digest}")
    rc, out = gate.tag(digest, "attested")
    assert rc != 0
    assert "has no valid signature" in out, out


def test_quarantined_reads_ignore_user_agent(gate: Gate) -> None:
    """Auth is off here (everyone may push), so a quarantined digest is readable whatever
    the User-Agent; the refusal for non-pushers is covered in process."""
    digest = gate.to_prod("ua")
    with httpx.Client(base_url=gate.server.url, timeout=30) as http:
        for agent in ("cosign/v3.1.2", "curl/8"):
            r = http.get(f"/v2/{PROD}/manifests/{digest}", headers={
                "User-Agent": agent, "Accept": "application/vnd.oci.image.manifest.v1+json"})
            assert r.status_code == 200


def test_revoked_key_blocks_tag_pulls(gate: Gate) -> None:
    digest = gate.to_prod("revoked")
    sign(gate, "revocable", digest)
    rc, out = gate.tag(digest, "revoked")
    assert rc == 0, out
    settings = load_settings(env=gate.server.env)

    async def revoke() -> list[str]:
        registry = build_registry(settings)
        try:
            return await signing_service(registry).set_key_status(
                "prod-signing", gate.pubs["revocable"].id, "revoked")
        finally:
            await close_registry(registry)

    assert f"{PROD}@{digest}" in asyncio.run(revoke())
    with httpx.Client(base_url=gate.server.url, timeout=30) as http:
        r = http.get(f"/v2/{PROD}/manifests/revoked",
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert r.status_code == 403, r.text
        assert r.json()["errors"][0]["detail"]["reason"] == "SIGNATURE_REVOKED"
    rc, out = gate.run("crane", "manifest", f"{gate.reg}/{PROD}:revoked", check=False)
    assert rc != 0
    assert "revoked" in out, out



def _legacy_sig_parts(gate: Gate, digest: str) -> tuple[dict[str, Any], bytes]:
    """The ``.sig`` manifest real cosign wrote for ``digest`` in ``staging/app``, and its
    simple-signing payload."""
    tag = digest.replace(":", "-") + ".sig"
    with httpx.Client(base_url=gate.server.url, timeout=30) as http:
        doc = http.get(f"/v2/staging/app/manifests/{tag}", headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
        layer = doc["layers"][0]
        payload = http.get(f"/v2/staging/app/blobs/{layer['digest']}").content
    return doc, payload


def _push_sig(gate: Gate, digest: str, doc: dict[str, Any], payload: bytes) -> None:
    """Push ``doc`` (its first layer = ``payload``, config copied) as the ``.sig`` tag of
    ``digest`` in ``prod/app``."""
    with httpx.Client(base_url=gate.server.url, timeout=30) as http:
        for data in (payload, b"{}"):
            d = "sha256:" + hashlib.sha256(data).hexdigest()
            r = http.post(f"/v2/{PROD}/blobs/uploads/", params={"digest": d}, content=data)
            assert r.status_code == 201, r.text
        doc = json.loads(json.dumps(doc))
        doc["layers"][0]["digest"] = "sha256:" + hashlib.sha256(payload).hexdigest()
        doc["layers"][0]["size"] = len(payload)
        doc["config"]["digest"] = "sha256:" + hashlib.sha256(b"{}").hexdigest()
        doc["config"]["size"] = 2
        r = http.put(f"/v2/{PROD}/manifests/{digest.replace(':', '-')}.sig",
                     content=json.dumps(doc).encode(),
                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert r.status_code == 201, r.text


@pytest.mark.parametrize("part", ["signature", "payload"])
def test_tampered_cosign_signature_refused(gate: Gate, part: str) -> None:
    """cosign signs in the unprotected staging repository; its signature, copied to prod
    with one byte of the signature or of the signed payload changed, does not make the
    digest trusted (the untouched copy does: the tamper is what is refused)."""
    digest = gate.staged(f"tamper-{part}")
    gate.run("cosign", "sign", "--key", str(gate.keys["trusted"]), *OFFLINE,
             "--new-bundle-format=false", f"{gate.reg}/staging/app@{digest}")
    gate.run("crane", "copy", f"{gate.reg}/staging/app@{digest}", f"{gate.reg}/{PROD}@{digest}")
    doc, payload = _legacy_sig_parts(gate, digest)
    annotation = "dev.cosignproject.cosign/signature"
    bad = json.loads(json.dumps(doc))
    if part == "signature":
        raw = bytearray(base64.b64decode(bad["layers"][0]["annotations"][annotation]))
        raw[-1] ^= 0x01
        bad["layers"][0]["annotations"][annotation] = base64.b64encode(bytes(raw)).decode()
        bad_payload = payload
    else:
        bad_payload = re.sub(rb'"type"\s*:', b'"type" :', payload, count=1)
        assert bad_payload != payload
    _push_sig(gate, digest, bad, bad_payload)
    rc, out = gate.tag(digest, f"tamper-{part}")
    assert rc != 0
    assert "signature required" in out, out
    _push_sig(gate, digest, doc, payload)
    rc, out = gate.tag(digest, f"tamper-{part}")
    assert rc == 0, out


# -- a gated server with authentication on --------------------------------------------------------
RELEASER_PW = "releaser-password-1"
VIEWER_PW = "viewer-password-1"


@pytest.fixture(scope="module")
def secured_gate(gate: Gate, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DtrServer]:
    """dtr with auth on and ``prod/**`` protected by the trusted key: ``releaser`` may push
    to ``prod/**``, ``viewer`` may only pull."""
    data = tmp_path_factory.mktemp("secured-gate")
    config = data / "dtr.yaml"
    config.write_text(json.dumps({"signing": {"policies": [{
        "name": "prod-signing", "repositories": "prod/**",
        "keys": [{"pem_file": str(gate.keys["trusted"].with_suffix(".pub")),
                  "name": "ci"}]}]}}))
    with dtr_server(data, auth=True, extra={"DTR_CONFIG": str(config)}) as server:
        admin = Admin(server)
        admin.call("POST", "/orgs", {"name": "prod"})
        for name, pw, role in (("releaser", RELEASER_PW, "developer"),
                               ("viewer", VIEWER_PW, "reader")):
            admin.call("POST", "/users", {"name": name, "password": pw})
            admin.call("POST", "/grants", {"subject": f"user:{name}", "org": "prod",
                                           "repository": "**", "role": role})
        yield server


def _token(server: DtrServer, user: str, password: str, scope: str) -> str:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        challenge = http.get("/v2/").headers["www-authenticate"]
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        r = http.get(params["realm"], params={"service": params["service"], "scope": scope},
                     auth=(user, password))
        assert r.status_code == 200, r.text
        return str(r.json()["token"])


def test_quarantined_reads_follow_push_permission_not_user_agent(
        gate: Gate, secured_gate: DtrServer) -> None:
    """A pull-only user cannot read a quarantined digest, with a real skopeo or while
    claiming to be cosign or notation; the releaser (push permission) can, whatever its
    User-Agent."""
    digest = gate.staged("secured-ua")
    rc, out = gate.skopeo("copy", "--preserve-digests", "--src-tls-verify=false",
                          "--dest-tls-verify=false", "--dest-creds", f"releaser:{RELEASER_PW}",
                          f"docker://{gate.reg}/staging/app@{digest}",
                          f"docker://{secured_gate.addr}/{PROD}@{digest}")
    assert rc == 0, out
    rc, out = gate.skopeo("inspect", "--raw", "--tls-verify=false", "--creds",
                          f"viewer:{VIEWER_PW}", f"docker://{secured_gate.addr}/{PROD}@{digest}")
    assert rc != 0
    assert "denied" in out.lower(), out
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    scope = f"repository:{PROD}:pull"
    viewer = _token(secured_gate, "viewer", VIEWER_PW, scope)
    releaser = _token(secured_gate, "releaser", RELEASER_PW, f"{scope},push")
    with httpx.Client(base_url=secured_gate.url, timeout=30) as http:
        for agent in ("cosign/v3.1.2 (linux; amd64)", "notation/v1.3.2",
                      "sigstore-go/1.0"):
            r = http.get(f"/v2/{PROD}/manifests/{digest}", headers={
                **accept, "User-Agent": agent, "Authorization": f"Bearer {viewer}"})
            assert r.status_code == 403, (agent, r.text)
            assert r.json()["errors"][0]["code"] == "DENIED"
        r = http.get(f"/v2/{PROD}/manifests/{digest}", headers={
            **accept, "User-Agent": "curl/8", "Authorization": f"Bearer {releaser}"})
        assert r.status_code == 200, r.text


def test_replacing_the_notation_trust_store_blocks_tag_pulls(gate: Gate) -> None:
    """A real notation signature stops counting the moment its root leaves the policy's
    trust store, and counts again when the root is back (no re-push, no re-sign)."""
    from dataclasses import replace  # noqa: PLC0415

    from dtr.app import signing_policies  # noqa: PLC0415
    from dtr.signing.policy import TrustStoreSpec  # noqa: PLC0415

    digest = gate.to_prod("store")
    gate.run("notation", "sign", "--insecure-registry", f"{gate.reg}/{PROD}@{digest}")
    rc, out = gate.tag(digest, "store")
    assert rc == 0, out
    gate.run("notation", "cert", "generate-test", "dtr-gate-other")
    ca = gate.tools.home / ".config" / "notation" / "truststore" / "x509" / "ca"
    [other] = list((ca / "dtr-gate-other").iterdir())
    settings = load_settings(env=gate.server.env)
    [spec] = signing_policies(settings.signing)

    async def stores(*roots: TrustStoreSpec) -> None:
        registry = build_registry(settings)
        try:
            await signing_service(registry).upsert(replace(spec, trust_stores=roots))
        finally:
            await close_registry(registry)

    def pull() -> httpx.Response:
        with httpx.Client(base_url=gate.server.url, timeout=30) as http:
            return http.get(f"/v2/{PROD}/manifests/store", headers={
                "Accept": "application/vnd.oci.image.manifest.v1+json"})

    assert pull().status_code == 200
    asyncio.run(stores(TrustStoreSpec("dtr-gate", other.read_text())))
    r = pull()
    assert r.status_code == 403, r.text
    assert r.json()["errors"][0]["detail"]["reason"] == "SIGNATURE_REVOKED"
    rc, out = gate.run("crane", "manifest", f"{gate.reg}/{PROD}:store", check=False)
    assert rc != 0
    assert "revoked" in out, out
    asyncio.run(stores(*spec.trust_stores))
    assert pull().status_code == 200
