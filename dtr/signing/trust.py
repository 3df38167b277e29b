"""Trust state per (repository, manifest digest) (``signing.md`` §8.2) and the rules that
compute it from stored signature verdicts: which signatures count (valid, an accepted
format, a key that is active — or retired after the signature was first verified — or a
notation trust store of the policy), how many distinct signers a policy needs, index
inheritance and ``require_children_signed``, and the QUARANTINED → TRUSTED → REVOKED
transitions with their events. Functions of a synchronous ``Connection``: they run inside
the caller's transaction (a manifest push, a key revocation).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from dtr.core.hooks import RegistryEvent
from dtr.db.base import utcnow
from dtr.db.models import Manifest, ManifestReference, Repository, SignatureRecord, Tag, TrustState
from dtr.signing.notation import recheck
from dtr.signing.policy import LoadedPolicy, PolicySet
from dtr.signing.verdict import Format, Reason, Verdict

Emit = Callable[[Connection, RegistryEvent], None]
QUARANTINED, TRUSTED, REVOKED = "QUARANTINED", "TRUSTED", "REVOKED"


class GateReason:
    """``detail.reason`` codes of a refused tag write or read (``signing.md`` §8.4)."""

    UNSIGNED_MANIFEST = "UNSIGNED_MANIFEST"
    UNTRUSTED_SIGNATURE = "UNTRUSTED_SIGNATURE"
    SIGNATURE_REVOKED = "SIGNATURE_REVOKED"
    INDEX_CHILD_UNSIGNED = "INDEX_CHILD_UNSIGNED"
    POLICY_UNAVAILABLE = "POLICY_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Whether a digest is directly trusted under a policy, and why not."""

    trusted: bool
    reason: str | None
    found: int
    """Signatures stored for the digest (attestations and other artifacts not counted)."""
    signers: frozenset[str]
    """Distinct signers whose signatures count."""
    child: str | None = None
    """The unsigned child (reason ``INDEX_CHILD_UNSIGNED``)."""


def counts(policy: LoadedPolicy, row: Any) -> bool:
    """True if the stored verdict ``row`` counts toward ``policy``'s ``min_signatures``."""
    if not row.valid or row.format not in policy.formats or not row.signer:
        return False
    if str(row.format).startswith("notation"):
        return bool(policy.notation)
    key = policy.keys.get(row.signer)
    if key is None or key.trusted is None:
        return False
    if key.status == "active":
        return True
    if key.status == "retired":
        return key.retired_at is not None and row.first_verified_at < key.retired_at
    return False


def _revoked(policy: LoadedPolicy, row: Any) -> bool:
    key = policy.keys.get(row.signer or "")
    return bool(row.valid and key is not None and key.status == "revoked")


def signatures(conn: Connection, rid: int, digest: str) -> list[Any]:
    """Stored verdicts for signatures of ``digest`` in repository ``rid``."""
    return list(conn.execute(SignatureRecord.__table__.select().where(
        SignatureRecord.repository_id == rid, SignatureRecord.subject_digest == digest)).all())


def evaluate(conn: Connection, rid: int, digest: str, policy: LoadedPolicy,
             *, depth: int = 0) -> Evaluation:
    """Direct trust of ``digest``: at least ``min_signatures`` distinct counting signers,
    and — with ``require_children_signed`` — every child of an index trusted itself.
    """
    rows = [r for r in signatures(conn, rid, digest) if r.reason != Reason.NOT_A_SIGNATURE]
    signers = frozenset(r.signer for r in rows if counts(policy, r))
    if len(signers) >= policy.min_signatures:
        if policy.require_children_signed and depth < 8:
            for child in children(conn, rid, digest):
                if not evaluate(conn, rid, child, policy, depth=depth + 1).trusted:
                    return Evaluation(False, GateReason.INDEX_CHILD_UNSIGNED, len(rows),
                                      signers, child)
        return Evaluation(True, None, len(rows), signers)
    if not rows:
        reason = GateReason.UNSIGNED_MANIFEST
    elif not signers and any(_revoked(policy, r) for r in rows):
        reason = GateReason.SIGNATURE_REVOKED
    else:
        reason = GateReason.UNTRUSTED_SIGNATURE
    return Evaluation(False, reason, len(rows), signers)


