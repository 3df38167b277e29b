"""Blob bytes: the storage driver seam and its implementations. Knows nothing of OCI,
the database or HTTP; imports no other dtr package.
"""
