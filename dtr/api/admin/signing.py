"""``/api/v1/signing/policies``: the trust policies of the signing gate (``signing.md``
§8.1) — protected repository patterns, mode, trusted cosign keys and their lifecycle,
notation trust stores, k-of-n.

Permissions: only ``system:admin`` creates, changes or deletes policies (signing policy
is registry-wide security configuration, as in Harbor and Quay). ``audit:read`` reads every
policy; ``org:admin`` of an organization reads the policies whose pattern lies in it (its
first path segment is the org, without wildcards). Policies the caller may not read are not
listed and answer 404.

Policies seeded from the settings file (``source: config``) are owned by that file: API
edits answer 409 naming it — except revoking a key, which always works (an emergency must
not wait for a deploy; revocation is sticky across restarts). Every change is versioned and
recorded by the policy layer in its own transaction (``policy.created``, ``policy.updated``
with the keys and trust stores added or removed, ``policy.deleted``, ``key.revoked``,
``key.rotated``, ``key.activated``), stamped with the caller: one event per change, none
added here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from litestar import Controller, delete, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from dtr.api.admin import guards as g
from dtr.api.admin import schemas as s
from dtr.api.admin.deps import Me
from dtr.api.admin.guards import Caller, Hidden
from dtr.api.context import Security
from dtr.api.problems import problem_responses as errors
from dtr.errors import Conflict, Invalid, NotFound
from dtr.signing.keys import KeyMaterialError, TrustedKey
from dtr.signing.policy import (
    ALL_FORMATS,
    KeySpec,
    KeyStatus,
    PolicyEditor,
    PolicyError,
    PolicySpec,
    PolicyView,
    StatusChange,
    TrustStoreSpec,
)

CONFIG_FILE = "the settings file (signing.policies)"


def policy_out(view: PolicyView) -> s.SigningPolicy:
    """The response body of a policy."""
    return s.SigningPolicy(
        name=view.name, pattern=view.pattern, protected=view.protected, mode=view.mode,
        min_signatures=view.min_signatures,
        require_children_signed=view.require_children_signed, formats=list(view.formats),
        source=view.source, version=view.version, created_at=view.created_at,
        updated_at=view.updated_at,
        keys=[s.SigningKeyOut(key_id=k.key_id, name=k.name, status=k.status, pem=k.pem,
                              valid_from=k.valid_from, retired_at=k.retired_at,
                              revoked_at=k.revoked_at) for k in view.keys],
        trust_stores=[s.TrustStoreOut(name=t.name, roots_pem=t.roots_pem,
                                      identities=list(t.identities),
                                      created_at=t.created_at)
                      for t in view.trust_stores])


def org_of(pattern: str) -> str | None:
    """The organization a pattern lies in (its first segment), None for a wildcard one."""
    first = pattern.split("/", 1)[0]
    return None if not first or "*" in first else first


def key_id_of(pem: str) -> str:
    """The id of a PEM public key (hex SHA-256 of its DER).

    Raises:
        Invalid: not a supported public key.
    """
    try:
        return TrustedKey.from_pem(pem).id
    except KeyMaterialError as exc:
        raise Invalid(f"pem: {exc}", {"field": "pem"}) from None


class SigningAdmin:
    """Signing-policy administration with the caller's permissions (the policy layer
    records each change).

    Args:
        security: the worker's auth services.
        editor: the policy edits (``dtr.signing.policy``).
        changed: called after every edit (drops this worker's cached policy set).
    """

    def __init__(self, security: Security, editor: PolicyEditor,
                 changed: Callable[[], None]) -> None:
        self.security = security
        self.editor = editor
        self._changed = changed

    @staticmethod
    def may_read(caller: Caller, view: PolicyView) -> bool:
        """System administrators, auditors, and owners of the pattern's org."""
        org = org_of(view.pattern)
        return (caller.may_any("system:admin", "audit:read")
                or (org is not None and caller.may("org:admin", org)))

    async def _visible(self, caller: Caller, name: str) -> PolicyView:
        view = await self.editor.get(name)
        if view is None:
            raise NotFound(f"signing policy {name} not found", {"policy": name})
        if not self.may_read(caller, view):
            raise Hidden(f"signing policy {name} not found", {"policy": name})
        return view

    @staticmethod
    def _not_config(view: PolicyView) -> None:
        if view.source == "config":
            raise Conflict(f"signing policy {view.name} is defined in {CONFIG_FILE}; change "
                           "it there (only key revocation works through the API)",
                           {"policy": view.name, "source": "config"})

    async def _writable(self, caller: Caller, name: str) -> PolicyView:
        view = await self._visible(caller, name)
        caller.require("system:admin")
        self._not_config(view)
        return view

    async def _edit(self, caller: Caller, name: str,
                    change: Callable[[PolicySpec], PolicySpec]) -> PolicyView:
        try:
            view = await self.editor.edit(name, change, actor=caller.name)
        except PolicyError as exc:
            raise Invalid(str(exc), {"policy": name}) from None
        if view is None:
            raise NotFound(f"signing policy {name} not found", {"policy": name})
        return view

    async def list(self, caller: Caller) -> list[PolicyView]:
        """The policies the caller may read, by name."""
        return [v for v in await self.editor.list() if self.may_read(caller, v)]

    async def get(self, caller: Caller, name: str) -> PolicyView:
        """One policy (404 when the caller may not read it)."""
        return await self._visible(caller, name)

    async def create(self, caller: Caller, data: s.SigningPolicyCreate) -> PolicyView:
        """Create a policy (409 when the name is taken)."""
        caller.require("system:admin")
        spec = PolicySpec(
            name=data.name, pattern=data.pattern, protected=data.protected, mode=data.mode,
            min_signatures=data.min_signatures,
            require_children_signed=data.require_children_signed,
            formats=tuple(data.formats) if data.formats is not None else ALL_FORMATS,
            keys=tuple(KeySpec(k.pem, k.name) for k in data.keys),
            trust_stores=tuple(TrustStoreSpec(t.name, t.roots_pem, tuple(t.identities))
                               for t in data.trust_stores))
        try:
            view = await self.editor.create(spec, actor=caller.name)
        except PolicyError as exc:
            raise Invalid(str(exc), {"policy": data.name}) from None
        if view is None:
            raise Conflict(f"signing policy {data.name} already exists",
                           {"policy": data.name})
        self._changed()
        return view

    async def update(self, caller: Caller, name: str,
                     data: s.SigningPolicyUpdate) -> PolicyView:
        """Change fields of a policy (``system:admin``; 409 for a config policy)."""
        await self._writable(caller, name)

        def change(spec: PolicySpec) -> PolicySpec:
            fields = {k: v for k, v in (
                ("pattern", data.pattern), ("protected", data.protected),
                ("mode", data.mode), ("min_signatures", data.min_signatures),
                ("require_children_signed", data.require_children_signed),
                ("formats", None if data.formats is None else tuple(data.formats)))
                if v is not None}
            return _replace(spec, **fields)

        view = await self._edit(caller, name, change)
        self._changed()
        return view

    async def delete(self, caller: Caller, name: str) -> None:
        """Delete a policy (its repositories are no longer protected by it)."""
        await self._writable(caller, name)
        await self.editor.delete(name, actor=caller.name)
        self._changed()

    async def add_key(self, caller: Caller, name: str,
                      data: s.SigningKeyAdd) -> tuple[str, PolicyView]:
        """Trust a cosign public key in a policy; its id (409 if already trusted)."""
        current = await self._writable(caller, name)
        kid = key_id_of(data.pem)
        if any(k.key_id == kid for k in current.keys):
            raise Conflict(f"signing policy {name} already has key {kid}",
                           {"policy": name, "key_id": kid})
        view = await self._edit(caller, name, lambda spec: _replace(
            spec, keys=(*spec.keys, KeySpec(data.pem, data.name))))
        self._changed()
        return kid, view

    async def set_key_status(self, caller: Caller, name: str, key_id: str,
                             status: KeyStatus) -> StatusChange:
        """Retire, revoke or reactivate a key; revocation recomputes at once. Revocation
        works on config policies too.
        """
        view = await self._visible(caller, name)
        caller.require("system:admin")
        if status != "revoked":
            self._not_config(view)
        if not any(k.key_id == key_id for k in view.keys):
            raise NotFound(f"signing policy {name} has no key {key_id}",
                           {"policy": name, "key_id": key_id})
        try:
            done = await self.editor.set_key_status(name, key_id, status, actor=caller.name)
        except PolicyError as exc:
            raise Invalid(str(exc), {"policy": name, "key_id": key_id}) from None
        self._changed()
        return done

    async def delete_key(self, caller: Caller, name: str, key_id: str) -> PolicyView:
        """Stop trusting a key altogether (its signatures no longer count)."""
        current = await self._writable(caller, name)
        if not any(k.key_id == key_id for k in current.keys):
            raise NotFound(f"signing policy {name} has no key {key_id}",
                           {"policy": name, "key_id": key_id})
        view = await self._edit(caller, name, lambda spec: _replace(
            spec, keys=tuple(k for k in spec.keys if key_id_of(k.pem) != key_id)))
        self._changed()
        return view

    async def set_store(self, caller: Caller, name: str, store: str,
                        data: s.TrustStoreSet) -> PolicyView:
        """Add or replace the notation trust store ``store`` of a policy."""
        await self._writable(caller, name)
        new = TrustStoreSpec(store, data.roots_pem, tuple(data.identities))
        view = await self._edit(caller, name, lambda spec: _replace(
            spec, trust_stores=(*(t for t in spec.trust_stores if t.name != store), new)))
        self._changed()
        return view

    async def delete_store(self, caller: Caller, name: str, store: str) -> PolicyView:
        """Remove a notation trust store from a policy."""
        current = await self._writable(caller, name)
        if not any(t.name == store for t in current.trust_stores):
            raise NotFound(f"signing policy {name} has no trust store {store}",
                           {"policy": name, "store": store})
        view = await self._edit(caller, name, lambda spec: _replace(
            spec, trust_stores=tuple(t for t in spec.trust_stores if t.name != store)))
        self._changed()
        return view


def _replace(spec: PolicySpec, **fields: object) -> PolicySpec:
    import dataclasses  # noqa: PLC0415 - only here

    return dataclasses.replace(spec, **fields)  # type: ignore[arg-type]


Signing: TypeAlias = NamedDependency[SigningAdmin]
"""The worker's signing-policy operations (injected as ``signing``)."""

POLICY = "/{name:str}"
KEY = "/{name:str}/keys/{key_id:str}"
STORE = "/{name:str}/trust-stores/{store:str}"


class SigningPolicyController(Controller):
    """Trust policies of the signing gate."""

    path = "/signing/policies"
    tags = ("signing",)
    guards = (g.signed_in,)

    @get("/", summary="List signing policies", responses=errors())
    async def list_policies(self, signing: Signing, caller: Me) -> list[s.SigningPolicy]:
        """The policies the caller may read, by name: ``system:admin`` and ``audit:read``
        all; ``org:admin`` those whose pattern lies in their organization.
        """
        return [policy_out(v) for v in await signing.list(caller)]

    @post("/", summary="Create a signing policy", responses=errors(409, 422))
    async def create_policy(self, signing: Signing, caller: Me,
                            data: JSONBody[s.SigningPolicyCreate]) -> s.SigningPolicy:
        """Protect the repositories matching ``pattern`` with trusted keys and trust
        stores. ``system:admin``.
        """
        return policy_out(await signing.create(caller, data))

    @get(POLICY, summary="Show a signing policy", responses=errors(404))
    async def get_policy(self, signing: Signing, caller: Me,
                         name: FromPath[str]) -> s.SigningPolicy:
        """One policy with its keys and trust stores. ``system:admin``, ``audit:read``
        or ``org:admin`` of the pattern's organization.
        """
        return policy_out(await signing.get(caller, name))

    @patch(POLICY, summary="Update a signing policy", responses=errors(404, 409, 422))
    async def update_policy(self, signing: Signing, caller: Me, name: FromPath[str],
                            data: JSONBody[s.SigningPolicyUpdate]) -> s.SigningPolicy:
        """Change pattern, protection, mode, k-of-n, ``require_children_signed`` or
        formats; ``version`` goes up. ``system:admin``; 409 for a policy of the settings
        file.
        """
        return policy_out(await signing.update(caller, name, data))

    @delete(POLICY, summary="Delete a signing policy", responses=errors(404, 409))
    async def delete_policy(self, signing: Signing, caller: Me, name: FromPath[str]) -> None:
        """Delete the policy with its keys and trust stores. ``system:admin``."""
        await signing.delete(caller, name)

    @post("/{name:str}/keys", summary="Trust a cosign public key",
          responses=errors(404, 409, 422))
    async def add_key(self, signing: Signing, caller: Me, name: FromPath[str],
                      data: JSONBody[s.SigningKeyAdd]) -> s.SigningKeyAdded:
        """Add a PEM public key (ECDSA P-256/P-384, Ed25519, RSA); the answer names its id,
        the hex SHA-256 of the DER key. ``system:admin``.
        """
        kid, view = await signing.add_key(caller, name, data)
        return s.SigningKeyAdded(key_id=kid, policy=policy_out(view))

    @patch(KEY, summary="Retire, revoke or reactivate a key",
           responses=errors(404, 409, 422))
    async def set_key_status(self, signing: Signing, caller: Me, name: FromPath[str],
                             key_id: FromPath[str],
                             data: JSONBody[s.SigningKeyStatus]) -> s.SigningKeyChanged:
        """Change a key's status. Revocation recomputes every digest the key signed at
        once (tags of digests left untrusted answer ``SIGNATURE_REVOKED``); the answer
        counts the digests and tags affected. ``system:admin``; revocation also works on a
        policy of the settings file.
        """
        done = await signing.set_key_status(caller, name, key_id, data.status)
        return s.SigningKeyChanged(
            key_id=key_id, status=data.status, digests_affected=len(done.changed),
            tags_affected=done.tags, affected=list(done.changed),
            policy=policy_out(done.policy))

    @delete(KEY, summary="Remove a key", responses=errors(404, 409), status_code=200)
    async def delete_key(self, signing: Signing, caller: Me, name: FromPath[str],
                         key_id: FromPath[str]) -> s.SigningPolicy:
        """Stop trusting the key (prefer revoking: it keeps the record). ``system:admin``."""
        return policy_out(await signing.delete_key(caller, name, key_id))

    @put(STORE, summary="Set a notation trust store", responses=errors(404, 409, 422))
    async def set_trust_store(self, signing: Signing, caller: Me, name: FromPath[str],
                              store: FromPath[str],
                              data: JSONBody[s.TrustStoreSet]) -> s.SigningPolicy:
        """Add or replace the trust store: X.509 roots (PEM) and trusted identities.
        ``system:admin``.
        """
        return policy_out(await signing.set_store(caller, name, store, data))

    @delete(STORE, summary="Remove a notation trust store", responses=errors(404, 409),
            status_code=200)
    async def delete_trust_store(self, signing: Signing, caller: Me, name: FromPath[str],
                                 store: FromPath[str]) -> s.SigningPolicy:
        """Remove the trust store from the policy. ``system:admin``."""
        return policy_out(await signing.delete_store(caller, name, store))
