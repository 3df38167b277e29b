"""Trust policies of the signing gate (``signing.md`` §8.1): which repositories are
protected, in which mode, by which cosign keys and notation trust stores, with how many
distinct signers — stored as rows, versioned, and loaded into immutable ``PolicySet`` values.

Edits are plain functions of a synchronous ``Connection`` (one transaction each, composed
by the caller); every edit bumps the policy's own ``version`` and the global signing
version (``signing_state``, the cache key of every replica) and emits an event through the
``EventSink`` seam (``emit``). ``PolicyService`` runs them as transactions. Key revocation
recomputes every affected digest in the same transaction (``dtr.signing.trust``).

Repository patterns are RBAC-style globs: ``*`` matches one path segment, ``**`` any
number of segments (``prod/**`` covers ``prod/app`` and ``prod/a/b``). When several
protected policies cover a repository, the most specific one (fewest wildcards, longest
pattern, then name) governs it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from dtr.core.hooks import RegistryEvent
from dtr.db.base import utcnow
from dtr.db.database import Database
from dtr.db.models import SigningKey, SigningPolicy, SigningState, SigningTrustStore
from dtr.signing.keys import KeyMaterialError, TrustedKey, TrustStore
from dtr.signing.notation import NotationPolicy, TrustedIdentity
from dtr.signing.verdict import Format
from dtr.signing.verify import TrustMaterial

Emit = Callable[[Connection, RegistryEvent], None]
Mode = Literal["enforce", "audit"]
KeyStatus = Literal["active", "retired", "revoked"]
ALL_FORMATS: tuple[str, ...] = tuple(f.value for f in Format)
#: Shorthands accepted in ``formats``: a tool name means all of its formats.
FORMAT_ALIASES = {"cosign": ("cosign-legacy", "cosign-oci11", "cosign-bundle"),
                  "notation": ("notation-jws", "notation-cose")}


class PolicyError(ValueError):
    """A policy definition is invalid (the message names the field)."""


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A cosign public key to trust (PEM SubjectPublicKeyInfo)."""

    pem: str
    name: str | None = None
    status: KeyStatus = "active"


