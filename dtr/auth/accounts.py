"""Accounts and what hangs off them: users, robots, organizations, teams, personal access
and refresh tokens. Plain functions of a synchronous ``Connection`` (one transaction each,
composable with policy admin writes) and :class:`AccountService`, their async twins.

Secrets leave only once, in :class:`NewSecret`; rows hold argon2id password hashes or
SHA-256 hashes of random secrets. Token strings are ``dtr_pat_<id>_<random>``,
``dtr_rt_<id>_<random>`` and ``dtr_ses_<id>_<random>`` (an OIDC login session): the id
finds the row, the random part is compared by hash. Users created for single sign-on have
no password (``secret_hash`` NULL) and can never sign in with one.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
import secrets
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import Connection, Row, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from dtr.auth.passwords import (
    check_password,
    hash_password,
    hash_password_async,
    hash_secret,
    new_secret,
)
from dtr.auth.scopes import normalize_restrictions
from dtr.db.base import utcnow
from dtr.db.database import Database
from dtr.db.models import AccessToken, Account, Organization, Team
from dtr.errors import Conflict, Invalid, NotFound

T = TypeVar("T")
InfoT = TypeVar("InfoT", "AccountInfo", "TokenInfo")
TokenKind = Literal["pat", "refresh", "session"]

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
"""Users, organizations, teams and robot short names."""
NAME_RULE = "use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
TOKEN_ID_LENGTH = 16
_TOKEN_ID_ALPHABET = string.ascii_letters + string.digits
_TOKEN_RE = re.compile(r"dtr_(pat|rt|ses)_([A-Za-z0-9]{12,64})_([A-Za-z0-9_-]{16,128})")
_PREFIXES: dict[str, TokenKind] = {"pat": "pat", "rt": "refresh", "ses": "session"}
_PREFIX_OF: dict[TokenKind, str] = {kind: prefix for prefix, kind in _PREFIXES.items()}
MAX_TOKEN_NAME = 100
MAX_EMAIL = 255
MAX_IDP_GROUP = 255


class _Unset(enum.Enum):
    UNSET = 0


UNSET = _Unset.UNSET
"""Marks an optional update argument that was not given (``None`` may mean "clear")."""


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """A user or robot account as the admin API shows it (never a hash)."""

    id: int
    name: str
    kind: Literal["user", "robot"]
    org: str | None
    email: str | None
    description: str | None
    disabled: bool
    expires_at: dt.datetime | None
    created_by: str | None
    created_at: dt.datetime
    last_login_at: dt.datetime | None

    @property
    def subject(self) -> str:
        """The policy subject (``user:alice``, ``robot:robot$acme+ci``)."""
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class OrgInfo:
    """An organization (a repository namespace)."""

    id: int
    name: str
    description: str | None
    created_by: str | None
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class TeamInfo:
    """A team inside an organization."""

    id: int
    org: str
    name: str
    description: str | None
    created_at: dt.datetime
    idp_group: str | None = None
    """The OpenID Provider group whose members this team mirrors (team sync), or None."""

    @property
    def subject(self) -> str:
        """The policy subject (``team:acme/devs``)."""
        return f"team:{self.org}/{self.name}"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A personal access, refresh or session token (never its secret or hash)."""

    id: str
    account: str
    kind: TokenKind
    name: str
    scopes: tuple[str, ...] | None
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class NewSecret(Generic[InfoT]):
    """A freshly made credential: shown to its owner once, never stored or logged.

    Attributes:
        info: the account (robot) or token it belongs to.
        secret: the robot secret or the whole token string (left out of ``repr``).
    """

    info: InfoT
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class HashedPassword:
    """A password already checked and hashed (see :func:`prepare_password`).

    The transaction that stores it then spends no argon2 time holding the database.
    """

    value: str = field(repr=False)


async def prepare_password(password: str) -> HashedPassword:
    """Check ``password`` against the rules and hash it in a worker thread.

    Raises:
        Invalid: the password breaks the rules (see ``passwords.check_password``).
    """
    check_password(password)
    return HashedPassword(await hash_password_async(password))


def robot_name(short_name: str, org: str | None) -> str:
    """The full robot name: ``robot$<org>+<name>`` or ``robot$<name>`` (system robot)."""
    return f"robot${org}+{short_name}" if org else f"robot${short_name}"


