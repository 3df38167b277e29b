"""Registry metadata tables. Bytes live in storage; everything else is a row here.

``blob`` is the global content-addressed catalogue (one row per stored digest);
``repository_blob`` links a blob to a repository (pull access follows links, so a
cross-repository mount is an insert); ``manifest`` holds each manifest's exact bytes;
``manifest_reference`` lists what a manifest points at (for validation and GC);
``tag`` points a name at a manifest; ``upload`` tracks upload sessions across replicas.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from dtr.db.base import Base, UTCDateTime, utcnow

DIGEST_LEN = 200


class Repository(Base):
    """A repository (``org/team/app``); created on first push."""

    __tablename__ = "repository"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Blob(Base):
    """A stored blob. ``state`` is ``present`` or ``deleting`` (GC in progress)."""

    __tablename__ = "blob"
    digest: Mapped[str] = mapped_column(String(DIGEST_LEN), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="present")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_linked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RepositoryBlob(Base):
    """Link: the repository may serve the blob."""

    __tablename__ = "repository_blob"
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(
        ForeignKey("blob.digest", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_repository_blob_digest", "digest"),)


class Manifest(Base):
    """A manifest or index, stored byte for byte."""

    __tablename__ = "manifest"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(DIGEST_LEN))
    media_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    artifact_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    subject_digest: Mapped[str | None] = mapped_column(String(DIGEST_LEN), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("repository_id", "digest", name="uq_manifest_repository_digest"),
        Index("ix_manifest_subject", "repository_id", "subject_digest"),
    )


class ManifestReference(Base):
    """An edge from a manifest to a blob (``kind='blob'``) or child manifest."""

    __tablename__ = "manifest_reference"
    manifest_id: Mapped[int] = mapped_column(
        ForeignKey("manifest.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(String(DIGEST_LEN), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)

    __table_args__ = (Index("ix_manifest_reference_digest", "digest"),)


class Tag(Base):
    """A tag pointing at a manifest of the same repository."""

    __tablename__ = "tag"
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifest.id", ondelete="CASCADE"))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_tag_manifest", "manifest_id"),)


class Upload(Base):
    """An upload session. Bytes are segments in storage; ``size`` is the committed end."""

    __tablename__ = "upload"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    segments: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_upload_updated_at", "updated_at"),)


class UploadPart(Base):
    """One immutable segment of an upload, in offset order."""

    __tablename__ = "upload_part"
    upload_id: Mapped[str] = mapped_column(
        ForeignKey("upload.id", ondelete="CASCADE"), primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    key: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
