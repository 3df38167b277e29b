"""``/api/v1/auth``: OIDC login for people over HTTP (the routes of ``dtr.auth.sso``).

* ``GET /api/v1/auth/oidc`` (anyone): is OIDC login on, which issuer, where to start.
* ``GET /api/v1/auth/oidc/login?next=`` (anyone): 302 to the provider with the state cookie
  (HttpOnly, SameSite=Lax, Secure on https, Path ``/api/v1/auth/oidc``, 10 minutes).
* ``GET /api/v1/auth/oidc/callback?code&state`` (the provider's redirect): the session
  token as JSON ``{username, session_token, expires_at, teams, admin}`` when the client
  accepts JSON, else a small HTML page showing it once with the next CLI commands. A
  provider ``error`` or any refusal is a 401 (problem details, or the same page).
* ``POST /api/v1/auth/logout`` (a session): revokes the presented session token and
  returns the provider's ``end_session_endpoint`` for browsers.

With OIDC off, the login routes answer a 404 problem saying so.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.datastructures import Cookie
from litestar.params import FromQuery, QueryParameter
from litestar.response import Redirect

from dtr.api.context import Security
from dtr.api.problems import exception_handlers
from dtr.api.problems import problem_responses as errors
from dtr.auth.sso import Client, LoginResult, LoginService
from dtr.errors import DtrError, Invalid, NotFound, Unauthorized

PREFIX = "/api/v1/auth"
COOKIE_PATH = f"{PREFIX}/oidc"
CALLBACK_PATH = f"{PREFIX}/oidc/callback"
LOGIN_PATH = f"{PREFIX}/oidc/login"
STATE_COOKIE = "dtr_oidc_state"
Req = Request[Any, Any, Any]
PUBLIC: list[dict[str, list[str]]] = [{}]
"""OpenAPI security of the anonymous routes (no credentials needed)."""


class OIDCInfo(msgspec.Struct, kw_only=True):
    """Whether people can sign in with the OpenID Provider here, and where to start."""

    enabled: bool
    issuer: str | None
    login_url: str | None
    local_login: bool


class LoginSession(msgspec.Struct, kw_only=True):
    """A completed OIDC login: the dtr session token (shown once) for the admin API; mint
    personal access tokens with it for ``docker login``.
    """

    username: str
    session_token: str
    token_id: str
    expires_at: dt.datetime | None
    teams: list[str]
    admin: bool
    next: str | None = None


class LoggedOut(msgspec.Struct, kw_only=True):
    """A revoked session, and the provider's logout URL for browsers (if any)."""

    revoked: str
    end_session_endpoint: str | None


def _origin(request: Req) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def redirect_uri(security: Security, public_url: str, request: Req) -> str:
    """The callback URL: ``auth.oidc.redirect_url``, else ``<server.public_url>`` or the
    request's origin + :data:`CALLBACK_PATH`.
    """
    configured = security.settings.oidc.redirect_url
    return configured or (public_url or _origin(request)).rstrip("/") + CALLBACK_PATH


def _client(security: Security, request: Req) -> Client:
    return Client(security.client_ip(request), request.headers.get("user-agent", ""))


def _wants_json(request: Req) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept or "application/problem+json" in accept


def _page(title: str, body: str, status: int = 200) -> Response[str]:
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           "</title><meta name='referrer' content='no-referrer'></head><body "
           "style='font-family:sans-serif;max-width:46em;margin:2em auto'>"
           f"<h1>{html.escape(title)}</h1>{body}</body></html>")
    return Response(doc, status_code=status, media_type="text/html",
                    headers={"Cache-Control": "no-store"})


def _success_page(result: LoginResult, url: str) -> Response[str]:
    token = html.escape(result.session.secret)
    teams = html.escape(", ".join(result.teams) or "none")
    expires = result.session.info.expires_at
    body = (f"<p>Signed in as <b>{html.escape(result.username)}</b> (teams: {teams}"
            f"{'; system administrator' if result.admin else ''}).</p>"
            "<p>Your session token, shown only this once"
            f"{f' (valid until {expires:%Y-%m-%d %H:%M} UTC)' if expires else ''}:</p>"
            f"<pre style='white-space:pre-wrap;word-break:break-all'>{token}</pre>"
            "<p>Sign the CLI in with it, then mint a personal access token for "
            "<code>docker login</code> (it does not depend on this session or the identity "
            "provider, and stays valid until it expires or is revoked):</p>"
            f"<pre>dtr login {html.escape(url)} --token-stdin   # paste the token\n"
            "dtr token create laptop</pre>")
    return _page("dtr: signed in", body)


