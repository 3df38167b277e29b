"""dtr: a trusted OCI container registry. This module holds the version only."""

__version__ = "0.1.0"
