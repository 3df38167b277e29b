"""Single sign-on for people: the OpenID Connect login service (authorization code flow with
PKCE, ``state`` and ``nonce``), what a login does to the account (onboarding, team sync,
admin and auditor groups) and the dtr session it returns. Owns the login's decisions; the
HTTP routes live in ``dtr.api.oidc``, ID-token validation in ``dtr.auth.oidc``.

A login, step by step:

1. :meth:`LoginService.begin` builds the provider's authorization URL (from discovery:
   ``authorization_endpoint``; S256 code challenge, ``state``, ``nonce``, the configured
   scopes with ``openid`` always first) and a **state cookie**: a JWT signed with the
   registry's ES256 key (replicas share it) holding state, nonce, PKCE verifier,
   redirect URI and ``next`` for :data:`STATE_TTL` seconds. Nothing is kept in memory,
   so any replica can finish any login.
2. :meth:`LoginService.complete` checks the cookie and the returned ``state`` (constant
   time), exchanges the code at ``token_endpoint`` (``client_secret_basic`` with a client
   secret, else a public client proving PKCE), validates the ID token (audience =
   client id, the cookie's nonce), maps the claims (:func:`map_claims`) and then, in ONE
   database transaction: finds or onboards the account, refuses disabled ones, syncs
   team membership (:func:`decide_teams`) and the admin / auditor roles
   (:func:`decide_role`), records e-mail, groups and the login time, and mints a session
   token (``dtr_ses_…``, ``auth.oidc.session_hours``) for the admin API.
3. :meth:`LoginService.logout` revokes a session token.

Every outcome is reported as a :class:`~dtr.events.SecurityEvent` ``auth.oidc.login``
(``allow``, or ``deny`` with a stable ``reason``: see :data:`REFUSALS` plus the ID-token
reasons of :data:`dtr.auth.oidc.REASONS`). Refusals are :class:`LoginRefused`. A login
that succeeds is recorded in the transaction of step 2 (with the account created, the teams
added and removed, the roles granted and revoked, and the session's token id), so the
record and the changes commit together; a refusal changes nothing and is recorded on its
own. ``auth.oidc.logout`` is recorded in the transaction that revokes the session.

Personal access tokens minted with a session are ordinary tokens: nothing here touches
them, and they never depend on the provider (the Harbor "CLI secret" problem).
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import secrets
import ssl
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from authlib.deprecate import AuthlibDeprecationWarning
from joserfc import jws, jwt
from joserfc.errors import JoseError
from sqlalchemy import Connection, and_, insert, select, update

from dtr.auth import accounts as acc
from dtr.auth.accounts import NAME_RE, NAME_RULE, NewSecret, TokenInfo
from dtr.auth.oidc import IdTokenRefused, Providers
from dtr.auth.tokens import TokenKeys
from dtr.config import OIDCSettings
from dtr.db.base import utcnow
from dtr.db.database import Database
from dtr.db.models import Account, OIDCIdentity, Organization, Team
from dtr.errors import Invalid, Unauthorized, Unavailable
from dtr.events import LogSecurityEvents, SecurityEvent, SecurityEvents
from dtr.policy import admin as pol
from dtr.policy.actions import SYSTEM

with warnings.catch_warnings():
    # authlib 1.9 warns that its httpx integration will move to httpx2; it works as is
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

ACTION = "auth.oidc.login"
LOGOUT_ACTION = "auth.oidc.logout"
STATE_TTL = 600
"""Seconds a login may take between :meth:`LoginService.begin` and the callback."""
STATE_TYP = "dtr-oidc-state+jwt"
STATE_AUDIENCE = "dtr:oidc-state"
ADMIN_ROLE = "admin"
AUDITOR_ROLE = "auditor"
REFUSALS = ("provider_error", "missing_state_cookie", "bad_state_cookie", "state_mismatch",
            "missing_code", "wrong_issuer", "code_exchange_failed", "no_id_token",
            "missing_username", "bad_username", "no_account", "username_taken",
            "account_disabled", "oidc_disabled")
"""Every ``LoginRefused.reason`` besides the ID-token reasons."""
MAX_GROUPS = 1000


class LoginRefused(Unauthorized):
    """A login was refused.

    Args:
        reason: a stable code (:data:`REFUSALS` or an ID-token reason).
        message: what happened and what to do, for the person and the audit log.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, {"reason": reason})
        self.reason = reason


