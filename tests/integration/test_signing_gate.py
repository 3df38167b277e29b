"""The signing gate in process (``signing.md`` §8): policies from the settings file, digest
pushes quarantined, signature objects verified on arrival, tag writes refused with the
exact 403 ``DENIED`` body unless the digest is trusted, read rules, index inheritance,
``require_children_signed``, k-of-n, audit mode, key retirement and revocation, and the
events of every decision — each test on SQLite and on PostgreSQL (``db_url``). Signature
objects are built with ``cryptography`` the way cosign builds them
(``tests/unit/signing/material.py``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import Connection, update

from dtr.app import build_registry, close_registry, create_app, signing_service
from dtr.config import Settings
from dtr.core.hooks import RegistryEvent
from dtr.db.models import SignatureRecord
from dtr.signing import cosign, notation
from dtr.signing import gate as gate_module
from dtr.signing.keys import TrustedKey
from dtr.signing.policy import TrustStoreSpec
from tests.conftest import make_settings
from tests.support.oci import OCI_INDEX, OCI_MANIFEST, OciClient, sha256
from tests.unit.signing import material as m

REPO = "prod/app"
EMPTY = b"{}"


class Recorder:
    """An ``EventSink`` keeping every event."""

    def __init__(self) -> None:
        self.events: list[RegistryEvent] = []

    def record(self, session: Connection, event: RegistryEvent) -> None:
        self.events.append(event)

    def actions(self) -> list[str]:
        return [e.action for e in self.events]


@pytest.fixture
def keys() -> dict[str, m.PrivateKey]:
    return {"trusted": m.new_key("p256"), "second": m.new_key("ed25519"),
            "other": m.new_key("p256")}


def policy(keys: dict[str, m.PrivateKey], **extra: Any) -> dict[str, Any]:
    return {"name": "prod-signing", "repositories": "prod/**",
            "keys": [{"pem": m.public_pem(keys["trusted"]).decode(), "name": "ci"},
                     {"pem": m.public_pem(keys["second"]).decode(), "name": "release"}],
            **extra}


def gated(tmp_path: Path, db_url: str, keys: dict[str, m.PrivateKey],
          **extra: Any) -> Settings:
    """Settings protecting ``prod/**`` over ``db_url`` (each test runs on SQLite and on
    PostgreSQL: the ``db_url`` fixture of ``tests/conftest.py``)."""
    return make_settings(tmp_path, database={"url": db_url},
                         signing={"policies": [policy(keys, **extra)]})


@pytest.fixture
def settings(tmp_path: Path, db_url: str, keys: dict[str, m.PrivateKey]) -> Settings:
    return gated(tmp_path, db_url, keys)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def events(client: TestClient[Any]) -> Recorder:
    rec = Recorder()
    client.app.state.registry.store.hooks.sinks.append(rec)
    return rec


def push_blob_bytes(oci: OciClient, repo: str, data: bytes) -> dict[str, Any]:
    oci.push_blob(repo, data)
    return {"digest": sha256(data), "size": len(data)}


def bundle_referrer(oci: OciClient, repo: str, key: m.PrivateKey, subject: str,
                    size: int, *, predicate: str = cosign.SIGN_PREDICATE) -> str:
    """Push a cosign v3 bundle referrer of ``subject`` (by digest); return its digest."""
    bundle = json.dumps(m.bundle_doc(key, m.statement(subject, predicate=predicate))).encode()
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": cosign.BUNDLE_V03,
        "config": {"mediaType": m.EMPTY, **push_blob_bytes(oci, repo, EMPTY)},
        "layers": [{"mediaType": cosign.BUNDLE_V03, **push_blob_bytes(oci, repo, bundle)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": size}}).encode()
    r = oci.put_manifest(repo, sha256(body), body)
    assert r.status_code == 201, r.text
    return sha256(body)


def legacy_sig(oci: OciClient, repo: str, key: m.PrivateKey, subject: str) -> Any:
    """Push a cosign legacy ``sha256-<hex>.sig`` tag for ``subject``."""
    payload = m.simple_payload(subject)
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **push_blob_bytes(oci, repo, EMPTY)},
        "layers": [{"mediaType": cosign.SIMPLE_SIGNING,
                    **push_blob_bytes(oci, repo, payload), "annotations": {
                        cosign.SIGNATURE_ANNOTATION: base64.b64encode(
                            m.cosign_sign(key, payload)).decode()}}]}).encode()
    return oci.put_manifest(repo, subject.replace(":", "-") + ".sig", body)


def by_digest(oci: OciClient, repo: str) -> tuple[str, bytes]:
    body = oci.image(repo)
    r = oci.put_manifest(repo, sha256(body), body)
    assert r.status_code == 201, r.text
    return sha256(body), body


def denied(r: Any) -> dict[str, Any]:
    assert r.status_code == 403, r.text
    [err] = r.json()["errors"]
    assert err["code"] == "DENIED"
    assert isinstance(err["message"], str)
    return dict(err)


# -- write rules --------------------------------------------------------------------------------
def test_unsigned_tag_push_is_refused_with_the_contract_body(
        client: TestClient[Any], events: Recorder) -> None:
    oci = OciClient(client)
    body = oci.image(REPO)
    digest = sha256(body)
    err = denied(oci.put_manifest(REPO, "1.0", body))
    assert err["message"] == (
        "signature required: repository prod/app only accepts tags for manifests signed by "
        f"a trusted key; {digest} has no valid signature. Push by digest, sign it "
        "(cosign/notation), then tag.")
    assert err["detail"] == {
        "reason": "UNSIGNED_MANIFEST", "repository": REPO, "tag": "1.0", "digest": digest,
        "policy": "prod-signing", "policyVersion": 1,
        "acceptedFormats": ["cosign", "notation"], "signaturesFound": 0,
        "signaturesTrusted": 0}
    # nothing was stored, but the denial was recorded (in its own transaction)
    assert client.get(f"/v2/{REPO}/manifests/1.0").status_code == 404
    denial = [e for e in events.events if e.action == "tag.denied"]
    assert denial
    assert denial[0].detail["reason"] == "UNSIGNED_MANIFEST"
    assert denial[0].tag == "1.0"
    # ?tag= on a digest push is refused as a whole
    r = client.put(f"/v2/{REPO}/manifests/{digest}?tag=a&tag=b", content=body,
                   headers={"Content-Type": OCI_MANIFEST})
    assert denied(r)["detail"]["reason"] == "UNSIGNED_MANIFEST"


def test_push_by_digest_sign_then_tag(client: TestClient[Any], events: Recorder,
                                      keys: dict[str, m.PrivateKey]) -> None:
    oci = OciClient(client)
    digest, body = by_digest(oci, REPO)
    assert "manifest.quarantined" in events.actions()
    sig = bundle_referrer(oci, REPO, keys["trusted"], digest, len(body))
    assert "signature.accepted" in events.actions()
    assert "manifest.trusted" in events.actions()
    # signature objects and referrers are readable
    assert client.get(f"/v2/{REPO}/manifests/{sig}").status_code == 200
    assert client.get(f"/v2/{REPO}/referrers/{digest}").json()["manifests"]
    r = oci.put_manifest(REPO, "1.0", body)
    assert r.status_code == 201, r.text
    assert client.get(f"/v2/{REPO}/manifests/1.0").content == body


def test_unprotected_repositories_are_unchanged(client: TestClient[Any]) -> None:
    oci = OciClient(client)
    _digest, _ = oci.push_image("staging/app", "1.0")
    assert client.get("/v2/staging/app/manifests/1.0").status_code == 200


def test_a_push_reads_the_policy_version_once(client: TestClient[Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """One manifest PUT with several tags asks the database for the policy version once
    (in its transaction), not once per tag."""
    oci = OciClient(client)
    oci.push_image("staging/app", "warm")  # the pre-transaction policy cache is now loaded
    client.app.state.registry.store.hooks.gate.cache_seconds = 3600.0
    body = oci.image("staging/app")
    calls: list[int] = []
    real = gate_module.current_version

    def counting(conn: Connection) -> int:
        calls.append(1)
        return real(conn)

    monkeypatch.setattr(gate_module, "current_version", counting)
    r = client.put("/v2/staging/app/manifests/1.0?tag=1.1&tag=1.2&tag=latest", content=body,
                   headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text
    assert sorted(r.headers["oci-tag"].split(", ")) == ["1.0", "1.1", "1.2", "latest"]
    assert len(calls) == 1


def test_untrusted_key_wrong_digest_and_attestation_are_refused(
        client: TestClient[Any], keys: dict[str, m.PrivateKey]) -> None:
    oci = OciClient(client)
    untrusted, ubody = by_digest(oci, REPO)
    bundle_referrer(oci, REPO, keys["other"], untrusted, len(ubody))
    err = denied(oci.put_manifest(REPO, "u", ubody))
    assert err["detail"]["reason"] == "UNTRUSTED_SIGNATURE"
    assert err["detail"]["signaturesFound"] == 1
    assert err["detail"]["signaturesTrusted"] == 0
    assert "Sign it with a trusted key" in err["message"]
    # a valid signature over another digest, offered as a referrer of this one
    wrong, wbody = by_digest(oci, REPO)
    payload = m.simple_payload(untrusted)
    sig = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **push_blob_bytes(oci, REPO, EMPTY)},
        "layers": [{"mediaType": cosign.SIMPLE_SIGNING, **push_blob_bytes(oci, REPO, payload),
                    "annotations": {cosign.SIGNATURE_ANNOTATION: base64.b64encode(
                        m.cosign_sign(keys["trusted"], payload)).decode()}}]}).encode()
    r = oci.put_manifest(REPO, wrong.replace(":", "-") + ".sig", sig)
    assert r.status_code == 201, r.text
    assert denied(oci.put_manifest(REPO, "w", wbody))["detail"]["reason"] == \
        "UNTRUSTED_SIGNATURE"
    # an attestation is not a signature
    attested, abody = by_digest(oci, REPO)
    bundle_referrer(oci, REPO, keys["trusted"], attested, len(abody),
                    predicate="https://example.com/custom")
    assert denied(oci.put_manifest(REPO, "a", abody))["detail"]["reason"] == \
        "UNSIGNED_MANIFEST"


def test_sign_before_push_with_a_legacy_signature(client: TestClient[Any],
                                                  keys: dict[str, m.PrivateKey]) -> None:
    oci = OciClient(client)
    body = oci.image(REPO)
    r = legacy_sig(oci, REPO, keys["trusted"], sha256(body))
    assert r.status_code == 201, r.text
    r = oci.put_manifest(REPO, "1.0", body)
    assert r.status_code == 201, r.text


def test_min_signatures_counts_distinct_keys(tmp_path: Path, db_url: str,
                                             keys: dict[str, m.PrivateKey]) -> None:
    with TestClient(create_app(gated(tmp_path, db_url, keys, min_signatures=2))) as client:
        oci = OciClient(client)
        digest, body = by_digest(oci, REPO)
        bundle_referrer(oci, REPO, keys["trusted"], digest, len(body))
        bundle_referrer(oci, REPO, keys["trusted"], digest, len(body))
        err = denied(oci.put_manifest(REPO, "1.0", body))
        assert err["detail"]["reason"] == "UNTRUSTED_SIGNATURE"
        assert err["detail"]["signaturesTrusted"] == 1
        bundle_referrer(oci, REPO, keys["second"], digest, len(body))
        assert oci.put_manifest(REPO, "1.0", body).status_code == 201


def test_audit_mode_accepts_and_records(tmp_path: Path, db_url: str,
                                        keys: dict[str, m.PrivateKey]) -> None:
    with TestClient(create_app(gated(tmp_path, db_url, keys, mode="audit"))) as client:
        rec = Recorder()
        client.app.state.registry.store.hooks.sinks.append(rec)
        oci = OciClient(client)
        oci.push_image(REPO, "1.0")
        assert "tag.warned" in rec.actions()


# -- indexes ----------------------------------------------------------------------------------
def index_of(oci: OciClient, children: list[tuple[str, bytes]]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": d, "size": len(b),
         "platform": {"os": "linux", "architecture": arch}}
        for (d, b), arch in zip(children, ["amd64", "arm64"], strict=False)]}).encode()


def test_index_signature_covers_children(client: TestClient[Any], settings: Settings,
                                         keys: dict[str, m.PrivateKey]) -> None:
    oci = OciClient(client)
    kids = [by_digest(oci, REPO), by_digest(oci, REPO)]
    index = index_of(oci, kids)
    assert oci.put_manifest(REPO, sha256(index), index, OCI_INDEX).status_code == 201
    assert denied(oci.put_manifest(REPO, "1.0", index, OCI_INDEX))
    bundle_referrer(oci, REPO, keys["trusted"], sha256(index), len(index))
    assert oci.put_manifest(REPO, "1.0", index, OCI_INDEX).status_code == 201
    # the children inherit trust: readable by digest without push, taggable
    assert reads(settings, [kids[0][0]], push=False) == ["ok"]
    assert oci.put_manifest(REPO, "amd64", kids[0][1]).status_code == 201


def test_require_children_signed(tmp_path: Path, db_url: str,
                                 keys: dict[str, m.PrivateKey]) -> None:
    settings = gated(tmp_path, db_url, keys, require_children_signed=True)
    with TestClient(create_app(settings)) as c:
        oci = OciClient(c)
        kids = [by_digest(oci, REPO), by_digest(oci, REPO)]
        index = index_of(oci, kids)
        assert oci.put_manifest(REPO, sha256(index), index, OCI_INDEX).status_code == 201
        bundle_referrer(oci, REPO, keys["trusted"], sha256(index), len(index))
        err = denied(oci.put_manifest(REPO, "1.0", index, OCI_INDEX))
        assert err["detail"]["reason"] == "INDEX_CHILD_UNSIGNED"
        assert "cosign sign --recursive" in err["message"]
        for digest, body in kids:
            bundle_referrer(oci, REPO, keys["trusted"], digest, len(body))
        assert oci.put_manifest(REPO, "1.0", index, OCI_INDEX).status_code == 201


# -- read rules and revocation ----------------------------------------------------------------
def reads(settings: Settings, references: list[str], *, push: bool) -> list[str]:
    """Read each reference through core with a caller who may (not) push."""
    async def go() -> list[str]:
        registry = build_registry(settings)

        async def may_push() -> bool:
            return push

        out = []
        try:
            for ref in references:
                try:
                    await registry.manifests.get(REPO, ref, may_push)
                    out.append("ok")
                except Exception as exc:
                    reason = getattr(exc, "detail", {}) or {}
                    out.append(str(reason.get("reason", type(exc).__name__)))
        finally:
            await close_registry(registry)
        return out

    return asyncio.run(go())


def test_quarantined_reads_need_push(client: TestClient[Any], settings: Settings) -> None:
    oci = OciClient(client)
    digest, _ = by_digest(oci, REPO)
    assert reads(settings, [digest], push=True) == ["ok"]
    assert reads(settings, [digest], push=False) == ["UNSIGNED_MANIFEST"]
    # over HTTP with auth off everyone is a pusher; a User-Agent changes nothing anyway
    r = client.get(f"/v2/{REPO}/manifests/{digest}", headers={"User-Agent": "cosign/v3"})
    assert r.status_code == 200


def test_revoking_a_key_untrusts_its_signatures_at_once(
        client: TestClient[Any], settings: Settings, events: Recorder,
        keys: dict[str, m.PrivateKey]) -> None:
    oci = OciClient(client)
    digest, body = by_digest(oci, REPO)
    bundle_referrer(oci, REPO, keys["trusted"], digest, len(body))
    assert oci.put_manifest(REPO, "1.0", body).status_code == 201
    key_id = TrustedKey.from_pem(m.public_pem(keys["trusted"])).id

    async def revoke() -> list[str]:
        registry = build_registry(settings)
        registry.store.hooks.sinks.append(events)
        try:
            return await signing_service(registry).set_key_status(
                "prod-signing", key_id, "revoked")
        finally:
            await close_registry(registry)

    assert asyncio.run(revoke()) == [f"{REPO}@{digest}"]
    revoked = [e for e in events.events if e.action == "trust.revoked"]
    assert revoked
    assert revoked[0].detail["tags"] == ["1.0"]
    assert "key.revoked" in events.actions()
    assert reads(settings, ["1.0", digest], push=False) == ["SIGNATURE_REVOKED"] * 2
    assert reads(settings, [digest], push=True) == ["ok"]
    # the pull is refused over HTTP too, and a new tag write says why
    r = client.get(f"/v2/{REPO}/manifests/1.0")
    assert denied(r)["detail"]["reason"] == "SIGNATURE_REVOKED"
    assert denied(oci.put_manifest(REPO, "1.1", body))["detail"]["reason"] == \
        "SIGNATURE_REVOKED"
    # re-signing with an active key restores trust, without a re-push
    bundle_referrer(oci, REPO, keys["second"], digest, len(body))
    assert client.get(f"/v2/{REPO}/manifests/1.0").status_code == 200


def test_retired_key_keeps_earlier_signatures_only(
        client: TestClient[Any], settings: Settings, keys: dict[str, m.PrivateKey]) -> None:
    oci = OciClient(client)
    early, ebody = by_digest(oci, REPO)
    bundle_referrer(oci, REPO, keys["trusted"], early, len(ebody))
    key_id = TrustedKey.from_pem(m.public_pem(keys["trusted"])).id

    async def retire() -> None:
        registry = build_registry(settings)
        try:
            await signing_service(registry).set_key_status("prod-signing", key_id, "retired")
        finally:
            await close_registry(registry)

    asyncio.run(retire())
    assert oci.put_manifest(REPO, "early", ebody).status_code == 201
    late, lbody = by_digest(oci, REPO)
    bundle_referrer(oci, REPO, keys["trusted"], late, len(lbody))
    assert denied(oci.put_manifest(REPO, "late", lbody))["detail"]["reason"] == \
        "UNTRUSTED_SIGNATURE"


def test_deleting_the_signature_revokes_trust(client: TestClient[Any], settings: Settings,
                                              keys: dict[str, m.PrivateKey]) -> None:
    oci = OciClient(client)
    digest, body = by_digest(oci, REPO)
    sig = bundle_referrer(oci, REPO, keys["trusted"], digest, len(body))
    assert oci.put_manifest(REPO, "1.0", body).status_code == 201
    assert client.delete(f"/v2/{REPO}/manifests/{sig}").status_code == 202
    assert denied(client.get(f"/v2/{REPO}/manifests/1.0"))["detail"]["reason"] == \
        "SIGNATURE_REVOKED"


def test_policy_seeding_is_idempotent(tmp_path: Path, db_url: str,
                                      keys: dict[str, m.PrivateKey]) -> None:
    settings = gated(tmp_path, db_url, keys)
    for _ in range(2):
        with TestClient(create_app(settings)) as client:
            loaded = asyncio.run(_load(settings))
            assert loaded.version == 1
            assert loaded.covering(REPO) is not None
            assert loaded.covering("staging/app") is None
            assert client.get("/v2/").status_code == 200


async def _load(settings: Settings) -> Any:
    registry = build_registry(settings)
    try:
        return await signing_service(registry).load()
    finally:
        await close_registry(registry)


def test_gc_keeps_quarantined_manifests_for_the_grace_period(
        client: TestClient[Any], settings: Settings, keys: dict[str, m.PrivateKey]) -> None:
    from dtr.core.gc import GarbageCollector  # noqa: PLC0415

    oci = OciClient(client)
    quarantined, _ = by_digest(oci, REPO)
    trusted, body = by_digest(oci, REPO)
    bundle_referrer(oci, REPO, keys["trusted"], trusted, len(body))

    async def collect(grace: float) -> int:
        registry = build_registry(settings)
        try:
            report = await GarbageCollector(registry.store, upload_max_age=3600,
                                            blob_grace=3600, quarantine_grace=grace).run()
            return report.manifests_removed
        finally:
            await close_registry(registry)

    assert asyncio.run(collect(7 * 24 * 3600)) == 0
    assert client.get(f"/v2/{REPO}/manifests/{quarantined}").status_code == 200
    assert asyncio.run(collect(0)) == 1
    assert client.get(f"/v2/{REPO}/manifests/{quarantined}").status_code == 404
    assert client.get(f"/v2/{REPO}/manifests/{trusted}").status_code == 200


# -- read rules with authentication on ------------------------------------------------------
class AsUser:
    """An httpx-like client adding a bearer token (and optional headers) to every call."""

    def __init__(self, client: TestClient[Any], token: str, **headers: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}", **headers}

    def __getattr__(self, method: str) -> Any:
        call = getattr(self.client, method)

        def send(url: str, **kw: Any) -> Any:
            return call(url, **{**kw, "headers": {**self.headers, **kw.get("headers", {})}})

        return send


def test_quarantined_reads_follow_push_permission_never_user_agent(
        tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch,
        keys: dict[str, m.PrivateKey]) -> None:
    from functools import partial  # noqa: PLC0415

    from dtr.auth import accounts  # noqa: PLC0415
    from dtr.policy import admin as policy_admin  # noqa: PLC0415
    from tests.support.http import basic  # noqa: PLC0415

    monkeypatch.setenv("DTR_ADMIN_PASSWORD", "admin-password-1")
    settings = make_settings(tmp_path, auth={"enabled": True}, database={"url": db_url},
                             signing={"policies": [{**policy(keys), "repositories": "acme/**"}]})
    repo = "acme/app"
    with TestClient(create_app(settings)) as c:
        sec = c.app.state.security

        def setup(conn: Any) -> None:
            accounts.create_org(conn, "acme", created_by="admin")
            accounts.create_user(conn, "alice", "alice-password-1")
            accounts.create_user(conn, "bob", "bob-password-1")
            policy_admin.create_grant(conn, "user:alice", "acme", "**", "developer")
            policy_admin.create_grant(conn, "user:bob", "acme", "**", "reader")

        c.blocking_portal.call(partial(sec.db.run, setup, write=True))
        c.blocking_portal.call(sec.policy.refresh)

        def token(user: str, scope: str) -> str:
            r = c.get("/auth/token", params={"service": "testserver", "scope": scope},
                      headers=basic(user, f"{user}-password-1"))
            assert r.status_code == 200, r.text
            return str(r.json()["token"])

        alice = OciClient(AsUser(c, token("alice", f"repository:{repo}:pull,push")))
        digest, body = by_digest(alice, repo)
        # alice signs with a pull-only token (as cosign does): allowed, she may push
        alice_pull = AsUser(c, token("alice", f"repository:{repo}:pull"))
        assert alice_pull.get(f"/v2/{repo}/manifests/{digest}").status_code == 200
        # bob may only pull: refused, whatever his User-Agent says
        for agent in ("curl/8", "cosign/v3.1.2 (linux; amd64)", "notation/v1.3.2"):
            bob = AsUser(c, token("bob", f"repository:{repo}:pull"), **{"User-Agent": agent})
            err = denied(bob.get(f"/v2/{repo}/manifests/{digest}"))
            assert err["message"] == f"manifest {digest} is quarantined (not signed by a " \
                "trusted key)"
            assert bob.head(f"/v2/{repo}/manifests/{digest}").status_code == 403
        bob = AsUser(c, token("bob", f"repository:{repo}:pull"))
        # once signed and tagged, everyone with pull reads it; signatures always
        sig = bundle_referrer(alice, repo, keys["trusted"], digest, len(body))
        assert bob.get(f"/v2/{repo}/manifests/{sig}").status_code == 200
        assert bob.get(f"/v2/{repo}/referrers/{digest}").status_code == 200
        assert alice.put_manifest(repo, "1.0", body).status_code == 201
        assert bob.get(f"/v2/{repo}/manifests/1.0").status_code == 200
        assert bob.get(f"/v2/{repo}/manifests/{digest}").status_code == 200


def test_a_restart_never_undoes_a_revocation(tmp_path: Path, db_url: str,
                                             keys: dict[str, m.PrivateKey]) -> None:
    from dtr.app import signing_policies  # noqa: PLC0415

    settings = gated(tmp_path, db_url, keys)
    key_id = TrustedKey.from_pem(m.public_pem(keys["trusted"])).id

    async def go() -> tuple[str, int, int]:
        registry = build_registry(settings)
        service = signing_service(registry)
        try:
            await service.seed(signing_policies(settings.signing))
            await service.set_key_status("prod-signing", key_id, "revoked")
            before = (await service.load()).version
            await service.seed(signing_policies(settings.signing))
            loaded = await service.load()
            governing = loaded.covering(REPO)
            assert governing is not None
            return governing.keys[key_id].status, before, loaded.version
        finally:
            await close_registry(registry)

    status, before, after = asyncio.run(go())
    assert status == "revoked"
    assert after == before


# -- policy edits, signature tag deletes, concurrent seeding ---------------------------------
def _upsert(settings: Settings, events: Recorder, **change: Any) -> None:
    """Store the settings file's policy with ``change`` applied (an administrator edit)."""
    from dataclasses import replace  # noqa: PLC0415

    from dtr.app import signing_policies  # noqa: PLC0415

    async def go() -> None:
        registry = build_registry(settings)
        registry.store.hooks.sinks.append(events)
        try:
            [spec] = signing_policies(settings.signing)
            await signing_service(registry).upsert(replace(spec, **change))
        finally:
            await close_registry(registry)

    asyncio.run(go())


def test_policy_edits_that_change_who_counts_re_evaluate(
        client: TestClient[Any], settings: Settings, events: Recorder,
        keys: dict[str, m.PrivateKey]) -> None:
    oci = OciClient(client)
    digest, body = by_digest(oci, REPO)
    bundle_referrer(oci, REPO, keys["trusted"], digest, len(body))
    assert oci.put_manifest(REPO, "1.0", body).status_code == 201
    # one signer no longer suffices: the tag's digest drops to REVOKED at once, and a
    # REVOKED digest is refused by tag with SIGNATURE_REVOKED (the read gate's mapping)
    _upsert(settings, events, min_signatures=2)
    [revoked] = [e for e in events.events if e.action == "trust.revoked"]
    assert revoked.digest == digest
    assert revoked.detail["tags"] == ["1.0"]
    assert revoked.detail["reason"] == "UNTRUSTED_SIGNATURE"
    assert denied(client.get(f"/v2/{REPO}/manifests/1.0"))["detail"]["reason"] == \
        "SIGNATURE_REVOKED"
    # lowering it back trusts the digest again, without a re-push or re-sign
    _upsert(settings, events, min_signatures=1)
    assert client.get(f"/v2/{REPO}/manifests/1.0").status_code == 200
    # accepting only notation stops the cosign bundle counting; cosign again restores
    _upsert(settings, events, formats=("notation",))
    assert denied(client.get(f"/v2/{REPO}/manifests/1.0"))["detail"]["reason"] == \
        "SIGNATURE_REVOKED"
    _upsert(settings, events, formats=("cosign", "notation"))
    assert client.get(f"/v2/{REPO}/manifests/1.0").status_code == 200
    # an edit that changes nothing about who counts recomputes nothing
    before = len([e for e in events.events if e.action.startswith(("trust.", "manifest."))])
    _upsert(settings, events, mode="enforce")
    assert before == len([e for e in events.events
                          if e.action.startswith(("trust.", "manifest."))])


def test_deleting_the_signature_tag_revokes_trust(client: TestClient[Any],
                                                  keys: dict[str, m.PrivateKey]) -> None:
    oci = OciClient(client)
    digest, body = by_digest(oci, REPO)
    r = legacy_sig(oci, REPO, keys["trusted"], digest)
    assert r.status_code == 201, r.text
    assert oci.put_manifest(REPO, "1.0", body).status_code == 201
    # deleting an ordinary tag changes nothing about trust
    assert oci.put_manifest(REPO, "1.1", body).status_code == 201
    assert client.delete(f"/v2/{REPO}/manifests/1.1").status_code == 202
    assert client.get(f"/v2/{REPO}/manifests/1.0").status_code == 200
    sig_tag = digest.replace(":", "-") + ".sig"
    assert client.delete(f"/v2/{REPO}/manifests/{sig_tag}").status_code == 202
    assert denied(client.get(f"/v2/{REPO}/manifests/1.0"))["detail"]["reason"] == \
        "SIGNATURE_REVOKED"
    # no signature is left: a new tag write says so
    assert denied(oci.put_manifest(REPO, "1.2", body))["detail"]["reason"] == \
        "UNSIGNED_MANIFEST"


def test_replicas_seeding_at_once_both_succeed(tmp_path: Path, db_url: str,
                                               keys: dict[str, m.PrivateKey]) -> None:
    from dtr.app import signing_policies  # noqa: PLC0415

    settings = gated(tmp_path, db_url, keys)
    specs = signing_policies(settings.signing)

    async def go() -> Any:
        replicas = [build_registry(settings) for _ in range(2)]
        try:
            await asyncio.gather(*(signing_service(r).seed(specs) for r in replicas))
            return await signing_service(replicas[0]).load()
        finally:
            for r in replicas:
                await close_registry(r)

    loaded = asyncio.run(go())
    assert loaded.version == 1
    assert [p.name for p in loaded.policies] == ["prod-signing"]


# -- notation trust stores: an edit checks the stored chains again ---------------------------
def notation_referrer(oci: OciClient, repo: str, material: m.Pki, subject: str,
                      size: int) -> str:
    """Push a notation JWS signature referrer of ``subject``; return its digest."""
    described = {"mediaType": OCI_MANIFEST, "digest": subject, "size": size}
    envelope = m.jws(material, m.target(described))
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": notation.NOTARY_SIGNATURE,
        "config": {"mediaType": m.EMPTY, **push_blob_bytes(oci, repo, EMPTY)},
        "layers": [{"mediaType": notation.JWS, **push_blob_bytes(oci, repo, envelope)}],
        "subject": described}).encode()
    r = oci.put_manifest(repo, sha256(body), body)
    assert r.status_code == 201, r.text
    return sha256(body)


def _store(*roots: m.Pki, identity: str = "*") -> dict[str, Any]:
    """``trust_stores=`` for :func:`_upsert`: one store ``roots`` of ``roots``."""
    pem = b"".join(r.pem() for r in roots).decode()
    return {"trust_stores": (TrustStoreSpec("roots", pem, (identity,)),)}


@pytest.fixture
def notary(tmp_path: Path, db_url: str, keys: dict[str, m.PrivateKey]
           ) -> Iterator[tuple[TestClient[Any], Settings, Recorder, m.Pki, m.Pki]]:
    """A gated registry whose policy trusts one notation root (``ours``) and not another
    (``theirs``), both valid now."""
    now = dt.datetime.now(dt.UTC)
    ours, theirs = m.pki(at=now), m.pki(at=now)
    settings = gated(tmp_path, db_url, keys, trust_stores=[
        {"name": "roots", "roots_pem": ours.pem().decode()}])
    recorder = Recorder()
    with TestClient(create_app(settings)) as c:
        c.app.state.registry.store.hooks.sinks.append(recorder)
        yield c, settings, recorder, ours, theirs


def test_a_trust_store_edit_checks_stored_notation_signatures_again(
        notary: tuple[TestClient[Any], Settings, Recorder, m.Pki, m.Pki]) -> None:
    client, settings, events, ours, theirs = notary
    oci = OciClient(client)
    digest, body = by_digest(oci, REPO)
    signature = notation_referrer(oci, REPO, ours, digest, len(body))
    assert oci.put_manifest(REPO, "1.0", body).status_code == 201
    # the root is replaced: the stored signature no longer chains, the digest drops at once
    _upsert(settings, events, **_store(theirs))
    [rejected] = [e for e in events.events if e.action == "signature.rejected"]
    assert (rejected.digest, rejected.detail["signature"], rejected.detail["reason"],
            rejected.detail["recheck"]) == (digest, signature, "UNTRUSTED_SIGNATURE", True)
    [revoked] = [e for e in events.events if e.action == "trust.revoked"]
    assert (revoked.digest, revoked.detail["tags"]) == (digest, ["1.0"])
    assert denied(client.get(f"/v2/{REPO}/manifests/1.0"))["detail"]["reason"] == \
        "SIGNATURE_REVOKED"
    # trusting the root again trusts the digest again, without a re-push or re-sign
    _upsert(settings, events, **_store(theirs, ours))
    assert [e.detail["recheck"] for e in events.events
            if e.action == "signature.accepted" and e.detail.get("recheck")] == [True]
    assert client.get(f"/v2/{REPO}/manifests/1.0").status_code == 200
    # the same root, but an identity the leaf does not have: refused again
    _upsert(settings, events, **_store(ours, identity="x509.subject: C=US, ST=WA, O=Other"))
    assert denied(client.get(f"/v2/{REPO}/manifests/1.0"))["detail"]["reason"] == \
        "SIGNATURE_REVOKED"
    assert [e.detail["reason"] for e in events.events
            if e.action == "signature.rejected"][-1] == "UNTRUSTED_SIGNATURE"
    # an edit of something else checks nothing again
    def decisions() -> int:
        return len([e for e in events.events
                    if e.action.startswith(("trust.", "manifest.", "signature."))])

    before = decisions()
    _upsert(settings, events, mode="audit",
            **_store(ours, identity="x509.subject: C=US, ST=WA, O=Other"))
    assert decisions() == before


def test_a_verdict_kept_without_its_chain_fails_closed_until_the_next_tag_write(
        notary: tuple[TestClient[Any], Settings, Recorder, m.Pki, m.Pki]) -> None:
    """Verdicts stored before dtr kept chains (migration 0006) cannot be checked again."""
    client, settings, events, ours, theirs = notary
    oci = OciClient(client)
    digest, body = by_digest(oci, REPO)
    notation_referrer(oci, REPO, ours, digest, len(body))
    assert oci.put_manifest(REPO, "1.0", body).status_code == 201

    async def forget_chains() -> None:
        registry = build_registry(settings)
        try:
            await registry.store.db.run(lambda c: c.execute(
                update(SignatureRecord).values(certificate_chain=None)))
        finally:
            await close_registry(registry)

    asyncio.run(forget_chains())
    # a store that still trusts the signature: without its chain, it stops counting
    _upsert(settings, events, **_store(ours, theirs))
    assert denied(client.get(f"/v2/{REPO}/manifests/1.0"))["detail"]["reason"] == \
        "SIGNATURE_REVOKED"
    # the next tag write verifies it again from the envelope, and it counts again
    r = oci.put_manifest(REPO, "1.1", body)
    assert r.status_code == 201, r.text
    assert client.get(f"/v2/{REPO}/manifests/1.0").status_code == 200


def test_a_signature_verified_under_a_replaced_store_does_not_count(
        notary: tuple[TestClient[Any], Settings, Recorder, m.Pki, m.Pki]) -> None:
    """A signature verified before the transaction with the policy set a worker cached,
    committed after an edit replaced the store, is checked against the new store."""
    client, settings, events, ours, theirs = notary
    client.app.state.registry.store.hooks.gate.cache_seconds = 3600.0
    oci = OciClient(client)
    digest, body = by_digest(oci, REPO)
    notation_referrer(oci, REPO, ours, digest, len(body))
    assert oci.put_manifest(REPO, "1.0", body).status_code == 201
    _upsert(settings, events, **_store(theirs))
    assert denied(client.get(f"/v2/{REPO}/manifests/1.0"))["detail"]["reason"] == \
        "SIGNATURE_REVOKED"
    # this worker still holds the old store in its cache: the new signature verifies
    # against it before the transaction, and the transaction checks it against the new one
    notation_referrer(oci, REPO, ours, digest, len(body))
    assert denied(client.get(f"/v2/{REPO}/manifests/1.0"))["detail"]["reason"] == \
        "SIGNATURE_REVOKED"
    # one signed under the new store counts
    notation_referrer(oci, REPO, theirs, digest, len(body))
    assert client.get(f"/v2/{REPO}/manifests/1.0").status_code == 200
