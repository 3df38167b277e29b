"""Who is calling: the ``Principal`` every layer after authentication works with.

Owns the identity value type and its policy subject spelling (``user:<name>``,
``robot:<name>``, ``anonymous``). Imports nothing from dtr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PrincipalKind = Literal["user", "robot", "anonymous"]
AuthMethod = Literal["password", "pat", "robot_secret", "refresh_token", "bearer", "oidc",
                     "federation", "anonymous"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller (or the anonymous one).

    Attributes:
        kind: ``user``, ``robot`` or ``anonymous``.
        name: the account name (``alice``, ``robot$acme+ci``); ``""`` for anonymous.
        account_id: the ``account`` row id; None for anonymous.
        method: how the caller proved who they are (recorded by audit).
        token_id: the personal access / refresh token id or JWT ``jti`` used, if any
            (``federation``: the exchanged ID token's ``jti``, or its SHA-256).
        scopes: restrictions carried by a personal access token (``None`` = the account's
            full rights), as Docker scope strings ``repository:<glob>:<actions>``.
    """

    kind: PrincipalKind
    name: str
    account_id: int | None = None
    method: AuthMethod = "anonymous"
    token_id: str | None = None
    scopes: tuple[str, ...] | None = None

    @property
    def subject(self) -> str:
        """The Casbin subject: ``user:<name>``, ``robot:<name>`` or ``anonymous``."""
        return "anonymous" if self.kind == "anonymous" else f"{self.kind}:{self.name}"

    @property
    def is_anonymous(self) -> bool:
        """True for the caller without credentials."""
        return self.kind == "anonymous"


ANONYMOUS = Principal("anonymous", "")


def subject_principal(subject: str) -> Principal:
    """The principal a policy subject names (``user:alice`` → a user named alice).

    Raises:
        ValueError: the subject is not a user, robot or ``anonymous``.
    """
    if subject == "anonymous":
        return ANONYMOUS
    kind, _, name = subject.partition(":")
    if kind not in ("user", "robot") or not name:
        raise ValueError(f"not a user or robot subject: {subject!r}")
    return Principal(kind, name)  # type: ignore[arg-type]
