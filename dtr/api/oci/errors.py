"""The one OCI error table: code → status and message, domain error → code, and the
renderer of the ``{"errors": [...]}`` envelope. ``docs/errors.md`` is generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from dtr import errors as e


@dataclass(frozen=True, slots=True)
class OciCode:
    """One registered OCI error code."""

    code: str
    status: int
    message: str
    description: str


CODES: dict[str, OciCode] = {c.code: c for c in [
    OciCode("BLOB_UNKNOWN", 404, "blob unknown to registry",
            "The blob is not linked in the repository."),
    OciCode("BLOB_UPLOAD_INVALID", 400, "blob upload invalid",
            "The upload request is malformed; 416 when a chunk is out of order."),
    OciCode("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry",
            "The upload session is unknown, finished, cancelled or expired."),
    OciCode("DIGEST_INVALID", 400, "provided digest did not match uploaded content",
            "The digest is malformed, unsupported, or does not match the content."),
    OciCode("MANIFEST_BLOB_UNKNOWN", 400, "manifest references a manifest or blob unknown "
            "to registry", "A referenced blob or child manifest is not in the repository."),
    OciCode("MANIFEST_INVALID", 400, "manifest invalid",
            "The manifest cannot be parsed or breaks its schema (schema1 is refused)."),
    OciCode("MANIFEST_UNKNOWN", 404, "manifest unknown to registry",
            "No manifest or tag with that reference."),
    OciCode("NAME_INVALID", 400, "invalid repository name",
            "The repository name breaks the grammar or the 255-character limit."),
    OciCode("NAME_UNKNOWN", 404, "repository name not known to registry",
            "The repository does not exist."),
    OciCode("SIZE_INVALID", 400, "provided length did not match content length",
            "The body length does not match Content-Length or Content-Range."),
    OciCode("UNAUTHORIZED", 401, "authentication required",
            "Credentials are missing or invalid; see WWW-Authenticate."),
    OciCode("DENIED", 403, "requested access to the resource is denied",
            "Authenticated but not allowed (policy or signing gate)."),
    OciCode("UNSUPPORTED", 405, "the operation is unsupported",
            "The operation is disabled or unknown (400 for disabled deletes)."),
    OciCode("TOOMANYREQUESTS", 429, "too many requests",
            "Rate limited; see Retry-After."),
]}

#: Domain error class → (code, status override or None). Most specific class first.
MAPPING: list[tuple[type[e.DtrError], str, int | None]] = [
    (e.BlobUnknown, "BLOB_UNKNOWN", None),
    (e.ManifestUnknown, "MANIFEST_UNKNOWN", None),
    (e.NameUnknown, "NAME_UNKNOWN", None),
    (e.UploadUnknown, "BLOB_UPLOAD_UNKNOWN", None),
    (e.NameInvalid, "NAME_INVALID", None),
    (e.TagInvalid, "MANIFEST_INVALID", None),
    (e.DigestInvalid, "DIGEST_INVALID", None),
    (e.SizeInvalid, "SIZE_INVALID", None),
    (e.ManifestBlobUnknown, "MANIFEST_BLOB_UNKNOWN", None),
    (e.ManifestInvalid, "MANIFEST_INVALID", None),
    (e.RangeInvalid, "BLOB_UPLOAD_INVALID", 416),
    (e.UploadInvalid, "BLOB_UPLOAD_INVALID", None),
    (e.PaginationInvalid, "UNSUPPORTED", 400),
    (e.ManifestTooLarge, "MANIFEST_INVALID", 413),
    (e.BlobTooLarge, "SIZE_INVALID", 413),
    (e.TooManyTags, "UNSUPPORTED", 414),
    (e.Unauthorized, "UNAUTHORIZED", None),
    (e.Denied, "DENIED", None),
    (e.RateLimited, "TOOMANYREQUESTS", None),
    (e.Unsupported, "UNSUPPORTED", 400),
]


def classify(exc: e.DtrError) -> tuple[int, str | None]:
    """Status and OCI code for a domain error (code None: no OCI envelope, e.g. 503)."""
    if isinstance(exc, e.Unavailable):
        return 503, None
    for cls, code, status in MAPPING:
        if isinstance(exc, cls):
            return status or CODES[code].status, code
    return 500, None


def envelope(code: str, message: str, detail: object = None) -> bytes:
    """The OCI error body for one error."""
    item: dict[str, object] = {"code": code, "message": message}
    if detail is not None:
        item["detail"] = detail
    return msgspec.json.encode({"errors": [item]})


def render_markdown() -> str:
    """The error table as Markdown, for ``docs/errors.md``."""
    lines = ["| code | status | meaning |", "|---|---|---|"]
    lines += [f"| `{c.code}` | {c.status} | {c.description} |" for c in CODES.values()]
    lines += ["", "| domain error | code | status |", "|---|---|---|"]
    for cls, code, status in MAPPING:
        lines.append(f"| `{cls.__name__}` | `{code}` | {status or CODES[code].status} |")
    lines.append("| `Unavailable` | — (plain-text body, `Retry-After`) | 503 |")
    return "\n".join(lines) + "\n"