def parse_token(value: str) -> tuple[TokenKind, str, str] | None:
    """Split a token string into (kind, id, random part); None if it is not one."""
    match = _TOKEN_RE.fullmatch(value)
    if match is None:
        return None
    return _PREFIXES[match.group(1)], match.group(2), match.group(3)


# -- users and robots -----------------------------------------------------------------------

def create_user(conn: Connection, name: str, password: str | HashedPassword | None, *,
                email: str | None = None, created_by: str | None = None) -> AccountInfo:
    """Create a user account.

    Args:
        conn: the transaction.
        name: the username (``[a-z0-9][a-z0-9._-]{0,63}``).
        password: the plaintext (checked and hashed here, ≈45 ms inside the transaction)
            or a :class:`HashedPassword` from :func:`prepare_password`; ``None`` = a user
            who signs in only with single sign-on (no password, ever).
        email: optional contact address.
        created_by: the creating account's name, for the record.

    Raises:
        Invalid: bad name, password or email.
        Conflict: the name is taken.
    """
    _check_name("username", name)
    _check_email(email)
    secret_hash = None if password is None else _password_hash(password)
    _insert_account(conn, name=name, kind="user", secret_hash=secret_hash, email=email or None,
                    created_by=created_by)
    return get_account(conn, name)


def get_account(conn: Connection, name: str) -> AccountInfo:
    """The user or robot called ``name``.

    Raises:
        NotFound: no such account.
    """
    row = conn.execute(_accounts().where(Account.name == name)).first()
    if row is None:
        raise NotFound(f"account {name} not found")
    return _account(row)


def list_accounts(conn: Connection, kind: Literal["user", "robot"] | None = None,
                  org: str | None = None) -> list[AccountInfo]:
    """Accounts by name, optionally only users or robots, or only one organization's robots."""
    query = _accounts().order_by(Account.name)
    if kind is not None:
        query = query.where(Account.kind == kind)
    if org is not None:
        query = query.where(Account.org == org)
    return [_account(row) for row in conn.execute(query)]


def update_user(conn: Connection, name: str, *, email: str | None = None,
                password: str | HashedPassword | None = None,
                disabled: bool | None = None) -> AccountInfo:
    """Change a user's email (``""`` clears it), password or disabled flag; ``None``
    leaves a field alone. Disabling a user revokes every token they hold (personal
    access, refresh and OIDC session tokens) in the same transaction, so enabling the
    account again brings none of them back. A new password also revokes the user's
    refresh tokens (``docker login`` sessions); personal access tokens stay valid.

    Raises:
        NotFound: no such user.
        Invalid: bad email or password.
    """
    _check_email(email)
    values: dict[str, Any] = {}
    if email is not None:
        values["email"] = email or None
    if password is not None:
        values["secret_hash"] = _password_hash(password)
    if disabled is not None:
        values["disabled"] = disabled
    account_id = _update_account(conn, name, "user", values)
    if disabled:
        revoke_all_tokens(conn, account_id)
    elif password is not None:
        conn.execute(update(AccessToken).where(
            AccessToken.account_id == account_id, AccessToken.kind == "refresh",
            AccessToken.revoked_at.is_(None)).values(revoked_at=utcnow()))
    return get_account(conn, name)


def revoke_all_tokens(conn: Connection, account_id: int) -> int:
    """Revoke every unrevoked token of the account (all kinds); returns how many."""
    result = conn.execute(update(AccessToken).where(
        AccessToken.account_id == account_id, AccessToken.revoked_at.is_(None))
        .values(revoked_at=utcnow()))
    return int(result.rowcount or 0)


def delete_account(conn: Connection, name: str) -> AccountInfo:
    """Delete a user or robot and its tokens; returns what was deleted.

    The caller also removes the account's policy subject in the same transaction.

    Raises:
        NotFound: no such account.
    """
    info = get_account(conn, name)
    conn.execute(delete(AccessToken).where(AccessToken.account_id == info.id))
    conn.execute(delete(Account).where(Account.id == info.id))
    return info


