"""OCI registry semantics: names, digests, uploads, blobs, manifests, tags, referrers, GC.
Never imports api, auth, policy, signing, audit or litestar; outer layers plug in through
``core/hooks.py``.
"""