# -- claims and sync decisions (pure) ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Identity:
    """What dtr reads from a validated ID token.

    Attributes:
        issuer: ``iss``.
        subject: ``sub`` (with ``issuer``, the stable key of the person).
        username: the dtr user name (the username claim, lower-cased).
        email: the e-mail claim when it looks like an address, else None.
        groups: the groups claim (sorted, duplicates removed; empty when missing).
    """

    issuer: str
    subject: str
    username: str
    email: str | None
    groups: tuple[str, ...]


def map_claims(claims: Mapping[str, Any], settings: OIDCSettings, *, issuer: str,
               subject: str) -> Identity:
    """The :class:`Identity` in ``claims`` per the configured claim names.

    The username claim must be a string that, lower-cased, is a valid dtr user name. The
    groups claim may be missing (no groups), a string (one group) or a list (strings and
    numbers kept, anything else ignored). An e-mail that is not a plausible address is
    dropped.

    Raises:
        LoginRefused: ``missing_username`` or ``bad_username``.
    """
    raw = claims.get(settings.username_claim)
    if not isinstance(raw, str) or not raw.strip():
        raise LoginRefused("missing_username", f"the provider sent no {settings.username_claim!r} "
                           "claim to name the dtr user; ask an administrator to release it "
                           "(or set auth.oidc.username_claim)")
    username = raw.strip().lower()
    if not NAME_RE.fullmatch(username):
        raise LoginRefused("bad_username", f"the user name {username!r} from claim "
                           f"{settings.username_claim!r} is not a valid dtr user name "
                           f"({NAME_RULE}); ask an administrator")
    email = claims.get(settings.email_claim)
    if not (isinstance(email, str) and 0 < len(email) <= acc.MAX_EMAIL
            and "@" in email.strip("@") and not any(c.isspace() for c in email)):
        email = None
    return Identity(issuer, subject, username, email,
                    groups_of(claims.get(settings.groups_claim)))


def groups_of(value: Any) -> tuple[str, ...]:
    """The groups in a groups claim value: none, one string, or a list (sorted, unique)."""
    if value is None:
        return ()
    items: Iterable[Any] = [value] if isinstance(value, str) else (
        value if isinstance(value, list) else [])
    found = {str(v) for v in items if isinstance(v, str | int) and not isinstance(v, bool)}
    return tuple(sorted(g for g in found if g))[:MAX_GROUPS]


@dataclass(frozen=True, slots=True)
class TeamPlan:
    """Team membership changes of one login: ``(org, team)`` pairs."""

    add: frozenset[tuple[str, str]]
    remove: frozenset[tuple[str, str]]


def decide_teams(synced: Mapping[tuple[str, str], str], member_of: Iterable[tuple[str, str]],
                 groups: Iterable[str]) -> TeamPlan:
    """Team sync: for each synced team (``(org, team)`` → provider group) the user is a
    member iff the group is in ``groups``; teams without a group are never touched.

    Args:
        synced: the teams that mirror a provider group.
        member_of: the teams the user is in now.
        groups: the groups claim of this login.
    """
    have, wanted = set(member_of), set(groups)
    add = {t for t, group in synced.items() if group in wanted and t not in have}
    remove = {t for t, group in synced.items() if group not in wanted and t in have}
    return TeamPlan(frozenset(add), frozenset(remove))


RoleAction = Literal["grant", "revoke", "keep"]