def create_robot(conn: Connection, short_name: str, org: str | None, *,
                 description: str | None = None, expires_at: dt.datetime | None = None,
                 created_by: str | None = None) -> NewSecret[AccountInfo]:
    """Create a robot account (``robot$<org>+<name>``, or ``robot$<name>`` without org)
    with a fresh secret, returned once.

    Raises:
        Invalid: bad name, past expiry, or the organization does not exist.
        Conflict: the robot exists.
    """
    _check_name("robot name", short_name)
    if org is not None and _org_id(conn, org) is None:
        raise Invalid(f"organization {org} does not exist")
    _check_expiry(expires_at)
    secret = new_secret()
    name = robot_name(short_name, org)
    _insert_account(conn, name=name, kind="robot", org=org, secret_hash=hash_secret(secret),
                    description=description, expires_at=expires_at, created_by=created_by)
    return NewSecret(get_account(conn, name), secret)


def update_robot(conn: Connection, full_name: str, *, description: str | None = None,
                 disabled: bool | None = None,
                 expires_at: dt.datetime | _Unset | None = UNSET) -> AccountInfo:
    """Change a robot's description (``""`` clears), disabled flag, or expiry (``None`` =
    never); arguments left out keep their value.

    Raises:
        NotFound: no such robot.
        Invalid: the expiry is in the past.
    """
    values: dict[str, Any] = {}
    if description is not None:
        values["description"] = description or None
    if disabled is not None:
        values["disabled"] = disabled
    if not isinstance(expires_at, _Unset):
        _check_expiry(expires_at)
        values["expires_at"] = expires_at
    _update_account(conn, full_name, "robot", values)
    return get_account(conn, full_name)


def regenerate_robot_secret(conn: Connection, full_name: str) -> NewSecret[AccountInfo]:
    """Replace a robot's secret (the old one stops working at once); returns the new one.

    Raises:
        NotFound: no such robot.
    """
    secret = new_secret()
    _update_account(conn, full_name, "robot", {"secret_hash": hash_secret(secret)})
    return NewSecret(get_account(conn, full_name), secret)


def count_users(conn: Connection) -> int:
    """The number of user accounts (robots not counted)."""
    return int(conn.execute(select(func.count()).select_from(Account)
                            .where(Account.kind == "user")).scalar_one())


def ensure_admin(conn: Connection, username: str, password: str | HashedPassword) -> bool:
    """Create the bootstrap user ``username`` when no user account exists yet.

    Safe when several replicas start at once: only one creates it. (Granting it the
    system administrator role is the caller's business, in the same transaction.)

    Returns:
        True if the account was created.

    Raises:
        Invalid: bad name or password.
    """
    if count_users(conn):
        return False
    try:
        with conn.begin_nested():
            create_user(conn, username, password, created_by="dtr")
    except Conflict:
        return False
    return True


# -- organizations and teams -----------------------------------------------------------------

def create_org(conn: Connection, name: str, *, description: str | None = None,
               created_by: str | None = None) -> OrgInfo:
    """Create an organization (the namespace ``name/…``).

    Raises:
        Invalid: bad name.
        Conflict: the organization exists.
    """
    _check_name("organization name", name)
    _insert(conn, Organization, f"organization {name} already exists", name=name,
            description=description, created_by=created_by, created_at=utcnow())
    return get_org(conn, name)


def get_org(conn: Connection, name: str) -> OrgInfo:
    """The organization ``name``.

    Raises:
        NotFound: no such organization.
    """
    row = conn.execute(_orgs().where(Organization.name == name)).first()
    if row is None:
        raise NotFound(f"organization {name} not found")
    return OrgInfo(**row._mapping)


def list_orgs(conn: Connection) -> list[OrgInfo]:
    """Every organization, by name."""
    return [OrgInfo(**row._mapping) for row in conn.execute(_orgs().order_by(Organization.name))]


def update_org(conn: Connection, name: str, *, description: str | None = None) -> OrgInfo:
    """Change an organization's description (``""`` clears; ``None`` keeps).

    Raises:
        NotFound: no such organization.
    """
    org = get_org(conn, name)
    if description is not None:
        conn.execute(update(Organization).where(Organization.id == org.id)
                     .values(description=description or None))
    return get_org(conn, name)


