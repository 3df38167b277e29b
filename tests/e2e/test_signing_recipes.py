"""The signature verifiers (``dtr.signing``) against what the REAL cosign v3 and notation
v1.3.2 CLIs store in a live dtr (embedded default, auth off).

cosign signs offline with keys (``signing.md`` §2.6: ``--use-signing-config=false
--tlog-upload=false``; ``--new-bundle-format=false`` for the legacy ``.sig`` tag) and
notation with a ``generate-test`` certificate (§3.8, ``--insecure-registry``), JWS and COSE.
The signature objects are read back over the OCI API (referrers, ``sha256-<hex>.sig``) and
verified in Python: trusted with the right key / trust store; refused with the right reason
for an untrusted key, a signature over another digest, a ``cosign attest`` attestation
offered as a signature, tampered bytes and an untrusted notation identity. Each CLI also
verifies its own signature, and cosign is checked to open no outbound connection.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest

from dtr.signing.keys import TrustedKey, TrustStore
from dtr.signing.notation import NotationPolicy, TrustedIdentity
from dtr.signing.verdict import Format, Reason, Verdict, digest_of
from dtr.signing.verify import TrustMaterial, verify, verify_all
from tests.e2e.conftest import Client
from tests.support.peers import DtrServer, peer

pytestmark = pytest.mark.e2e

PASSWORD = "cosign-test-password"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_ACCEPT = ("application/vnd.oci.image.manifest.v1+json, "
                   "application/vnd.docker.distribution.manifest.v2+json")
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
NOTARY = "application/vnd.cncf.notary.signature"


# -- reading what the registry stored --------------------------------------------------------
@dataclass
class Registry:
    """The OCI API of the live server, as the signing gate will see its content."""

    http: httpx.Client
    repo: str

    def manifest(self, reference: str) -> bytes:
        r = self.http.get(f"/v2/{self.repo}/manifests/{reference}",
                          headers={"Accept": MANIFEST_ACCEPT})
        assert r.status_code == 200, f"{reference}: {r.status_code} {r.text}"
        return r.content

    def referrers(self, digest: str, artifact_type: str) -> list[bytes]:
        r = self.http.get(f"/v2/{self.repo}/referrers/{digest}",
                          params={"artifactType": artifact_type})
        assert r.status_code == 200, r.text
        index = r.json()
        assert index["mediaType"] == OCI_INDEX
        return [self.manifest(m["digest"]) for m in index["manifests"]
                if m.get("artifactType") == artifact_type]

    def read(self, digest: str) -> bytes:
        """``BlobSource.read``: the blob bytes as the registry serves them."""
        r = self.http.get(f"/v2/{self.repo}/blobs/{digest}", follow_redirects=True)
        if r.status_code == 404:
            raise KeyError(digest)
        assert r.status_code == 200, r.text
        return r.content


@dataclass
class Overlay:
    """A ``BlobSource`` serving some replaced bytes over the registry's (tampering)."""

    base: Registry
    replaced: dict[str, bytes] = field(default_factory=dict)

    def read(self, digest: str) -> bytes:
        return self.replaced[digest] if digest in self.replaced else self.base.read(digest)


def redigest(manifest: bytes, layer: int, data: bytes, blobs: Overlay) -> bytes:
    """``manifest`` with layer ``layer`` replaced by ``data`` (digest and size updated) —
    a consistent forgery: every digest matches, only a signature can catch it."""
    doc = json.loads(manifest)
    digest = digest_of(data)
    doc["layers"][layer].update({"digest": digest, "size": len(data)})
    blobs.replaced[digest] = data
    return json.dumps(doc).encode()


def with_subject(manifest: bytes, subject: str) -> bytes:
    """``manifest`` with its ``subject`` descriptor pointed at another digest."""
    doc = json.loads(manifest)
    doc["subject"]["digest"] = subject
    return json.dumps(doc).encode()


