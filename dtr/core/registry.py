"""The registry facade: one object holding every core service, built by the composition
root from a :class:`~dtr.core.store.Store`.
"""

from __future__ import annotations

from dtr.core.blobs import BlobService
from dtr.core.health import HealthService
from dtr.core.manifests import ManifestService
from dtr.core.promotion import PromotionService
from dtr.core.referrers import ReferrersService
from dtr.core.store import Store
from dtr.core.tags import TagService
from dtr.core.uploads import UploadService


class Registry:
    """Every core service over one store."""

    def __init__(self, store: Store, *, redirect_expiry: int | None = None) -> None:
        self.store = store
        self.blobs = BlobService(store, redirect_expiry=redirect_expiry)
        self.uploads = UploadService(store, self.blobs)
        self.manifests = ManifestService(store)
        self.tags = TagService(store)
        self.referrers = ReferrersService(store)
        self.promotions = PromotionService(store, self.manifests, self.blobs)
        self.health = HealthService(store)