def delete_org(conn: Connection, name: str) -> list[str]:
    """Delete an organization with its teams and robots (and their tokens).

    Returns:
        The names of the robots deleted (the caller removes their policy subjects, and the
        organization's policy, in the same transaction).

    Raises:
        NotFound: no such organization.
    """
    org = get_org(conn, name)
    robots = list(conn.execute(select(Account.id, Account.name)
                               .where(Account.kind == "robot", Account.org == name)))
    ids = [r.id for r in robots]
    if ids:
        conn.execute(delete(AccessToken).where(AccessToken.account_id.in_(ids)))
        conn.execute(delete(Account).where(Account.id.in_(ids)))
    conn.execute(delete(Team).where(Team.org_id == org.id))
    conn.execute(delete(Organization).where(Organization.id == org.id))
    return sorted(r.name for r in robots)


def create_team(conn: Connection, org: str, name: str,
                description: str | None = None, idp_group: str | None = None) -> TeamInfo:
    """Create team ``name`` in ``org``; with ``idp_group`` its members are synced from
    that OpenID Provider group at each OIDC login.

    Raises:
        Invalid: bad name or group, or the organization does not exist.
        Conflict: the team exists.
    """
    _check_name("team name", name)
    group = _idp_group(idp_group)
    org_id = _org_id(conn, org)
    if org_id is None:
        raise Invalid(f"organization {org} does not exist")
    _insert(conn, Team, f"team {org}/{name} already exists", org_id=org_id, name=name,
            description=description, idp_group=group, created_at=utcnow())
    return get_team(conn, org, name)


def list_teams(conn: Connection, org: str) -> list[TeamInfo]:
    """The teams of ``org``, by name.

    Raises:
        NotFound: no such organization.
    """
    get_org(conn, org)
    return [TeamInfo(**row._mapping)
            for row in conn.execute(_teams().where(Organization.name == org).order_by(Team.name))]


def get_team(conn: Connection, org: str, name: str) -> TeamInfo:
    """Team ``org/name``.

    Raises:
        NotFound: no such organization or team.
    """
    row = conn.execute(_teams().where(Organization.name == org, Team.name == name)).first()
    if row is None:
        get_org(conn, org)
        raise NotFound(f"team {org}/{name} not found")
    return TeamInfo(**row._mapping)


def update_team(conn: Connection, org: str, name: str, *,
                description: str | None = None, idp_group: str | None = None) -> TeamInfo:
    """Change a team's description or synced OpenID Provider group (``""`` clears;
    ``None`` keeps). Members stay as they are until the next OIDC login of each.

    Raises:
        NotFound: no such organization or team.
        Invalid: a bad group name.
    """
    team = get_team(conn, org, name)
    values: dict[str, Any] = {}
    if description is not None:
        values["description"] = description or None
    if idp_group is not None:
        values["idp_group"] = _idp_group(idp_group)
    if values:
        conn.execute(update(Team).where(Team.id == team.id).values(**values))
    return get_team(conn, org, name)


def delete_team(conn: Connection, org: str, name: str) -> TeamInfo:
    """Delete team ``org/name``; returns it (the caller removes its members and grants).

    Raises:
        NotFound: no such organization or team.
    """
    team = get_team(conn, org, name)
    conn.execute(delete(Team).where(Team.id == team.id))
    return team


# -- personal access and refresh tokens --------------------------------------------------------