def assert_verdict(verdict: Verdict, reason: Reason | None, fmt: Format) -> None:
    assert verdict.format == fmt, verdict
    assert verdict.reason == reason, verdict
    assert verdict.trusted is (reason is None), verdict


# -- an outbound-connection sentinel --------------------------------------------------------
class Sentinel:
    """A loopback "proxy" that only counts connections: clients get it as HTTP(S)_PROXY with
    NO_PROXY covering the registry, so any attempt to reach Rekor, Fulcio or a TUF
    repository shows up here instead of on the network."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def sentinel() -> Iterator[Sentinel]:
    s = Sentinel()
    yield s
    s.close()


@dataclass
class Tools:
    """Peer clients (crane, cosign, notation) in the signing tests' own home folder."""

    client: Client
    home: Path

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        return self.client.run_any([peer(tool), *args], cwd=cwd or self.home,
                                   check=True).stdout

    def stage_image(self, ref: str, label: str) -> str:
        """Push a fresh one-layer image (crane, on an empty OCI base) to ``ref`` by tag;
        its digest. ``label`` names its work folder and marks its content.
        """
        work = self.home / f"{label}-img-{ref.rsplit(':', 1)[-1]}"
        work.mkdir()
        (work / "hello.txt").write_text(f"{label} {ref} {os.urandom(8).hex()}\n")
        self.client.run_any(["tar", "-cf", str(work / "layer.tar"), "-C", str(work),
                             "hello.txt"], check=True)
        self.run("crane", "append", "--oci-empty-base", "-f", str(work / "layer.tar"),
                 "-t", ref)
        return self.run("crane", "digest", ref).strip()


