"""The JSON admin API under ``/api/v1`` (Litestar): one controller per resource, msgspec
schemas, policy-backed guards and the services composing the auth and policy layers.
``build_admin_router`` and ``openapi_config`` are what the composition root mounts.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, get, route
from litestar.di import Provide
from litestar.enums import HttpMethod
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath

from dtr import __version__
from dtr.api.admin import guards
from dtr.api.admin.access import AccessService
from dtr.api.admin.audit import AuditApi, AuditController
from dtr.api.admin.authz import AuthzController
from dtr.api.admin.grants import GrantController
from dtr.api.admin.orgs import OrgController
from dtr.api.admin.promotions import PromotionApi, PromotionController
from dtr.api.admin.robots import OrgRobotController, SystemRobotController
from dtr.api.admin.roles import RoleController
from dtr.api.admin.services import AdminService
from dtr.api.admin.signing import SigningAdmin, SigningPolicyController
from dtr.api.admin.teams import TeamController
from dtr.api.admin.tokens import TokenController
from dtr.api.admin.trusts import TrustController, TrustService
from dtr.api.admin.users import MeController, UserController
from dtr.api.context import Security
from dtr.api.problems import exception_handlers
from dtr.audit.checkpoints import CheckpointKeys
from dtr.config import AuthSettings
from dtr.core.registry import Registry
from dtr.errors import NotFound
from dtr.signing.policy import PolicyEditor

PREFIX = "/api/v1"
OPENAPI_MEDIA_TYPE = "application/vnd.oai.openapi+json"
CONTROLLERS = [MeController, UserController, OrgController, TeamController,
               OrgRobotController, SystemRobotController, RoleController, GrantController,
               TokenController, AuthzController, TrustController, SigningPolicyController,
               PromotionController, AuditController]
DESCRIPTION = """\
Manage users, organizations, teams, robot accounts, roles, grants, personal access
tokens, federation trusts (keyless CI) and signing policies, promote signed digests between
repositories, ask the policy why a request is allowed or denied, and read, export and verify
the tamper-evident audit log.

Authenticate with `Authorization: Bearer <personal access token>` (`dtr login` mints one)
or HTTP Basic (password, personal access token or robot secret). Errors are RFC 9457
problem details (`application/problem+json`); 401 means missing or bad credentials, 403
means the policy does not allow the call. Each operation names the permission it needs.
"""


@route("/{rest:path}", http_method=list(HttpMethod), include_in_schema=False,
       guards=[guards.signed_in])
async def unknown_route(rest: FromPath[str]) -> None:
    """Any other path under ``/api/v1``: a problem-details 404 (not Litestar's HTML page)."""
    raise NotFound(f"no admin API route {PREFIX}{rest}")


@get("/openapi.json", include_in_schema=False, media_type=OPENAPI_MEDIA_TYPE,
     sync_to_thread=False)
def openapi_document(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The OpenAPI document of the admin API (public, like any API description)."""
    return request.app.openapi_schema.to_schema()


def build_admin_router(security: Security, auth_settings: AuthSettings,
                       registry: Registry, audit_keys: CheckpointKeys) -> Router:
    """The ``/api/v1`` router: the public OpenAPI document, and the API itself behind
    authentication (then each controller's guards). Errors render as problem details.

    Args:
        security: the worker's auth services (principal resolution, policy, database).
        auth_settings: ``auth`` settings (org creation, robot and token lifetimes).
        registry: the core services (signing-policy edits go through its event seam;
            promotions through its manifest and blob services).
        audit_keys: the registry keys the audit log's checkpoints are verified with.
    """
    admin = AdminService(security, auth_settings)
    access = AccessService(security, auth_settings)
    trusts = TrustService(security)
    hooks = registry.store.hooks
    signing = SigningAdmin(security, PolicyEditor(registry.store.db, hooks.emit),
                           getattr(hooks.gate, "invalidate", _nothing))
    promotions = PromotionApi(security, registry)
    audit = AuditApi(security.db, audit_keys, security.events)

    def provide_signing() -> SigningAdmin:
        return signing

    def provide_promotions() -> PromotionApi:
        return promotions

    def provide_audit() -> AuditApi:
        return audit

    def provide_admin() -> AdminService:
        return admin

    def provide_access() -> AccessService:
        return access

    def provide_trusts() -> TrustService:
        return trusts

    api = Router(
        path="/", route_handlers=[*CONTROLLERS, unknown_route],
        guards=[guards.authenticate(security)],
        dependencies={"admin": Provide(provide_admin, sync_to_thread=False),
                      "access": Provide(provide_access, sync_to_thread=False),
                      "trusts": Provide(provide_trusts, sync_to_thread=False),
                      "signing": Provide(provide_signing, sync_to_thread=False),
                      "promotions": Provide(provide_promotions, sync_to_thread=False),
                      "audit": Provide(provide_audit, sync_to_thread=False),
                      "caller": Provide(guards.provide_caller)},
        security=[{"bearer": []}, {"basic": []}])
    return Router(path=PREFIX, route_handlers=[api, openapi_document],
                  exception_handlers={**exception_handlers(),
                                      **guards.refusal_handlers(security)})


def _nothing() -> None:
    """No policy cache to drop (the gate is not the signing gate)."""


def openapi_config() -> OpenAPIConfig:
    """The OpenAPI configuration: a Swagger UI at ``/api/v1/docs`` (the document itself is
    ``/api/v1/openapi.json``, served by the admin router).
    """
    return OpenAPIConfig(
        title="dtr admin API", version=__version__, description=DESCRIPTION,
        path=f"{PREFIX}/docs", render_plugins=[SwaggerRenderPlugin(path="/")],
        use_handler_docstrings=True,
        components=Components(security_schemes={
            "bearer": SecurityScheme(type="http", scheme="bearer",
                                     description="A personal access token (dtr_pat_…) or "
                                                 "an OIDC login session token (dtr_ses_…)."),
            "basic": SecurityScheme(type="http", scheme="basic",
                                    description="Username and password, personal access "
                                                "token or robot secret."),
        }))