def create_token(conn: Connection, account_name: str, name: str, *, kind: TokenKind = "pat",
                 scopes: Iterable[str] | None = None, expires_at: dt.datetime | None = None,
                 max_days: int | None = None) -> NewSecret[TokenInfo]:
    """Create a personal access token or OIDC session token (users only) or a refresh
    token (any account).

    The token string is returned once; only SHA-256 of its random part is stored. A
    refresh token issued to a caller that logged in with a restricted personal access
    token must carry the same ``scopes``, or the refresh would widen its rights.

    Args:
        conn: the transaction.
        account_name: the owner.
        name: a label for the owner (1-100 characters).
        kind: ``pat``, ``refresh`` or ``session``.
        scopes: restrictions ``repository:<glob>:<actions>`` (``None`` = the account's
            full rights).
        expires_at: expiry (aware datetime in the future); ``None`` = never, or
            ``max_days`` from now when that is set.
        max_days: the longest lifetime allowed (``auth.token_max_days``).

    Raises:
        NotFound: no such account.
        Invalid: bad kind, name, scopes or expiry; a personal access token for a robot.
    """
    if kind not in _PREFIX_OF:
        raise Invalid("token kind: use pat, refresh or session")
    label = name.strip()
    if not 0 < len(label) <= MAX_TOKEN_NAME or not label.isprintable():
        raise Invalid(f"token name: use 1-{MAX_TOKEN_NAME} printable characters")
    restrictions = None if scopes is None else normalize_restrictions(scopes)
    now = utcnow()
    if max_days is not None:
        longest = now + dt.timedelta(days=max_days)
        if expires_at is None:
            expires_at = longest
        elif expires_at > longest:
            raise Invalid(f"expires_at: at most {max_days} days from now")
    _check_expiry(expires_at)
    account = get_account(conn, account_name)
    if kind != "refresh" and account.kind != "user":
        raise Invalid("personal access tokens are for users; robots have their own secret")
    if kind != "pat":  # one per `docker login` or OIDC login: drop the expired ones
        conn.execute(delete(AccessToken).where(
            AccessToken.account_id == account.id, AccessToken.kind == kind,
            AccessToken.expires_at < now))
    token_id = "".join(secrets.choice(_TOKEN_ID_ALPHABET) for _ in range(TOKEN_ID_LENGTH))
    random_part = new_secret()
    conn.execute(insert(AccessToken).values(
        id=token_id, account_id=account.id, kind=kind, name=label,
        secret_hash=hash_secret(random_part),
        scopes=None if restrictions is None else json.dumps(list(restrictions)),
        expires_at=expires_at, created_at=now))
    return NewSecret(_get_token(conn, account_name, token_id),
                     f"dtr_{_PREFIX_OF[kind]}_{token_id}_{random_part}")


def list_tokens(conn: Connection, account_name: str, *,
                kind: TokenKind | None = None) -> list[TokenInfo]:
    """The tokens of an account (revoked and expired included), oldest first.

    Raises:
        NotFound: no such account.
    """
    account = get_account(conn, account_name)
    query = _tokens().where(AccessToken.account_id == account.id)
    if kind is not None:
        query = query.where(AccessToken.kind == kind)
    return [_token(row) for row in conn.execute(query.order_by(AccessToken.created_at,
                                                               AccessToken.id))]


def revoke_token(conn: Connection, account_name: str, token_id: str) -> TokenInfo:
    """Revoke one of the account's tokens; it stops working at once (idempotent).

    Raises:
        NotFound: no such account, or the token is not one of its tokens.
    """
    token = _get_token(conn, account_name, token_id)
    if token.revoked_at is None:
        conn.execute(update(AccessToken).where(AccessToken.id == token_id)
                     .values(revoked_at=utcnow()))
    return _get_token(conn, account_name, token_id)


# -- async service --------------------------------------------------------------------------------