def decide_role(group: str, groups: Iterable[str], granted: bool,
                by_group: bool) -> tuple[RoleAction, bool]:
    """The admin (or auditor) group rule: what to do with the system-wide role grant, and
    whether it is then held *because of the group*.

    * in the group: grant it if missing (then it is held by group); keep it otherwise;
    * not in the group (or no group configured): revoke it only if the group granted it;
      a grant an administrator made by hand is never taken away.

    Args:
        group: the configured provider group (``""`` = none).
        groups: the groups claim of this login.
        granted: the user holds the role system-wide now.
        by_group: the role was granted because of the group (remembered from earlier).
    """
    if group and group in set(groups):
        return ("keep", by_group) if granted else ("grant", True)
    if by_group:
        return ("revoke", False) if granted else ("keep", False)
    return "keep", False


# -- the state cookie -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LoginState:
    """What travels in the state cookie between ``begin`` and ``complete``."""

    state: str
    nonce: str = field(repr=False)
    verifier: str = field(repr=False)
    redirect_uri: str
    next: str | None = None
    expires_at: int = 0


def encode_state(keys: TokenKeys, value: LoginState) -> str:
    """The state cookie value: a compact JWS (ES256, ``typ`` :data:`STATE_TYP`)."""
    now = int(time.time())
    claims = {"aud": STATE_AUDIENCE, "iat": now, "exp": value.expires_at or now + STATE_TTL,
              "st": value.state, "nn": value.nonce, "cv": value.verifier,
              "ru": value.redirect_uri, "nx": value.next}
    header = {"alg": "ES256", "typ": STATE_TYP, "kid": keys.kid}
    return jwt.encode(header, claims, keys.signing, algorithms=["ES256"])


def decode_state(keys: TokenKeys, cookie: str | None) -> LoginState:
    """The :class:`LoginState` in a state cookie.

    Raises:
        LoginRefused: ``missing_state_cookie``, or ``bad_state_cookie`` (not signed by
            this registry, not a state cookie, or older than :data:`STATE_TTL`).
    """
    if not cookie:
        raise LoginRefused("missing_state_cookie", "the login cookie is missing: cookies "
                           "must be enabled, and the login must start at this registry's "
                           "/api/v1/auth/oidc/login")
    bad = LoginRefused("bad_state_cookie", "the login cookie is invalid or expired (a "
                       "login must finish within 10 minutes); start the login again")
    try:
        header = jws.extract_compact(cookie.encode("ascii")).protected
        key = keys.verifying.get(str(header.get("kid")))
        if key is None or header.get("typ") != STATE_TYP:
            raise bad
        claims = jwt.decode(cookie, key, algorithms=["ES256"]).claims
    except (JoseError, ValueError, UnicodeError):
        raise bad from None
    exp = claims.get("exp")
    st, nn, cv, ru = (claims.get(k) for k in ("st", "nn", "cv", "ru"))
    if (claims.get("aud") != STATE_AUDIENCE or not isinstance(exp, int) or exp <= time.time()
            or not all(isinstance(v, str) and v for v in (st, nn, cv, ru))):
        raise bad
    nx = claims.get("nx")
    return LoginState(str(st), str(nn), str(cv), str(ru), nx if isinstance(nx, str) else None,
                      exp)


