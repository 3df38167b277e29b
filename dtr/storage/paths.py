"""The one storage key layout. Every key dtr writes is built here and nowhere else.

::

    <root>/
    ├── blobs/
    │   └── <algorithm>/<first two hex>/<encoded>       content-addressed blob bytes,
    │                                                   written once, shared by every repo
    └── uploads/
        └── <upload id>/                                one folder per upload session
            ├── data                                    the upload's one file, written in
            │                                           place (drivers that can append)
            └── <offset, 20 digits>-<nonce>             or one segment per PATCH/PUT body,
                                                        named by its start offset (the
                                                        nonce keeps racing writers apart)

Repositories never appear in keys: which repository may read a blob is a database row
(a *link*), so a cross-repository mount is a row insert and GC is a database query.
On a driver that can write in place (filesystem) every body lands in ``data`` under its
lock and the finishing request moves that file to the blob key; elsewhere (S3) segments
are immutable objects, so any replica can append the next one, and the finishing request
composes them into the blob key. Everything of an upload is under its folder, so deleting
the folder (``delete_prefix``) drops it either way.
"""

from __future__ import annotations

BLOBS = "blobs"
UPLOADS = "uploads"


def blob_key(algorithm: str, encoded: str) -> str:
    """Key of a blob's bytes: ``blobs/sha256/ab/ab12…``."""
    return f"{BLOBS}/{algorithm}/{encoded[:2]}/{encoded}"


def upload_prefix(upload_id: str) -> str:
    """Folder of an upload's segments (pass to ``delete_prefix`` / ``list``)."""
    return f"{UPLOADS}/{upload_id}"


def upload_data_key(upload_id: str) -> str:
    """Key of the file an upload is written into in place: ``uploads/<id>/data``."""
    return f"{UPLOADS}/{upload_id}/data"


def upload_segment_key(upload_id: str, offset: int, nonce: str) -> str:
    """Key of a segment that starts at ``offset`` (sortable: 20 zero-padded digits)."""
    return f"{UPLOADS}/{upload_id}/{offset:020d}-{nonce}"
