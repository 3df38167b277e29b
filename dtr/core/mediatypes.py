"""Media types dtr knows: manifests it accepts, and the descriptor kinds it treats specially."""

from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"
SCHEMA1 = frozenset({
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
})
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

IMAGE_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = IMAGE_MANIFESTS | INDEXES | {OCI_ARTIFACT}


def is_nondistributable(media_type: str) -> bool:
    """True for layers a registry must not require (foreign / non-distributable)."""
    return "nondistributable" in media_type or media_type == DOCKER_FOREIGN_LAYER
