"""TagService: paginated tag lists and the repository catalog, in byte order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, select

from dtr.core.store import Store, repo_id
from dtr.db.models import Repository, Tag
from dtr.errors import PaginationInvalid


@dataclass(frozen=True, slots=True)
class Page:
    """One page of names; ``more`` says whether a next page exists."""

    items: list[str]
    more: bool


class TagService:
    """Tag lists and the catalog."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _limit(self, n: int | None) -> int:
        if n is None:
            return self.store.limits.page_size
        if n < 0:
            raise PaginationInvalid("n must not be negative")
        return min(n, self.store.limits.page_size)

    async def list_tags(self, repository: str, n: int | None = None,
                        last: str | None = None) -> Page:
        """Tags of ``repository`` after ``last``, at most ``n``, byte-ordered.

        Raises:
            NameUnknown: no such repository.
        """
        limit = self._limit(n)
        col = self.store.bytewise(Tag.name)

        def page(s: Connection) -> list[str]:
            rid = repo_id(s, repository)
            if limit == 0:
                return []
            q = select(Tag.name).where(Tag.repository_id == rid).order_by(col)
            if last:
                q = q.where(col > last)
            return list(s.execute(q.limit(limit + 1)).scalars())

        names = await self.store.run(page, write=False)
        return Page(names[:limit], len(names) > limit)

    async def catalog(self, n: int | None = None, last: str | None = None,
                      visible: Callable[[str], bool] | None = None) -> Page:
        """Repository names after ``last``, at most ``n``, filtered by ``visible``."""
        limit = self._limit(n)
        if limit == 0:
            return Page([], False)
        col = self.store.bytewise(Repository.name)

        def scan(s: Connection) -> list[str]:
            out: list[str] = []
            cursor = last
            while len(out) <= limit:
                q = select(Repository.name).order_by(col).limit(limit * 2 + 1)
                if cursor:
                    q = q.where(col > cursor)
                names = list(s.execute(q).scalars())
                if not names:
                    break
                out.extend(x for x in names if visible is None or visible(x))
                cursor = names[-1]
                if len(names) < limit * 2 + 1:
                    break
            return out

        out = await self.store.run(scan, write=False)
        return Page(out[:limit], len(out) > limit)