def children(conn: Connection, rid: int, digest: str) -> list[str]:
    """Child manifest digests of the index ``digest`` (empty for an image)."""
    return list(conn.execute(
        select(ManifestReference.digest)
        .join(Manifest, Manifest.id == ManifestReference.manifest_id)
        .where(Manifest.repository_id == rid, Manifest.digest == digest,
               ManifestReference.kind == "manifest")).scalars())


def trusted_parent(conn: Connection, rid: int, digest: str) -> str | None:
    """A TRUSTED index of the repository that lists ``digest`` (inherited trust)."""
    parents = select(Manifest.digest).join(
        ManifestReference, ManifestReference.manifest_id == Manifest.id).where(
        Manifest.repository_id == rid, ManifestReference.digest == digest,
        ManifestReference.kind == "manifest")
    return conn.execute(select(TrustState.digest).where(
        TrustState.repository_id == rid, TrustState.state == TRUSTED,
        TrustState.digest.in_(parents)).limit(1)).scalar()


def state_of(conn: Connection, rid: int, digest: str) -> tuple[str, str | None] | None:
    """``(state, via)`` of ``digest``, or None when the gate never saw it."""
    row = conn.execute(select(TrustState.state, TrustState.via).where(
        TrustState.repository_id == rid, TrustState.digest == digest)).first()
    return (str(row[0]), row[1]) if row is not None else None


def tags_of(conn: Connection, rid: int, digest: str) -> list[str]:
    """The tags pointing at ``digest`` in repository ``rid``."""
    return sorted(conn.execute(select(Tag.name).join(Manifest, Manifest.id == Tag.manifest_id)
                               .where(Manifest.repository_id == rid,
                                      Manifest.digest == digest)).scalars())


def recompute(conn: Connection, rid: int, repository: str, digest: str,
              policy: LoadedPolicy, emit: Emit, *, _seen: set[str] | None = None) -> str:
    """Recompute and store the state of ``digest`` (then of its children, when its own
    state changed); emit ``manifest.quarantined`` / ``manifest.trusted`` /
    ``trust.revoked`` (with the tags affected) on every change. Returns the new state.
    """
    seen = _seen if _seen is not None else set()
    seen.add(digest)
    ev = evaluate(conn, rid, digest, policy)
    old = state_of(conn, rid, digest)
    via: str | None = "direct"
    if ev.trusted:
        new = TRUSTED
    else:
        via = trusted_parent(conn, rid, digest)
        if via is not None:
            new = TRUSTED
        else:
            new = REVOKED if old is not None and old[0] in (TRUSTED, REVOKED) else QUARANTINED
    if old == (new, via):
        return new
    now = utcnow()
    if old is None:
        conn.execute(insert(TrustState).values(
            repository_id=rid, digest=digest, state=new, via=via, policy_id=policy.id,
            updated_at=now))
    else:
        conn.execute(update(TrustState).where(TrustState.repository_id == rid,
                                              TrustState.digest == digest)
                     .values(state=new, via=via, policy_id=policy.id, updated_at=now))
    detail: dict[str, Any] = {"policy": policy.name, "state": new,
                              "signers": sorted(ev.signers), "signaturesFound": ev.found}
    if new == TRUSTED:
        if old is None or old[0] != TRUSTED:
            emit(conn, RegistryEvent("manifest.trusted", repository, digest,
                                     detail={**detail, "via": via}))
    elif new == REVOKED:
        if old is not None and old[0] == TRUSTED:
            emit(conn, RegistryEvent("trust.revoked", repository, digest, detail={
                **detail, "reason": ev.reason, "tags": tags_of(conn, rid, digest)}))
    elif old is None:
        emit(conn, RegistryEvent("manifest.quarantined", repository, digest, detail=detail))
    if (old[0] if old else None) != new:
        for child in children(conn, rid, digest):
            if child not in seen:
                recompute(conn, rid, repository, child, policy, emit, _seen=seen)
    return new


