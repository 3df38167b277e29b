"""Credential checks: a username and password (user password, user personal access token,
robot secret), a refresh token, a personal access token or an OIDC session token →
:class:`Principal`, with failed-login limits. The only place that decides whether presented
secrets are right (and whether local passwords are allowed at all: ``local_login``).

Every check reads the database (the failed-login rows and the account or token row), so a
change counts at the next login; on SQLite that read runs inline on a plain ``sqlite3``
connection (``dtr.auth.loginreads``), without a thread hop.

Every outcome is reported as an ``auth.login`` :class:`~dtr.events.SecurityEvent` through
the injected :class:`~dtr.events.SecurityEvents` (the audit log): a failure in the
transaction that counts it in ``login_failure``, a refusal that writes nothing (rate
limited, local logins off) and a success on its own, or in the transaction that records
``last_login_at`` when there is one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Connection, bindparam, select, update

from dtr.auth.accounts import decode_scopes, parse_token
from dtr.auth.loginreads import FAILURES, InlineLoginReads, statement
from dtr.auth.passwords import (
    hash_password_async,
    needs_rehash,
    secret_matches,
    verify_password_async,
)
from dtr.auth.principal import AuthMethod, Principal
from dtr.auth.ratelimit import LoginLimiter
from dtr.db.base import utcnow
from dtr.db.database import Database
from dtr.db.models import AccessToken, Account
from dtr.errors import RateLimited, Unauthorized
from dtr.events import LogSecurityEvents, SecurityEvent, SecurityEvents

BAD_LOGIN = "invalid username or password"
BAD_TOKEN = "invalid, expired or revoked token"  # noqa: S105 (a message, not a secret)
SESSION_NOT_PASSWORD = ("a dtr session token (dtr_ses_...) only signs in to the admin API; "  # noqa: S105
                        "for docker login mint a personal access token with it "
                        "(`dtr token create NAME`) and use that")
LOCAL_LOGIN_OFF = ("password sign-in is disabled here (auth.oidc.local_login is false): "
                   "sign in with single sign-on, then use a personal access token")
VERIFIED_TTL = 300.0
"""Seconds a successful password check is remembered (as a keyed MAC bound to the hash)."""
TOUCH_INTERVAL = dt.timedelta(seconds=60)
"""``last_login_at`` / ``last_used_at`` are written at most this often per account/token."""
_MAX_USERNAME = 255
_TOKEN_METHODS: dict[str, AuthMethod] = {"pat": "pat", "refresh": "refresh_token",
                                         "session": "oidc"}
LOGIN = "auth.login"
"""The action of every login event."""


@dataclass(frozen=True, slots=True)
class _Login:
    """What a check reads about the account (and the token, when one was presented)."""

    account_id: int
    name: str
    kind: Literal["user", "robot"]
    secret_hash: str | None
    disabled: bool
    expires_at: dt.datetime | None
    last_login_at: dt.datetime | None
    token_id: str | None = None
    token_kind: str | None = None
    token_hash: str | None = None
    token_scopes: str | None = None
    token_expires_at: dt.datetime | None = None
    token_revoked_at: dt.datetime | None = None
    token_last_used_at: dt.datetime | None = None

    def usable(self, now: dt.datetime) -> bool:
        """Account enabled and unexpired; the token (if any) unrevoked and unexpired."""
        return not (self.disabled or _passed(self.expires_at, now)
                    or self.token_revoked_at is not None
                    or _passed(self.token_expires_at, now))


class CredentialVerifier:
    """Turns presented credentials into a :class:`Principal`.

    Contract (every method; ``tests/contracts/test_credential_verifiers.py`` holds each
    credential kind to it, on SQLite and PostgreSQL):

    * Right credentials of an enabled, unexpired account (and an unrevoked, unexpired
      token) → the principal: ``kind`` and ``name`` of the account, its ``account_id``,
      ``method`` (``password``, ``pat``, ``robot_secret``, ``refresh_token``, ``oidc`` for
      a session token), and for tokens ``token_id`` and the token's ``scopes``
      restriction (``None`` = full rights).
    * Anything wrong — unknown user, wrong secret, a token of another account or of the
      wrong kind, disabled or expired account, expired or revoked token, malformed input —
      → :class:`~dtr.errors.Unauthorized` with one fixed message per method that never
      says which part was wrong.
    * Secrets are compared in constant time: argon2 for passwords (run against a dummy
      hash when the account does not exist, in a worker thread so the event loop stays
      free), ``hmac.compare_digest`` on SHA-256 for random secrets (against a dummy hash
      when the row does not exist). A password that passed argon2 is remembered for
      ``VERIFIED_TTL`` seconds as a MAC under a per-process random key, bound to the stored
      hash, so repeated logins skip argon2 while a wrong password never does and a changed
      password is never accepted from memory.
    * Rate limits: the limiter is checked before any secret is compared
      (:class:`~dtr.errors.RateLimited` with ``retry_after``, the same for existing and
      unknown names), every failure is counted against the client address and, for
      ``verify_basic``, the username; a success clears the username's count.
    * A success records ``last_login_at`` (and the token's ``last_used_at``) at most once
      a minute, so steady token traffic causes no writes.
    * Nothing about the account, the token or the failed logins is remembered between
      checks: each one reads them (inline on SQLite, see ``dtr.auth.loginreads``).

    * Every check of a presented secret is reported as an ``auth.login`` event to
      ``events``: failures (``deny``, with a ``reason``: ``unknown_account``,
      ``bad_password``, ``unknown_token``, ``bad_token``, ``disabled``, ``expired``,
      ``revoked``, ``token_expired``, ``session_token``) in the transaction that counts
      them; ``rate_limited`` and ``local_login_disabled`` refusals on their own. Successes
      (``allow``) of :meth:`verify_basic` and :meth:`verify_refresh_token` (logins) are
      reported too; those of :meth:`verify_pat` and :meth:`verify_session` (a bearer token
      authenticating one admin API request) are not. The reason never reaches the client.
    * A session token (``dtr_ses_…``) presented as a password is refused with
      :data:`SESSION_NOT_PASSWORD` (it is for the admin API only). With
      ``local_login=False`` user passwords are refused with :data:`LOCAL_LOGIN_OFF`
      before any check, except the bootstrap administrator's; robots and tokens work.

    Args:
        db: the metadata database.
        limiter: the shared failed-login limiter.
        recheck_seconds: how long :meth:`still_valid` answers are cached.
        local_login: accept user passwords (``auth.oidc.local_login``).
        bootstrap_admin: the user whose password works even without ``local_login``.
        events: where login outcomes are reported (the audit log; JSON log lines when
            not given).
    """

    def __init__(self, db: Database, limiter: LoginLimiter,
                 recheck_seconds: float = 5.0, *, local_login: bool = True,
                 bootstrap_admin: str = "admin", events: SecurityEvents | None = None) -> None:
        self.db = db
        self.limiter = limiter
        self.events: SecurityEvents = events or LogSecurityEvents()
        self.recheck_seconds = recheck_seconds
        self.local_login = local_login
        self.bootstrap_admin = bootstrap_admin
        self._inline = InlineLoginReads.for_url(db.url)
        self._valid: dict[tuple[str, str | None], tuple[bool, float]] = {}
        # argon2 costs ~45 ms of CPU by design; a client logging in again and again (one
        # token request per repository and per pull) is answered from a keyed MAC of the
        # password bound to the stored hash, for VERIFIED_TTL seconds
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[str, tuple[bytes, str, float]] = {}

    async def still_valid(self, principal: Principal) -> bool:
        """True while the principal's account is enabled and unexpired and the personal
        access or refresh token it logged in with (if any) is unrevoked and unexpired.

        Used to re-check push and delete during a registry token's lifetime, so disabling
        an account or revoking a token stops writes within ``recheck_seconds`` (answers
        are cached that long per account and token). Anonymous is always valid.
        """
        if principal.is_anonymous:
            return True
        key = (principal.name, principal.token_id if principal.method in (
            "pat", "refresh_token", "oidc") else None)
        now = time.monotonic()
        cached = self._valid.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]

        login = await self.db.run(lambda conn: _load_login(conn, key[1], key[0]), write=False)
        valid = login is not None and login.name == principal.name and login.usable(utcnow())
        if len(self._valid) > 10_000:
            self._valid.clear()
        self._valid[key] = (valid, now + self.recheck_seconds)
        return valid

    async def verify_basic(self, username: str, password: str, client_ip: str) -> Principal:
        """Check HTTP Basic credentials (the token endpoint, the admin API).

        ``username`` + password of a user; ``username`` + one of that user's personal
        access tokens (``dtr_pat_…``) as the password; ``robot$…`` + the robot's secret.

        Raises:
            Unauthorized: ``"invalid username or password"``; :data:`SESSION_NOT_PASSWORD`
                for a session token; :data:`LOCAL_LOGIN_OFF` for a user password when
                local logins are off.
            RateLimited: too many failures for this username or address.
        """
        parsed = parse_token(password) if password.startswith("dtr_") else None
        token_id = parsed[1] if parsed is not None else None
        method: AuthMethod = ("pat" if parsed is not None else
                              "robot_secret" if username.startswith("robot$") else "password")
        if parsed is not None and parsed[0] == "session":
            await self._failed("", client_ip, _attempt(
                username, None, "oidc", "session_token", client_ip, token_id))
            raise Unauthorized(SESSION_NOT_PASSWORD)
        if (parsed is None and not self.local_login and not username.startswith("robot$")
                and username != self.bootstrap_admin):
            await self.events.emit(_attempt(username, None, method, "local_login_disabled",
                                            client_ip))
            raise Unauthorized(LOCAL_LOGIN_OFF)

        name = username if parsed is None and _storable(username) else None
        try:
            had_failures, login = await self._read(username, client_ip, token_id, name)
        except RateLimited:
            await self.events.emit(_attempt(username, None, method, "rate_limited",
                                            client_ip, token_id))
            raise
        now = utcnow()
        if parsed is not None:
            secret_ok = secret_matches(parsed[2], login.token_hash if login else None)
            ok = (secret_ok and login is not None and parsed[0] == "pat"
                  and login.token_kind == parsed[0] and login.kind == "user"
                  and login.name == username)
        elif method == "robot_secret":
            ok = secret_ok = (secret_matches(password, login.secret_hash if login else None)
                              and login is not None and login.kind == "robot")
        else:
            stored = login.secret_hash if login is not None and login.kind == "user" else None
            ok = self._recently_verified(username, password, stored)
            if not ok:
                ok = await verify_password_async(password, stored)
                if ok and stored is not None:
                    self._remember(username, password, stored)
            secret_ok = ok
        if not ok or login is None or not login.usable(now):
            reason = _why(ok, login, now, token=parsed is not None)
            owner = login if login is not None and login.name == username else None
            await self._failed(username, client_ip, _attempt(
                username, owner, method, reason, client_ip, token_id,
                secret_ok=secret_ok))
            raise Unauthorized(BAD_LOGIN)
        rehash = None
        if method == "password" and login.secret_hash and needs_rehash(login.secret_hash):
            rehash = await hash_password_async(password)
        await self._succeeded(login, now, username, client_ip, had_failures, rehash,
                              _success(login, method, client_ip))
        return _principal(login, method)

    async def _read(self, account: str, client_ip: str, token_id: str | None,
                    name: str | None) -> tuple[bool, _Login | None]:
        """The limiter check (raises ``RateLimited``; True if ``account`` has failures on
        record) and the token row (``token_id``) or account row (``name``): inline on
        SQLite, else in one ``Database.run`` transaction.
        """
        if self._inline is not None:
            return self._read_inline(account, client_ip, token_id, name)
        return await self.db.run(
            lambda conn: (self.limiter.check_tx(conn, account, client_ip),
                          _load_login(conn, token_id, name)), write=False)

    def _read_inline(self, account: str, client_ip: str, token_id: str | None,
                     name: str | None) -> tuple[bool, _Login | None]:
        """The limiter check (raises ``RateLimited``) and the token row (``token_id``) or
        account row (``name``), read inline on SQLite.
        """
        assert self._inline is not None
        keys = self.limiter.keys(account, client_ip)
        had = False
        if keys:
            rows = self._inline.all(FAILURES, {"k1": keys[0], "k2": keys[-1]})
            had = self.limiter.verdict(rows, account, client_ip)
        row = (self._inline.one(_TOKEN_INLINE, {"token_id": token_id}) if token_id is not None
               else self._inline.one(_ACCOUNT_INLINE, {"name": name}) if name is not None
               else None)
        return had, None if row is None else _Login(**row)

    def _mac(self, username: str, password: str) -> bytes:
        return hmac.new(self._cache_key, f"{username}\0{password}".encode(),
                        hashlib.sha256).digest()

    def _recently_verified(self, username: str, password: str, stored: str | None) -> bool:
        """True if this exact password passed argon2 against this exact stored hash in the
        last ``VERIFIED_TTL`` seconds (a keyed MAC, never the password, is kept; a password
        change or a new hash misses).
        """
        entry = self._verified.get(username)
        if entry is None or stored is None or entry[1] != stored or entry[2] < time.monotonic():
            return False
        return hmac.compare_digest(entry[0], self._mac(username, password))

    def _remember(self, username: str, password: str, stored: str) -> None:
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[username] = (self._mac(username, password), stored,
                                    time.monotonic() + VERIFIED_TTL)

    async def verify_refresh_token(self, token: str, client_ip: str) -> Principal:
        """Check a refresh token (``dtr_rt_…``; the OAuth2 ``refresh_token`` grant).

        Raises:
            Unauthorized: ``"invalid, expired or revoked token"``.
            RateLimited: too many failures from this address.
        """
        return await self._verify_token(token, "refresh", client_ip, login_event=True)

    async def verify_pat(self, token: str, client_ip: str) -> Principal:
        """Check a personal access token (``dtr_pat_…``; ``Authorization: Bearer`` on the
        admin API).

        Raises:
            Unauthorized: ``"invalid, expired or revoked token"``.
            RateLimited: too many failures from this address.
        """
        return await self._verify_token(token, "pat", client_ip)

    async def verify_session(self, token: str, client_ip: str) -> Principal:
        """Check an OIDC login session token (``dtr_ses_…``; ``Authorization: Bearer`` on
        the admin API); the principal's ``method`` is ``oidc``.

        Raises:
            Unauthorized: ``"invalid, expired or revoked token"``.
            RateLimited: too many failures from this address.
        """
        return await self._verify_token(token, "session", client_ip)

    async def _verify_token(self, token: str, kind: Literal["pat", "refresh", "session"],
                            client_ip: str, *, login_event: bool = False) -> Principal:
        # Token random parts carry 256 bits: guessing one is hopeless, so only the address
        # is limited (an account key would let anyone holding an id lock its owner out).
        parsed = parse_token(token)
        token_id = parsed[1] if parsed else None
        method = _TOKEN_METHODS[kind]
        try:
            login = (await self._read("", client_ip, token_id, None))[1]
        except RateLimited:
            await self.events.emit(_attempt("", None, method, "rate_limited", client_ip,
                                            token_id))
            raise
        now = utcnow()
        secret_ok = secret_matches(parsed[2] if parsed else "",
                                   login.token_hash if login else None)
        ok = (secret_ok and parsed is not None and login is not None and parsed[0] == kind
              and login.token_kind == kind and (kind == "refresh" or login.kind == "user"))
        if not ok or login is None or not login.usable(now):
            reason = _why(ok, login, now, token=True)
            await self._failed("", client_ip, _attempt(
                login.name if login else "", login, method, reason, client_ip, token_id,
                secret_ok=secret_ok))
            raise Unauthorized(BAD_TOKEN)
        await self._succeeded(login, now, "", client_ip, False, None,
                              _success(login, method, client_ip) if login_event else None)
        return _principal(login, method)

    async def _failed(self, account: str, client_ip: str, event: SecurityEvent) -> None:
        """Count a failure and record its event, in one transaction."""
        def write(conn: Connection) -> None:
            self.limiter.failed_tx(conn, account, client_ip)
            self.events.record(conn, event)

        await self.db.run(write, write=True)

    async def _succeeded(self, login: _Login, now: dt.datetime, account: str, client_ip: str,
                         had_failures: bool, rehash: str | None,
                         event: SecurityEvent | None) -> None:
        """Clear failures and touch ``last_login_at`` / ``last_used_at`` when due, and
        record ``event`` (in that transaction when there is one, else on its own).
        """
        touch_account = _stale(login.last_login_at, now)
        touch_token = login.token_id is not None and _stale(login.token_last_used_at, now)
        if not (touch_account or touch_token or had_failures or rehash):
            if event is not None:
                await self.events.emit(event)
            return

        def write(conn: Connection) -> None:
            if event is not None:
                self.events.record(conn, event)
            if had_failures:
                self.limiter.succeeded_tx(conn, account, client_ip)
            if touch_account:
                conn.execute(update(Account).where(Account.id == login.account_id)
                             .values(last_login_at=now))
            if touch_token:
                conn.execute(update(AccessToken).where(AccessToken.id == login.token_id)
                             .values(last_used_at=now))
            if rehash:  # only if the password did not change meanwhile
                conn.execute(update(Account).where(Account.id == login.account_id,
                                                   Account.secret_hash == login.secret_hash)
                             .values(secret_hash=rehash))

        await self.db.run(write, write=True)


def _principal(login: _Login, method: AuthMethod) -> Principal:
    return Principal(login.kind, login.name, account_id=login.account_id, method=method,
                     token_id=login.token_id, scopes=decode_scopes(login.token_scopes))


def _success(login: _Login, method: AuthMethod, client_ip: str) -> SecurityEvent:
    """The ``auth.login`` event of a successful login."""
    return SecurityEvent(action=LOGIN, outcome="allow", actor_kind=login.kind,
                         actor=login.name, actor_id=f"{login.kind}:{login.name}",
                         method=method, client_ip=client_ip, token_id=login.token_id or "")


def _attempt(name: str, login: _Login | None, method: str, reason: str, client_ip: str,
             token_id: str | None = None, *, secret_ok: bool = False) -> SecurityEvent:
    """The ``auth.login`` event of a refused login.

    ``name`` is the account name tried (kept printable: it may be anything the client
    sent), ``login`` the account it named if that exists. ``detail.secret_ok`` says
    whether the secret itself was right (a disabled account with its right password).
    """
    shown = _printable(name)
    kind = login.kind if login is not None else (
        "" if not shown else "robot" if shown.startswith("robot$") else "user")
    return SecurityEvent(
        action=LOGIN, outcome="deny", actor_kind=kind, actor=shown,
        actor_id=f"{login.kind}:{login.name}" if login is not None else "", method=method,
        reason=reason, client_ip=client_ip, token_id=token_id or "",
        detail={"secret_ok": secret_ok} if login is not None else {})


def _why(ok: bool, login: _Login | None, now: dt.datetime, *, token: bool) -> str:
    """The audit reason of a refused login (never shown to the client)."""
    if login is None:
        return "unknown_token" if token else "unknown_account"
    if not ok:
        return "bad_token" if token else "bad_password"
    if login.disabled:
        return "disabled"
    if _passed(login.expires_at, now):
        return "expired"
    if login.token_revoked_at is not None:
        return "revoked"
    if _passed(login.token_expires_at, now):
        return "token_expired"
    return "refused"


def _printable(name: str) -> str:
    """``name`` as text every database stores (NUL and lone surrogates escaped)."""
    text = name.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _storable(name: str) -> bool:
    """False for names no account can have and the database may refuse.

    That is names with NUL or lone surrogates, or longer than the column.
    """
    if len(name) > _MAX_USERNAME or "\x00" in name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _passed(when: dt.datetime | None, now: dt.datetime) -> bool:
    return when is not None and when <= now


def _stale(when: dt.datetime | None, now: dt.datetime) -> bool:
    return when is None or now - when >= TOUCH_INTERVAL


_ACCOUNT_COLUMNS = (Account.id.label("account_id"), Account.name, Account.kind,
                    Account.secret_hash, Account.disabled, Account.expires_at,
                    Account.last_login_at)
# built once: every login runs one of them, and building a statement (and its cache key)
# costs SQLAlchemy more than running it
_ACCOUNT_BY_NAME = select(*_ACCOUNT_COLUMNS).where(Account.name == bindparam("name"))
_TOKEN_BY_ID = (
    select(*_ACCOUNT_COLUMNS, AccessToken.id.label("token_id"),
           AccessToken.kind.label("token_kind"), AccessToken.secret_hash.label("token_hash"),
           AccessToken.scopes.label("token_scopes"),
           AccessToken.expires_at.label("token_expires_at"),
           AccessToken.revoked_at.label("token_revoked_at"),
           AccessToken.last_used_at.label("token_last_used_at"))
    .select_from(AccessToken).join(Account, Account.id == AccessToken.account_id)
    .where(AccessToken.id == bindparam("token_id")))
_ACCOUNT_INLINE = statement(_ACCOUNT_BY_NAME)
_TOKEN_INLINE = statement(_TOKEN_BY_ID)


def _load_account(conn: Connection, name: str) -> _Login | None:
    row = conn.execute(_ACCOUNT_BY_NAME, {"name": name}).first()
    return None if row is None else _Login(**row._mapping)


def _load_token(conn: Connection, token_id: str) -> _Login | None:
    row = conn.execute(_TOKEN_BY_ID, {"token_id": token_id}).first()
    return None if row is None else _Login(**row._mapping)


def _load_login(conn: Connection, token_id: str | None, name: str | None) -> _Login | None:
    """The token row (``token_id``), else the account row (``name``), else None."""
    if token_id is not None:
        return _load_token(conn, token_id)
    return None if name is None else _load_account(conn, name)