class AccountService:
    """The functions above, each as one transaction on ``db``; passwords are hashed in a
    worker thread before the transaction starts.

    Args:
        db: the metadata database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        return await self.db.run(fn, write=False)

    async def _write(self, fn: Callable[[Connection], T]) -> T:
        return await self.db.run(fn, write=True)

    async def create_user(self, name: str, password: str, *, email: str | None = None,
                          created_by: str | None = None) -> AccountInfo:
        """See :func:`create_user`."""
        _check_name("username", name)
        hashed = await prepare_password(password)
        return await self._write(lambda c: create_user(c, name, hashed, email=email,
                                                       created_by=created_by))

    async def get_account(self, name: str) -> AccountInfo:
        """See :func:`get_account`."""
        return await self._read(lambda c: get_account(c, name))

    async def list_accounts(self, kind: Literal["user", "robot"] | None = None,
                            org: str | None = None) -> list[AccountInfo]:
        """See :func:`list_accounts`."""
        return await self._read(lambda c: list_accounts(c, kind, org))

    async def update_user(self, name: str, *, email: str | None = None,
                          password: str | None = None,
                          disabled: bool | None = None) -> AccountInfo:
        """See :func:`update_user`."""
        hashed = None if password is None else await prepare_password(password)
        return await self._write(lambda c: update_user(c, name, email=email, password=hashed,
                                                       disabled=disabled))

    async def delete_account(self, name: str) -> AccountInfo:
        """See :func:`delete_account`."""
        return await self._write(lambda c: delete_account(c, name))

    async def create_robot(self, short_name: str, org: str | None, *,
                           description: str | None = None,
                           expires_at: dt.datetime | None = None,
                           created_by: str | None = None) -> NewSecret[AccountInfo]:
        """See :func:`create_robot`."""
        return await self._write(lambda c: create_robot(
            c, short_name, org, description=description, expires_at=expires_at,
            created_by=created_by))

    async def update_robot(self, full_name: str, *, description: str | None = None,
                           disabled: bool | None = None,
                           expires_at: dt.datetime | _Unset | None = UNSET) -> AccountInfo:
        """See :func:`update_robot`."""
        return await self._write(lambda c: update_robot(
            c, full_name, description=description, disabled=disabled, expires_at=expires_at))

    async def regenerate_robot_secret(self, full_name: str) -> NewSecret[AccountInfo]:
        """See :func:`regenerate_robot_secret`."""
        return await self._write(lambda c: regenerate_robot_secret(c, full_name))

    async def count_users(self) -> int:
        """See :func:`count_users`."""
        return await self._read(count_users)

    async def ensure_admin(self, username: str, password: str) -> bool:
        """See :func:`ensure_admin` (hashes only when no user exists yet)."""
        if await self.count_users():
            return False
        hashed = await prepare_password(password)
        return await self._write(lambda c: ensure_admin(c, username, hashed))

    async def create_org(self, name: str, *, description: str | None = None,
                         created_by: str | None = None) -> OrgInfo:
        """See :func:`create_org`."""
        return await self._write(lambda c: create_org(c, name, description=description,
                                                      created_by=created_by))

    async def get_org(self, name: str) -> OrgInfo:
        """See :func:`get_org`."""
        return await self._read(lambda c: get_org(c, name))

    async def list_orgs(self) -> list[OrgInfo]:
        """See :func:`list_orgs`."""
        return await self._read(list_orgs)

    async def update_org(self, name: str, *, description: str | None = None) -> OrgInfo:
        """See :func:`update_org`."""
        return await self._write(lambda c: update_org(c, name, description=description))

    async def delete_org(self, name: str) -> list[str]:
        """See :func:`delete_org`."""
        return await self._write(lambda c: delete_org(c, name))

    async def create_team(self, org: str, name: str,
                          description: str | None = None) -> TeamInfo:
        """See :func:`create_team`."""
        return await self._write(lambda c: create_team(c, org, name, description))

    async def list_teams(self, org: str) -> list[TeamInfo]:
        """See :func:`list_teams`."""
        return await self._read(lambda c: list_teams(c, org))

    async def get_team(self, org: str, name: str) -> TeamInfo:
        """See :func:`get_team`."""
        return await self._read(lambda c: get_team(c, org, name))

    async def update_team(self, org: str, name: str, *, description: str | None = None,
                          idp_group: str | None = None) -> TeamInfo:
        """See :func:`update_team`."""
        return await self._write(lambda c: update_team(c, org, name, description=description,
                                                       idp_group=idp_group))

    async def delete_team(self, org: str, name: str) -> TeamInfo:
        """See :func:`delete_team`."""
        return await self._write(lambda c: delete_team(c, org, name))

    async def create_token(self, account_name: str, name: str, *, kind: TokenKind = "pat",
                           scopes: Iterable[str] | None = None,
                           expires_at: dt.datetime | None = None,
                           max_days: int | None = None) -> NewSecret[TokenInfo]:
        """See :func:`create_token`."""
        scope_list = None if scopes is None else list(scopes)
        return await self._write(lambda c: create_token(
            c, account_name, name, kind=kind, scopes=scope_list, expires_at=expires_at,
            max_days=max_days))

    async def list_tokens(self, account_name: str, *,
                          kind: TokenKind | None = None) -> list[TokenInfo]:
        """See :func:`list_tokens`."""
        return await self._read(lambda c: list_tokens(c, account_name, kind=kind))

    async def revoke_token(self, account_name: str, token_id: str) -> TokenInfo:
        """See :func:`revoke_token`."""
        return await self._write(lambda c: revoke_token(c, account_name, token_id))


# -- helpers --------------------------------------------------------------------------------------

def _check_name(what: str, name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise Invalid(f"{what} {name!r}: {NAME_RULE}")


def _idp_group(group: str | None) -> str | None:
    """A team's provider group as stored (``None``/``""`` = not synced).

    Raises:
        Invalid: too long or not printable.
    """
    if not group:
        return None
    if len(group) > MAX_IDP_GROUP or not group.isprintable() or group != group.strip():
        raise Invalid(f"idp_group {group!r}: use 1-{MAX_IDP_GROUP} printable characters "
                      "without surrounding spaces")
    return group


def _check_email(email: str | None) -> None:
    if email and (len(email) > MAX_EMAIL or "@" not in email.strip("@")
                  or any(ch.isspace() for ch in email)):
        raise Invalid(f"email {email!r}: not an email address")


def _check_expiry(expires_at: dt.datetime | None) -> None:
    if expires_at is None:
        return
    if expires_at.tzinfo is None:
        raise Invalid("expires_at: give a time zone")
    if expires_at <= utcnow():
        raise Invalid("expires_at: must be in the future")


def _password_hash(password: str | HashedPassword) -> str:
    if isinstance(password, HashedPassword):
        return password.value
    check_password(password)
    return hash_password(password)


def _insert(conn: Connection, table: type, conflict: str, **values: Any) -> None:
    # A savepoint keeps the caller's transaction usable on PostgreSQL after a duplicate.
    try:
        with conn.begin_nested():
            conn.execute(insert(table).values(**values))
    except IntegrityError:
        raise Conflict(conflict) from None


def _insert_account(conn: Connection, *, name: str, kind: str, **values: Any) -> None:
    exists = conn.execute(select(Account.id).where(Account.name == name)).first()
    if exists is not None:
        raise Conflict(f"account {name} already exists")
    _insert(conn, Account, f"account {name} already exists", name=name, kind=kind,
            disabled=False, created_at=utcnow(), **values)


def _update_account(conn: Connection, name: str, kind: str, values: dict[str, Any]) -> int:
    row = conn.execute(select(Account.id).where(Account.name == name,
                                                Account.kind == kind)).first()
    if row is None:
        raise NotFound(f"{kind} {name} not found")
    if values:
        conn.execute(update(Account).where(Account.id == row.id).values(**values))
    return int(row.id)


def _org_id(conn: Connection, name: str) -> int | None:
    value = conn.execute(select(Organization.id).where(Organization.name == name)).scalar()
    return None if value is None else int(value)


def _accounts() -> Any:
    return select(Account.id, Account.name, Account.kind, Account.org, Account.email,
                  Account.description, Account.disabled, Account.expires_at,
                  Account.created_by, Account.created_at, Account.last_login_at)


def _account(row: Row[Any]) -> AccountInfo:
    return AccountInfo(**row._mapping)


def _orgs() -> Any:
    return select(Organization.id, Organization.name, Organization.description,
                  Organization.created_by, Organization.created_at)


def _teams() -> Any:
    return (select(Team.id, Organization.name.label("org"), Team.name, Team.description,
                   Team.created_at, Team.idp_group)
            .join(Organization, Organization.id == Team.org_id))


def _tokens() -> Any:
    return (select(AccessToken.id, Account.name.label("account"), AccessToken.kind,
                   AccessToken.name, AccessToken.scopes, AccessToken.expires_at,
                   AccessToken.revoked_at, AccessToken.last_used_at, AccessToken.created_at)
            .join(Account, Account.id == AccessToken.account_id))


def _token(row: Row[Any]) -> TokenInfo:
    values = dict(row._mapping)
    values["scopes"] = decode_scopes(values["scopes"])
    return TokenInfo(**values)


def decode_scopes(stored: str | None) -> tuple[str, ...] | None:
    """The restrictions stored in ``access_token.scopes`` (``None`` = unrestricted)."""
    return None if stored is None else tuple(json.loads(stored))


def _get_token(conn: Connection, account_name: str, token_id: str) -> TokenInfo:
    row = conn.execute(_tokens().where(Account.name == account_name,
                                       AccessToken.id == token_id)).first()
    if row is None:
        get_account(conn, account_name)
        raise NotFound(f"token {token_id} not found")
    return _token(row)
