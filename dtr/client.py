"""A small synchronous client of dtr's admin API (``/api/v1``), used by the CLI: a base URL
and credentials (Bearer personal access token or Basic), JSON in and out, problem details
raised as ``ApiError``. Imports httpx only (never litestar or the server layers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import httpx

API_PREFIX = "/api/v1"


class ApiError(Exception):
    """The server refused a request (an RFC 9457 problem) or could not be reached.

    Attributes:
        status: HTTP status (0 when the server could not be reached).
        title: the problem title.
        detail: the problem detail, a sentence for humans.
        problem: the whole problem body (may hold ``errors`` with field details).
    """

    def __init__(self, status: int, title: str, detail: str,
                 problem: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}" if status else f"{title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.problem = problem or {}


class AdminClient:
    """Calls ``<url>/api/v1/...``.

    Args:
        url: the registry's base URL (``https://registry.example``).
        token: a personal access token, sent as ``Authorization: Bearer``.
        basic: ``(username, password)`` sent as Basic credentials instead of a token.
        timeout: seconds per request.
        transport: an httpx transport (tests).
    """

    def __init__(self, url: str, *, token: str | None = None,
                 basic: tuple[str, str] | None = None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Accept": "application/json, application/problem+json",
                   "User-Agent": "dtr-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url + API_PREFIX, headers=headers,
                                  auth=basic, timeout=timeout, transport=transport)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None) -> Any:
        """Send one request; return the decoded JSON body (None for 204).

        Raises:
            ApiError: a 4xx/5xx answer (its problem detail) or a transport failure.
        """
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, json=json, params=clean or None)
        except httpx.HTTPError as exc:
            raise ApiError(0, "cannot reach the server", f"{self.url}: {exc}") from None
        if response.status_code >= 400:
            raise _problem(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, "unexpected answer",
                           f"{method} {path} did not return JSON") from None

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` with query ``params`` (None values are left out)."""
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        """POST a JSON ``body``."""
        return self.request("POST", path, json=body)

    def patch(self, path: str, body: Any) -> Any:
        """PATCH with a JSON ``body``."""
        return self.request("PATCH", path, json=body)

    def put(self, path: str, body: Any = None) -> Any:
        """PUT (an optional JSON ``body``)."""
        return self.request("PUT", path, json=body)

    def delete(self, path: str) -> Any:
        """DELETE ``path``."""
        return self.request("DELETE", path)

    @contextlib.contextmanager
    def stream(self, path: str, params: dict[str, Any] | None = None,
               ) -> Iterator[httpx.Response]:
        """GET ``path`` without reading the body: iterate ``response.iter_bytes()``.

        Raises:
            ApiError: a 4xx/5xx answer (its problem detail) or a transport failure.
        """
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            with self._http.stream("GET", path, params=clean or None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _problem(response)
                yield response
        except httpx.HTTPError as exc:
            raise ApiError(0, "cannot reach the server", f"{self.url}: {exc}") from None


def _problem(response: httpx.Response) -> ApiError:
    """The ``ApiError`` of a failed response (problem+json, or whatever the body says)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "status" in body:
        return ApiError(int(body.get("status") or response.status_code),
                        str(body.get("title") or response.reason_phrase),
                        str(body.get("detail") or ""), body)
    text = response.text.strip()[:200]
    return ApiError(response.status_code, response.reason_phrase, text or "(no detail)")
