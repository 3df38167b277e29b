"""``POST /api/v1/repositories/{name}/promotions``: copy a signed digest from another
repository (blobs mounted, referrers copied, tags set atomically) — ``signing.md`` §8.8
flow 2. The orchestration is core's ``PromotionService``; the target's signing gate
decides whether the tags may be written (403 ``denied`` with the gate's reason otherwise,
and nothing is tagged).

Permissions: ``pull`` on the source repository and ``push`` on the target, asked of the
policy engine like a registry client's token scope would be.

Audit: every manifest, mount and tag the copy writes is recorded by core in its own
transaction (``manifest.pushed``, ``blob.mounted``, ``tag.written``, or ``tag.denied`` when
the gate refuses); ``registry.promotion`` then sums the promotion up (allow, or deny with
the gate's reason) with its source and the rule that allowed the push. A permission refusal
is an ``admin.denied`` with the policy's decision.

Repository names have several path segments, so the route is ``/repositories/{rest:path}``
and the handler accepts only ``<name>/promotions`` under it.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from dtr.api.admin import guards as g
from dtr.api.admin import schemas as s
from dtr.api.admin.deps import Me
from dtr.api.admin.guards import Caller, PolicyDenied, Reported
from dtr.api.context import Security
from dtr.api.problems import problem_responses as errors
from dtr.core.promotion import Promotion, parse_source
from dtr.core.reference import check_name
from dtr.core.registry import Registry
from dtr.errors import Denied, NotFound
from dtr.events import SecurityEvent

SUFFIX = "/promotions"


class PromotionApi:
    """Promotions with the caller's repository permissions, reported as security events.

    Args:
        security: the worker's auth services (policy engine, events).
        registry: the core services.
    """

    def __init__(self, security: Security, registry: Registry) -> None:
        self.security = security
        self.registry = registry

    def _may(self, caller: Caller, repository: str, action: str) -> bool:
        return self.security.policy.allowed(caller.subject, repository, action)

    def _require(self, caller: Caller, repository: str, action: str, message: str) -> None:
        if not self._may(caller, repository, action):
            raise PolicyDenied(message, self.security.policy.decide(
                caller.subject, repository, action), {"repository": repository,
                                                      "action": action})

    async def promote(self, caller: Caller, target: str,
                      data: s.PromotionCreate) -> Promotion:
        """Promote ``data.source`` into ``target`` with ``data.tags``.

        Raises:
            Denied: no pull on the source or no push on the target; or the target's
                signing gate refused the tags (its reason in the detail).
            ManifestUnknown: the digest is not in the source.
        """
        source, digest = parse_source(data.source)
        check_name(source)
        check_name(target)
        self._require(caller, source, "pull", f"{caller.subject} may not pull {source}")
        self._require(caller, target, "push", f"{caller.subject} may not push to {target}")

        async def may_push_source() -> bool:
            return self._may(caller, source, "push")

        try:
            done = await self.registry.promotions.promote(source, digest, target, data.tags,
                                                          may_push_source)
        except Denied as exc:
            await self._event("deny", target, data, digest, reason=exc.message)
            raise Reported(exc.message, exc.detail) from exc
        rule = self.security.policy.decide(caller.subject, target, "push").line
        await self._event("allow", target, data, digest, rule=rule, tags=list(done.tags),
                          blobs=done.blobs_mounted, referrers=done.referrers)
        return done

    async def _event(self, outcome: Literal["allow", "deny"], target: str,
                     data: s.PromotionCreate, digest: str, reason: str = "", rule: str = "",
                     **detail: object) -> None:
        await self.security.events.emit(SecurityEvent(
            action="registry.promotion", outcome=outcome, repository=target,
            org=target.partition("/")[0] if "/" in target else "", digest=digest,
            resource=f"{target}@{digest}",
            reason=reason, rule=rule, detail={"source": data.source, **detail}))


Promotions: TypeAlias = NamedDependency[PromotionApi]
"""The worker's promotion operation (injected as ``promotions``)."""


class PromotionController(Controller):
    """Promotion of signed digests between repositories."""

    path = "/repositories"
    tags = ("signing",)
    guards = (g.signed_in,)

    @post("/{rest:path}", summary="Promote a digest into a repository",
          responses=errors(404, 422), status_code=201)
    async def promote(self, promotions: Promotions, caller: Me, rest: FromPath[str],
                      data: JSONBody[s.PromotionCreate]) -> s.Promotion:
        """``POST /repositories/{name}/promotions`` (``name`` may span several path
        segments): copy ``source`` (``repository@sha256:…``) with its blobs, index
        children and referrers (signatures, attestations, SBOMs) into ``name``, then set
        ``tags`` in one step — refused with 403 unless the digest is trusted under
        ``name``'s signing policy (nothing tagged then). ``pull`` on the source and
        ``push`` on ``name``.
        """
        path = rest.strip("/")
        if not path.endswith(SUFFIX) or not path.removesuffix(SUFFIX):
            raise NotFound(f"no admin API route /api/v1/repositories/{path}")
        done = await promotions.promote(caller, path.removesuffix(SUFFIX), data)
        return s.Promotion(repository=done.repository, digest=done.digest,
                           tags=list(done.tags),
                           copied=s.PromotionCopied(manifests=done.manifests,
                                                    referrers=done.referrers,
                                                    blobs_mounted=done.blobs_mounted))
