"""The domain error tree. Domain code raises these; it never knows HTTP.

``api/oci/errors.py`` maps each class (and its ``code``) to an OCI error code and status;
the admin API maps them to problem details. Nothing here imports another dtr module.

    DtrError
    ├── NotFound            ── BlobUnknown, ManifestUnknown, NameUnknown, UploadUnknown
    ├── Invalid             ── NameInvalid, TagInvalid, DigestInvalid, SizeInvalid,
    │                          ManifestInvalid, ManifestBlobUnknown, UploadInvalid,
    │                          RangeInvalid, PaginationInvalid
    ├── TooLarge            ── ManifestTooLarge, BlobTooLarge
    ├── TooManyTags
    ├── Conflict            (the object already exists, or is still in use)
    ├── Unauthorized        ── InvalidToken (missing, wrong, expired or revoked credentials)
    ├── Denied
    ├── RateLimited         (too many failed logins; carries retry_after seconds)
    ├── Unsupported
    └── Unavailable         (a dependency — database, object store — is down)
"""

from __future__ import annotations

from typing import Any


class DtrError(Exception):
    """Base of every error dtr raises on purpose.

    Args:
        message: a sentence for the client; never contains secrets.
        detail: optional JSON-serialisable detail for the client.
    """

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class NotFound(DtrError):
    """Something the request names does not exist."""


class BlobUnknown(NotFound):
    """The blob is not known to the repository."""


class ManifestUnknown(NotFound):
    """The manifest or tag is not known to the repository."""


class NameUnknown(NotFound):
    """The repository is not known."""


class UploadUnknown(NotFound):
    """The upload session is unknown, finished, cancelled or expired."""


class Invalid(DtrError):
    """The request is malformed."""


class NameInvalid(Invalid):
    """The repository name breaks the OCI name grammar or length limit."""


class TagInvalid(Invalid):
    """The tag breaks the OCI tag grammar."""


class DigestInvalid(Invalid):
    """The digest is malformed, unsupported, or does not match the content."""


class SizeInvalid(Invalid):
    """The content length does not match what the client announced."""


class ManifestInvalid(Invalid):
    """The manifest cannot be parsed or breaks its schema."""


class ManifestBlobUnknown(Invalid):
    """The manifest references a blob or manifest the repository does not have."""


class UploadInvalid(Invalid):
    """The upload request is malformed or the upload is in a bad state."""


class RangeInvalid(UploadInvalid):
    """A chunk does not start where the upload ends (answered 416)."""


class PaginationInvalid(Invalid):
    """A pagination parameter is malformed."""


class TooLarge(DtrError):
    """The request body is larger than the configured limit."""


class ManifestTooLarge(TooLarge):
    """The manifest body exceeds the manifest size limit."""


class BlobTooLarge(TooLarge):
    """The blob exceeds the configured maximum blob size."""


class TooManyTags(DtrError):
    """More ``?tag=`` parameters than the registry accepts in one request."""


class Conflict(DtrError):
    """The object already exists, or cannot be removed while something uses it."""


class Unauthorized(DtrError):
    """Credentials are missing, wrong, expired, disabled or revoked."""


class InvalidToken(Unauthorized):
    """A bearer token failed verification (signature, issuer, audience, time window)."""


class Denied(DtrError):
    """The caller is known but not allowed to do this."""


class RateLimited(DtrError):
    """Too many failed logins for this account or client address.

    Args:
        message: what was limited; never says whether the account exists.
        retry_after: seconds until the client may try again.
    """

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unsupported(DtrError):
    """The operation is disabled or not implemented by this registry."""


class Unavailable(DtrError):
    """A dependency (database, object store) failed; the request may be retried."""