def build_oidc_router(security: Security, sso: LoginService, public_url: str) -> Router:
    """The ``/api/v1/auth`` router, bound to the worker's services.

    Args:
        security: the worker's auth services (callers, client addresses, policy refresh).
        sso: the login service.
        public_url: ``server.public_url`` (the default redirect URL's base; empty = the
            request's origin).
    """
    secure_cookie = public_url.startswith("https://")

    @get("/oidc", summary="OIDC login settings", tags=["auth"], security=PUBLIC,
         responses=errors(), sync_to_thread=False)
    def oidc_info(request: Req) -> OIDCInfo:
        """Whether OIDC login is enabled, the provider's issuer and the login URL. No
        credentials needed.
        """
        o = security.settings.oidc
        base = (public_url or _origin(request)).rstrip("/")
        return OIDCInfo(enabled=o.enabled, issuer=o.issuer if o.enabled else None,
                        login_url=f"{base}{LOGIN_PATH}" if o.enabled else None,
                        local_login=o.local_login or not o.enabled)

    @get("/oidc/login", summary="Start an OIDC login", tags=["auth"], security=PUBLIC,
         status_code=302, responses=errors(404))
    async def oidc_login(request: Req, next_path: Annotated[str | None, QueryParameter(
            name="next", description="A local path to return to.")] = None) -> Redirect:
        """Redirect the browser to the identity provider (authorization code + PKCE) and
        set the short-lived state cookie. No credentials needed; 404 when OIDC is off.
        """
        if not sso.enabled:
            raise NotFound("OIDC login is not enabled on this registry (auth.oidc.enabled)")
        start = await sso.begin(redirect_uri(security, public_url, request), next_path)
        cookie = Cookie(key=STATE_COOKIE, value=start.cookie, path=COOKIE_PATH,
                        max_age=start.max_age, httponly=True, samesite="lax",
                        secure=secure_cookie or request.url.scheme == "https")
        return Redirect(start.authorization_url, status_code=302, cookies=[cookie],
                        headers={"Cache-Control": "no-store"})

    @get("/oidc/callback", summary="Finish an OIDC login", tags=["auth"], security=PUBLIC,
         responses=errors(404))
    async def oidc_callback(
            request: Req, code: FromQuery[str | None] = None,
            state_param: Annotated[str | None, QueryParameter(name="state")] = None,
            iss: FromQuery[str | None] = None, error: FromQuery[str | None] = None,
            error_description: FromQuery[str | None] = None) -> Response[Any]:
        """The identity provider's redirect: the session token (JSON when accepted, else an
        HTML page showing it once). 401 with the reason when the login is refused.
        """
        if not sso.enabled:
            raise NotFound("OIDC login is not enabled on this registry (auth.oidc.enabled)")
        clear = Cookie(key=STATE_COOKIE, value="", path=COOKIE_PATH, max_age=0,
                       httponly=True, samesite="lax")
        try:
            result = await sso.complete(
                code=code, state=state_param, cookie=request.cookies.get(STATE_COOKIE), iss=iss,
                error=error, error_description=error_description,
                client=_client(security, request))
        except DtrError as exc:
            if _wants_json(request):
                raise
            status = 401 if isinstance(exc, Unauthorized) else 503
            response: Response[Any] = _page("dtr: sign-in refused",
                                            f"<p>{html.escape(exc.message)}</p>"
                                            f"<p><a href='{LOGIN_PATH}'>Sign in again</a></p>",
                                            status)
            response.set_cookie(clear)
            return response
        await security.policy.refresh()
        if _wants_json(request):
            info = result.session.info
            body = LoginSession(username=result.username, session_token=result.session.secret,
                                token_id=info.id, expires_at=info.expires_at,
                                teams=result.teams, admin=result.admin, next=result.next)
            response = Response(msgspec.json.encode(body), media_type="application/json",
                                headers={"Cache-Control": "no-store"})
        else:
            response = _success_page(result, public_url or _origin(request))
        response.set_cookie(clear)
        return response

    @post("/logout", summary="Log out (revoke the session)", tags=["auth"], status_code=200,
          security=[{"bearer": []}, {"basic": []}], responses=errors(422))
    async def logout(request: Req) -> LoggedOut:
        """Revoke the OIDC session token this request is signed in with (``Authorization:
        Bearer dtr_ses_…``), and return the provider's ``end_session_endpoint`` so a browser
        can end the provider's session too.
        """
        principal = await security.principal(request)
        if principal.is_anonymous:
            raise Unauthorized("sign in with the session token to log out "
                               "(Authorization: Bearer dtr_ses_…)")
        if principal.method != "oidc" or principal.token_id is None:
            raise Invalid("logout ends an OIDC session: sign in with the session token "
                          "(Authorization: Bearer dtr_ses_...); revoke personal access "
                          "tokens with DELETE /api/v1/tokens/{id}")
        await sso.logout(principal.name, principal.token_id, _client(security, request))
        return LoggedOut(revoked=principal.token_id,
                         end_session_endpoint=await sso.end_session_endpoint())

    return Router(path=PREFIX, route_handlers=[oidc_info, oidc_login, oidc_callback, logout],
                  exception_handlers=exception_handlers())