@pytest.fixture(scope="module")
def tools(client: Client, sentinel: Sentinel,
          tmp_path_factory: pytest.TempPathFactory) -> Tools:
    """cosign and notation in their own home, with the sentinel as proxy."""
    home = tmp_path_factory.mktemp("signing-home")
    env = {**client.env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache"), "COSIGN_PASSWORD": PASSWORD,
           "SIGSTORE_NO_CACHE": "true", "TUF_ROOT": str(home / ".sigstore"),
           "HTTPS_PROXY": f"http://127.0.0.1:{sentinel.port}",
           "HTTP_PROXY": f"http://127.0.0.1:{sentinel.port}",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    (home / ".config").mkdir()
    return Tools(Client(home, env, client.policy), home)


@dataclass
class Image:
    ref: str
    digest: str


def push_image(tools: Tools, reg: str, repo: str, name: str) -> Image:
    """A fresh one-layer image pushed with crane; returns its digest reference."""
    digest = tools.stage_image(f"{reg}/{repo}:{name}", "recipe")
    return Image(f"{reg}/{repo}@{digest}", digest)


def cosign_keys(tools: Tools, name: str) -> tuple[Path, TrustedKey]:
    """``cosign generate-key-pair`` in its own folder: (private key path, trusted pub)."""
    folder = tools.home / f"keys-{name}"
    folder.mkdir()
    tools.run("cosign", "generate-key-pair", cwd=folder)
    return folder / "cosign.key", TrustedKey.from_pem((folder / "cosign.pub").read_bytes())


OFFLINE = ("--use-signing-config=false", "--tlog-upload=false", "--yes")


# -- cosign ---------------------------------------------------------------------------------
def test_cosign_v3_bundle_and_legacy_signatures(embedded: DtrServer, tools: Tools,
                                                sentinel: Sentinel, tmp_path: Path) -> None:
    reg, repo = embedded.addr, f"signing/cosign-{os.urandom(3).hex()}/app"
    trusted_key, trusted = cosign_keys(tools, "trusted")
    other_key, other = cosign_keys(tools, "other")
    assert trusted.id != other.id
    assert len(trusted.id) == 64
    bundled = push_image(tools, reg, repo, "bundle")
    legacy = push_image(tools, reg, repo, "legacy")
    attested = push_image(tools, reg, repo, "attested")
    foreign = push_image(tools, reg, repo, "foreign")
    before = sentinel.connections

    # sign: v3 default (bundle referrer), legacy .sig, and an untrusted key; attest
    tools.run("cosign", "sign", "--key", str(trusted_key), *OFFLINE, bundled.ref)
    tools.run("cosign", "sign", "--key", str(trusted_key), *OFFLINE,
              "--new-bundle-format=false", legacy.ref)
    tools.run("cosign", "sign", "--key", str(other_key), *OFFLINE, foreign.ref)
    predicate = tmp_path / "predicate.json"
    predicate.write_text(json.dumps({"builder": "e2e"}))
    tools.run("cosign", "attest", "--key", str(trusted_key), *OFFLINE, "--predicate",
              str(predicate), "--type", "custom", attested.ref)
    tools.run("cosign", "attest", "--key", str(trusted_key), *OFFLINE, "--predicate",
              str(predicate), "--type", "custom", "--new-bundle-format=false", attested.ref)
    # cosign itself accepts its signatures offline
    pub = str(trusted_key.with_suffix(".pub"))
    for image in (bundled, legacy):
        tools.run("cosign", "verify", "--key", pub, "--insecure-ignore-tlog=true", image.ref)
    assert sentinel.connections == before, "cosign tried to reach the network"
    # control: without the offline flags cosign does go out (to fetch its signing config
    # from TUF), and the sentinel sees it — so the assertion above means something
    online = tools.client.run_any([peer("cosign"), "sign", "--key", str(trusted_key), "--yes",
                                   bundled.ref], cwd=tools.home, timeout=120)
    assert online.returncode != 0, online.stderr
    assert sentinel.connections > before, online.stderr

    with httpx.Client(base_url=embedded.url, timeout=30) as http:
        registry = Registry(http, repo)
        keys = TrustMaterial(cosign_keys=(trusted,))

        # v3 default: one bundle referrer, trusted by the right key only
        [bundle] = registry.referrers(bundled.digest, BUNDLE)
        assert json.loads(bundle)["subject"]["digest"] == bundled.digest
        v = verify(bundle, bundled.digest, registry, keys)
        assert_verdict(v, None, Format.COSIGN_BUNDLE)
        assert v.key_id == trusted.id
        assert_verdict(verify(bundle, bundled.digest, registry,
                              TrustMaterial(cosign_keys=(other,))),
                       Reason.UNTRUSTED_SIGNATURE, Format.COSIGN_BUNDLE)
        # ... over another digest: the referrer's subject, then the signed statement
        assert_verdict(verify(bundle, legacy.digest, registry, keys),
                       Reason.WRONG_SUBJECT, Format.COSIGN_BUNDLE)
        assert_verdict(verify(with_subject(bundle, legacy.digest), legacy.digest, registry,
                              keys), Reason.WRONG_SUBJECT, Format.COSIGN_BUNDLE)

        # legacy: the sha256-<hex>.sig tag with one simple-signing layer
        sig = registry.manifest(legacy.digest.replace(":", "-") + ".sig")
        assert "subject" not in json.loads(sig)
        v = verify(sig, legacy.digest, registry, keys)
        assert_verdict(v, None, Format.COSIGN_LEGACY)
        assert v.key_id == trusted.id
        assert_verdict(verify(sig, legacy.digest, registry,
                              TrustMaterial(cosign_keys=(other,))),
                       Reason.UNTRUSTED_SIGNATURE, Format.COSIGN_LEGACY)
        assert_verdict(verify(sig, bundled.digest, registry, keys),
                       Reason.WRONG_SUBJECT, Format.COSIGN_LEGACY)

        # a signature by a key nobody trusts
        [foreign_bundle] = registry.referrers(foreign.digest, BUNDLE)
        assert_verdict(verify(foreign_bundle, foreign.digest, registry, keys),
                       Reason.UNTRUSTED_SIGNATURE, Format.COSIGN_BUNDLE)

        # cosign attest output offered as a signature: bundle referrer and legacy .att
        [attestation] = registry.referrers(attested.digest, BUNDLE)
        assert json.loads(attestation)["annotations"][
            "dev.sigstore.bundle.predicateType"] != "https://sigstore.dev/cosign/sign/v1"
        assert_verdict(verify(attestation, attested.digest, registry, keys),
                       Reason.NOT_A_SIGNATURE, Format.COSIGN_BUNDLE)
        att = registry.manifest(attested.digest.replace(":", "-") + ".att")
        v = verify(att, attested.digest, registry, keys)
        assert v.reason == Reason.NOT_A_SIGNATURE, v
        assert not v.trusted

        # tampered bytes: a payload whose bytes no longer match its digest ...
        payload_desc = json.loads(sig)["layers"][0]
        payload = registry.read(payload_desc["digest"])
        edited = payload.replace(legacy.digest.encode(), bundled.digest.encode())
        assert edited != payload
        overlay = Overlay(registry, {payload_desc["digest"]: edited})
        assert_verdict(verify(sig, legacy.digest, overlay, keys), Reason.TAMPERED,
                       Format.COSIGN_LEGACY)
        # ... and a consistent forgery (digests updated): the signature catches it
        forged = redigest(sig, 0, edited, overlay)
        assert_verdict(verify(forged, bundled.digest, overlay, keys),
                       Reason.UNTRUSTED_SIGNATURE, Format.COSIGN_LEGACY)
        layer = json.loads(bundle)["layers"][0]
        doc = json.loads(registry.read(layer["digest"]))
        statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
        statement["subject"][0]["digest"]["sha256"] = legacy.digest.split(":")[1]
        doc["dsseEnvelope"]["payload"] = base64.b64encode(
            json.dumps(statement).encode()).decode()
        forged = redigest(with_subject(bundle, legacy.digest), 0, json.dumps(doc).encode(),
                          overlay)
        assert_verdict(verify(forged, legacy.digest, overlay, keys), Reason.TAMPERED,
                       Format.COSIGN_BUNDLE)
        # one verdict per signature in a legacy .sig manifest
        assert len(verify_all(sig, legacy.digest, registry, keys)) == 1


# -- notation -------------------------------------------------------------------------------
def notation_dir(tools: Tools) -> Path:
    return tools.home / ".config" / "notation"


def test_notation_jws_and_cose_signatures(embedded: DtrServer, tools: Tools) -> None:
    reg, repo = embedded.addr, f"signing/notation-{os.urandom(3).hex()}/app"
    jws_image = push_image(tools, reg, repo, "jws")
    cose_image = push_image(tools, reg, repo, "cose")
    tools.run("notation", "cert", "generate-test", "--default", "dtr-e2e")
    tools.run("notation", "cert", "generate-test", "dtr-other")
    tools.run("notation", "sign", "--insecure-registry", jws_image.ref)
    tools.run("notation", "sign", "--insecure-registry", "--signature-format", "cose",
              cose_image.ref)
    # notation itself verifies them against a trust policy naming the test store
    policy = {"version": "1.0", "trustPolicies": [{
        "name": "e2e", "registryScopes": [f"{reg}/{repo}"],
        "signatureVerification": {"level": "strict"},
        "trustStores": ["ca:dtr-e2e"], "trustedIdentities": ["*"]}]}
    policy_file = tools.home / "trustpolicy.json"
    policy_file.write_text(json.dumps(policy))
    # v1.3.2 keeps it as <config>/notation/trustpolicy.json (not trustpolicy.oci.json)
    tools.run("notation", "policy", "import", "--force", str(policy_file))
    for image in (jws_image, cose_image):
        tools.run("notation", "verify", "--insecure-registry", image.ref)

    ca = notation_dir(tools) / "truststore" / "x509" / "ca"
    store = TrustStore.from_pem("dtr-e2e", [p.read_bytes() for p in (ca / "dtr-e2e").iterdir()])
    other_store = TrustStore.from_pem("dtr-other",
                                      [p.read_bytes() for p in (ca / "dtr-other").iterdir()])
    subject = store.roots[0].subject.rfc4514_string()
    anyone = (TrustedIdentity.parse("*"),)
    trust = TrustMaterial(notation=(NotationPolicy("e2e", (store,), anyone),))
    exact = TrustedIdentity.parse("x509.subject: " + ", ".join(
        f"{a.rfc4514_attribute_name}={a.value}" for a in store.roots[0].subject))
    named = TrustMaterial(notation=(NotationPolicy("e2e", (store,), (exact,)),))
    wrong_identity = TrustMaterial(notation=(NotationPolicy("e2e", (store,), (
        TrustedIdentity.parse("x509.subject: C=US, ST=WA, O=Someone Else"),)),))
    untrusted_root = TrustMaterial(notation=(NotationPolicy("other", (other_store,), anyone),))

    with httpx.Client(base_url=embedded.url, timeout=30) as http:
        registry = Registry(http, repo)
        for image, fmt, media in ((jws_image, Format.NOTATION_JWS, "application/jose+json"),
                                  (cose_image, Format.NOTATION_COSE, "application/cose")):
            [signature] = registry.referrers(image.digest, NOTARY)
            doc = json.loads(signature)
            assert doc["layers"][0]["mediaType"] == media
            assert doc["subject"]["digest"] == image.digest
            v = verify(signature, image.digest, registry, trust)
            assert_verdict(v, None, fmt)
            assert v.identity == subject
            assert "CN=dtr-e2e" in subject
            assert_verdict(verify(signature, image.digest, registry, named), None, fmt)
            assert_verdict(verify(signature, image.digest, registry, wrong_identity),
                           Reason.UNTRUSTED_SIGNATURE, fmt)
            assert_verdict(verify(signature, image.digest, registry, untrusted_root),
                           Reason.UNTRUSTED_SIGNATURE, fmt)
            other = cose_image if image is jws_image else jws_image
            assert_verdict(verify(signature, other.digest, registry, trust),
                           Reason.WRONG_SUBJECT, fmt)
            # the manifest's subject is not signed; the payload's target is
            assert_verdict(verify(with_subject(signature, other.digest), other.digest,
                                  registry, trust), Reason.WRONG_SUBJECT, fmt)
            # tampered envelope bytes, then a consistent forgery of the signed payload
            envelope = registry.read(doc["layers"][0]["digest"])
            overlay = Overlay(registry, {doc["layers"][0]["digest"]: envelope[:-1] + b"x"})
            assert_verdict(verify(signature, image.digest, overlay, trust), Reason.TAMPERED,
                           fmt)
            forged = redigest(signature, 0, forge_payload(envelope, media, other.digest),
                              overlay)
            assert_verdict(verify(with_subject(forged, other.digest), other.digest, overlay,
                                  trust), Reason.TAMPERED, fmt)


def forge_payload(envelope: bytes, media: str, digest: str) -> bytes:
    """The envelope with its signed payload's target digest replaced (signature kept)."""
    if media == "application/jose+json":
        doc: dict[str, Any] = json.loads(envelope)
        payload = json.loads(base64.urlsafe_b64decode(doc["payload"] + "=="))
        payload["targetArtifact"]["digest"] = digest
        doc["payload"] = base64.urlsafe_b64encode(
            json.dumps(payload).encode()).decode().rstrip("=")
        return json.dumps(doc).encode()
    message = cbor2.loads(envelope)
    protected, unprotected, payload_bytes, signature = message.value
    payload = json.loads(payload_bytes)
    payload["targetArtifact"]["digest"] = digest
    return cbor2.dumps(cbor2.CBORTag(18, [protected, dict(unprotected),
                                          json.dumps(payload).encode(), signature]))