def store_verdicts(conn: Connection, rid: int, repository: str, signature: str,
                   subject: str, verdicts: Sequence[Verdict], version: int,
                   emit: Emit, *, now: dt.datetime | None = None) -> None:
    """Record the verdicts of the signature manifest ``signature`` for ``subject``
    (replacing earlier ones, keeping each position's first-verified time) and emit
    ``signature.accepted`` (valid), ``signature.ignored`` (not a signature: attestations,
    SBOMs) or ``signature.rejected``.
    """
    when = now or utcnow()
    first: dict[int, dt.datetime] = {
        int(pos): when_ for pos, when_ in conn.execute(select(
            SignatureRecord.position, SignatureRecord.first_verified_at).where(
            SignatureRecord.repository_id == rid, SignatureRecord.signature_digest == signature,
            SignatureRecord.subject_digest == subject)).all()}
    conn.execute(delete(SignatureRecord).where(
        SignatureRecord.repository_id == rid, SignatureRecord.signature_digest == signature,
        SignatureRecord.subject_digest == subject))
    for position, v in enumerate(verdicts):
        signer = v.key_id or v.identity
        conn.execute(insert(SignatureRecord).values(
            repository_id=rid, subject_digest=subject, signature_digest=signature,
            position=position, format=v.format.value if v.format else None, signer=signer,
            valid=v.trusted, reason=v.reason.value if v.reason else None,
            message=v.message[:1000] or None, policy_version=version,
            first_verified_at=first.get(position, when), certificate_chain=v.chain_pem))
        if position in first:
            continue
        action = ("signature.accepted" if v.trusted else
                  "signature.ignored" if v.reason == Reason.NOT_A_SIGNATURE else
                  "signature.rejected")
        emit(conn, RegistryEvent(action, repository, subject, detail={
            "signature": signature, "format": v.format.value if v.format else None,
            "keyId": v.key_id, "identity": v.identity,
            "reason": v.reason.value if v.reason else None, "message": v.message}))


def forget_signature(conn: Connection, rid: int, signature: str, *,
                     subject: str | None = None) -> list[str]:
    """Drop the verdicts of a deleted signature manifest (only those for ``subject`` when
    given: its signature tag was deleted); return the subjects it signed.
    """
    scope = [SignatureRecord.repository_id == rid,
             SignatureRecord.signature_digest == signature]
    if subject is not None:
        scope.append(SignatureRecord.subject_digest == subject)
    subjects = sorted(set(conn.execute(
        select(SignatureRecord.subject_digest).where(*scope)).scalars()))
    conn.execute(delete(SignatureRecord).where(*scope))
    return subjects


def recompute_signer(conn: Connection, policies: PolicySet, signer: str,
                     emit: Emit) -> list[str]:
    """Recompute every digest a signature by ``signer`` (key id) was recorded for, in
    every protected repository. Returns ``<repository>@<digest>`` of those that changed.
    """
    affected = conn.execute(
        select(SignatureRecord.repository_id, Repository.name, SignatureRecord.subject_digest)
        .join(Repository, Repository.id == SignatureRecord.repository_id)
        .where(SignatureRecord.signer == signer).distinct()).all()
    changed: list[str] = []
    for rid, name, digest in affected:
        policy = policies.covering(name)
        if policy is None:
            continue
        before = state_of(conn, rid, digest)
        after = recompute(conn, rid, name, digest, policy, emit)
        if before is None or before[0] != after:
            changed.append(f"{name}@{digest}")
    return changed


