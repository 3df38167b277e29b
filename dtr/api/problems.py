"""The admin API's one error table: domain error → RFC 9457 problem details
(``application/problem+json`` with type, title, status, detail), and the exception
handlers that render it. ``/v2`` keeps its OCI envelope (``api/oci/errors.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.responses import create_exception_response
from litestar.openapi import ResponseSpec
from litestar.types import ExceptionHandlersMap

from dtr import errors as e

log = logging.getLogger("dtr.api")
MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:dtr:problem:"
BASIC_CHALLENGE = 'Basic realm="dtr"'
UNAVAILABLE_RETRY_AFTER = 5


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem type of the admin API."""

    slug: str
    status: int
    title: str
    description: str

    @property
    def type(self) -> str:
        """The problem ``type`` URI (``urn:dtr:problem:<slug>``)."""
        return TYPE_PREFIX + self.slug


BAD_REQUEST = Problem("bad-request", 400, "Bad Request",
                      "The body, path or query could not be parsed into the expected fields.")
INTERNAL = Problem("internal", 500, "Internal Server Error",
                   "An unexpected error; the server log has the details.")

#: Domain error class → problem. Most specific class first; the first ``isinstance`` wins.
TABLE: list[tuple[type[e.DtrError], Problem]] = [
    (e.NotFound, Problem("not-found", 404, "Not Found",
                         "The user, organization, team, robot, role, grant or token named "
                         "does not exist.")),
    (e.Invalid, Problem("invalid", 422, "Unprocessable Content",
                        "The request is well-formed but a value breaks a rule (name grammar, "
                        "password length, unknown role or action, scope syntax).")),
    (e.Conflict, Problem("conflict", 409, "Conflict",
                         "The object already exists, is built in, or is still in use.")),
    (e.Unauthorized, Problem("unauthorized", 401, "Unauthorized",
                             "Credentials are missing, wrong, expired, disabled or revoked; "
                             "see WWW-Authenticate.")),
    (e.Denied, Problem("denied", 403, "Forbidden",
                       "The caller is signed in but the policy does not allow this.")),
    (e.RateLimited, Problem("rate-limited", 429, "Too Many Requests",
                            "Too many failed logins; retry after Retry-After seconds.")),
    (e.Unavailable, Problem("unavailable", 503, "Service Unavailable",
                            "The database or another dependency is down; retry after "
                            "Retry-After seconds.")),
    (e.TooLarge, Problem("too-large", 413, "Content Too Large",
                         "The request body is larger than the limit.")),
    (e.Unsupported, Problem("unsupported", 400, "Unsupported",
                            "The operation is disabled or not implemented.")),
    (e.DtrError, Problem("error", 400, "Bad Request", "Any other refused request.")),
]


#: Status → the first problem of the table with that status (for Litestar's own errors).
_BY_STATUS: dict[int, Problem] = {p.status: p for _, p in reversed(TABLE)}


class ProblemDetails(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem (the body of every admin API error)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None
    """Field-level details of an unparseable request (400)."""
    context: dict[str, Any] | None = None
    """The values the error is about (which org, role, subject, …)."""


COMMON_STATUSES = (400, 401, 403, 429, 503)
"""Errors any admin API operation may answer."""


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI response specs for the common errors plus ``statuses``."""
    described = {p.status: p.description for _, p in reversed(TABLE)}
    described[400] = BAD_REQUEST.description
    return {status: ResponseSpec(data_container=ProblemDetails, media_type=MEDIA_TYPE,
                                 generate_examples=False,
                                 description=described.get(status, _reason(status)))
            for status in sorted({*COMMON_STATUSES, *statuses})}


def classify(exc: e.DtrError) -> Problem:
    """The problem a domain error renders as."""
    for cls, problem in TABLE:
        if isinstance(exc, cls):
            return problem
    return INTERNAL  # pragma: no cover - DtrError is the last row


def headers_for(exc: e.DtrError) -> dict[str, str]:
    """Extra response headers: the Basic challenge on 401, ``Retry-After`` on 429/503."""
    if isinstance(exc, e.Unauthorized):
        return {"WWW-Authenticate": BASIC_CHALLENGE}
    if isinstance(exc, e.RateLimited):
        return {"Retry-After": str(max(1, int(exc.retry_after)))}
    if isinstance(exc, e.Unavailable):
        return {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)}
    return {}


def problem_response(problem: Problem, detail: str, headers: dict[str, str] | None = None,
                     **extra: Any) -> Response[bytes]:
    """A ``problem+json`` response (``extra`` members are added to the body)."""
    body: dict[str, Any] = {"type": problem.type, "title": problem.title,
                            "status": problem.status, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    return Response(msgspec.json.encode(body), status_code=problem.status,
                    media_type=MEDIA_TYPE, headers=headers or {})


def _domain(request: Request[Any, Any, Any], exc: e.DtrError) -> Response[bytes]:
    problem = classify(exc)
    if problem.status == 503:
        log.warning("admin API %s %s: %s", request.method, request.url.path, exc.message)
    return problem_response(problem, exc.message, headers_for(exc), context=exc.detail)


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (unparseable body, unknown method, guard refusals)."""
    status = exc.status_code
    if isinstance(exc, ValidationException) or status == 400:
        return problem_response(BAD_REQUEST, exc.detail or BAD_REQUEST.title,
                                errors=exc.extra or None)
    problem = _BY_STATUS.get(status) or Problem(f"http-{status}", status, _reason(status),
                                                exc.detail)
    headers = dict(exc.headers or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", BASIC_CHALLENGE)
    return problem_response(problem, exc.detail or problem.title, headers)


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("admin API %s %s failed", request.method, request.url.path, exc_info=exc)
    return problem_response(INTERNAL, "the server failed to handle this request")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def exception_handlers() -> ExceptionHandlersMap:
    """The handlers to put on the admin router (domain errors, Litestar errors, the rest)."""
    return {e.DtrError: _domain, HTTPException: _http, Exception: _internal}


def app_exception_handlers(prefix: str = "/api/") -> ExceptionHandlersMap:
    """App-level handlers for errors raised before any admin route matched (unknown path,
    wrong method, a malformed typed path parameter): problem details under ``prefix``,
    Litestar's default body elsewhere.
    """

    def handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        if request.url.path.startswith(prefix):
            return _http(request, exc)
        return create_exception_response(request, exc)

    return {NotFoundException: handler, MethodNotAllowedException: handler}


def render_markdown() -> str:
    """The problem table as Markdown (for ``docs/``)."""
    lines = ["| domain error | status | type | title |", "|---|---|---|---|"]
    lines += [f"| `{cls.__name__}` | {p.status} | `{p.type}` | {p.title} |" for cls, p in TABLE]
    lines.append(f"| (unparseable request) | 400 | `{BAD_REQUEST.type}` | {BAD_REQUEST.title} |")
    return "\n".join(lines) + "\n"
