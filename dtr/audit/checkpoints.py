"""Signed checkpoints: statements "event ``seq`` has hash ``hash``" signed (compact JWS,
ES256) with the registry's key, so the chain's state at that point can be proven to an
auditor who holds the registry's public keys, and the chain stays verifiable after
retention drops the events before a checkpoint.

:class:`CheckpointKeys` signs and verifies; :func:`write_checkpoint` records one for the
current head; :func:`checkpoint_due` says when the periodic one is due.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import rfc8785
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from sqlalchemy import Connection, func, insert, select

from dtr.audit.chain import format_time, head
from dtr.db.base import utcnow
from dtr.db.models import AuditCheckpoint

ALGORITHM = "ES256"
_REGISTRY = jws.JWSRegistry(algorithms=[ALGORITHM])
CheckpointKind = Literal["periodic", "retention"]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One checkpoint as stored, and whether its signature verified."""

    seq: int
    hash: str
    time: dt.datetime
    kind: str
    key_id: str
    signature: str


class CheckpointKeys:
    """The registry key checkpoints are signed with, and every key they may carry.

    Args:
        signing: the current private key (EC P-256).
        kid: its key id.
        verifying: key id → public key (current and previous keys, after rotation).
    """

    def __init__(self, signing: ECKey, kid: str, verifying: Mapping[str, ECKey]) -> None:
        self.signing = signing
        self.kid = kid
        self.verifying = dict(verifying)

    def sign(self, payload: Mapping[str, Any]) -> str:
        """A compact JWS over the RFC 8785 JSON of ``payload``."""
        body = rfc8785.dumps(dict(payload))
        token = jws.serialize_compact({"alg": ALGORITHM, "kid": self.kid}, body,
                                      self.signing, registry=_REGISTRY)
        return str(token)

    def verify(self, signature: str) -> dict[str, Any] | None:
        """The signed payload, or None when the signature is not valid for a known key."""
        try:
            obj = jws.extract_compact(signature.encode("ascii"), registry=_REGISTRY)
            key = self.verifying.get(str(obj.headers().get("kid", "")))
            if key is None or not jws.validate_compact(obj, key, registry=_REGISTRY):
                return None
            payload = json.loads(obj.payload)
        except (JoseError, ValueError, UnicodeError):
            return None
        return payload if isinstance(payload, dict) else None

    def valid(self, checkpoint: Checkpoint) -> bool:
        """True if ``checkpoint``'s signature is valid and states its own fields."""
        payload = self.verify(checkpoint.signature)
        return payload is not None and payload == _payload(
            checkpoint.seq, checkpoint.hash, checkpoint.time, checkpoint.kind)


def _payload(seq: int, hash_: str, when: dt.datetime, kind: str) -> dict[str, Any]:
    return {"seq": seq, "hash": hash_, "time": format_time(when), "kind": kind}


def sign_checkpoint(conn: Connection, keys: CheckpointKeys, seq: int, hash_: str,
                    kind: CheckpointKind = "periodic") -> Checkpoint | None:
    """Record a signed checkpoint for event ``seq`` whose hash is ``hash_`` (unless one
    exists already).
    """
    if conn.execute(select(AuditCheckpoint.seq).where(AuditCheckpoint.seq == seq)).first():
        return None
    when = utcnow()
    signature = keys.sign(_payload(seq, hash_, when, kind))
    conn.execute(insert(AuditCheckpoint).values(seq=seq, hash=hash_, time=when, kind=kind,
                                                key_id=keys.kid, signature=signature))
    return Checkpoint(seq, hash_, when, kind, keys.kid, signature)


def write_checkpoint(conn: Connection, keys: CheckpointKeys) -> Checkpoint | None:
    """Sign the current head (nothing when the chain is empty or the head is signed)."""
    seq, hash_ = head(conn)
    if seq == 0:
        return None
    return sign_checkpoint(conn, keys, seq, hash_)


def checkpoint_due(conn: Connection, every_events: int, every_seconds: float) -> bool:
    """True if the head is ``every_events`` or more past the last checkpoint, or unsigned
    events are older than ``every_seconds``.
    """
    seq, _ = head(conn)
    last = conn.execute(select(func.max(AuditCheckpoint.seq))).scalar() or 0
    if seq <= last:
        return False
    if seq - last >= every_events:
        return True
    when = conn.execute(select(func.max(AuditCheckpoint.time))).scalar()
    return when is None or (utcnow() - when).total_seconds() >= every_seconds


def checkpoints(conn: Connection, after: int = 0) -> list[Checkpoint]:
    """Every checkpoint after ``after``, in ``seq`` order."""
    rows = conn.execute(select(AuditCheckpoint.__table__).where(AuditCheckpoint.seq > after)
                        .order_by(AuditCheckpoint.seq))
    return [Checkpoint(r.seq, r.hash, r.time, r.kind, r.key_id, r.signature) for r in rows]