@dataclass(frozen=True, slots=True)
class TrustStoreSpec:
    """A notation trust store: root certificates (PEM) and the identities trusted."""

    name: str
    roots_pem: str
    identities: tuple[str, ...] = ("*",)


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A policy as an administrator (or the settings file) writes it."""

    name: str
    pattern: str
    protected: bool = True
    mode: Mode = "enforce"
    min_signatures: int = 1
    require_children_signed: bool = False
    formats: tuple[str, ...] = ALL_FORMATS
    keys: tuple[KeySpec, ...] = ()
    trust_stores: tuple[TrustStoreSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class LoadedKey:
    """A stored key with its lifecycle."""

    key_id: str
    status: str
    retired_at: dt.datetime | None
    revoked_at: dt.datetime | None
    trusted: TrustedKey | None
    """``None`` when the stored PEM no longer parses (the policy is then broken)."""


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A policy ready for decisions (immutable; rebuilt when the version changes)."""

    id: int
    name: str
    pattern: str
    protected: bool
    mode: str
    min_signatures: int
    require_children_signed: bool
    formats: tuple[str, ...]
    version: int
    keys: dict[str, LoadedKey]
    notation: tuple[NotationPolicy, ...]
    broken: str | None = None
    """Why the policy cannot be used (a key or trust store does not load): fail closed."""

    @property
    def material(self) -> TrustMaterial:
        """Every key (revoked ones too: a verdict names its signer, the key's status then
        decides whether it counts) and every notation trust store of the policy.
        """
        return TrustMaterial(
            cosign_keys=tuple(k.trusted for k in self.keys.values() if k.trusted is not None),
            notation=self.notation)

    @property
    def accepted_formats(self) -> list[str]:
        """Tool names (``cosign``, ``notation``) the policy accepts, for messages."""
        return [tool for tool, fmts in FORMAT_ALIASES.items()
                if any(f in self.formats for f in fmts)]


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every policy at one global signing version."""

    version: int
    policies: tuple[LoadedPolicy, ...] = ()
    loaded_at: float = field(default_factory=time.monotonic)

    def covering(self, repository: str) -> LoadedPolicy | None:
        """The protected policy governing ``repository``, or None (unprotected)."""
        for policy in self.policies:
            if policy.protected and pattern_matches(policy.pattern, repository):
                return policy
        return None


@lru_cache(maxsize=256)
def _pattern_re(pattern: str) -> re.Pattern[str]:
    out = []
    for i, segment in enumerate(pattern.split("/")):
        sep = "/" if i else ""
        if segment == "**":
            out.append("(?:/[^/]+)*" if i else "(?:[^/]+(?:/[^/]+)*)?")
        else:
            out.append(sep + "[^/]*".join(re.escape(p) for p in segment.split("*")))
    return re.compile("^" + "".join(out) + "$")


def pattern_matches(pattern: str, repository: str) -> bool:
    """True if the glob ``pattern`` covers ``repository`` (``*`` one segment, ``**`` any)."""
    return bool(_pattern_re(pattern).match(repository))


def _specificity(policy: LoadedPolicy) -> tuple[int, int, str]:
    return (policy.pattern.count("*"), -len(policy.pattern), policy.name)


def normalise_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """Expand ``cosign``/``notation`` shorthands; refuse unknown formats."""
    out: list[str] = []
    for name in formats:
        for f in FORMAT_ALIASES.get(name, (name,)):
            if f not in ALL_FORMATS:
                raise PolicyError(f"formats: unknown signature format {name!r} (use "
                                  f"{', '.join([*FORMAT_ALIASES, *ALL_FORMATS])})")
            if f not in out:
                out.append(f)
    if not out:
        raise PolicyError("formats: accept at least one signature format")
    return tuple(out)


def check_spec(spec: PolicySpec) -> None:
    """Validate a policy definition (parses every key, root and identity).

    Raises:
        PolicyError: the first invalid field.
    """
    if not spec.name or len(spec.name) > 255:
        raise PolicyError("name: required, at most 255 characters")
    if not spec.pattern or not re.fullmatch(r"[a-z0-9._/*-]+", spec.pattern):
        raise PolicyError(f"pattern: {spec.pattern!r} is not a repository glob")
    if spec.mode not in ("enforce", "audit"):
        raise PolicyError("mode: enforce or audit")
    if spec.min_signatures < 1:
        raise PolicyError("min_signatures: at least 1")
    normalise_formats(spec.formats)
    for key in spec.keys:
        if key.status not in ("active", "retired", "revoked"):
            raise PolicyError(f"keys: unknown status {key.status!r}")
        try:
            TrustedKey.from_pem(key.pem)
        except KeyMaterialError as exc:
            raise PolicyError(f"keys: {exc}") from None
    for store in spec.trust_stores:
        try:
            TrustStore.from_pem(store.name, [store.roots_pem])
            for identity in store.identities:
                TrustedIdentity.parse(identity)
        except ValueError as exc:
            raise PolicyError(f"trust_stores.{store.name}: {exc}") from None


# -- the global version ---------------------------------------------------------------------
def current_version(conn: Connection) -> int:
    """The global signing-policy version (0 before any policy was written)."""
    return int(conn.execute(select(SigningState.version).where(SigningState.id == 1))
               .scalar() or 0)


def bump_version(conn: Connection) -> int:
    """Increment the global version (creating its row) and return the new value."""
    now = utcnow()
    res = conn.execute(update(SigningState).where(SigningState.id == 1)
                       .values(version=SigningState.version + 1, updated_at=now))
    if not res.rowcount:
        conn.execute(insert(SigningState).values(id=1, version=1, updated_at=now))
    return current_version(conn)


# -- loading --------------------------------------------------------------------------------
def load(conn: Connection) -> PolicySet:
    """Every policy, parsed, at the current global version."""
    version = current_version(conn)
    keys: dict[int, list[Any]] = {}
    for row in conn.execute(SigningKey.__table__.select()).all():
        keys.setdefault(row.policy_id, []).append(row)
    stores: dict[int, list[Any]] = {}
    for row in conn.execute(SigningTrustStore.__table__.select()).all():
        stores.setdefault(row.policy_id, []).append(row)
    policies = [_loaded(row, keys.get(row.id, []), stores.get(row.id, []))
                for row in conn.execute(SigningPolicy.__table__.select()).all()]
    return PolicySet(version, tuple(sorted(policies, key=_specificity)))


def _loaded(row: Any, keys: list[Any], stores: list[Any]) -> LoadedPolicy:
    broken: str | None = None
    loaded: dict[str, LoadedKey] = {}
    for key in keys:
        trusted: TrustedKey | None = None
        try:
            trusted = TrustedKey.from_pem(key.pem)
        except KeyMaterialError as exc:
            broken = f"key {key.key_id}: {exc}"
        loaded[key.key_id] = LoadedKey(key.key_id, key.status, key.retired_at,
                                       key.revoked_at, trusted)
    notation: list[NotationPolicy] = []
    for store in stores:
        try:
            notation.append(NotationPolicy(
                store.name, (TrustStore.from_pem(store.name, [store.roots_pem]),),
                tuple(TrustedIdentity.parse(i) for i in json.loads(store.identities))))
        except ValueError as exc:
            broken = f"trust store {store.name}: {exc}"
    try:
        formats = normalise_formats(json.loads(row.formats))
    except (ValueError, TypeError) as exc:
        broken, formats = f"formats: {exc}", ()
    return LoadedPolicy(row.id, row.name, row.pattern, row.protected, row.mode,
                        row.min_signatures, row.require_children_signed, formats,
                        row.version, loaded, tuple(notation), broken)


# -- edits ----------------------------------------------------------------------------------
def upsert_policy(conn: Connection, spec: PolicySpec, emit: Emit, *, source: str = "api",
                  actor: str = "") -> int:
    """Create or replace the policy ``spec.name`` (keys and trust stores included) and
    return its id. Keys already stored keep their lifecycle timestamps; a key whose status
    changes goes through :func:`set_key_status` (revocation recomputes trust). Keys and
    stores missing from ``spec`` are removed. With ``source="config"`` a revoked key stays
    revoked whatever the settings file says (revocation is never undone by a restart).

    Raises:
        PolicyError: invalid definition.
    """
    check_spec(spec)
    now = utcnow()
    values = {"pattern": spec.pattern, "protected": spec.protected, "mode": spec.mode,
              "min_signatures": spec.min_signatures,
              "require_children_signed": spec.require_children_signed,
              "formats": json.dumps(list(normalise_formats(spec.formats))),
              "source": source, "updated_at": now}
    existing = conn.execute(SigningPolicy.__table__.select()
                            .where(SigningPolicy.name == spec.name)).first()
    counting_before = _counting(conn, int(existing.id)) if existing is not None else None
    stores_before = {} if existing is None else {
        r.name: (r.roots_pem, r.identities) for r in conn.execute(
            SigningTrustStore.__table__.select()
            .where(SigningTrustStore.policy_id == existing.id))}
    if existing is None:
        pid = int(conn.execute(insert(SigningPolicy).values(
            name=spec.name, version=1, created_at=now, **values)
            .returning(SigningPolicy.id)).scalar_one())
        action = "policy.created"
    else:
        pid = int(existing.id)
        conn.execute(update(SigningPolicy).where(SigningPolicy.id == pid)
                     .values(version=SigningPolicy.version + 1, **values))
        action = "policy.updated"
    stored = {r.key_id: r for r in conn.execute(
        SigningKey.__table__.select().where(SigningKey.policy_id == pid)).all()}
    wanted: dict[str, KeySpec] = {}
    for key in spec.keys:
        wanted[TrustedKey.from_pem(key.pem).id] = key
    for kid in set(stored) - set(wanted):
        conn.execute(delete(SigningKey).where(SigningKey.policy_id == pid,
                                              SigningKey.key_id == kid))
    for kid, key in wanted.items():
        if kid not in stored:
            conn.execute(insert(SigningKey).values(
                policy_id=pid, key_id=kid, name=key.name, pem=key.pem, status="active",
                valid_from=now))
    conn.execute(delete(SigningTrustStore).where(SigningTrustStore.policy_id == pid))
    for store in spec.trust_stores:
        conn.execute(insert(SigningTrustStore).values(
            policy_id=pid, name=store.name, roots_pem=store.roots_pem,
            identities=json.dumps(list(store.identities)), created_at=now))
    version = bump_version(conn)
    detail: dict[str, Any] = {
        "policy": spec.name, "policyVersion": version, "source": source, "actor": actor,
        "mode": spec.mode, "protected": spec.protected, "keys": sorted(wanted)}
    if existing is not None:
        stores_after = {t.name: (t.roots_pem, json.dumps(list(t.identities)))
                        for t in spec.trust_stores}
        detail.update(
            changed=[k for k in ("pattern", "protected", "mode", "min_signatures",
                                 "require_children_signed", "formats")
                     if getattr(existing, k) != values[k]],
            keysAdded=sorted(set(wanted) - set(stored)),
            keysRemoved=sorted(set(stored) - set(wanted)),
            trustStoresSet=sorted(n for n, v in stores_after.items()
                                  if stores_before.get(n) != v),
            trustStoresRemoved=sorted(set(stores_before) - set(stores_after)))
    emit(conn, RegistryEvent(action, spec.pattern, detail=detail))
    for kid, key in wanted.items():
        current = stored[kid].status if kid in stored else "active"
        if current == "revoked" and source == "config":
            continue  # revocation is sticky: a restart with an old settings file never undoes it
        if key.status != current:
            set_key_status(conn, spec.name, kid, key.status, emit, actor=actor)
    if counting_before is not None and counting_before != _counting(conn, pid):
        from dtr.signing.trust import recompute_policy  # noqa: PLC0415 - trust imports us

        recompute_policy(conn, load(conn), pid, emit)
    return pid


def _counting(conn: Connection, pid: int) -> tuple[object, ...]:
    """What decides which stored verdicts count under policy ``pid`` (besides key
    statuses, which :func:`set_key_status` recomputes): a change means re-evaluation.
    """
    row = conn.execute(select(SigningPolicy.min_signatures, SigningPolicy.formats,
                              SigningPolicy.require_children_signed)
                       .where(SigningPolicy.id == pid)).one()
    stores = sorted(conn.execute(select(SigningTrustStore.name, SigningTrustStore.roots_pem,
                                        SigningTrustStore.identities)
                                 .where(SigningTrustStore.policy_id == pid)).all())
    return (row.min_signatures, json.loads(row.formats), row.require_children_signed,
            [tuple(r) for r in stores])


def delete_policy(conn: Connection, name: str, emit: Emit, *, actor: str = "") -> bool:
    """Remove the policy ``name`` (its keys and stores go with it); False if unknown."""
    pattern = conn.execute(select(SigningPolicy.pattern)
                           .where(SigningPolicy.name == name)).scalar()
    res = conn.execute(delete(SigningPolicy).where(SigningPolicy.name == name))
    if not res.rowcount:
        return False
    version = bump_version(conn)
    emit(conn, RegistryEvent("policy.deleted", str(pattern or ""), detail={
        "policy": name, "policyVersion": version, "actor": actor}))
    return True


def set_key_status(conn: Connection, policy: str, key_id: str, status: KeyStatus,
                   emit: Emit, *, actor: str = "", now: dt.datetime | None = None,
                   ) -> list[str]:
    """Move a key of ``policy`` to ``status`` and recompute, in this transaction, the
    trust state of every digest one of its signatures counted for (``retired``: only
    signatures first verified before now keep counting; ``revoked``: none do).

    Returns:
        the digests (``<repository>@<digest>``) whose state changed.

    Raises:
        PolicyError: unknown policy or key, or an invalid status.
    """
    from dtr.signing.trust import recompute_signer  # noqa: PLC0415 - trust imports us

    if status not in ("active", "retired", "revoked"):
        raise PolicyError(f"status: unknown key status {status!r}")
    when = now or utcnow()
    found = conn.execute(select(SigningPolicy.id, SigningPolicy.pattern)
                         .where(SigningPolicy.name == policy)).first()
    if found is None:
        raise PolicyError(f"no signing policy named {policy!r}")
    pid = int(found.id)
    values: dict[str, object] = {"status": status}
    if status == "retired":
        values["retired_at"] = when
    elif status == "revoked":
        values["revoked_at"] = when
    else:
        values.update(retired_at=None, revoked_at=None)
    res = conn.execute(update(SigningKey).where(SigningKey.policy_id == pid,
                                                SigningKey.key_id == key_id).values(**values))
    if not res.rowcount:
        raise PolicyError(f"policy {policy!r} has no key {key_id}")
    conn.execute(update(SigningPolicy).where(SigningPolicy.id == pid)
                 .values(version=SigningPolicy.version + 1, updated_at=when))
    version = bump_version(conn)
    action = {"revoked": "key.revoked", "retired": "key.rotated"}.get(status, "key.activated")
    emit(conn, RegistryEvent(action, str(found.pattern), detail={
        "policy": policy, "policyVersion": version, "keyId": key_id, "status": status,
        "actor": actor}))
    return recompute_signer(conn, load(conn), key_id, emit)


class PolicyService:
    """The policy edits as transactions (the admin API and CLI of a later slice, the
    settings-file seeding at startup, and tests use this).
    """

    def __init__(self, db: Database, emit: Emit) -> None:
        """Edits run on ``db``; events go to ``emit`` (``Hooks.emit``)."""
        self.db = db
        self._emit = emit

    async def upsert(self, spec: PolicySpec, *, source: str = "api", actor: str = "") -> int:
        """See :func:`upsert_policy`."""
        return await self.db.run(
            lambda c: upsert_policy(c, spec, self._emit, source=source, actor=actor))

    async def delete(self, name: str, *, actor: str = "") -> bool:
        """See :func:`delete_policy`."""
        return await self.db.run(lambda c: delete_policy(c, name, self._emit, actor=actor))

    async def set_key_status(self, policy: str, key_id: str, status: KeyStatus, *,
                             actor: str = "") -> list[str]:
        """See :func:`set_key_status`."""
        return await self.db.run(lambda c: set_key_status(c, policy, key_id, status,
                                                          self._emit, actor=actor))

    async def seed(self, specs: Sequence[PolicySpec]) -> None:
        """Upsert the settings file's policies (marked ``source=config``), idempotently:
        a policy whose stored definition already equals its spec is not touched (no
        version bump, no event). Safe when replicas seed at once: the loser of a race on
        the unique policy name (or the version row) retries once and finds it seeded.
        """
        def tx(conn: Connection) -> None:
            for spec in specs:
                if not _same(conn, spec):
                    upsert_policy(conn, spec, self._emit, source="config", actor="config")

        try:
            await self.db.run(tx)
        except IntegrityError:
            # another replica seeded the same policy (or created the version row)
            # concurrently and committed first: the retry sees its rows
            await self.db.run(tx)

    async def load(self) -> PolicySet:
        """The current policies."""
        return await self.db.run(load, write=False)


def _same(conn: Connection, spec: PolicySpec) -> bool:
    """True if the stored policy ``spec.name`` already says exactly what ``spec`` says."""
    p = conn.execute(SigningPolicy.__table__.select()
                     .where(SigningPolicy.name == spec.name)).first()
    if p is None:
        return False
    head = (p.pattern, p.protected, p.mode, p.min_signatures, p.require_children_signed,
            json.loads(p.formats), p.source)
    if head != (spec.pattern, spec.protected, spec.mode, spec.min_signatures,
                spec.require_children_signed, list(normalise_formats(spec.formats)), "config"):
        return False
    keys = {(r.key_id, r.status) for r in conn.execute(
        select(SigningKey.key_id, SigningKey.status).where(SigningKey.policy_id == p.id))}
    revoked = {kid for kid, status in keys if status == "revoked"}
    want = {(kid, "revoked" if kid in revoked else k.status)
            for k in spec.keys for kid in [TrustedKey.from_pem(k.pem).id]}
    stores = {(r.name, r.roots_pem, r.identities) for r in conn.execute(
        select(SigningTrustStore.name, SigningTrustStore.roots_pem,
               SigningTrustStore.identities).where(SigningTrustStore.policy_id == p.id))}
    want_stores = {(s.name, s.roots_pem, json.dumps(list(s.identities)))
                   for s in spec.trust_stores}
    return keys == want and stores == want_stores


# -- views and partial edits (the admin API and CLI) ---------------------------------------
@dataclass(frozen=True, slots=True)
class KeyView:
    """A stored key as the admin API shows it (the PEM is a public key)."""

    key_id: str
    name: str | None
    status: str
    pem: str
    valid_from: dt.datetime
    retired_at: dt.datetime | None
    revoked_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class StoreView:
    """A stored notation trust store."""

    name: str
    roots_pem: str
    identities: tuple[str, ...]
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class PolicyView:
    """A stored policy with its keys and trust stores, as the admin API shows it."""

    name: str
    pattern: str
    protected: bool
    mode: str
    min_signatures: int
    require_children_signed: bool
    formats: tuple[str, ...]
    source: str
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    keys: tuple[KeyView, ...]
    trust_stores: tuple[StoreView, ...]

    def spec(self) -> PolicySpec:
        """The definition this view says (for read-modify-write edits)."""
        return PolicySpec(
            name=self.name, pattern=self.pattern, protected=self.protected,
            mode="audit" if self.mode == "audit" else "enforce",
            min_signatures=self.min_signatures,
            require_children_signed=self.require_children_signed, formats=self.formats,
            keys=tuple(KeySpec(k.pem, k.name, _status(k.status)) for k in self.keys),
            trust_stores=tuple(TrustStoreSpec(s.name, s.roots_pem, s.identities)
                               for s in self.trust_stores))


def _status(status: str) -> KeyStatus:
    return "revoked" if status == "revoked" else "retired" if status == "retired" else "active"


def describe(conn: Connection, name: str | None = None) -> list[PolicyView]:
    """The stored policies (only ``name`` when given), by name."""
    q = SigningPolicy.__table__.select().order_by(SigningPolicy.name)
    if name is not None:
        q = q.where(SigningPolicy.name == name)
    rows = conn.execute(q).all()
    ids = [r.id for r in rows]
    keys: dict[int, list[KeyView]] = {}
    for k in conn.execute(SigningKey.__table__.select().where(SigningKey.policy_id.in_(ids))
                          .order_by(SigningKey.valid_from, SigningKey.id)).all():
        keys.setdefault(k.policy_id, []).append(KeyView(
            k.key_id, k.name, k.status, k.pem, k.valid_from, k.retired_at, k.revoked_at))
    stores: dict[int, list[StoreView]] = {}
    for s in conn.execute(SigningTrustStore.__table__.select()
                          .where(SigningTrustStore.policy_id.in_(ids))
                          .order_by(SigningTrustStore.name)).all():
        stores.setdefault(s.policy_id, []).append(StoreView(
            s.name, s.roots_pem, tuple(json.loads(s.identities)), s.created_at))
    return [PolicyView(r.name, r.pattern, r.protected, r.mode, r.min_signatures,
                       r.require_children_signed, tuple(json.loads(r.formats)), r.source,
                       r.version, r.created_at, r.updated_at, tuple(keys.get(r.id, ())),
                       tuple(stores.get(r.id, ()))) for r in rows]


def tags_of(conn: Connection, refs: Sequence[str]) -> int:
    """How many tags point at the ``<repository>@<digest>`` manifests ``refs``."""
    from dtr.db.models import Manifest, Repository, Tag  # noqa: PLC0415 - local to this use

    count = 0
    for ref in refs:
        repository, _, digest = ref.rpartition("@")
        count += len(conn.execute(
            select(Tag.name).join(Manifest, Manifest.id == Tag.manifest_id)
            .join(Repository, Repository.id == Manifest.repository_id)
            .where(Repository.name == repository, Manifest.digest == digest)).all())
    return count


@dataclass(frozen=True, slots=True)
class StatusChange:
    """What a key status change did: the policy after it, and what was recomputed."""

    policy: PolicyView
    changed: tuple[str, ...]
    """``<repository>@<digest>`` whose trust state changed."""
    tags: int
    """Tags pointing at those digests."""


class PolicyEditor:
    """Read-modify-write edits of stored policies in one transaction each (the admin
    API's partial updates: fields, one key, one trust store).

    Args:
        db: the metadata database.
        emit: the event seam (``Hooks.emit``).
    """

    def __init__(self, db: Database, emit: Emit) -> None:
        self.db = db
        self._emit = emit

    async def list(self) -> list[PolicyView]:
        """Every stored policy, by name."""
        return await self.db.run(describe, write=False)

    async def get(self, name: str) -> PolicyView | None:
        """The stored policy ``name``, or None."""
        found = await self.db.run(lambda c: describe(c, name), write=False)
        return found[0] if found else None

    async def create(self, spec: PolicySpec, *, actor: str) -> PolicyView | None:
        """Create ``spec`` (None when a policy of that name exists: nothing written).

        Raises:
            PolicyError: invalid definition.
        """
        def tx(conn: Connection) -> PolicyView | None:
            if describe(conn, spec.name):
                return None
            upsert_policy(conn, spec, self._emit, source="api", actor=actor)
            return describe(conn, spec.name)[0]

        return await self.db.run(tx)

    async def edit(self, name: str, change: Callable[[PolicySpec], PolicySpec], *,
                   actor: str) -> PolicyView | None:
        """Apply ``change`` to the stored definition of ``name`` and store the result (one
        transaction; None when there is no such policy).

        Raises:
            PolicyError: the changed definition is invalid (nothing is written).
        """
        def tx(conn: Connection) -> PolicyView | None:
            found = describe(conn, name)
            if not found:
                return None
            from dtr.signing.trust import recompute_signer  # noqa: PLC0415 - see above

            before = {k.key_id for k in found[0].keys}
            upsert_policy(conn, change(found[0].spec()), self._emit,
                          source=found[0].source, actor=actor)
            after = describe(conn, name)[0]
            for gone in sorted(before - {k.key_id for k in after.keys}):
                recompute_signer(conn, load(conn), gone, self._emit)
            return after

        return await self.db.run(tx)

    async def set_key_status(self, name: str, key_id: str, status: KeyStatus, *,
                             actor: str) -> StatusChange:
        """Move a key to ``status`` and recompute what it signed (see
        :func:`set_key_status`).

        Raises:
            PolicyError: unknown policy or key, or an invalid status.
        """
        def tx(conn: Connection) -> StatusChange:
            changed = set_key_status(conn, name, key_id, status, self._emit, actor=actor)
            return StatusChange(describe(conn, name)[0], tuple(changed),
                                tags_of(conn, changed))

        return await self.db.run(tx)

    async def delete(self, name: str, *, actor: str) -> bool:
        """See :func:`delete_policy`."""
        return await self.db.run(lambda c: delete_policy(c, name, self._emit, actor=actor))
