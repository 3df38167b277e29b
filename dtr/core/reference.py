"""Repository name, tag and digest grammar (OCI distribution-spec v1.1 and image-spec)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from dtr.errors import DigestInvalid, NameInvalid, TagInvalid

NAME_RE = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
MAX_NAME = 255

#: Algorithms dtr can verify, with the exact length of their hex encoding.
ALGORITHMS = {"sha256": 64, "sha512": 128}
_LOWER_HEX = re.compile(r"[0-9a-f]+")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid repository name.

    Raises:
        NameInvalid: grammar or length (255) broken.
    """
    if len(name) > MAX_NAME or not NAME_RE.fullmatch(name):
        raise NameInvalid(f"invalid repository name {name!r}", {"name": name})
    return name


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag.

    Raises:
        TagInvalid: grammar broken.
    """
    if not TAG_RE.fullmatch(tag):
        raise TagInvalid(f"invalid tag {tag!r}", {"tag": tag})
    return tag


@dataclass(frozen=True, slots=True)
class Digest:
    """A parsed, verified-format digest such as ``sha256:<64 hex>``."""

    algorithm: str
    encoded: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parse a digest string.

        Raises:
            DigestInvalid: malformed, an algorithm dtr cannot verify, or a wrong-length
                or non-lower-hex encoding.
        """
        m = DIGEST_RE.fullmatch(value)
        if not m:
            raise DigestInvalid(f"invalid digest {value!r}", {"digest": value})
        alg, enc = m.group(1), m.group(2)
        want = ALGORITHMS.get(alg)
        if want is None:
            raise DigestInvalid(f"unsupported digest algorithm {alg!r}", {"digest": value})
        if len(enc) != want or not _LOWER_HEX.fullmatch(enc):
            raise DigestInvalid(f"invalid {alg} digest {value!r}", {"digest": value})
        return cls(alg, enc)

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object for this digest's algorithm."""
        return hashlib.new(self.algorithm)

    def matches(self, data: bytes) -> bool:
        """True when ``data`` hashes to this digest."""
        return hashlib.new(self.algorithm, data).hexdigest() == self.encoded


def digest_of(data: bytes, algorithm: str = "sha256") -> Digest:
    """The digest of ``data``."""
    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())


def is_digest_reference(reference: str) -> bool:
    """True if a manifest reference is a digest (contains ``:``) rather than a tag."""
    return ":" in reference


def referrers_tag(digest: Digest) -> str:
    """The tag-schema fallback tag for a subject digest (``sha256-<hex>``)."""
    return f"{digest.algorithm[:32]}-{digest.encoded[:64]}"
