"""HTTP header helpers shared by the tests that talk to a dtr with authentication on."""

from __future__ import annotations

import base64


def basic(user: str, secret: str) -> dict[str, str]:
    """An ``Authorization: Basic`` header for ``user`` and ``secret``."""
    raw = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def bearer(token: str) -> dict[str, str]:
    """An ``Authorization: Bearer`` header."""
    return {"Authorization": f"Bearer {token}"}
