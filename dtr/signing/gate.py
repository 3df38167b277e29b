"""The signing gate (``signing.md`` §8): quarantine by digest, tag only what is trusted.

``SigningGate`` plugs into core's seams (``core/hooks.py``):

* ``ManifestObserver`` — every manifest push in a protected repository. ``prepare`` (before
  the transaction, may read blobs) classifies signature objects (a manifest with
  ``subject``; a ``<alg>-<hex>.sig|.att|.sbom`` tag) and verifies them against the policy
  covering the repository; for tag writes it also verifies every signature already stored
  for the digest that has no verdict under the current policy version. ``stored`` (inside
  the transaction) records the verdicts and recomputes the trust state of the subject —
  and of the pushed manifest itself, which starts QUARANTINED unless already trusted.
* ``PushGate`` — a tag write is allowed only for a TRUSTED digest; otherwise
  ``dtr.errors.Denied`` with the §8.4 detail (``mode: audit`` allows and records
  ``tag.warned``). Signature tags, referrers fallback indexes and digest aliases are
  exempt.
* ``ReadGate`` — a QUARANTINED (or REVOKED) digest is served only to callers with push on
  the repository; a tag whose digest is REVOKED is refused to everyone
  (``SIGNATURE_REVOKED``).

Every decision is an event through ``Hooks.emit`` (the audit seam) in the transaction
that makes it; refused tag writes are recorded by core in a transaction of their own, and
refused reads here, in one of their own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, select

from dtr.core.hooks import BlobReader, Hooks, ManifestWrite, MayPush, RegistryEvent, TagWrite
from dtr.db.database import Database
from dtr.db.models import Manifest, Repository, SignatureRecord, Tag, TrustState
from dtr.errors import Denied
from dtr.signing import trust
from dtr.signing.notation import recheck
from dtr.signing.policy import LoadedPolicy, PolicySet, current_version, load
from dtr.signing.trust import REVOKED, TRUSTED, GateReason
from dtr.signing.verdict import Verdict
from dtr.signing.verify import verify_all

SIGNATURE_TAG = re.compile(r"^(sha256|sha512)-([0-9a-f]{64}|[0-9a-f]{128})\.(sig|att|sbom)$")
DIGEST_TAG = re.compile(r"^(sha256|sha512)-([0-9a-f]{64}|[0-9a-f]{128})$")
IMAGE_MANIFESTS = ("application/vnd.oci.image.manifest.v1+json",
                   "application/vnd.docker.distribution.manifest.v2+json")
INDEXES = ("application/vnd.oci.image.index.v1+json",
           "application/vnd.docker.distribution.manifest.list.v2+json")
PREFETCH_CAP = 1024 * 1024 + 1
"""Blobs of a signature manifest larger than this are not read (the verifiers refuse them)."""


def signature_subject(write: ManifestWrite) -> str | None:
    """The digest a pushed manifest is a signature object of, or None.

    A manifest with ``subject`` (any referrer), or one tagged ``<alg>-<hex>.sig|.att|.sbom``.
    """
    if write.subject:
        return write.subject
    for tag in write.tags:
        m = SIGNATURE_TAG.match(tag)
        if m:
            return f"{m.group(1)}:{m.group(2)}"
    return None


def _alias_digest(tag: str) -> str | None:
    m = DIGEST_TAG.match(tag)
    return f"{m.group(1)}:{m.group(2)}" if m else None


def _is_referrers_index(write: ManifestWrite) -> bool:
    """A ``<alg>-<hex>`` tag on an index that is not the digest itself (fallback index)."""
    return write.media_type in INDEXES and any(
        (a := _alias_digest(t)) is not None and a != write.digest for t in write.tags)


@dataclass(slots=True)
class Prepared:
    """Verdicts made before the manifest transaction, for ``stored`` to record."""

    version: int
    policy_id: int
    verdicts: list[tuple[str, str, list[Verdict]]] = field(default_factory=list)
    """``(signature manifest digest, subject digest, verdicts)``."""


class _Blobs:
    """A ``BlobSource`` over prefetched bytes."""

    def __init__(self, data: dict[str, bytes]) -> None:
        self.data = data

    def read(self, digest: str) -> bytes:
        return self.data[digest]


async def _prefetch(content: bytes, blobs: BlobReader) -> _Blobs:
    """Read the (small) config and layer blobs a signature manifest references."""
    out: dict[str, bytes] = {}
    try:
        doc = json.loads(content)
    except ValueError:
        return _Blobs(out)
    descriptors: list[Any] = []
    if isinstance(doc, dict):
        descriptors = [doc.get("config"), *(doc.get("layers") or [])] \
            if isinstance(doc.get("layers") or [], list) else [doc.get("config")]
    for d in descriptors:
        if not isinstance(d, dict) or not isinstance(d.get("digest"), str):
            continue
        size = d.get("size")
        if not isinstance(size, int) or size > PREFETCH_CAP or d["digest"] in out:
            continue
        try:
            out[d["digest"]] = await blobs(d["digest"])
        except KeyError:
            continue
    return _Blobs(out)


class SigningGate:
    """The gate over one database; plugged into ``Hooks`` by the composition root.

    Args:
        db: the metadata database (policies, verdicts, trust states).
        hooks: the hooks whose sinks receive the gate's events.
        cache_seconds: how long a loaded policy set is used by reads and by the push
            preparation before its version is checked again (transactions always check).
    """

    def __init__(self, db: Database, hooks: Hooks, *, cache_seconds: float = 2.0) -> None:
        self.db = db
        self.hooks = hooks
        self.cache_seconds = cache_seconds
        self._cache: PolicySet | None = None
        self._local = threading.local()  # (transaction, policy set) last read on a thread

    # -- policies ---------------------------------------------------------------------
    async def policies(self, *, fresh: bool = False) -> PolicySet:
        """The policy set, reloaded when older than ``cache_seconds`` (or ``fresh``) and
        changed.
        """
        cache = self._cache
        if not fresh and cache is not None \
                and time.monotonic() - cache.loaded_at < self.cache_seconds:
            return cache
        version = await self.db.run(current_version, write=False)
        if cache is not None and cache.version == version:
            self._cache = PolicySet(cache.version, cache.policies)
            return self._cache
        self._cache = await self.db.run(load, write=False)
        return self._cache

    def _policies_in(self, conn: Connection) -> PolicySet:
        """The policy set as of ``conn``'s transaction: its version is read once per
        transaction (a manifest push asks for every tag it writes), on this thread.
        """
        txn = conn.get_transaction()
        seen = getattr(self._local, "seen", None)
        if txn is not None and seen is not None and seen[0] is txn:
            return seen[1]  # type: ignore[no-any-return]
        version = current_version(conn)
        cache = self._cache
        if cache is None or cache.version != version:
            cache = self._cache = load(conn)
        self._local.seen = (txn, cache)
        return cache

    def invalidate(self) -> None:
        """Forget the cached policy set (after an edit in this process)."""
        self._cache = None

    # -- ManifestObserver -------------------------------------------------------------
    async def prepare(self, write: ManifestWrite, blobs: BlobReader) -> object:
        """Verify an arriving signature object, and the not-yet-verified signatures of
        a digest being tagged (see the module docstring).
        """
        policies = await self.policies()
        policy = policies.covering(write.repository)
        if policy is None or policy.broken:
            return None
        subject = signature_subject(write)
        gated = [t for t in write.tags if not self._exempt_tag(t, write)]
        if gated and subject is None:
            # which stored verdicts are stale is decided against the current version, so
            # a tag write right after a policy edit verifies them again
            policies = await self.policies(fresh=True)
            policy = policies.covering(write.repository)
            if policy is None or policy.broken:
                return None
        prepared = Prepared(policies.version, policy.id)
        material = policy.material
        if subject is not None:
            source = await _prefetch(write.content, blobs)
            verdicts = await asyncio.to_thread(verify_all, write.content, subject, source,
                                               material)
            prepared.verdicts.append((write.digest, subject, verdicts))
        if gated and subject is None:
            targets = [write.digest]
            if policy.require_children_signed:
                targets += list(write.children)
            stale = await self.db.run(
                lambda c: _unverified(c, write.repository, targets, policies.version),
                write=False)
            for sig_digest, sig_subject, content in stale:
                source = await _prefetch(content, blobs)
                verdicts = await asyncio.to_thread(verify_all, content, sig_subject, source,
                                                   material)
                prepared.verdicts.append((sig_digest, sig_subject, verdicts))
        return prepared

    def stored(self, session: Connection, write: ManifestWrite, prepared: object) -> None:
        """Record verdicts and recompute trust states (inside the push transaction)."""
        policies = self._policies_in(session)
        policy = policies.covering(write.repository)
        if policy is None:
            return
        version = policies.version
        rid = _rid(session, write.repository)
        if rid is None:
            return
        subjects: list[str] = []
        if isinstance(prepared, Prepared) and prepared.policy_id == policy.id:
            now = dt.datetime.now(dt.UTC)
            for sig_digest, subject, made in prepared.verdicts:
                # if the policy changed since they were made, the notation chains are
                # checked against the stores of now; stored at the version that made them,
                # every verdict is verified again at the next tag write
                verdicts = made if prepared.version == version else [
                    recheck(v, policy.notation, now) for v in made]
                trust.store_verdicts(session, rid, write.repository, sig_digest, subject,
                                     verdicts, prepared.version, self.hooks.emit)
                subjects.append(subject)
        if signature_subject(write) is None and not _is_referrers_index(write):
            subjects.append(write.digest)
        for digest in dict.fromkeys(subjects):
            trust.recompute(session, rid, write.repository, digest, policy, self.hooks.emit)

    def deleted(self, session: Connection, repository: str, digest: str,
                subject: str | None) -> None:
        """A deleted signature manifest stops counting: recompute what it signed."""
        policy = self._policies_in(session).covering(repository)
        if policy is None:
            return
        rid = _rid(session, repository)
        if rid is None:
            return
        session.execute(delete(TrustState).where(TrustState.repository_id == rid,
                                                 TrustState.digest == digest))
        for signed in trust.forget_signature(session, rid, digest):
            trust.recompute(session, rid, repository, signed, policy, self.hooks.emit)

    def tag_deleted(self, session: Connection, repository: str, tag: str,
                    digest: str) -> None:
        """A deleted ``<alg>-<hex>.sig|.att|.sbom`` tag stops its (now untagged) manifest
        counting for ``<alg>:<hex>``, unless that manifest still names it as ``subject``.
        """
        m = SIGNATURE_TAG.match(tag)
        if m is None:
            return
        subject = f"{m.group(1)}:{m.group(2)}"
        policy = self._policies_in(session).covering(repository)
        if policy is None:
            return
        rid = _rid(session, repository)
        if rid is None:
            return
        if session.execute(select(Manifest.id).where(
                Manifest.repository_id == rid, Manifest.digest == digest,
                Manifest.subject_digest == subject)).first() is not None:
            return
        if trust.forget_signature(session, rid, digest, subject=subject):
            trust.recompute(session, rid, repository, subject, policy, self.hooks.emit)

    # -- PushGate ---------------------------------------------------------------------
    def _exempt_tag(self, tag: str, write: ManifestWrite | TagWrite) -> bool:
        if SIGNATURE_TAG.match(tag):
            return write.media_type in IMAGE_MANIFESTS
        alias = _alias_digest(tag)
        if alias is None:
            return False
        return alias == write.digest or write.media_type in INDEXES

    def check_tag_write(self, session: Connection, write: TagWrite) -> None:
        """Allow a tag write only for a TRUSTED digest (see the module docstring)."""
        try:
            policy = self._policies_in(session).covering(write.repository)
        except Exception as exc:
            raise Denied(f"the signing policy of {write.repository} cannot be loaded "
                         f"({type(exc).__name__}); tag writes are refused until an "
                         "administrator fixes it",
                         {"reason": GateReason.POLICY_UNAVAILABLE,
                          "repository": write.repository, "tag": write.tag,
                          "digest": write.digest}) from exc
        if policy is None:
            return
        if policy.broken:
            self._refuse(session, write, policy, None, GateReason.POLICY_UNAVAILABLE)
        rid = _rid(session, write.repository)
        assert rid is not None  # the push created it
        if self._exempt_tag(write.tag, write) and self._exempt_content(session, rid, write):
            return
        state = trust.state_of(session, rid, write.digest)
        if state is not None and state[0] == TRUSTED:
            return
        ev = trust.evaluate(session, rid, write.digest, policy)
        if policy.mode == "audit":
            self.hooks.emit(session, RegistryEvent(
                "tag.warned", write.repository, write.digest, write.tag,
                _detail(write, policy, ev, ev.reason or GateReason.UNTRUSTED_SIGNATURE)))
            return
        self._refuse(session, write, policy, ev, ev.reason or GateReason.UNTRUSTED_SIGNATURE)

    def _exempt_content(self, session: Connection, rid: int, write: TagWrite) -> bool:
        """A ``<alg>-<hex>`` index tag is exempt only if every entry refers to that digest."""
        alias = _alias_digest(write.tag)
        if alias is None or alias == write.digest:
            return True
        content = session.execute(select(Manifest.content).where(
            Manifest.repository_id == rid, Manifest.digest == write.digest)).scalar()
        try:
            entries = json.loads(content or b"{}").get("manifests") or []
            digests = {str(e["digest"]) for e in entries}
        except (ValueError, TypeError, KeyError, AttributeError):
            return False
        if not digests:
            return True
        subjects = set(session.execute(select(Manifest.subject_digest).where(
            Manifest.repository_id == rid, Manifest.digest.in_(sorted(digests)))).scalars())
        signed = set(session.execute(select(SignatureRecord.subject_digest).where(
            SignatureRecord.repository_id == rid,
            SignatureRecord.signature_digest.in_(sorted(digests)))).scalars())
        return (subjects | signed) <= {alias}

    def _refuse(self, session: Connection, write: TagWrite, policy: LoadedPolicy,
                ev: trust.Evaluation | None, reason: str) -> None:
        raise Denied(_message(write, policy, ev, reason), _detail(write, policy, ev, reason))

    # -- ReadGate ---------------------------------------------------------------------
    async def check_read(self, repository: str, reference: str, digest: str,
                         may_push: MayPush) -> None:
        """Quarantined digests only for pushers; revoked digests never by tag."""
        policies = await self.policies()
        policy = policies.covering(repository)
        if policy is None or policy.mode == "audit":
            return
        state = await self.db.run(lambda c: _state_by_name(c, repository, digest),
                                  write=False)
        if state is None or state == TRUSTED:
            return
        by_tag = reference != digest
        if state == REVOKED and by_tag:
            message = (f"manifest {digest} is no longer trusted: the keys that signed it were "
                       f"revoked; re-sign it with an active trusted key ({repository}:"
                       f"{reference})")
            reason = GateReason.SIGNATURE_REVOKED
        elif await may_push():
            return
        else:
            message = f"manifest {digest} is quarantined (not signed by a trusted key)"
            reason = (GateReason.SIGNATURE_REVOKED if state == REVOKED
                      else GateReason.UNSIGNED_MANIFEST)
        detail = {"reason": reason, "repository": repository, "reference": reference,
                  "digest": digest, "policy": policy.name, "policyVersion": policy.version,
                  "state": state}
        event = RegistryEvent("manifest.pull.denied", repository, digest,
                              None if not by_tag else reference, detail)
        if self.hooks.sinks:
            await self.db.run(lambda c: self.hooks.emit(c, event))
        raise Denied(message, detail)


def _rid(conn: Connection, repository: str) -> int | None:
    value = conn.execute(select(Repository.id).where(Repository.name == repository)).scalar()
    return int(value) if value is not None else None


def _state_by_name(conn: Connection, repository: str, digest: str) -> str | None:
    return conn.execute(select(TrustState.state).join(
        Repository, Repository.id == TrustState.repository_id).where(
        Repository.name == repository, TrustState.digest == digest)).scalar()


def _unverified(conn: Connection, repository: str, subjects: Sequence[str],
                version: int) -> list[tuple[str, str, bytes]]:
    """Signature manifests stored for ``subjects`` with no verdict at ``version``:
    referrers (``subject``) and ``<alg>-<hex>.sig`` tags. ``(digest, subject, content)``.
    """
    rid = _rid(conn, repository)
    if rid is None:
        return []
    out: list[tuple[str, str, bytes]] = []
    for subject in subjects:
        verified = set(conn.execute(select(SignatureRecord.signature_digest).where(
            SignatureRecord.repository_id == rid, SignatureRecord.subject_digest == subject,
            SignatureRecord.policy_version >= version)).scalars())
        rows = list(conn.execute(select(Manifest.digest, Manifest.content).where(
            Manifest.repository_id == rid, Manifest.subject_digest == subject)).all())
        tag = subject.replace(":", "-") + ".sig"
        rows += conn.execute(select(Manifest.digest, Manifest.content)
                             .join(Tag, Tag.manifest_id == Manifest.id)
                             .where(Tag.repository_id == rid, Tag.name == tag)).all()
        for sig_digest, content in rows:
            if sig_digest not in verified:
                verified.add(sig_digest)
                out.append((str(sig_digest), subject, bytes(content)))
    return out


def _detail(write: TagWrite, policy: LoadedPolicy, ev: trust.Evaluation | None,
            reason: str) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "reason": reason, "repository": write.repository, "tag": write.tag,
        "digest": write.digest, "policy": policy.name, "policyVersion": policy.version,
        "acceptedFormats": policy.accepted_formats,
        "signaturesFound": ev.found if ev else 0,
        "signaturesTrusted": len(ev.signers) if ev else 0}
    if ev is not None and ev.child:
        detail["child"] = ev.child
    return detail


def _message(write: TagWrite, policy: LoadedPolicy, ev: trust.Evaluation | None,
             reason: str) -> str:
    head = (f"signature required: repository {write.repository} only accepts tags for "
            "manifests signed by a trusted key; ")
    d = write.digest
    if reason == GateReason.POLICY_UNAVAILABLE:
        return (f"signing policy {policy.name} for repository {write.repository} cannot be "
                f"evaluated ({policy.broken}); tag writes are refused until an "
                "administrator fixes it.")
    if reason == GateReason.UNSIGNED_MANIFEST:
        return (head + f"{d} has no valid signature. Push by digest, sign it "
                "(cosign/notation), then tag.")
    if reason == GateReason.SIGNATURE_REVOKED:
        return (head + f"{d} is signed only by revoked keys. Sign it with an active "
                "trusted key, then tag.")
    if reason == GateReason.INDEX_CHILD_UNSIGNED:
        child = ev.child if ev else "a child"
        return (head + f"index {d} lists {child}, which is not signed by a trusted key. "
                "Sign the index and every child (cosign sign --recursive), then tag.")
    found = ev.found if ev else 0
    good = len(ev.signers) if ev else 0
    return (head + f"{d} has {found} signature(s), {good} from distinct trusted keys "
            f"(policy {policy.name} needs {policy.min_signatures}). Sign it with a trusted "
            "key, then tag.")