def safe_next(value: str | None) -> str | None:
    """``next`` when it is a path on this registry (``/…``, never ``//host``), else None."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return None
    if len(value) > 2000 or not value.isprintable():
        return None
    return value


# -- the service ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LoginStart:
    """Where to send the browser, and the state cookie to set on the way."""

    authorization_url: str
    cookie: str = field(repr=False)
    max_age: int = STATE_TTL


@dataclass(frozen=True, slots=True)
class LoginResult:
    """A completed login.

    Attributes:
        username: the dtr user.
        session: the session token (its secret shown once).
        teams: the user's teams after sync (``org/team``).
        admin: the user is a system administrator (``admin`` on ``*``).
        created: the account was created by this login.
        next: where the login was asked to return to (a local path), if anywhere.
        changes: what the sync changed (for the audit event).
    """

    username: str
    session: NewSecret[TokenInfo]
    teams: list[str]
    admin: bool
    created: bool
    next: str | None = None
    changes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Client:
    """Who is logging in, for the audit events."""

    ip: str = ""
    user_agent: str = ""


class LoginService:
    """OIDC login for people (see the module docstring for the flow).

    Args:
        settings: ``auth.oidc``.
        db: the metadata database.
        providers: the OpenID Providers (discovery, keys, ID-token validation).
        keys: the registry's token keys (they sign the state cookie).
        events: where login outcomes are reported.
    """

    def __init__(self, settings: OIDCSettings, db: Database, providers: Providers,
                 keys: TokenKeys, events: SecurityEvents | None = None) -> None:
        self.settings = settings
        self.db = db
        self.providers = providers
        self.keys = keys
        self.events: SecurityEvents = events or LogSecurityEvents()
        self._verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=settings.ca_file) if settings.ca_file else True)

    @property
    def enabled(self) -> bool:
        """True when OIDC login is configured on."""
        return self.settings.enabled

    @property
    def scopes(self) -> list[str]:
        """The scopes requested: ``openid`` first, then the configured ones."""
        return ["openid", *dict.fromkeys(s for s in self.settings.scopes if s != "openid")]

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise LoginRefused("oidc_disabled", "OIDC login is not enabled on this registry "
                               "(auth.oidc.enabled is false)")

    def _client(self, redirect_uri: str) -> Any:
        secret = self.settings.client_secret or None
        return AsyncOAuth2Client(
            self.settings.client_id, secret, scope=" ".join(self.scopes),
            token_endpoint_auth_method="client_secret_basic" if secret else "none",
            redirect_uri=redirect_uri, code_challenge_method="S256", verify=self._verify,
            timeout=10.0)

    async def end_session_endpoint(self) -> str | None:
        """The provider's ``end_session_endpoint`` (RP-initiated logout), if it has one and
        can be reached.
        """
        if not self.enabled:
            return None
        try:
            meta = await self.providers.get(self.settings.issuer).metadata()
        except (Unavailable, IdTokenRefused):
            return None
        value = meta.get("end_session_endpoint")
        return value if isinstance(value, str) else None

    async def begin(self, redirect_uri: str, next_path: str | None = None) -> LoginStart:
        """Start a login: the provider URL to redirect to and the state cookie.

        Args:
            redirect_uri: this registry's callback URL, as registered at the provider.
            next_path: a local path to return to afterwards (anything else is dropped).

        Raises:
            LoginRefused: ``oidc_disabled``.
            Unavailable: the provider's discovery document cannot be fetched.
        """
        self._require_enabled()
        meta = await self.providers.get(self.settings.issuer).metadata()
        endpoint = meta.get("authorization_endpoint")
        if not isinstance(endpoint, str):
            raise Unavailable(f"identity provider {self.settings.issuer} publishes no "
                              "authorization_endpoint")
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        async with self._client(redirect_uri) as client:
            url, _ = client.create_authorization_url(endpoint, state=state,
                                                     code_verifier=verifier, nonce=nonce)
        cookie = encode_state(self.keys, LoginState(state, nonce, verifier, redirect_uri,
                                                    safe_next(next_path)))
        return LoginStart(str(url), cookie)

    async def complete(self, *, code: str | None, state: str | None, cookie: str | None,
                       iss: str | None = None, error: str | None = None,
                       error_description: str | None = None,
                       client: Client | None = None) -> LoginResult:
        """Finish a login from the provider's redirect (see the module docstring).

        Raises:
            LoginRefused: any refusal (the ``reason`` says which; reported as an event).
            Unavailable: the provider cannot be reached (reported as an ``error`` event).
        """
        who = client or Client()
        identity: Identity | None = None
        try:
            login, code = self._check_response(code, state, cookie, iss, error,
                                               error_description)
            id_token = await self._exchange(code, login)
            token = await self.providers.get(self.settings.issuer).verify_id_token(
                id_token, audience=self.settings.client_id, nonce=login.nonce)
            identity = map_claims(token.claims, self.settings, issuer=token.issuer,
                                  subject=token.subject)
            found = identity
            result = await self.db.run(
                lambda conn: self._sign_in(conn, found, login.next, who), write=True)
        except (LoginRefused, IdTokenRefused) as exc:
            await self.events.emit(self._event("deny", exc.reason, who, identity,
                                               message=exc.message))
            if isinstance(exc, LoginRefused):
                raise
            raise LoginRefused(exc.reason, exc.message) from None
        except Unavailable as exc:
            await self.events.emit(self._event("error", "provider_unavailable", who,
                                               identity, message=exc.message))
            raise
        return result

    def _check_response(self, code: str | None, state: str | None, cookie: str | None,
                        iss: str | None, error: str | None,
                        error_description: str | None) -> tuple[LoginState, str]:
        """The login state of a genuine authorization response, and its code.

        Raises:
            LoginRefused: OIDC is off, the provider sent an error, the cookie is missing or
                bad, the state or issuer does not match, or there is no code.
        """
        self._require_enabled()
        if error:
            detail = f": {error_description}" if error_description else ""
            raise LoginRefused("provider_error", f"the identity provider refused the "
                               f"login ({error}{detail})")
        login = decode_state(self.keys, cookie)
        if not state or not hmac.compare_digest(state.encode(), login.state.encode()):
            raise LoginRefused("state_mismatch", "the login's state does not match this "
                               "browser's login cookie; start the login again")
        if iss is not None and iss != self.settings.issuer:
            raise LoginRefused("wrong_issuer", f"the authorization response comes from "
                               f"{iss!r}, not {self.settings.issuer!r}")
        if not code:
            raise LoginRefused("missing_code", "the provider's redirect has no code")
        return login, code

    async def _exchange(self, code: str, login: LoginState) -> str:
        """The ID token of the code exchange at ``token_endpoint``."""
        meta = await self.providers.get(self.settings.issuer).metadata()
        endpoint = meta.get("token_endpoint")
        if not isinstance(endpoint, str):
            raise Unavailable(f"identity provider {self.settings.issuer} publishes no "
                              "token_endpoint")
        try:
            async with self._client(login.redirect_uri) as client:
                response = await client.fetch_token(endpoint, grant_type="authorization_code",
                                                    code=code, code_verifier=login.verifier)
        except OAuthError as exc:
            description = f": {exc.description}" if getattr(exc, "description", None) else ""
            raise LoginRefused("code_exchange_failed", f"the identity provider refused the "
                               f"authorization code ({exc.error}{description}); codes work "
                               "once and expire quickly: start the login again") from None
        except httpx.HTTPError as exc:
            raise Unavailable(f"identity provider {self.settings.issuer} unreachable "
                              f"(token endpoint): {exc}") from exc
        except ValueError:
            raise LoginRefused("code_exchange_failed", "the identity provider's token "
                               "response is not JSON") from None
        id_token = response.get("id_token") if isinstance(response, Mapping) else None
        if not isinstance(id_token, str) or not id_token:
            raise LoginRefused("no_id_token", "the identity provider returned no ID token "
                               "(is 'openid' among the client's allowed scopes?)")
        return id_token

    async def logout(self, account: str, token_id: str, client: Client | None = None) -> None:
        """Revoke the session token ``token_id`` of ``account`` (idempotent).

        Raises:
            NotFound: not a token of this account.
            Invalid: the token is not a session token.
        """
        who = client or Client()

        def tx(conn: Connection) -> None:
            kind = next((t.kind for t in acc.list_tokens(conn, account, kind="session")
                         if t.id == token_id), None)
            if kind is None:
                raise Invalid("logout ends an OIDC session: sign in with the session token "
                              "(Authorization: Bearer dtr_ses_...); revoke personal access "
                              "tokens with DELETE /api/v1/tokens/{id}")
            acc.revoke_token(conn, account, token_id)
            self.events.record(conn, SecurityEvent(
                action=LOGOUT_ACTION, outcome="allow", actor_kind="user", actor=account,
                actor_id=f"user:{account}", method="oidc", client_ip=who.ip,
                user_agent=who.user_agent, token_id=token_id, resource=token_id))

        await self.db.run(tx, write=True)

    def _event(self, outcome: Literal["allow", "deny", "error"], reason: str,
               who: Client, identity: Identity | None, *, message: str = "",
               result: LoginResult | None = None) -> SecurityEvent:
        """The ``auth.oidc.login`` event of one outcome."""
        detail: dict[str, Any] = {"issuer": self.settings.issuer}
        if message:
            detail["message"] = message
        if identity is not None:
            detail.update(subject=identity.subject, username=identity.username,
                          groups=list(identity.groups))
        if result is not None:
            detail.update(created=result.created, teams=result.teams, admin=result.admin,
                          **result.changes)
        actor_kind, actor, actor_id = "anonymous", "", ""
        if result is not None:
            actor_kind, actor = "user", result.username
            actor_id = f"user:{result.username}"
            detail["session_expires_at"] = result.session.info.expires_at
        elif identity is not None:
            actor_kind, actor = "identity", f"{identity.issuer}#{identity.subject}"
        return SecurityEvent(
            action=ACTION, outcome=outcome, actor_kind=actor_kind, actor=actor,
            actor_id=actor_id, method="oidc", reason=reason, client_ip=who.ip,
            user_agent=who.user_agent, resource=self.settings.issuer,
            token_id=result.session.info.id if result is not None else "", detail=detail)

    # -- the transaction ----------------------------------------------------------------------

    def _sign_in(self, conn: Connection, who: Identity, next_path: str | None,
                 client: Client) -> LoginResult:
        """Account, sync, session and the login's event in one transaction (any refusal
        rolls it all back).
        """
        account_id, name, created = self._account(conn, who)
        row = conn.execute(select(Account.disabled, Account.expires_at)
                           .where(Account.id == account_id)).one()
        now = utcnow()
        if row.disabled or (row.expires_at is not None and row.expires_at <= now):
            raise LoginRefused("account_disabled", f"the dtr account {name} is disabled; ask "
                               "an administrator")
        subject = f"user:{name}"
        ident = conn.execute(select(OIDCIdentity.id, OIDCIdentity.admin_by_group,
                                    OIDCIdentity.auditor_by_group).where(
            OIDCIdentity.issuer == who.issuer, OIDCIdentity.subject == who.subject)).one()
        changes = _sync_teams(conn, subject, who.groups)
        admin_by_group, admin_change = _sync_role(conn, subject, ADMIN_ROLE,
                                                  self.settings.admin_group, who.groups,
                                                  bool(ident.admin_by_group))
        auditor_by_group, auditor_change = _sync_role(conn, subject, AUDITOR_ROLE,
                                                      self.settings.auditor_group, who.groups,
                                                      bool(ident.auditor_by_group))
        changes.update({k: v for k, v in (("admin_role", admin_change),
                                          ("auditor_role", auditor_change)) if v})
        conn.execute(update(OIDCIdentity).where(OIDCIdentity.id == ident.id).values(
            email=who.email, groups=json.dumps(list(who.groups)), admin_by_group=admin_by_group,
            auditor_by_group=auditor_by_group, last_login_at=now))
        values: dict[str, Any] = {"last_login_at": now}
        if who.email:
            values["email"] = who.email
        conn.execute(update(Account).where(Account.id == account_id).values(**values))
        session = acc.create_token(
            conn, name, f"oidc login {now:%Y-%m-%d %H:%M}", kind="session",
            expires_at=now + dt.timedelta(hours=self.settings.session_hours))
        teams = [t.removeprefix("team:") for t in pol.teams_of(conn, subject)]
        admin = any(g.role == ADMIN_ROLE and g.repository == "**" and g.effect == "allow"
                    for g in pol.list_grants(conn, org=SYSTEM, subject=subject))
        result = LoginResult(name, session, teams, admin, created, next_path, changes)
        self.events.record(conn, self._event("allow", "", client, who, result=result))
        return result

    def _account(self, conn: Connection, who: Identity) -> tuple[int, str, bool]:
        """The account of the identity: linked, or linked now (an account an administrator
        made for single sign-on), or created (``auto_onboard``). Returns (id, name, created).
        """
        linked = conn.execute(select(Account.id, Account.name).join(
            OIDCIdentity, OIDCIdentity.account_id == Account.id).where(
            OIDCIdentity.issuer == who.issuer, OIDCIdentity.subject == who.subject)).first()
        if linked is not None:
            return int(linked.id), str(linked.name), False
        name = who.username
        existing = conn.execute(select(Account.id, Account.kind, Account.secret_hash)
                                .where(Account.name == name)).first()
        created = existing is None
        if existing is None:
            if not self.settings.auto_onboard:
                raise LoginRefused("no_account", f"there is no dtr account for this identity "
                                   f"({name}); ask an administrator to create it "
                                   f"(`dtr user create {name} --oidc`)")
            account_id = acc.create_user(conn, name, None, email=who.email,
                                         created_by="oidc").id
        else:
            taken = existing.kind != "user" or existing.secret_hash is not None
            other = conn.execute(select(OIDCIdentity.id).where(
                OIDCIdentity.account_id == existing.id)).first()
            if taken or other is not None:
                raise LoginRefused("username_taken", f"the user name {name} is taken by a "
                                   "local account (or another identity); ask an "
                                   "administrator")
            account_id = int(existing.id)
        conn.execute(insert(OIDCIdentity).values(
            issuer=who.issuer, subject=who.subject, account_id=account_id,
            admin_by_group=False, auditor_by_group=False, created_at=utcnow()))
        return account_id, name, created


def _sync_teams(conn: Connection, subject: str, groups: Sequence[str]) -> dict[str, Any]:
    """Apply :func:`decide_teams`; returns the changes (``teams_added``/``teams_removed``)."""
    synced = {(str(r.org), str(r.team)): str(r.idp_group) for r in conn.execute(
        select(Organization.name.label("org"), Team.name.label("team"), Team.idp_group)
        .join(Organization, Organization.id == Team.org_id)
        .where(and_(Team.idp_group.is_not(None), Team.idp_group != "")))}
    member_of = {(org, team) for org, _, team in (
        t.removeprefix("team:").partition("/") for t in pol.teams_of(conn, subject))}
    plan = decide_teams(synced, member_of, groups)
    for org, team in sorted(plan.add):
        pol.add_member(conn, org, team, subject)
    for org, team in sorted(plan.remove):
        pol.remove_member(conn, org, team, subject)
    changes: dict[str, Any] = {}
    if plan.add:
        changes["teams_added"] = sorted(f"{o}/{t}" for o, t in plan.add)
    if plan.remove:
        changes["teams_removed"] = sorted(f"{o}/{t}" for o, t in plan.remove)
    return changes


def _sync_role(conn: Connection, subject: str, role: str, group: str, groups: Sequence[str],
               by_group: bool) -> tuple[bool, str]:
    """Apply :func:`decide_role` to the system-wide ``role`` grant; returns (held by group
    now, ``"granted"``/``"revoked"``/``""``).
    """
    grants = [g for g in pol.list_grants(conn, org=SYSTEM, subject=subject)
              if g.role == role and g.repository == "**" and g.effect == "allow"]
    action, held = decide_role(group, groups, bool(grants), by_group)
    if action == "grant":
        pol.create_grant(conn, subject, SYSTEM, "**", role)
        return held, "granted"
    if action == "revoke":
        for grant in grants:
            pol.delete_grant(conn, grant.id)
        return held, "revoked"
    return held, ""