def recheck_notation(conn: Connection, policies: PolicySet, policy_id: int,
                     emit: Emit) -> None:
    """Check again, against the current trust stores and identities of the policy
    ``policy_id``, the certificate chain of every notation verdict in the repositories it
    governs that only the trust check could change (valid, or refused as
    ``UNTRUSTED_SIGNATURE`` or ``EXPIRED`` with its chain kept), at the verdict's first
    verification time. A verdict whose validity flips is stored at the current version
    and recorded (``signature.rejected`` or ``signature.accepted`` with ``recheck``).

    A valid verdict kept without a chain (stored before dtr kept chains) stops counting,
    failing closed: it keeps its old policy version, so its digest's next tag write
    verifies it again from the envelope.
    """
    rows = conn.execute(
        select(SignatureRecord.id, SignatureRecord.repository_id, Repository.name,
               SignatureRecord.subject_digest, SignatureRecord.signature_digest,
               SignatureRecord.format, SignatureRecord.signer, SignatureRecord.valid,
               SignatureRecord.certificate_chain, SignatureRecord.first_verified_at)
        .join(Repository, Repository.id == SignatureRecord.repository_id)
        .where(SignatureRecord.format.like("notation%"),
               SignatureRecord.valid.is_(True) | (
                   SignatureRecord.certificate_chain.is_not(None)
                   & SignatureRecord.reason.in_((Reason.UNTRUSTED_SIGNATURE,
                                                 Reason.EXPIRED))))
        .order_by(SignatureRecord.id)).all()
    for row in rows:
        governing = policies.covering(row.name)
        if governing is None or governing.id != policy_id:
            continue
        before = Verdict(bool(row.valid), Format(row.format), row.subject_digest,
                         identity=row.signer, chain_pem=row.certificate_chain)
        values: dict[str, Any] = {"policy_version": policies.version}
        if row.certificate_chain is None:
            after = replace(before, trusted=False, reason=Reason.UNTRUSTED_SIGNATURE,
                            identity=None, message=(
                                "verified before dtr kept certificate chains: the trust "
                                "stores changed, so it counts again once its digest's next "
                                "tag write verifies it"))
            values = {}  # the old version: that tag write verifies it from the envelope
        else:
            after = recheck(before, governing.notation, row.first_verified_at)
        conn.execute(update(SignatureRecord).where(SignatureRecord.id == row.id).values(
            valid=after.trusted, signer=after.identity,
            reason=after.reason.value if after.reason else None,
            message=after.message[:1000], **values))
        if after.trusted != before.trusted:
            emit(conn, RegistryEvent(
                "signature.accepted" if after.trusted else "signature.rejected",
                row.name, row.subject_digest, detail={
                    "signature": row.signature_digest, "format": row.format, "keyId": None,
                    "identity": after.identity or before.identity,
                    "reason": after.reason.value if after.reason else None,
                    "message": after.message, "recheck": True}))


def recompute_policy(conn: Connection, policies: PolicySet, policy_id: int,
                     emit: Emit) -> list[str]:
    """Recompute, from the stored verdicts, every digest with a trust state in the
    repositories the policy ``policy_id`` governs (after an edit of who counts:
    ``min_signatures``, ``formats``, ``require_children_signed``, trust stores; notation
    verdicts are checked against the trust stores again first, :func:`recheck_notation`).
    Drops emit ``trust.revoked`` like a key revocation. Returns ``<repository>@<digest>``
    of those whose state changed.
    """
    recheck_notation(conn, policies, policy_id, emit)
    rows = conn.execute(
        select(TrustState.repository_id, Repository.name, TrustState.digest)
        .join(Repository, Repository.id == TrustState.repository_id)
        .order_by(TrustState.repository_id, TrustState.digest)).all()
    changed: list[str] = []
    for rid, name, digest in rows:
        policy = policies.covering(name)
        if policy is None or policy.id != policy_id:
            continue
        before = state_of(conn, rid, digest)
        if before is None:
            continue  # removed as a side effect (never happens today)
        after = recompute(conn, rid, name, digest, policy, emit)
        if before[0] != after:
            changed.append(f"{name}@{digest}")
    return changed
