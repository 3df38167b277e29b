"""``/api/v1/tokens``: the caller's personal access tokens (users only). The secret is
returned once, on create; revoking takes effect on the next request.

Permissions: any signed-in user, for their own tokens; minting needs a password or an
unrestricted personal access token.
"""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody

from dtr.api.admin import guards as g
from dtr.api.admin import schemas as s
from dtr.api.admin.deps import Admin, Me
from dtr.api.problems import problem_responses as errors
from dtr.auth.accounts import NewSecret, TokenInfo


def token_out(info: TokenInfo) -> s.Token:
    """The response body of a token (never its secret)."""
    return s.convert(info, s.Token)


def created_out(made: NewSecret[TokenInfo]) -> s.TokenCreated:
    """The response body of a new token, with its secret (this once)."""
    return s.convert(made.info, s.TokenCreated, secret=made.secret)


class TokenController(Controller):
    """The caller's own tokens."""

    path = "/tokens"
    tags = ("tokens",)
    guards = (g.user_only,)

    @get("/", summary="List my tokens", responses=errors())
    async def list_tokens(self, admin: Admin, caller: Me) -> list[s.Token]:
        """The caller's tokens, revoked and expired ones included."""
        return [token_out(t) for t in await admin.list_tokens(caller)]

    @post("/", summary="Create a personal access token", responses=errors(422))
    async def create_token(self, admin: Admin, caller: Me,
                           data: JSONBody[s.TokenCreate]) -> s.TokenCreated:
        """Mint a token (default 90 days, at most ``auth.token_max_days``), optionally
        restricted by ``repository:<glob>:<actions>`` scopes; the secret is shown once.
        """
        return created_out(await admin.create_token(caller, data))

    @delete("/{token_id:str}", summary="Revoke a token", responses=errors(404))
    async def revoke_token(self, admin: Admin, caller: Me, token_id: FromPath[str]) -> None:
        """Revoke one of the caller's tokens; it stops working at once."""
        await admin.revoke_token(caller, token_id)
